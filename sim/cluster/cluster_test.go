package cluster

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/sim"
)

// TestGRPCTransport runs a small experiment through the real cluster path
// and checks it learns and reports every round with its bytes.
func TestGRPCTransport(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	test, _ := dataset.MNIST(dataset.Test)
	cfg := sim.Config{Model: "mnist-mlp-small", Workers: 6, ClientsPerRound: 4, Rounds: 3, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 20, BatchSize: 32, LR: 0.1, Momentum: 0.5}, Rule: "median", Codec: "topk=0.1+int8", Seed: 2}
	var seen int
	res, err := Run(context.Background(), cfg, train, test, func(sim.RoundResult) { seen++ })
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || seen != 3 {
		t.Fatalf("%d rounds reported (%d progress calls), want 3", len(res), seen)
	}
	for _, r := range res {
		if r.Participants != 4 || r.Bytes == 0 || math.IsNaN(r.Accuracy) || !r.Verified {
			t.Errorf("round %+v", r)
		}
	}
	if acc := res[2].Accuracy; acc < 0.7 {
		t.Errorf("accuracy %.3f after 3 rounds", acc)
	}
	cfg.Attack, cfg.Byzantine = "ipm", 0.2
	if _, err := Run(context.Background(), cfg, train, test, nil); err == nil || !strings.Contains(err.Error(), "attack") {
		t.Errorf("an attack on the grpc transport: err = %v", err)
	}
}
