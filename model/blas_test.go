package model

import (
	"context"
	"math"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"
	G "gorgonia.org/gorgonia"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/tensor/blas"
)

// TestFastBLASTrainsTheSame trains the demo model with the same seed and
// data on gonum's BLAS and on fedtune's (tensor/blas: other summation
// order, fused multiply-adds, SIMD in simd builds): the mean training loss
// and the final loss on the data agree within 1e-3.
func TestFastBLASTrainsTheSame(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Skip(err)
	}
	data := train.Subset(seq(4096))
	m := MLP{Sizes: []int{784, 256, 10}}
	cfg := TrainConfig{Steps: 200, BatchSize: 64, LR: 0.05, Momentum: 0.9, Seed: 3}
	run := func(impl G.BLAS) (float64, float64) {
		G.Use(impl)
		defer G.Use(blas.Implementation{})
		tr, _ := m.NewTrainer()
		defer tr.Close()
		out, met, err := tr.Train(context.Background(), m.Init(1), data, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ev, _ := m.NewEvaluator(1024)
		defer ev.Close()
		e, err := ev.Evaluate(out, data)
		if err != nil {
			t.Fatal(err)
		}
		return met.Loss, e.Loss
	}
	refTrain, refFinal := run(gonum.Implementation{})
	gotTrain, gotFinal := run(blas.Implementation{})
	t.Logf("gonum: mean training loss %.6f, final %.6f; fedtune (%s): %.6f, %.6f", refTrain, refFinal, blas.Kernel(), gotTrain, gotFinal)
	if math.Abs(gotTrain-refTrain) > 1e-3 || math.Abs(gotFinal-refFinal) > 1e-3 {
		t.Errorf("losses differ by more than 1e-3")
	}
}
