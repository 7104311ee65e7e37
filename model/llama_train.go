package model

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

// llamaTrainer trains a Llama on text examples. It keeps its last graph
// between calls (rebuilt when the batch, sequence length or adapters
// change). It is used by one goroutine at a time.
type llamaTrainer struct {
	m     Llama
	gr    *llamaGraph
	key   string
	clock func() time.Time
}

// NewTrainer returns a Trainer for m.
func (m Llama) NewTrainer() (Trainer, error) {
	if err := m.Config.Check(); err != nil {
		return nil, err
	}
	return &llamaTrainer{m: m, clock: time.Now}, nil
}

// Close releases the Gorgonia machine.
func (t *llamaTrainer) Close() {
	if t.gr != nil {
		t.gr.close()
		t.gr = nil
	}
}

func (t *llamaTrainer) graphFor(sp graphSpec) (*llamaGraph, error) {
	key := fmt.Sprintf("%d/%d/%v", sp.batch, sp.seq, sp.targets)
	if sp.lora != nil {
		key += fmt.Sprintf("/%d/%v", sp.lora.Rank, sp.lora.Alpha)
	}
	if t.gr != nil && t.key == key {
		return t.gr, nil
	}
	t.Close()
	gr, err := newLlamaGraph(t.m, sp)
	if err != nil {
		return nil, err
	}
	t.gr, t.key = gr, key
	return gr, nil
}

// checkText refuses data that are not token sequences m can take, or fewer
// than one step of them.
func (m Llama) checkText(data *dataset.Examples, cfg TrainConfig) error {
	if data.Tokens == nil {
		return fmt.Errorf("a language model trains on text; the data hold %d features per example", data.Dim)
	}
	if err := m.CheckData(data.Dim, data.Classes); err != nil {
		return err
	}
	if err := cfg.check(); err != nil {
		return err
	}
	if n := data.Len(); n < cfg.BatchSize*max(cfg.Accum, 1) {
		return fmt.Errorf("%d local sequences, fewer than one step of %d×%d", n, max(cfg.Accum, 1), cfg.BatchSize)
	}
	for i, id := range data.Tokens {
		if id < 0 || int(id) >= m.Config.VocabSize {
			return fmt.Errorf("token %d of the data is %d, outside the vocabulary of %d", i, id, m.Config.VocabSize)
		}
	}
	return nil
}

// Train fine-tunes every parameter from base on data's sequences and
// returns the trained parameters (a new Set; base is not modified).
func (t *llamaTrainer) Train(ctx context.Context, base tensor.Set, data *dataset.Examples, cfg TrainConfig) (tensor.Set, TrainMetrics, error) {
	start := t.clock()
	var met TrainMetrics
	if err := tensor.SameLayout(base, t.m.Layout()); err != nil {
		return tensor.Set{}, met, fmt.Errorf("train: base model does not fit %v: %w", t.m, err)
	}
	if err := t.m.checkText(data, cfg); err != nil {
		return tensor.Set{}, met, fmt.Errorf("train: %w", err)
	}
	gr, err := t.graphFor(graphSpec{batch: cfg.BatchSize, seq: data.Dim, train: true})
	if err != nil {
		return tensor.Set{}, met, err
	}
	gr.load(base)
	var anchors [][]float32
	if cfg.ProxMu > 0 {
		for _, b := range base.Tensors {
			anchors = append(anchors, b.Data)
		}
	}
	if err := localTrain(ctx, data.Len(), cfg, gr.params, gr.paramData, anchors, gr.step(data), &met); err != nil {
		return tensor.Set{}, met, err
	}
	out := base.Clone()
	out.Metadata = nil
	for k := range out.Tensors {
		copy(out.Tensors[k].Data, gr.paramData[k])
	}
	met.Samples = data.Len()
	met.Seconds = t.clock().Sub(start).Seconds()
	return out, met, nil
}

// step returns localTrain's micro-batch function over data.
func (gr *llamaGraph) step(data *dataset.Examples) func(idx []int) (float64, error) {
	return func(idx []int) (float64, error) {
		gr.setBatch(data.Tokens, idx)
		if err := gr.run(); err != nil {
			return 0, err
		}
		return gr.lossValue(), nil
	}
}

// AdapterTargets returns the weights an adapter set adapts (from its
// lora_A tensors' names), checking each is one m may adapt.
func (m Llama) AdapterTargets(adapter tensor.Set) ([]string, error) {
	may := m.LoRATargets()
	var targets []string
	for _, t := range adapter.Tensors {
		mod, ok := strings.CutSuffix(t.Name, ".lora_A.weight")
		if !ok {
			continue
		}
		w := mod + ".weight"
		if !slices.Contains(may, w) {
			return nil, fmt.Errorf("lora: adapter for %s, which is not a projection of %v", w, m)
		}
		targets = append(targets, w)
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("lora: the adapter set holds no lora_A tensors")
	}
	// the model's order, which the adapter layout follows
	slices.SortFunc(targets, func(a, b string) int { return slices.Index(may, a) - slices.Index(may, b) })
	return targets, nil
}

// TrainAdapter trains the LoRA adapters adapter (their targets read from
// its names) on the frozen model frozen and returns them trained.
func (t *llamaTrainer) TrainAdapter(ctx context.Context, l lora.Config, frozen, adapter tensor.Set, data *dataset.Examples, cfg TrainConfig) (tensor.Set, TrainMetrics, error) {
	start := t.clock()
	var met TrainMetrics
	if l.Rank <= 0 || !(l.Alpha > 0) {
		return tensor.Set{}, met, fmt.Errorf("lora: rank %d and alpha %v must be positive", l.Rank, l.Alpha)
	}
	if err := tensor.SameLayout(frozen, t.m.Layout()); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: base does not fit %v: %w", t.m, err)
	}
	targets, err := t.m.AdapterTargets(adapter)
	if err != nil {
		return tensor.Set{}, met, err
	}
	want, err := l.Layout(lora.Static{Params: t.m.Layout(), Targets: targets})
	if err != nil {
		return tensor.Set{}, met, err
	}
	if err := tensor.SameLayout(adapter, want); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: adapter does not fit rank %d: %w", l.Rank, err)
	}
	if err := t.m.checkText(data, cfg); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: %w", err)
	}
	gr, err := t.graphFor(graphSpec{batch: cfg.BatchSize, seq: data.Dim, train: true, lora: &l, targets: targets})
	if err != nil {
		return tensor.Set{}, met, err
	}
	gr.load(frozen)
	weights := make([][]float32, len(gr.adapters))
	for k, a := range gr.adapters {
		weights[k] = a.Value().Data().([]float32)
		copy(weights[k], adapter.Tensors[k].Data)
	}
	var anchors [][]float32
	if cfg.ProxMu > 0 {
		for _, a := range adapter.Tensors {
			anchors = append(anchors, a.Data)
		}
	}
	if err := localTrain(ctx, data.Len(), cfg, gr.adapters, weights, anchors, gr.step(data), &met); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: %w", err)
	}
	out := adapter.Clone()
	out.Metadata = nil
	for k := range out.Tensors {
		copy(out.Tensors[k].Data, weights[k])
	}
	met.Samples = data.Len()
	met.Seconds = t.clock().Sub(start).Seconds()
	return out, met, nil
}

// llamaEvaluator runs the forward pass over text in batches. It is used by
// one goroutine at a time.
type llamaEvaluator struct {
	m      Llama
	batch  int
	graphs map[int]*llamaGraph // by sequence length
}

// NewEvaluator returns an Evaluator for m running batch sequences at a time.
func (m Llama) NewEvaluator(batch int) (Evaluator, error) {
	if err := m.Config.Check(); err != nil {
		return nil, err
	}
	if batch <= 0 {
		batch = 8
	}
	return &llamaEvaluator{m: m, batch: batch, graphs: map[int]*llamaGraph{}}, nil
}

// Close releases the Gorgonia machines.
func (e *llamaEvaluator) Close() {
	for _, g := range e.graphs {
		g.close()
	}
}

// Evaluate returns the mean next-token cross-entropy of params over every
// predicted token of data (Loss, in nats), the fraction of tokens
// predicted exactly (Accuracy, top-1) and the number of tokens predicted
// (N).
func (e *llamaEvaluator) Evaluate(params tensor.Set, data *dataset.Examples) (Eval, error) {
	if err := tensor.SameLayout(params, e.m.Layout()); err != nil {
		return Eval{}, fmt.Errorf("evaluate: model does not fit %v: %w", e.m, err)
	}
	if err := e.m.checkText(data, TrainConfig{BatchSize: 1, LR: 1}); err != nil {
		return Eval{}, fmt.Errorf("evaluate: %w", err)
	}
	if err := params.CheckFinite(); err != nil {
		return Eval{}, fmt.Errorf("evaluate: the model's weights are not all finite: %w", err)
	}
	gr, ok := e.graphs[data.Dim]
	if !ok {
		var err error
		if gr, err = newLlamaGraph(e.m, graphSpec{batch: e.batch, seq: data.Dim}); err != nil {
			return Eval{}, err
		}
		e.graphs[data.Dim] = gr
	}
	gr.load(params)
	var lossSum float64
	var tokens, correct int
	n := data.Len()
	idx := make([]int, 0, e.batch)
	vocab := e.m.Config.VocabSize
	for lo := 0; lo < n; lo += e.batch {
		idx = idx[:0]
		for i := lo; i < min(lo+e.batch, n); i++ {
			idx = append(idx, i)
		}
		gr.setBatch(data.Tokens, idx)
		if err := gr.run(); err != nil {
			return Eval{}, fmt.Errorf("evaluate: %w", err)
		}
		c := countTargets(gr.targets)
		lossSum += gr.lossValue() * float64(c)
		tokens += c
		logits := gr.logits.Value().Data().([]float32)
		for r, t := range gr.targets {
			if t >= 0 && argmax(logits[r*vocab:(r+1)*vocab]) == int(t) {
				correct++
			}
		}
	}
	return Eval{Accuracy: float64(correct) / float64(tokens), Loss: lossSum / float64(tokens), N: tokens}, nil
}

func argmax(row []float32) int {
	best := 0
	for j, v := range row {
		if v > row[best] {
			best = j
		}
	}
	return best
}
