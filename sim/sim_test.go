package sim

import (
	"context"
	"testing"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
)

func data(t *testing.T) (*dataset.Examples, *dataset.Examples) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	test, _ := dataset.MNIST(dataset.Test)
	idx := make([]int, 2000)
	for i := range idx {
		idx[i] = i
	}
	return train.Subset(train.WithLabels(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)[:12000]), test.Subset(idx)
}

func cfg(rule, attack string) Config {
	return Config{Model: "mnist-mlp-small", Workers: 10, Rounds: 4, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 15, BatchSize: 32, LR: 0.1, Momentum: 0.5}, Rule: rule, Attack: attack, Byzantine: 0.2, Seed: 3}
}

// TestSimReproducible: the same config gives the same numbers.
func TestSimReproducible(t *testing.T) {
	train, test := data(t)
	a, err := Run(context.Background(), cfg("fedavg", "none"), train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Run(context.Background(), cfg("fedavg", "none"), train, test, nil)
	for i := range a {
		if a[i].Accuracy != b[i].Accuracy || a[i].Loss != b[i].Loss {
			t.Fatalf("round %d: %v vs %v", i+1, a[i], b[i])
		}
	}
	if a[len(a)-1].Accuracy < 0.75 {
		t.Errorf("clean FedAvg reached only %.3f", a[len(a)-1].Accuracy)
	}
}

// TestSimAttacks: IPM breaks FedAvg, and the median resists it.
func TestSimAttacks(t *testing.T) {
	train, test := data(t)
	last := func(rule, attack string) float64 {
		r, err := Run(context.Background(), cfg(rule, attack), train, test, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r[len(r)-1].Accuracy
	}
	clean, broken, robust := last("fedavg", "none"), last("fedavg", "ipm"), last("median", "ipm")
	t.Logf("fedavg clean %.3f, fedavg under IPM %.3f, median under IPM %.3f", clean, broken, robust)
	if broken > clean-0.2 {
		t.Errorf("IPM did not break FedAvg: %.3f vs clean %.3f", broken, clean)
	}
	if robust < clean-0.1 {
		t.Errorf("median under IPM %.3f, clean FedAvg %.3f", robust, clean)
	}
	for _, a := range Attacks {
		if _, err := Run(context.Background(), func() Config { c := cfg("trimmed-mean", a); c.Rounds = 1; return c }(), train, test, nil); err != nil {
			t.Errorf("attack %s: %v", a, err)
		}
	}
	if _, err := Run(context.Background(), cfg("fedavg", "teleport"), train, test, nil); err == nil {
		t.Error("unknown attack accepted")
	}
}
