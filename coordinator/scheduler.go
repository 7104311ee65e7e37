package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/coordinator/roster"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
)

// leaderLoop is the leader's own work (the shape of Consul's leader.go):
// after a barrier, so the FSM holds every entry earlier leaders committed,
// it reconciles gossip into the roster and drives each running job's rounds.
// It stops the moment ctx is cancelled (leadership lost).
func (c *Coordinator) leaderLoop(ctx context.Context) {
	// Every line of this leadership carries its term, so that a commit
	// logged after "leadership lost" on the same node is told apart.
	log := c.log.With("role", "leader", "term", c.raft.CurrentTerm())
	if err := c.raft.Barrier(30 * time.Second).Error(); err != nil {
		log.Error("barrier failed; not scheduling", "err", err)
		return
	}
	c.mu.Lock()
	lost := c.leaderLostAt
	c.leaderLostAt = time.Time{}
	c.mu.Unlock()
	if !lost.IsZero() {
		c.metrics.failover.Observe(time.Since(lost).Seconds())
		// Since this node last heard from a leader: the failover when the
		// old leader just died; longer when this node was cut off.
		log.Info("leading: scheduler started", "since_last_leader", time.Since(lost).Round(time.Millisecond))
	} else {
		log.Info("leading: scheduler started")
	}
	s := &scheduler{c: c, log: log, attempts: map[string]uint32{}, waitLogged: map[string]bool{}, roster: roster.New(c.cfg.WorkerGrace),
		servers: &serverReconciler{c: c, goneSince: map[string]time.Time{}, caughtUp: map[string]int{}}}
	t := time.NewTicker(c.cfg.TickInterval)
	defer t.Stop()
	for {
		s.tick(ctx)
		select {
		case <-ctx.Done():
			log.Info("leadership lost: scheduler stopped")
			return
		case <-t.C:
		case <-c.fsm.Changed():
		}
	}
}

// scheduler holds the leader's in-memory bookkeeping; none of it is needed
// for correctness after a failover (a new leader starts afresh).
type scheduler struct {
	c          *Coordinator
	log        *slog.Logger
	attempts   map[string]uint32 // job -> aborted attempts of its current round
	waitLogged map[string]bool
	roster     *roster.Reconciler // workers: gossip -> roster commands
	servers    *serverReconciler  // coordinators: gossip -> Raft configuration
}

func (s *scheduler) tick(ctx context.Context) {
	s.servers.reconcile(ctx)
	alive := s.reconcile()
	for _, j := range s.c.fsm.RunningJobs() {
		if ctx.Err() != nil {
			return
		}
		if err := s.step(ctx, j, alive); err != nil && ctx.Err() == nil {
			s.log.Error("scheduling failed", "job", j.Spec.Name, "err", err)
		}
	}
}

func (s *scheduler) step(ctx context.Context, j *pb.Job, alive map[string]*pb.WorkerInfo) error {
	if round.IsAsync(j.Spec) {
		return s.stepAsync(ctx, j, alive)
	}
	name := j.Spec.Name
	now := s.c.clock.Now()
	r := j.OpenRound
	if r == nil {
		live := s.withLoad(name, alive)
		plan, err := round.PlanRound(j, live, now, s.attempts[name])
		if errors.Is(err, round.ErrNotEnoughWorkers) {
			if !s.waitLogged[name] {
				s.log.Info("waiting for workers", "job", name, "err", err)
				s.waitLogged[name] = true
			}
			return nil
		}
		if err != nil {
			return err
		}
		s.waitLogged[name] = false
		if err := s.c.apply(pb.CommandType_COMMAND_TYPE_START_ROUND, &pb.StartRound{Job: name, Round: plan}); err != nil {
			return fmt.Errorf("start round %d: %w", plan.Number, err)
		}
		s.c.metrics.roundsStarted.Inc()
		s.log.Info("round started", "job", name, "round", plan.Number, "selected", len(plan.Selected), "deadline", time.Unix(0, plan.DeadlineUnixNano).Format(time.TimeOnly))
		return nil
	}
	isAlive := make(map[string]bool, len(alive))
	for id := range alive {
		isAlive[id] = true
	}
	switch round.DecideRound(j.Spec, r, isAlive, now) {
	case round.Commit:
		err := s.commit(ctx, j, r)
		if errors.Is(err, ErrNotFinite) {
			// The same updates would give the same aggregate: the round
			// is planned again (its workers train afresh), with the
			// reason in the log and the metrics.
			s.c.metrics.roundsRefused.Inc()
			return s.abort(j, r, fmt.Sprintf("not committed: %v", err))
		}
		if err != nil {
			return fmt.Errorf("commit round %d: %w", r.Number, err)
		}
		delete(s.attempts, name)
	case round.Abort:
		return s.abort(j, r, fmt.Sprintf("%d of %d updates by the deadline", len(r.Updates), max(j.Spec.MinUpdates, 1)))
	}
	return nil
}

// abort ends round r of job j uncommitted and lets it be planned again.
func (s *scheduler) abort(j *pb.Job, r *pb.Round, reason string) error {
	name := j.Spec.Name
	if err := s.c.apply(pb.CommandType_COMMAND_TYPE_ABORT_ROUND, &pb.AbortRound{Job: name, Round: r.Number, Reason: reason}); err != nil {
		return fmt.Errorf("abort round %d: %w", r.Number, err)
	}
	s.attempts[name]++
	s.c.metrics.roundsAborted.Inc()
	s.log.Warn("round rescheduled", "job", name, "round", r.Number, "reason", reason)
	return nil
}

// stepAsync drives an async job: a new version as soon as the buffer holds
// buffer_size updates, then assignments for free workers.
func (s *scheduler) stepAsync(ctx context.Context, j *pb.Job, alive map[string]*pb.WorkerInfo) error {
	name, k := j.Spec.Name, int(j.Spec.Async.GetBufferSize())
	if buf := j.Async.GetBuffer(); len(buf) >= k {
		r := &pb.Round{Number: round.Version(j) + 1, BaseModel: j.CurrentModel, Updates: buf[:k], StartedUnixNano: j.Async.VersionStartedUnixNano}
		err := s.commit(ctx, j, r)
		if errors.Is(err, ErrNotFinite) {
			// An async buffer cannot be trained again: the job stops with
			// the reason rather than commit a broken version.
			s.c.metrics.roundsRefused.Inc()
			s.log.Error("async version not committed; job failed", "job", name, "version", r.Number, "err", err)
			return s.c.apply(pb.CommandType_COMMAND_TYPE_FINISH_JOB, &pb.FinishJob{Job: name, Status: pb.JobStatus_JOB_STATUS_FAILED,
				Error: fmt.Sprintf("version %d not committed: %v", r.Number, err)})
		}
		if err != nil {
			return fmt.Errorf("commit version %d: %w", r.Number, err)
		}
		return nil // assignments on the next tick, from the new version
	}
	assign, release := round.PlanAssignments(j, s.withLoad(name, alive), s.c.clock.Now())
	if len(assign)+len(release) == 0 {
		return nil
	}
	if err := s.c.apply(pb.CommandType_COMMAND_TYPE_ASSIGN_TASKS, &pb.AssignTasks{Job: name, Assign: assign, Release: release, Reason: "past the deadline, too stale, or the worker left"}); err != nil {
		return fmt.Errorf("assign tasks: %w", err)
	}
	if len(release) > 0 {
		s.c.metrics.asyncTasks.WithLabelValues("withdrawn").Add(float64(len(release)))
		s.log.Warn("assignments withdrawn", "job", name, "version", round.Version(j), "tasks", release)
	}
	for _, a := range assign {
		s.log.Info("task assigned", "job", name, "version", a.Version, "round", a.Version, "worker", a.Worker, "task", a.Task)
	}
	s.c.metrics.asyncTasks.WithLabelValues("assigned").Add(float64(len(assign)))
	return nil
}

// withLoad returns the live workers with idle=false on those still
// training for another job (an open round or an async assignment), so that
// planning prefers workers with nothing to do.
func (s *scheduler) withLoad(job string, alive map[string]*pb.WorkerInfo) []*pb.WorkerInfo {
	training := map[string]bool{}
	for _, j := range s.c.fsm.RunningJobs() {
		if j.Spec.Name == job {
			continue
		}
		for _, a := range j.Async.GetAssignments() {
			training[a.Worker] = true
		}
		r := j.OpenRound
		if r == nil {
			continue
		}
		for _, id := range r.Selected {
			if !slices.ContainsFunc(r.Updates, func(u *pb.AcceptedUpdate) bool { return u.Worker == id }) {
				training[id] = true
			}
		}
	}
	live := make([]*pb.WorkerInfo, 0, len(alive))
	for id, w := range alive {
		if training[id] && !round.Busy(w.Labels) {
			w = proto.Clone(w).(*pb.WorkerInfo)
			if w.Labels == nil {
				w.Labels = map[string]string{}
			}
			w.Labels["idle"] = "false"
		}
		live = append(live, w)
	}
	return live
}

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
	p, err := round.NewPipeline(j.Spec)
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
	res, err := p.Run(ctx, in, blobSource{c: c, job: j})
	if err != nil {
		return fail(err)
	}
	if err := checkAggregate(res.Model, res.Metrics); err != nil {
		return fail(err)
	}
	return res.Model, res.Metrics, pbScores(res.Scores, p.Async != nil && !p.LoRAExact), res.State, nil
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
