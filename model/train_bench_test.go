package model

import (
	"context"
	"fmt"
	"testing"

	"github.com/fedtune/fedtune/dataset"
)

// BenchmarkTrainStep times local SGD steps (forward, backward, update) of
// the demo model, mnist-mlp 784-256-10, at the batch sizes workers use.
func BenchmarkTrainStep(b *testing.B) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		b.Skip(err)
	}
	data := train.Subset(seq(8192))
	m := MLP{Sizes: []int{784, 256, 10}}
	for _, batch := range []int{64, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			tr, _ := m.NewTrainer()
			defer tr.Close()
			base := m.Init(1)
			const steps = 128
			for b.Loop() {
				if _, _, err := tr.Train(context.Background(), base, data, TrainConfig{Steps: steps, BatchSize: batch, LR: 0.05, Momentum: 0.9}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*steps*batch)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
