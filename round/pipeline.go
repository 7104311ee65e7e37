package round

import (
	"context"
	"fmt"

	"github.com/fedtune/fedtune/aggregation"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// Source supplies the bytes a round's aggregation reads. The coordinator
// reads them from its blob store (fetching from peers); the simulator from
// memory.
type Source interface {
	// Update returns an accepted update's delta as a vector of n elements
	// (decoded on demand, block by block, where the source can) and a
	// function that releases it.
	Update(ctx context.Context, u *pb.AcceptedUpdate, n int) (tensor.Vector, func(), error)
	// Version returns the job's model at version v (for drift correction
	// of stale async updates).
	Version(ctx context.Context, v uint32) (tensor.Set, error)
}

// Pipeline is the aggregation of one round or async version, the same in
// the coordinator, in `fedtune verify` and in the simulator: decode each
// update, correct a stale one's drift, weight it by its staleness, apply
// the rule, then the server optimizer.
type Pipeline struct {
	Rule      aggregation.Aggregator
	Optimizer aggregation.ServerOptimizer
	// Async is the job's async spec; nil for a sync job (no staleness).
	Async *pb.AsyncSpec
	// LoRAExact multiplies out LoRA adapters and factorises their mean
	// (aggregation.LoRAExact) instead of applying Rule and Optimizer.
	LoRAExact bool
	// DP, when set, weighs updates equally (the rule clips them) and adds
	// the mechanism's Gaussian noise to their mean, drawn from Seed.
	DP   *pb.DPSpec
	Seed uint64
	// Clip is the round's clipping norm with adaptive clipping (see
	// NewRoundPipeline); the round's metrics then hold the next one.
	Clip float64
}

// NewPipeline returns the pipeline a job spec asks for.
func NewPipeline(spec *pb.JobSpec) (Pipeline, error) {
	rule, err := aggregation.NewRule(spec.GetAggregator(), RuleParams(spec.GetAggregatorParams()))
	if err != nil {
		return Pipeline{}, err
	}
	opt, err := NewOptimizer(spec.GetServerOptimizer())
	if err != nil {
		return Pipeline{}, err
	}
	p := Pipeline{Rule: rule, Optimizer: opt, LoRAExact: spec.GetLora().GetAggregation() == LoRAExact, DP: spec.GetDp(), Seed: spec.GetSeed()}
	if IsAsync(spec) {
		p.Async = spec.GetAsync()
		if p.Async == nil {
			p.Async = &pb.AsyncSpec{}
		}
	}
	return p, nil
}

// Inputs are what one aggregation starts from.
type Inputs struct {
	// Number is the round (sync) or version (async) being made.
	Number uint32
	// Base is the model the round starts from (the job's current model).
	Base tensor.Set
	// State is the server optimizer's state after the previous round
	// (empty at the first).
	State tensor.Set
	// Updates are the accepted updates, in their committed order.
	Updates []*pb.AcceptedUpdate
}

// Result is an aggregation's outcome.
type Result struct {
	Model   tensor.Set
	State   tensor.Set // the server optimizer's state after this round
	Metrics map[string]float64
	// Scores describe each update against the aggregate, keyed by worker
	// (async: by AsyncKey, as one worker may have several updates).
	Scores []aggregation.Score
}

// Run aggregates. It is deterministic (updates in their given order, a
// fixed summation order), so that any node recomputes a committed round
// bit for bit. It does not check the result is finite: the caller decides
// what a non-finite model means (the coordinator refuses to commit it).
func (p Pipeline) Run(ctx context.Context, in Inputs, src Source) (Result, error) {
	fail := func(err error) (Result, error) { return Result{}, err }
	base := in.Base
	// Updates are read block by block during aggregation, so memory stays
	// near one model plus a block per update, whatever their number.
	var ups []aggregation.Update
	var staleSum float64
	var drifts *Drifts
	if p.Async != nil {
		drifts = NewDrifts(base, p.Async.GetDriftCorrection(), func(v uint32) (tensor.Set, error) { return src.Version(ctx, v) })
	}
	for _, u := range in.Updates {
		v, release, err := src.Update(ctx, u, base.Len())
		if err != nil {
			return fail(fmt.Errorf("update of %s: %w", u.Worker, err))
		}
		defer release()
		key := u.Worker
		if p.Async != nil {
			// An update τ versions stale counts s(τ) times its delta
			// (FedBuff); one worker may have several in a buffer.
			tau := in.Number - 1 - min(u.BaseVersion, in.Number-1)
			staleSum += float64(tau)
			if p.Async.GetDriftCorrection() > 0 && tau > 0 {
				if v, err = drifts.Correct(v, u.BaseVersion); err != nil {
					return fail(fmt.Errorf("update of %s: %w", u.Worker, err))
				}
			}
			v, key = tensor.Scaled(v, float32(StalenessWeight(p.Async, tau))), AsyncKey(u)
		}
		samples := u.Samples
		if p.DP != nil {
			samples = 1 // DP-FedAvg: equal weights, so that one client moves the mean by at most C/n
		}
		ups = append(ups, aggregation.Update{Worker: key, Source: v, Samples: samples})
	}
	res := Result{Metrics: map[string]float64{}}
	if l, ok := TrainLoss(in.Updates); ok {
		res.Metrics["train_loss"] = l
	}
	if p.Async != nil && len(in.Updates) > 0 {
		res.Metrics["mean_staleness"] = staleSum / float64(len(in.Updates))
		if p.Async.GetDriftCorrection() > 0 {
			res.Metrics["mean_drift_removed"] = drifts.Removed() / float64(len(in.Updates))
		}
	}
	if p.LoRAExact {
		next, sc, err := aggregateExact(base, ups)
		if err != nil {
			return fail(err)
		}
		res.Model, res.Scores = next, sc
		return res, nil
	}
	delta, sc, err := p.Rule.Aggregate(ups)
	if err != nil {
		return fail(err)
	}
	if p.DP != nil && !p.DP.Distributed {
		res.Metrics["dp_noise_std"] = addDPNoise(p.DP, p.Seed, in.Number, len(ups), p.Clip, delta)
		if p.DP.AdaptiveClip {
			frac, next := adaptClip(p.DP, p.Seed, in.Number, p.Clip, sc)
			res.Metrics["dp_clip"], res.Metrics["dp_unclipped_fraction"], res.Metrics["dp_clip_next"] = p.Clip, frac, next
		}
	}
	if res.Model, res.State, err = p.Optimizer.Step(base, delta, in.State); err != nil {
		return fail(err)
	}
	res.Scores = sc
	return res, nil
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

// TrainLoss is the sample-weighted mean of the training loss the updates
// report (false when none does).
func TrainLoss(ups []*pb.AcceptedUpdate) (float64, bool) {
	var sum, weight float64
	for _, u := range ups {
		if l, ok := u.Metrics["loss"]; ok {
			sum += l * float64(u.Samples)
			weight += float64(u.Samples)
		}
	}
	return sum / weight, weight > 0
}
