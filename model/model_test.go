package model

import (
	"context"
	"testing"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/tensor"
)

func TestTrainImprovesMNIST(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	test, _ := dataset.MNIST(dataset.Test)
	m := MLP{Sizes: []int{784, 256, 10}}
	tr, err := NewTrainer(m)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ev, _ := NewEvaluator(m, 1000)
	defer ev.Close()
	base := m.Init(1)
	before, err := ev.Evaluate(base, test)
	if err != nil {
		t.Fatal(err)
	}
	sub := train.Subset(seq(6000))
	t0 := time.Now()
	local, met, err := tr.Train(context.Background(), base, sub, TrainConfig{Epochs: 1, BatchSize: 64, LR: 0.1, Momentum: 0.5, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("1 epoch of %d: %.0f samples/s, loss %.3f", sub.Len(), float64(met.Seen)/time.Since(t0).Seconds(), met.Loss)
	after, _ := ev.Evaluate(local, test)
	t.Logf("accuracy %.3f -> %.3f", before.Accuracy, after.Accuracy)
	if after.Accuracy < 0.85 || after.Accuracy <= before.Accuracy {
		t.Errorf("accuracy %.3f -> %.3f after one epoch on 6000 images", before.Accuracy, after.Accuracy)
	}
	if d, _ := tensor.Diff(local, base); d.Norm() == 0 {
		t.Error("training did not change the weights")
	}
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}
