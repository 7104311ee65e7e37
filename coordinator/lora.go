package coordinator

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/fedtune/fedtune/lora"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// A LoRA job (spec.lora set) fine-tunes low-rank adapters on a frozen base:
// the job's model versions — what rounds start from, what workers send
// deltas of, what is aggregated and committed — are the adapters, and
// spec.base_model is the frozen base they apply to. The coordinator merges
// the two only to evaluate and, on request, to export.

// loraOf returns the LoRA of a job spec, or false for a full fine-tuning job.
func loraOf(spec *pb.JobSpec) (lora.Config, bool) {
	l := spec.GetLora()
	if l == nil {
		return lora.Config{}, false
	}
	return lora.Config{Rank: int(l.Rank), Alpha: l.Alpha}, true
}

// loraBase returns what a job's adapters are built for: its
// architecture's layout and LoRA targets, from the Models seam.
func (c *Coordinator) loraBase(spec *pb.JobSpec) (lora.Base, error) {
	layout, err := c.deps.Models.Layout(spec.Model, spec.ModelConfig)
	if err != nil {
		return nil, err
	}
	targets, err := c.deps.Models.LoRATargets(spec.Model, spec.ModelConfig, spec.Lora.GetTargetModules())
	if err != nil {
		return nil, err
	}
	return lora.Static{Params: layout, Targets: targets}, nil
}

// prepareAdapter stores the initial adapters of a LoRA job: fresh ones
// (A seeded from the job's seed, B = 0, so the adapted model starts as the
// base) or, if the spec names a blob, those after checking them.
// It returns the adapters.
func (c *Coordinator) prepareAdapter(ctx context.Context, spec *pb.JobSpec) (tensor.Set, error) {
	l, _ := loraOf(spec)
	base, err := c.loraBase(spec)
	if err != nil {
		return tensor.Set{}, err
	}
	if spec.Lora.Adapter == "" {
		ad, err := l.Init(base, spec.Seed)
		if err != nil {
			return tensor.Set{}, err
		}
		b, err := tensor.Marshal(ad, tensor.F32)
		if err != nil {
			return tensor.Set{}, err
		}
		spec.Lora.Adapter, err = c.replicate(ctx, b)
		return ad, err
	}
	b, err := c.blob(ctx, spec.Lora.Adapter)
	if err != nil {
		return tensor.Set{}, fmt.Errorf("lora adapter: %w (upload it with Blob.Put first)", err)
	}
	ad, err := tensor.Unmarshal(b)
	if err != nil {
		return tensor.Set{}, fmt.Errorf("lora adapter: %w", err)
	}
	want, err := l.Layout(base)
	if err != nil {
		return tensor.Set{}, err
	}
	if err := tensor.SameLayout(ad, want); err != nil {
		return tensor.Set{}, fmt.Errorf("lora adapter does not fit %s at rank %d: %w", spec.Model, l.Rank, err)
	}
	if err := ad.CheckFinite(); err != nil {
		return tensor.Set{}, fmt.Errorf("lora adapter: %w", err)
	}
	_, err = c.replicate(ctx, b)
	return ad, err
}

// modelLayout returns the (zero-valued) layout of a job's model versions:
// the architecture's parameters, or a LoRA job's adapters. Built once per
// architecture and rank: validating an update must not allocate a model.
func (c *Coordinator) modelLayout(spec *pb.JobSpec) (tensor.Set, error) {
	l, isLoRA := loraOf(spec)
	if !isLoRA {
		return c.deps.Models.Layout(spec.Model, spec.ModelConfig)
	}
	key := fmt.Sprintf("%s/%x/lora-r%d/%v", spec.Model, sha256.Sum256(spec.ModelConfig), l.Rank, spec.Lora.GetTargetModules())
	if s, ok := c.layouts.Load(key); ok {
		return s.(tensor.Set), nil
	}
	base, err := c.loraBase(spec)
	if err != nil {
		return tensor.Set{}, err
	}
	s, err := l.Layout(base)
	if err != nil {
		return tensor.Set{}, err
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
	lb, err := c.loraBase(spec)
	if err != nil {
		return tensor.Set{}, err
	}
	return l.Merge(lb, base, params)
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
