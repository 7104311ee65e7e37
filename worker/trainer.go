package worker

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// ErrNoData means the worker holds no data for a task's data set.
var ErrNoData = errors.New("no local data")

// GorgoniaTrainer trains fedtune's Gorgonia models on the worker's local
// data, one data set per name (the task names which). It keeps one
// model.Trainer per architecture. Used by one goroutine at a time.
type GorgoniaTrainer struct {
	data     map[string]*dataset.Examples
	text     map[string]Text
	packed   map[string]*dataset.Examples // text tokenised per job's tokenizer and length
	trainers map[string]model.Trainer
	log      *slog.Logger
}

// NewGorgoniaTrainer returns a trainer over the given local data sets.
func NewGorgoniaTrainer(data map[string]*dataset.Examples, logger *slog.Logger) *GorgoniaTrainer {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &GorgoniaTrainer{data: data, trainers: map[string]model.Trainer{}, log: logger}
}

// Train fine-tunes the task's model on the local data set it names and
// returns delta = local - in.Base. For a LoRA task only the adapters
// (in.Base) are trained, on the frozen in.Frozen.
func (g *GorgoniaTrainer) Train(ctx context.Context, in Input, task *pb.Task) (Result, error) {
	data, ok := localFor(g.data, task.Dataset)
	if task.Tokenizer != "" {
		var err error
		if data, err = g.tokens(in, task, false); err != nil {
			return Result{}, err
		}
	} else if !ok {
		return Result{}, fmt.Errorf("this worker holds no data for dataset %q: %w", task.Dataset, ErrNoData)
	}
	tc := task.GetTrain()
	next := 0
	cfg := model.TrainConfig{
		Epochs: int(tc.GetLocalEpochs()), Steps: int(tc.GetLocalSteps()), BatchSize: int(tc.GetBatchSize()),
		LR: tc.GetLearningRate(), Momentum: tc.GetMomentum(), ProxMu: tc.GetProxMu(), Seed: task.Seed,
		Optimizer: tc.GetOptimizer(), WeightDecay: tc.GetWeightDecay(), ClipNorm: tc.GetClipNorm(), Accum: int(tc.GetAccum()),
		Progress: func(done, total int, loss float64) {
			if pct := 100 * done / total; pct >= next {
				g.log.Info("local training", "job", task.Job, "round", task.Round, "step", done, "of", total, "loss", loss)
				next = pct/25*25 + 25
			}
		},
	}
	tr, err := g.trainer(task.Model, task.ModelConfig)
	if err != nil {
		return Result{}, err
	}
	var local tensor.Set
	var met model.TrainMetrics
	if l := task.Lora; l != nil {
		local, met, err = tr.TrainAdapter(ctx, loraConfig(l), in.Frozen, in.Base, data, cfg)
	} else {
		local, met, err = tr.Train(ctx, in.Base, data, cfg)
	}
	if err != nil {
		return Result{}, err
	}
	delta, err := tensor.Diff(local, in.Base)
	if err != nil {
		return Result{}, err
	}
	return Result{Delta: delta, Samples: uint64(met.Samples), Metrics: map[string]float64{
		"loss": met.Loss, "seconds": met.Seconds, "steps": float64(met.Steps), "samples_per_second": float64(met.Seen) / max(met.Seconds, 1e-9),
	}}, nil
}

// localFor returns the local data serving a task's data set: held under
// its name, or under another name of its family (a worker holding words-fr
// trains a job on words-fr+de+es with its French words).
func localFor(data map[string]*dataset.Examples, name string) (*dataset.Examples, bool) {
	if d, ok := data[name]; ok {
		return d, true
	}
	fam := dataset.Family(name)
	for k, d := range data {
		if dataset.Family(k) == fam {
			return d, true
		}
	}
	return nil, false
}

// trainer returns the model.Trainer of an architecture, built once.
func (g *GorgoniaTrainer) trainer(name string, config []byte) (model.Trainer, error) {
	key := fmt.Sprintf("%s/%x", name, sha256.Sum256(config))
	if tr, ok := g.trainers[key]; ok {
		return tr, nil
	}
	arch, err := model.LookupConfig(name, config)
	if err != nil {
		return nil, err
	}
	tr, err := arch.NewTrainer()
	if err != nil {
		return nil, err
	}
	if len(g.trainers) >= 4 { // jobs of many configurations: keep a few
		g.Close()
		g.trainers = map[string]model.Trainer{}
	}
	g.trainers[key] = tr
	return tr, nil
}

func loraConfig(l *pb.LoRASpec) lora.Config { return lora.Config{Rank: int(l.Rank), Alpha: l.Alpha} }

func staticBase(arch model.Architecture, targets []string) lora.Static {
	return lora.Static{Params: arch.Layout(), Targets: targets}
}

// Close releases the Gorgonia machines.
func (g *GorgoniaTrainer) Close() {
	for _, t := range g.trainers {
		t.Close()
	}
}
