package model

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	G "gorgonia.org/gorgonia"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/tensor"
)

// ErrDiverged means local training produced a non-finite loss.
var ErrDiverged = errors.New("loss diverged")

// TrainConfig is a local training recipe.
type TrainConfig struct {
	Epochs    int     // passes over the data; at least one pass unless Steps caps it
	Steps     int     // cap on minibatch steps (0: no cap)
	BatchSize int     // examples per step
	LR        float64 // learning rate
	Momentum  float64 // SGD's heavy-ball momentum (0: plain SGD)
	ProxMu    float64 // FedProx proximal weight (0: off)
	// Optimizer is SGD (the default when empty) or AdamW.
	Optimizer   string
	WeightDecay float64 // SGD's L2 penalty or AdamW's decoupled decay (0: off)
	ClipNorm    float64 // clip each step's gradient to this global L2 norm (0: off)
	Accum       int     // micro-batches whose gradients one step averages (0 or 1: none)
	Seed        uint64  // shuffling order
	// Progress, if set, is called after every step with steps done and planned.
	Progress func(done, total int, loss float64)
}

// TrainMetrics describes one call of Train.
type TrainMetrics struct {
	Samples int     // examples the data holds (FedAvg weight)
	Seen    int     // examples processed, counting repeats
	Steps   int     // SGD steps taken
	Loss    float64 // mean minibatch loss over the steps
	Seconds float64
}

// mlpTrainer runs local SGD on an MLP. It keeps its Gorgonia graph between
// calls (rebuilt only when the batch size or FedProx weight change). It is
// used by one goroutine at a time.
type mlpTrainer struct {
	m     MLP
	gr    *graph
	mu    float64
	clock func() time.Time
}

// NewTrainer returns a Trainer for m.
func (m MLP) NewTrainer() (Trainer, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &mlpTrainer{m: m, clock: time.Now}, nil
}

// Close releases the Gorgonia machine.
func (t *mlpTrainer) Close() {
	if t.gr != nil {
		t.gr.close()
	}
}

func (t *mlpTrainer) graphFor(batch int, mu float64) (*graph, error) {
	if t.gr != nil && t.gr.batch == batch && t.mu == mu {
		return t.gr, nil
	}
	t.Close()
	gr, err := newGraph(t.m, batch, true, mu)
	if err != nil {
		return nil, err
	}
	t.gr, t.mu = gr, mu
	return gr, nil
}

// Train starts from base, runs minibatch SGD on data and returns the local
// parameters (a new Set; base is not modified). The last partial batch of an
// epoch is dropped; the order is reshuffled each epoch from cfg.Seed.
func (t *mlpTrainer) Train(ctx context.Context, base tensor.Set, data *dataset.Examples, cfg TrainConfig) (tensor.Set, TrainMetrics, error) {
	start := t.clock()
	var met TrainMetrics
	if err := tensor.SameLayout(base, t.m.Layout()); err != nil {
		return tensor.Set{}, met, fmt.Errorf("train: base model does not fit %v: %w", t.m.Sizes, err)
	}
	if data.Dim != t.m.Sizes[0] {
		return tensor.Set{}, met, fmt.Errorf("train: data has %d features, model takes %d", data.Dim, t.m.Sizes[0])
	}
	if err := cfg.check(); err != nil {
		return tensor.Set{}, met, fmt.Errorf("train: %w", err)
	}
	n := data.Len()
	if n < cfg.BatchSize*max(cfg.Accum, 1) {
		return tensor.Set{}, met, fmt.Errorf("train: %d local examples, fewer than one step of %d×%d", n, max(cfg.Accum, 1), cfg.BatchSize)
	}
	gr, err := t.graphFor(cfg.BatchSize, cfg.ProxMu)
	if err != nil {
		return tensor.Set{}, met, err
	}
	gr.load(base)
	for k := range gr.anchorData {
		gr.put(gr.anchorData[k], base.Tensors[k].Data, k)
	}
	if err := sgd(ctx, gr, gr.params(), gr.paramData, data, cfg, &met); err != nil {
		return tensor.Set{}, met, err
	}
	out := base.Clone()
	out.Metadata = nil
	for k := range out.Tensors {
		gr.get(out.Tensors[k].Data, gr.paramData[k], k)
	}
	met.Samples = n
	met.Seconds = t.clock().Sub(start).Seconds()
	return out, met, nil
}

// check refuses a recipe local SGD cannot run or that would diverge by
// construction: a non-positive batch, a learning rate that is not a
// positive finite number, momentum outside [0, 1), a negative or
// non-finite FedProx weight.
func (cfg TrainConfig) check() error {
	switch {
	case cfg.BatchSize <= 0:
		return fmt.Errorf("batch size %d must be positive", cfg.BatchSize)
	case !(cfg.LR > 0) || math.IsInf(cfg.LR, 0):
		return fmt.Errorf("learning rate %v must be a positive finite number", cfg.LR)
	case !(cfg.Momentum >= 0 && cfg.Momentum < 1):
		return fmt.Errorf("momentum %v must be in [0, 1)", cfg.Momentum)
	case !(cfg.ProxMu >= 0) || math.IsInf(cfg.ProxMu, 0):
		return fmt.Errorf("proximal weight %v must be a non-negative finite number", cfg.ProxMu)
	case cfg.Optimizer != "" && cfg.Optimizer != SGD && cfg.Optimizer != AdamW:
		return fmt.Errorf("optimizer %q: want %s or %s", cfg.Optimizer, SGD, AdamW)
	case cfg.Optimizer == AdamW && cfg.Momentum != 0:
		return fmt.Errorf("momentum %v is SGD's; AdamW has its own moments", cfg.Momentum)
	case !(cfg.WeightDecay >= 0 && cfg.WeightDecay < 1):
		return fmt.Errorf("weight decay %v must be in [0, 1)", cfg.WeightDecay)
	case !(cfg.ClipNorm >= 0) || math.IsInf(cfg.ClipNorm, 0):
		return fmt.Errorf("gradient clipping norm %v must be a non-negative finite number", cfg.ClipNorm)
	case cfg.Accum < 0 || cfg.Accum > 1<<16:
		return fmt.Errorf("gradient accumulation over %d micro-batches: want 1 to 65536", cfg.Accum)
	}
	return nil
}

// PlannedSteps is the number of optimizer steps Train takes on n examples:
// the epochs' full steps (of cfg.Accum batches), capped at cfg.Steps. A
// simulator uses it to time a task it does not run.
func PlannedSteps(n int, cfg TrainConfig) int {
	total := max(cfg.Epochs, 1) * (n / (max(cfg.BatchSize, 1) * max(cfg.Accum, 1)))
	if cfg.Steps > 0 {
		total = min(total, cfg.Steps)
	}
	return total
}

// sgd runs cfg's local optimizer on the MLP's params (whose values are
// weights) over data; gradients come from the graph's tape.
func sgd(ctx context.Context, gr *graph, params []*G.Node, weights [][]float32, data *dataset.Examples, cfg TrainConfig, met *TrainMetrics) error {
	return localTrain(ctx, data.Len(), cfg, params, weights, nil, func(idx []int) (float64, error) {
		gr.setBatch(data.X, data.Y, data.Dim, idx)
		if err := gr.run(); err != nil {
			return 0, err
		}
		return gr.lossValue(), nil
	}, met)
}

// zeroGrads zeroes the gradients bound to params (those Gorgonia has
// allocated; a node never run has none).
func zeroGrads(params []*G.Node) {
	for _, p := range params {
		if gv, err := p.Grad(); err == nil && gv != nil {
			if g, ok := gv.Data().([]float32); ok {
				clear(g)
			}
		}
	}
}

// mlpEvaluator runs the forward pass of an MLP over data sets in batches.
// It is used by one goroutine at a time.
type mlpEvaluator struct {
	m      MLP
	batch  int
	graphs map[int]*graph
}

// NewEvaluator returns an Evaluator for m using batches of up to batch examples.
func (m MLP) NewEvaluator(batch int) (Evaluator, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	if batch <= 0 {
		batch = 500
	}
	return &mlpEvaluator{m: m, batch: batch, graphs: map[int]*graph{}}, nil
}

// Close releases the Gorgonia machines.
func (e *mlpEvaluator) Close() {
	for _, g := range e.graphs {
		g.close()
	}
}

// Evaluate returns the accuracy and mean loss of params on every example of data.
func (e *mlpEvaluator) Evaluate(params tensor.Set, data *dataset.Examples) (Eval, error) {
	if err := tensor.SameLayout(params, e.m.Layout()); err != nil {
		return Eval{}, fmt.Errorf("evaluate: model does not fit %v: %w", e.m.Sizes, err)
	}
	if data.Dim != e.m.Sizes[0] {
		return Eval{}, fmt.Errorf("evaluate: data has %d features, model takes %d", data.Dim, e.m.Sizes[0])
	}
	if err := params.CheckFinite(); err != nil {
		// Its accuracy and loss would mean nothing (NaN logits pick class 0).
		return Eval{}, fmt.Errorf("evaluate: the model's weights are not all finite: %w", err)
	}
	n := data.Len()
	var correct int
	var lossSum float64
	idx := make([]int, 0, e.batch)
	for lo := 0; lo < n; lo += e.batch {
		hi := min(lo+e.batch, n)
		gr, ok := e.graphs[hi-lo]
		if !ok {
			var err error
			if gr, err = newGraph(e.m, hi-lo, false, 0); err != nil {
				return Eval{}, err
			}
			e.graphs[hi-lo] = gr
		}
		gr.load(params)
		idx = idx[:0]
		for i := lo; i < hi; i++ {
			idx = append(idx, i)
		}
		gr.setBatch(data.X, data.Y, data.Dim, idx)
		if err := gr.run(); err != nil {
			return Eval{}, fmt.Errorf("evaluate: %w", err)
		}
		lossSum += gr.lossValue() * float64(hi-lo)
		logits := gr.logits.Value().Data().([]float32)
		classes := len(logits) / (hi - lo)
		for r := 0; r < hi-lo; r++ {
			row := logits[r*classes : (r+1)*classes]
			best := 0
			for c := range row {
				if row[c] > row[best] {
					best = c
				}
			}
			if best == int(data.Y[lo+r]) {
				correct++
			}
		}
	}
	if n == 0 {
		return Eval{}, fmt.Errorf("evaluate: empty data set")
	}
	return Eval{Accuracy: float64(correct) / float64(n), Loss: lossSum / float64(n), N: n}, nil
}
