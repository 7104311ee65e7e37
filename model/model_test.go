package model

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

func TestTrainImprovesMNIST(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	test, _ := dataset.MNIST(dataset.Test)
	m := MLP{Sizes: []int{784, 256, 10}}
	tr, err := m.NewTrainer()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ev, _ := m.NewEvaluator(1000)
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

// TestDivergedTaskLeavesTrainerClean: a task whose loss diverges fails with
// ErrDiverged, and the next task on the same trainer (same graph) trains
// normally: no NaN gradient is carried over.
func TestDivergedTaskLeavesTrainerClean(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	sub := train.Subset(seq(512))
	m := MLP{Sizes: []int{784, 32, 10}}
	tr, err := m.NewTrainer()
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	base := m.Init(1)
	_, _, err = tr.Train(context.Background(), base, sub, TrainConfig{Epochs: 1, Steps: 4, BatchSize: 64, LR: 1e30, Seed: 1})
	if !errors.Is(err, ErrDiverged) {
		t.Fatalf("lr 1e30: err %v, want ErrDiverged", err)
	}
	local, met, err := tr.Train(context.Background(), base, sub, TrainConfig{Epochs: 1, Steps: 4, BatchSize: 64, LR: 0.05, Seed: 1})
	if err != nil {
		t.Fatalf("task after a diverged one: %v", err)
	}
	if err := local.CheckFinite(); err != nil || math.IsNaN(met.Loss) {
		t.Fatalf("task after a diverged one: loss %v, %v", met.Loss, err)
	}
}

func TestTrainConfigRefused(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	sub := train.Subset(seq(128))
	m := MLP{Sizes: []int{784, 8, 10}}
	tr, _ := m.NewTrainer()
	defer tr.Close()
	ok := TrainConfig{Epochs: 1, BatchSize: 64, LR: 0.1}
	for _, tc := range []struct {
		name string
		edit func(*TrainConfig)
		want string
	}{
		{"lr inf", func(c *TrainConfig) { c.LR = math.Inf(1) }, "learning rate"},
		{"lr nan", func(c *TrainConfig) { c.LR = math.NaN() }, "learning rate"},
		{"lr zero", func(c *TrainConfig) { c.LR = 0 }, "learning rate"},
		{"momentum nan", func(c *TrainConfig) { c.Momentum = math.NaN() }, "momentum"},
		{"momentum 1", func(c *TrainConfig) { c.Momentum = 1 }, "momentum"},
		{"batch 0", func(c *TrainConfig) { c.BatchSize = 0 }, "batch size"},
		{"prox inf", func(c *TrainConfig) { c.ProxMu = math.Inf(1) }, "proximal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			_, _, err := tr.Train(context.Background(), m.Init(1), sub, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one naming %q", err, tc.want)
			}
		})
	}
}

// TestEvaluateRefusesNonFinite: a model with a NaN weight gets an error,
// not an accuracy (it once scored 9.80% with loss NaN, unremarked).
func TestEvaluateRefusesNonFinite(t *testing.T) {
	test, err := dataset.MNIST(dataset.Test)
	if err != nil {
		t.Fatal(err)
	}
	m := MLP{Sizes: []int{784, 8, 10}}
	ev, _ := m.NewEvaluator(1000)
	defer ev.Close()
	p := m.Init(1)
	p.Tensors[1].Data[5] = float32(math.NaN())
	if _, err := ev.Evaluate(p, test); !errors.Is(err, tensor.ErrNotFinite) {
		t.Fatalf("err %v, want ErrNotFinite", err)
	}
}

func TestRegistry(t *testing.T) {
	for _, name := range Names() {
		a, err := Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := (lora.Config{Rank: 1}).Check(a); err != nil {
			t.Errorf("%s: its LoRA targets do not fit its layout: %v", name, err)
		}
		if err := tensor.SameLayout(a.Init(1), a.Layout()); err != nil {
			t.Errorf("%s: Init does not fit Layout: %v", name, err)
		}
	}
	if _, err := Lookup("llama-9000"); err == nil || !strings.Contains(err.Error(), "mnist-mlp") {
		t.Errorf("unknown model: %v, want an error listing the known ones", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("a second registration under a taken name did not panic")
		}
	}()
	Register("mnist-mlp", MLP{Sizes: []int{2, 2}})
}
