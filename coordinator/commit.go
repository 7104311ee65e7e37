package coordinator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/fedtune/fedtune/aggregation"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
)

// commit aggregates the round's accepted updates onto its base model,
// stores the new model, evaluates it, and commits the round.
func (s *scheduler) commit(ctx context.Context, j *pb.Job, r *pb.Round) error {
	start := time.Now()
	aggStart := time.Now()
	newModel, metrics, scores, state, err := s.c.aggregateRound(ctx, j, r)
	if err != nil {
		return err
	}
	rule := j.Spec.Aggregator
	if rule == "" {
		rule = "fedavg"
	}
	s.c.metrics.aggregation.WithLabelValues(rule).Observe(time.Since(aggStart).Seconds())
	stateHash := ""
	if len(state.Tensors) > 0 {
		sb, err := tensor.Marshal(state, tensor.F32)
		if err != nil {
			return err
		}
		if stateHash, err = s.c.replicate(ctx, sb); err != nil {
			return err
		}
	}
	b, err := tensor.Marshal(newModel, tensor.F32)
	if err != nil {
		return err
	}
	hash, err := s.c.replicate(ctx, b)
	if err != nil {
		return err
	}
	if j.Spec.Evaluate {
		ev, err := s.c.evaluate(ctx, j.Spec, newModel)
		if err != nil {
			return err
		}
		metrics["test_accuracy"], metrics["test_loss"] = ev.Accuracy, ev.Loss
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	commit := &pb.CommitRound{Job: j.Spec.Name, Round: r.Number, Model: hash, Metrics: metrics, Scores: scores, OptimizerState: stateHash}
	if round.IsAsync(j.Spec) {
		commit.Buffered = uint32(len(r.Updates))
	}
	if err := s.c.apply(pb.CommandType_COMMAND_TYPE_COMMIT_ROUND, commit); err != nil {
		return err
	}
	s.c.metrics.roundsCommitted.Inc()
	s.c.metrics.roundDuration.Observe(time.Since(time.Unix(0, r.StartedUnixNano)).Seconds())
	s.log.Info("round committed", "job", j.Spec.Name, "round", r.Number, "updates", len(r.Updates), "model", hash[:12],
		"test_accuracy", metrics["test_accuracy"], "seconds", time.Since(start).Seconds())
	return nil
}

// aggregateRound recomputes round r of job j — its new model from its base
// and accepted updates, with the server optimizer's state after the round
// before and, async, the versions its stale updates were trained from — by
// the round core's pipeline over this node's blobs. It is deterministic,
// so any node can verify a committed round.
func (c *Coordinator) aggregateRound(ctx context.Context, j *pb.Job, r *pb.Round) (tensor.Set, map[string]float64, []*pb.Score, tensor.Set, error) {
	fail := func(err error) (tensor.Set, map[string]float64, []*pb.Score, tensor.Set, error) {
		return tensor.Set{}, nil, nil, tensor.Set{}, err
	}
	p, err := round.NewRoundPipeline(j, r.Number)
	if err != nil {
		return fail(err)
	}
	in := round.Inputs{Number: r.Number, Updates: r.Updates}
	if in.Base, err = c.blobSet(ctx, r.BaseModel); err != nil {
		return fail(fmt.Errorf("base model: %w", err))
	}
	if h := optimizerState(j, r.Number); h != "" && !p.LoRAExact {
		if in.State, err = c.blobSet(ctx, h); err != nil {
			return fail(fmt.Errorf("server optimizer state: %w", err))
		}
	}
	var src round.Source = blobSource{c: c, job: j}
	if r.Secagg != nil {
		// The coordinators never see an update: the pipeline aggregates
		// one, the unmasked mean, with equal weight.
		mean, err := c.secaggMean(ctx, j, r)
		if err != nil {
			return fail(err)
		}
		one := &pb.AcceptedUpdate{Worker: "secagg", Samples: 1}
		if l, ok := round.TrainLoss(r.Updates); ok {
			one.Metrics = map[string]float64{"loss": l} // reported in the clear with each masked update
		}
		in.Updates = []*pb.AcceptedUpdate{one}
		src = meanSource{mean}
	}
	res, err := p.Run(ctx, in, src)
	if err != nil {
		return fail(err)
	}
	if err := checkAggregate(res.Model, res.Metrics); err != nil {
		return fail(err)
	}
	if r.Secagg != nil {
		res.Scores = nil // one mean, no worker to score
		res.Metrics["secagg_survivors"] = float64(len(r.Updates))
	}
	return res.Model, res.Metrics, pbScores(res.Scores, p.Async != nil && !p.LoRAExact), res.State, nil
}

// meanSource serves a SecAgg round's unmasked mean as its one update.
type meanSource struct{ mean tensor.Set }

func (s meanSource) Update(context.Context, *pb.AcceptedUpdate, int) (tensor.Vector, func(), error) {
	return tensor.SetVector(s.mean), func() {}, nil
}

func (s meanSource) Version(context.Context, uint32) (tensor.Set, error) {
	return tensor.Set{}, errors.New("secagg rounds are synchronous")
}

// blobSource is the round core's update source on a coordinator: updates
// and model versions from the blob store (fetched from peers if missing).
type blobSource struct {
	c   *Coordinator
	job *pb.Job
}

func (s blobSource) Update(ctx context.Context, u *pb.AcceptedUpdate, n int) (tensor.Vector, func(), error) {
	return s.c.updateVector(ctx, u, n)
}

func (s blobSource) Version(ctx context.Context, v uint32) (tensor.Set, error) {
	return s.c.blobSet(ctx, round.VersionModel(s.job, v))
}

// ErrNotFinite refuses a round whose new model or metrics hold a NaN or an
// infinity: it is never committed (the replicated state and every model
// stay finite).
var ErrNotFinite = errors.New("aggregate not finite")

// checkAggregate refuses a new model or round metrics that are not finite.
func checkAggregate(next tensor.Set, metrics map[string]float64) error {
	if err := next.CheckFinite(); err != nil {
		return fmt.Errorf("new model: %v: %w", err, ErrNotFinite)
	}
	for _, k := range slices.Sorted(maps.Keys(metrics)) {
		if v := metrics[k]; math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("metric %s = %v: %w", k, v, ErrNotFinite)
		}
	}
	return nil
}

// blobSet reads the blob hash as a parameter set (a model, an optimizer
// state), fetching it from a peer if this node lacks it.
func (c *Coordinator) blobSet(ctx context.Context, hash string) (tensor.Set, error) {
	b, err := c.blob(ctx, hash)
	if err != nil {
		return tensor.Set{}, err
	}
	return tensor.Unmarshal(b)
}

// pbScores converts scores for the ledger, by worker id (an async key
// "worker#task" names its worker).
func pbScores(sc []aggregation.Score, async bool) []*pb.Score {
	scores := make([]*pb.Score, 0, len(sc))
	for _, s := range sc {
		w := s.Worker
		if i := strings.LastIndexByte(w, '#'); async && i > 0 {
			w = w[:i]
		}
		scores = append(scores, &pb.Score{Worker: w, Weight: s.Weight, Norm: s.Norm, Distance: s.Distance, Cosine: s.Cosine, Kept: s.Kept}) // the FSM zeroes non-finite ones
	}
	return scores
}

// updateVector opens an accepted update for streaming: a safetensors
// payload is read from its (hash-checked) blob file, a compressed one is
// decoded block by block from its payload in memory.
func (c *Coordinator) updateVector(ctx context.Context, u *pb.AcceptedUpdate, maxElements int) (tensor.Vector, func(), error) {
	cd, err := codec.New(u.Codec)
	if err != nil {
		return nil, nil, err
	}
	if _, ok := cd.(codec.Safetensors); ok {
		if !c.blobs.Has(u.Blob) {
			if _, err := c.blob(ctx, u.Blob); err != nil { // fetched from a peer and stored
				return nil, nil, err
			}
		}
		f, err := c.blobs.Open(u.Blob)
		if err != nil {
			return nil, nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		v, err := tensor.NewStreamVector(f, st.Size())
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		if v.Len() > maxElements {
			f.Close()
			return nil, nil, fmt.Errorf("%d elements, the model has %d", v.Len(), maxElements)
		}
		return v, func() { f.Close() }, nil
	}
	payload, err := c.blob(ctx, u.Blob)
	if err != nil {
		return nil, nil, err
	}
	v, err := codec.DecodeVector(cd, payload, maxElements)
	if err != nil {
		return nil, nil, err
	}
	return v, func() {}, nil
}

// optimizerState returns the server optimizer state a round starts from:
// the one committed with the previous round.
func optimizerState(j *pb.Job, round uint32) string {
	if round < 2 || int(round-1) > len(j.History) {
		return ""
	}
	return j.History[round-2].OptimizerState
}
