package model

import (
	"context"
	"testing"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

// TestLoRATrainAdapter trains rank-4 adapters on a frozen base: the loss
// falls, only the adapters change, the merged model scores what training
// saw, and the adapters are a small fraction of the model.
func TestLoRATrainAdapter(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	data := train.Subset(train.WithLabels(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)[:3000])
	m := MLP{Sizes: []int{784, 64, 10}}
	tr, _ := m.NewTrainer()
	defer tr.Close()
	// A base that knows digits 0-4 only.
	base, _, err := tr.Train(context.Background(), m.Init(1), train.Subset(train.WithLabels(0, 1, 2, 3, 4)[:3000]), TrainConfig{Epochs: 1, BatchSize: 32, LR: 0.1, Momentum: 0.5, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	l := lora.Config{Rank: 4, Alpha: 8}
	ad, err := l.Init(m, 2)
	if err != nil {
		t.Fatal(err)
	}
	merged0, err := l.Merge(m, base, ad)
	if err != nil {
		t.Fatal(err)
	}
	if !equal(merged0, base) {
		t.Fatal("fresh adapters (B = 0) changed the model")
	}
	baseCopy := base.Clone()
	trained, met, err := tr.TrainAdapter(context.Background(), l, base, ad, data, TrainConfig{Epochs: 4, BatchSize: 32, LR: 0.02, Momentum: 0.9, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !equal(base, baseCopy) {
		t.Error("training the adapters changed the base")
	}
	ev, _ := m.NewEvaluator(500)
	defer ev.Close()
	before, _ := ev.Evaluate(base, data)
	merged, _ := l.Merge(m, base, trained)
	after, _ := ev.Evaluate(merged, data)
	t.Logf("LoRA r=4: loss %.3f -> %.3f, accuracy %.3f -> %.3f (mean training loss %.3f); adapter %d of %d params (%.1f%%)",
		before.Loss, after.Loss, before.Accuracy, after.Accuracy, met.Loss, trained.Len(), base.Len(), 100*float64(trained.Len())/float64(base.Len()))
	if after.Accuracy < before.Accuracy+0.2 || after.Loss > before.Loss*0.6 {
		t.Errorf("adapters did not learn the new digits: accuracy %.3f -> %.3f", before.Accuracy, after.Accuracy)
	}
	if float64(trained.Len()) > 0.1*float64(base.Len()) {
		t.Errorf("adapters hold %d of %d parameters", trained.Len(), base.Len())
	}
	other, _ := lora.Config{Rank: 3, Alpha: 8}.Layout(m)
	if _, err := l.Merge(m, base, other); err == nil {
		t.Error("an adapter of another rank was merged")
	}
}

func equal(a, b tensor.Set) bool {
	if tensor.SameLayout(a, b) != nil {
		return false
	}
	for k := range a.Tensors {
		for i, v := range a.Tensors[k].Data {
			if v != b.Tensors[k].Data[i] {
				return false
			}
		}
	}
	return true
}
