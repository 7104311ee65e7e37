package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// GorgoniaTrainer trains fedtune's Gorgonia models on the worker's local
// data, one data set per name (the task names which). It keeps one
// model.Trainer per architecture. Used by one goroutine at a time.
type GorgoniaTrainer struct {
	data     map[string]*dataset.Examples
	trainers map[string]*model.Trainer
	log      *slog.Logger
}

// NewGorgoniaTrainer returns a trainer over the given local data sets.
func NewGorgoniaTrainer(data map[string]*dataset.Examples, logger *slog.Logger) *GorgoniaTrainer {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &GorgoniaTrainer{data: data, trainers: map[string]*model.Trainer{}, log: logger}
}

// Train fine-tunes base on the local data set the task names and returns
// delta = local - base.
func (g *GorgoniaTrainer) Train(ctx context.Context, base tensor.Set, task *pb.Task) (Result, error) {
	data, ok := g.data[task.Dataset]
	if !ok {
		return Result{}, fmt.Errorf("this worker holds no data for dataset %q", task.Dataset)
	}
	tr, ok := g.trainers[task.Model]
	if !ok {
		arch, err := model.Lookup(task.Model)
		if err != nil {
			return Result{}, err
		}
		if tr, err = model.NewTrainer(arch); err != nil {
			return Result{}, err
		}
		g.trainers[task.Model] = tr
	}
	tc := task.GetTrain()
	next := 0
	cfg := model.TrainConfig{
		Epochs: int(tc.GetLocalEpochs()), Steps: int(tc.GetLocalSteps()), BatchSize: int(tc.GetBatchSize()),
		LR: tc.GetLearningRate(), Momentum: tc.GetMomentum(), ProxMu: tc.GetProxMu(), Seed: task.Seed,
		Progress: func(done, total int, loss float64) {
			if pct := 100 * done / total; pct >= next {
				g.log.Info("local training", "job", task.Job, "round", task.Round, "step", done, "of", total, "loss", loss)
				next = pct/25*25 + 25
			}
		},
	}
	local, met, err := tr.Train(ctx, base, data, cfg)
	if err != nil {
		return Result{}, err
	}
	delta, err := tensor.Diff(local, base)
	if err != nil {
		return Result{}, err
	}
	return Result{Delta: delta, Samples: uint64(met.Samples), Metrics: map[string]float64{
		"loss": met.Loss, "seconds": met.Seconds, "steps": float64(met.Steps), "samples_per_second": float64(met.Seen) / max(met.Seconds, 1e-9),
	}}, nil
}

// Close releases the Gorgonia machines.
func (g *GorgoniaTrainer) Close() {
	for _, t := range g.trainers {
		t.Close()
	}
}
