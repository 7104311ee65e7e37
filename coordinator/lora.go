package coordinator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

// A LoRA job (spec.lora set) fine-tunes low-rank adapters on a frozen base:
// the job's model versions — what rounds start from, what workers send
// deltas of, what is aggregated and committed — are the adapters, and
// spec.base_model is the frozen base they apply to. The coordinator merges
// the two only to evaluate and, on request, to export.

// loraOf returns the LoRA of a job spec, or false for a full fine-tuning job.
func loraOf(spec *pb.JobSpec) (model.LoRA, bool) {
	l := spec.GetLora()
	if l == nil {
		return model.LoRA{}, false
	}
	return model.LoRA{Rank: int(l.Rank), Alpha: l.Alpha}, true
}

// normalizeLoRA fills a LoRA spec's defaults and checks it against the
// architecture and the job's rule.
func normalizeLoRA(spec *pb.JobSpec, arch model.MLP) error {
	l := spec.Lora
	if l == nil {
		return nil
	}
	if l.Rank == 0 {
		return errors.New("lora: rank must be at least 1")
	}
	for i := 0; i < arch.Layers(); i++ {
		if int(l.Rank) > min(arch.Sizes[i], arch.Sizes[i+1]) {
			return fmt.Errorf("lora: rank %d exceeds layer fc%d's %d×%d: the adapter would not be low-rank", l.Rank, i+1, arch.Sizes[i+1], arch.Sizes[i])
		}
	}
	if l.Alpha == 0 {
		l.Alpha = 2 * float64(l.Rank)
	}
	if !(l.Alpha > 0) || math.IsInf(l.Alpha, 0) {
		return fieldErr("lora.alpha", "%v must be a positive finite number", l.Alpha)
	}
	switch l.Aggregation {
	case "":
		l.Aggregation = round.LoRANaive
	case round.LoRANaive:
	case round.LoRAExact:
		if spec.Aggregator != "fedavg" {
			return fmt.Errorf("lora: aggregation %q averages the workers' products B·A; it cannot be combined with aggregator %q (use lora aggregation %q for robust rules)", round.LoRAExact, spec.Aggregator, round.LoRANaive)
		}
		if n := spec.ServerOptimizer.GetName(); n != "" && n != "plain" {
			return fmt.Errorf("lora: aggregation %q sets the adapters directly; server optimizer %q needs %q", round.LoRAExact, n, round.LoRANaive)
		}
	default:
		return fmt.Errorf("lora: aggregation %q: want %s or %s", l.Aggregation, round.LoRANaive, round.LoRAExact)
	}
	return nil
}

// prepareAdapter stores the initial adapters of a LoRA job: fresh ones
// (A seeded from the job's seed, B = 0, so the adapted model starts as the
// base) or, if the spec names a blob, those after checking them.
func (c *Coordinator) prepareAdapter(ctx context.Context, spec *pb.JobSpec, arch model.MLP) error {
	l, _ := loraOf(spec)
	if spec.Lora.Adapter == "" {
		b, err := tensor.Marshal(l.InitAdapter(arch, spec.Seed), tensor.F32)
		if err != nil {
			return err
		}
		spec.Lora.Adapter, err = c.replicate(ctx, b)
		return err
	}
	b, err := c.blob(ctx, spec.Lora.Adapter)
	if err != nil {
		return fmt.Errorf("lora adapter: %w (upload it with Blob.Put first)", err)
	}
	ad, err := tensor.Unmarshal(b)
	if err != nil {
		return fmt.Errorf("lora adapter: %w", err)
	}
	if err := tensor.SameLayout(ad, l.AdapterLayout(arch)); err != nil {
		return fmt.Errorf("lora adapter does not fit %s at rank %d: %w", spec.Model, l.Rank, err)
	}
	if err := ad.CheckFinite(); err != nil {
		return fmt.Errorf("lora adapter: %w", err)
	}
	_, err = c.replicate(ctx, b)
	return err
}

// modelLayout returns the (zero-valued) layout of a job's model versions:
// the architecture's parameters, or a LoRA job's adapters. Built once per
// architecture and rank: validating an update must not allocate a model.
func (c *Coordinator) modelLayout(spec *pb.JobSpec) (tensor.Set, error) {
	key := spec.Model
	l, isLoRA := loraOf(spec)
	if isLoRA {
		key = fmt.Sprintf("%s/lora-r%d", spec.Model, l.Rank)
	}
	if s, ok := c.layouts.Load(key); ok {
		return s.(tensor.Set), nil
	}
	arch, err := model.Lookup(spec.Model)
	if err != nil {
		return tensor.Set{}, err
	}
	s := arch.Layout()
	if isLoRA {
		s = l.AdapterLayout(arch)
	}
	got, _ := c.layouts.LoadOrStore(key, s)
	return got.(tensor.Set), nil
}

// usable returns the full model a job's model version stands for: params
// itself, or a LoRA job's frozen base with the adapters params merged in.
func (c *Coordinator) usable(ctx context.Context, spec *pb.JobSpec, params tensor.Set) (tensor.Set, error) {
	l, ok := loraOf(spec)
	if !ok {
		return params, nil
	}
	base, err := c.frozen.get(ctx, c, spec.BaseModel)
	if err != nil {
		return tensor.Set{}, fmt.Errorf("frozen base: %w", err)
	}
	arch, err := model.Lookup(spec.Model)
	if err != nil {
		return tensor.Set{}, err
	}
	return l.Merge(arch, base, params)
}

// evaluate scores a job's model version on its data set's test split.
func (c *Coordinator) evaluate(ctx context.Context, spec *pb.JobSpec, params tensor.Set) (model.Eval, error) {
	full, err := c.usable(ctx, spec, params)
	if err != nil {
		return model.Eval{}, err
	}
	return c.eval.evaluate(spec, full)
}

// frozenCache keeps the decoded frozen bases of LoRA jobs (a few, by hash):
// every commit merges the new adapters into one.
type frozenCache struct {
	mu sync.Mutex
	by map[string]tensor.Set
}

func (f *frozenCache) get(ctx context.Context, c *Coordinator, hash string) (tensor.Set, error) {
	f.mu.Lock()
	s, ok := f.by[hash]
	f.mu.Unlock()
	if ok {
		return s, nil
	}
	s, err := c.blobSet(ctx, hash)
	if err != nil {
		return tensor.Set{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.by == nil || len(f.by) >= 4 {
		f.by = map[string]tensor.Set{}
	}
	f.by[hash] = s
	return s, nil
}

// aggregateExact is a LoRA job's exact aggregation: every worker's adapters
// (the round's adapters plus its delta) are multiplied out, averaged by
// samples and factorised back to rank r (aggregation.LoRAExact). It returns
// the new adapters and, for the ledger, the scores of the deltas against the
// change the round made.
func aggregateExact(base tensor.Set, ups []aggregation.Update) (tensor.Set, []aggregation.Score, error) {
	full := make([]aggregation.Update, len(ups))
	for i, u := range ups {
		d, err := tensor.Materialize(u.Source)
		if err != nil {
			return tensor.Set{}, nil, fmt.Errorf("update of %s: %w", u.Worker, err)
		}
		next := base.Clone()
		if err := next.AddScaled(1, d); err != nil {
			return tensor.Set{}, nil, fmt.Errorf("update of %s: %w", u.Worker, err)
		}
		full[i] = aggregation.Update{Worker: u.Worker, Delta: next, Samples: u.Samples}
		ups[i] = aggregation.Update{Worker: u.Worker, Delta: d, Samples: u.Samples}
	}
	out, err := aggregation.LoRAExact(full)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	change, err := tensor.Diff(out, base)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	scores, err := aggregation.ScoreAgainst(ups, change)
	return out, scores, err
}
