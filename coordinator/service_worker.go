package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
)

// MaxPollWait bounds how long PollTask holds a call.
const MaxPollWait = 30 * time.Second

// toStatus maps FSM and validation errors to gRPC status codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, ErrUnknownJob), errors.Is(err, ErrBlobNotFound):
		code = codes.NotFound
	case errors.Is(err, ErrStaleRound), errors.Is(err, ErrJobNotActive), errors.Is(err, ErrRoundOpen), errors.Is(err, round.ErrTooStale):
		code = codes.FailedPrecondition
	case errors.Is(err, ErrNotSelected):
		code = codes.PermissionDenied
	case errors.Is(err, ErrJobExists):
		code = codes.AlreadyExists
	case errors.Is(err, ErrBlobCorrupt), errors.Is(err, tensor.ErrShape), errors.Is(err, tensor.ErrNotFinite), errors.Is(err, tensor.ErrSafetensors):
		code = codes.InvalidArgument
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = codes.Canceled
	}
	return status.Error(code, err.Error())
}

type workerService struct {
	rpcpb.UnimplementedWorkerServer
	c *Coordinator
}

// PollTask returns the open round this worker is selected for and has not
// yet reported in, waiting up to req.WaitSeconds for one. A follower answers
// at once with the leader's address.
func (s *workerService) PollTask(ctx context.Context, req *pb.PollTaskRequest) (*pb.PollTaskResponse, error) {
	if req.WorkerId == "" {
		return nil, status.Error(codes.InvalidArgument, "poll task: worker_id is empty")
	}
	if err := s.c.checkWorkerID(ctx, req.WorkerId); err != nil {
		return nil, err
	}
	if err := gossip.CheckLabels(req.Labels); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "poll task: %v", err)
	}
	if id := callerIdentity(ctx); s.c.cfg.TLS != nil && id.Role == pki.RoleWorker {
		s.c.proofs.record(id.Name, req.Labels) // its certificate proved the name: it may be rostered
	}
	if !s.c.polls.acquire(req.WorkerId) {
		// A waiting poll wakes at every change of the state; thousands of
		// them from one certificate once starved Raft's heartbeats.
		return nil, status.Errorf(codes.ResourceExhausted, "poll task: worker %s already has %d polls waiting", req.WorkerId, MaxPollsPerWorker)
	}
	defer s.c.polls.release(req.WorkerId)
	wait := min(time.Duration(req.WaitSeconds*float64(time.Second)), MaxPollWait)
	deadline := time.NewTimer(max(wait, 0))
	defer deadline.Stop()
	// Every answer carries the cluster's gossip keyring (once changed at
	// run time), so workers follow a rotation; a change ends the wait.
	keys := s.c.fsm.Keyring()
	for {
		if !s.c.IsLeader() {
			return &pb.PollTaskResponse{LeaderAddr: s.c.leaderGRPC(), NotLeader: true}, nil
		}
		changed := s.c.fsm.Changed()
		if t := s.c.taskFor(req.WorkerId, req.Done); t != nil {
			// Answer only as the leader of now, never from a deposed
			// leader's memory.
			if err := s.c.raft.VerifyLeader().Error(); err != nil {
				return &pb.PollTaskResponse{LeaderAddr: s.c.leaderGRPC(), NotLeader: true}, nil
			}
			return &pb.PollTaskResponse{Task: t, GossipKeys: s.c.fsm.Keyring()}, nil
		}
		if k := s.c.fsm.Keyring(); !slices.Equal(k, keys) {
			return &pb.PollTaskResponse{GossipKeys: k}, nil
		}
		select {
		case <-ctx.Done():
			return nil, toStatus(ctx.Err())
		case <-deadline.C:
			return &pb.PollTaskResponse{GossipKeys: keys}, nil
		case <-changed:
		case <-s.c.done:
			return nil, status.Error(codes.Unavailable, "coordinator shutting down")
		}
	}
}

// taskFor finds an open round selecting worker that has no update from it.
func (c *Coordinator) taskFor(worker string, done []string) *pb.Task {
	for _, j := range c.fsm.RunningJobs() {
		if round.IsAsync(j.Spec) {
			if t := asyncTask(j, worker, done); t != nil {
				c.addModel(j, t)
				return t
			}
			continue
		}
		r := j.OpenRound
		if r == nil {
			continue
		}
		if _, ok := slices.BinarySearch(r.Selected, worker); !ok {
			continue
		}
		if r.Secagg != nil && r.Secagg.Phase != round.PhaseKeys {
			continue // too late to join the round's key exchange
		}
		if slices.ContainsFunc(r.Updates, func(u *pb.AcceptedUpdate) bool { return u.Worker == worker }) {
			continue
		}
		if slices.Contains(done, pb.AttemptKey(j.Spec.Name, r.Number, r.Attempt)) {
			continue
		}
		size, _ := c.blobs.Size(r.BaseModel)
		t := &pb.Task{
			Job:              j.Spec.Name,
			Round:            r.Number,
			Base:             &pb.ModelRef{Hash: r.BaseModel, Size: uint64(size)},
			Model:            j.Spec.Model,
			Dataset:          j.Spec.Dataset,
			Train:            j.Spec.Train,
			Codec:            j.Spec.Codec,
			DeadlineUnixNano: r.DeadlineUnixNano,
			Seed:             round.TaskSeed(j.Spec.Seed, r.Number, r.Attempt),
			Attempt:          r.Attempt,
		}
		if dp := j.Spec.Dp; dp.GetDistributed() {
			t.DpClip, t.DpNoiseStd = dp.ClipNorm, round.WorkerNoiseStd(dp, len(r.Selected))
		}
		if sa := j.Spec.Secagg; sa != nil {
			t.Secagg = &pb.SecAggTask{Neighbors: sa.Neighbors, Threshold: sa.Threshold, ClipRange: sa.ClipRange, FracBits: r.Secagg.FracBits, GraphSeed: j.Spec.Seed}
		}
		c.addModel(j, t)
		return t
	}
	return c.evalTaskFor(worker, done)
}

// pollLimits counts each worker's waiting PollTask calls.
type pollLimits struct {
	mu sync.Mutex
	by map[string]int
}

func (p *pollLimits) acquire(worker string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.by == nil {
		p.by = map[string]int{}
	}
	if p.by[worker] >= MaxPollsPerWorker {
		return false
	}
	p.by[worker]++
	return true
}

func (p *pollLimits) release(worker string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.by[worker]--; p.by[worker] <= 0 {
		delete(p.by, worker)
	}
}

// asyncTask returns the task of worker's assignment in an async job, if it
// has one it has not finished. Its round is the version it trains from,
// its attempt the assignment's task id.
func asyncTask(j *pb.Job, worker string, done []string) *pb.Task {
	for _, a := range j.Async.GetAssignments() {
		if a.Worker != worker || slices.Contains(done, pb.AttemptKey(j.Spec.Name, a.Version, uint32(a.Task))) {
			continue
		}
		return &pb.Task{Job: j.Spec.Name, Round: a.Version, Base: &pb.ModelRef{Hash: a.BaseModel}, Model: j.Spec.Model, Dataset: j.Spec.Dataset,
			Train: j.Spec.Train, Codec: j.Spec.Codec, DeadlineUnixNano: a.DeadlineUnixNano, Seed: round.AsyncTaskSeed(j.Spec.Seed, a.Task), Attempt: uint32(a.Task)}
	}
	return nil
}

// addModel gives a task its model's configuration and a text job's
// tokenizer, and a LoRA job's task its frozen base and adapter shape.
func (c *Coordinator) addModel(j *pb.Job, t *pb.Task) {
	t.ModelConfig, t.Tokenizer, t.SeqLen = j.Spec.ModelConfig, j.Spec.Tokenizer, j.Spec.SeqLen
	if t.Base != nil && t.Base.Size == 0 {
		size, _ := c.blobs.Size(t.Base.Hash)
		t.Base.Size = uint64(size)
	}
	if l := j.Spec.Lora; l != nil {
		fsize, _ := c.blobs.Size(j.Spec.BaseModel)
		t.Frozen = &pb.ModelRef{Hash: j.Spec.BaseModel, Size: uint64(fsize)}
		t.Lora = &pb.LoRASpec{Rank: l.Rank, Alpha: l.Alpha, TargetModules: l.TargetModules}
	}
}

// SubmitUpdate validates a worker's update, stores it and commits
// AcceptUpdate. Updates are idempotent by (job, round, worker): a repeat is
// answered accepted and duplicate, and counted once.
func (s *workerService) SubmitUpdate(ctx context.Context, req *pb.SubmitUpdateRequest) (*pb.SubmitUpdateResponse, error) {
	c := s.c
	if err := c.checkWorkerID(ctx, req.WorkerId); err != nil {
		return nil, err
	}
	if !c.IsLeader() {
		return &pb.SubmitUpdateResponse{LeaderAddr: c.leaderGRPC(), NotLeader: true}, nil
	}
	if ok, wait := c.submits.allow(req.WorkerId); !ok {
		c.metrics.updatesRejected.WithLabelValues("RateLimited").Inc()
		// RetryInfo tells the worker this refusal is temporary: it keeps
		// the update and sends it again after the delay.
		st, err := status.New(codes.ResourceExhausted, fmt.Sprintf("worker %s: more than %g updates per second (burst %d); retry in %v",
			req.WorkerId, c.cfg.SubmitRate, c.cfg.SubmitBurst, wait.Round(time.Millisecond))).WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)})
		if err != nil {
			return nil, status.Errorf(codes.ResourceExhausted, "worker %s: more than %g updates per second", req.WorkerId, c.cfg.SubmitRate)
		}
		return nil, st.Err()
	}
	if err := c.validateUpdate(req); err != nil {
		if errors.Is(err, ErrDuplicate) {
			return &pb.SubmitUpdateResponse{Accepted: true, Duplicate: true}, nil
		}
		st := toStatus(fmt.Errorf("update %s/%d from %s: %w", req.Job, req.Round, req.WorkerId, err))
		c.metrics.updatesRejected.WithLabelValues(status.Code(st).String()).Inc()
		c.log.Warn("update refused", "job", req.Job, "round", req.Round, "worker", req.WorkerId, "err", err)
		return nil, st
	}
	hash, err := c.replicate(ctx, req.Payload)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "update %s/%d from %s: %v", req.Job, req.Round, req.WorkerId, err)
	}
	u := &pb.AcceptedUpdate{Worker: req.WorkerId, Blob: hash, Samples: req.Samples, Metrics: req.Metrics, Codec: req.Codec}
	if j, ok := c.fsm.Job(req.Job); ok {
		if limit := round.SampleCap(j.Spec); u.Samples > limit {
			// The claim is the update's FedAvg weight: a worker may not
			// outweigh the rest by claiming more than the job allows.
			c.log.Warn("update's samples capped", "job", req.Job, "round", req.Round, "worker", req.WorkerId, "claimed", u.Samples, "cap", limit)
			c.metrics.samplesCapped.Inc()
			u.Samples = limit
		}
		if round.IsAsync(j.Spec) {
			u.Task, u.BaseVersion = uint64(req.Attempt), req.Round
		}
	}
	err = c.apply(pb.CommandType_COMMAND_TYPE_ACCEPT_UPDATE, &pb.AcceptUpdate{Job: req.Job, Round: req.Round, Update: u})
	if errors.Is(err, ErrDuplicate) {
		return &pb.SubmitUpdateResponse{Accepted: true, Duplicate: true}, nil
	}
	if err != nil {
		return nil, toStatus(fmt.Errorf("update %s/%d from %s: %w", req.Job, req.Round, req.WorkerId, err))
	}
	c.metrics.updatesAccepted.Inc()
	c.metrics.updateBytes.WithLabelValues(req.Codec).Add(float64(len(req.Payload)))
	c.log.Info("update accepted", "job", req.Job, "round", req.Round, "worker", req.WorkerId, "bytes", len(req.Payload), "samples", req.Samples)
	return &pb.SubmitUpdateResponse{Accepted: true}, nil
}

// validateUpdate checks an update against the replicated state and the
// job's model: round open, worker selected, same base, codec, shapes and
// finite values. It returns ErrDuplicate for an update already accepted.
func (c *Coordinator) validateUpdate(req *pb.SubmitUpdateRequest) error {
	if req.WorkerId == "" {
		return status.Error(codes.InvalidArgument, "worker_id is empty")
	}
	j, ok := c.fsm.Job(req.Job)
	if !ok {
		return fmt.Errorf("job %q: %w", req.Job, ErrUnknownJob)
	}
	if j.Status != pb.JobStatus_JOB_STATUS_RUNNING {
		return fmt.Errorf("job is %s: %w", j.Status, ErrJobNotActive)
	}
	if round.IsAsync(j.Spec) {
		if err := (round.Job{Job: j}).CheckAsyncUpdate(req.WorkerId, req.Round, uint64(req.Attempt)); err != nil {
			return err
		}
		if a, _ := round.Assignment(j, uint64(req.Attempt)); req.BaseModel != a.BaseModel {
			return fmt.Errorf("trained from model %.12s, task %d is from %.12s: %w", req.BaseModel, req.Attempt, a.BaseModel, ErrStaleRound)
		}
		return c.checkPayload(j, req)
	}
	for _, h := range j.History {
		if h.Number == req.Round {
			if slices.Contains(h.Workers, req.WorkerId) {
				return ErrDuplicate
			}
			return fmt.Errorf("round %d was committed already: %w", req.Round, ErrStaleRound)
		}
	}
	r := j.OpenRound
	if r == nil || r.Number != req.Round {
		return fmt.Errorf("round %d is not open: %w", req.Round, ErrStaleRound)
	}
	if _, ok := slices.BinarySearch(r.Selected, req.WorkerId); !ok {
		return ErrNotSelected
	}
	if slices.ContainsFunc(r.Updates, func(u *pb.AcceptedUpdate) bool { return u.Worker == req.WorkerId }) {
		return ErrDuplicate
	}
	if req.BaseModel != r.BaseModel {
		return fmt.Errorf("trained from model %.12s, round %d starts from %.12s: %w", req.BaseModel, r.Number, r.BaseModel, ErrStaleRound)
	}
	if r.Secagg != nil {
		return c.checkMasked(j, r, req)
	}
	return c.checkPayload(j, req)
}

// checkPayload checks an update's payload against the job: codec, sample
// count, size, layout, finite values, norm bound.
func (c *Coordinator) checkPayload(j *pb.Job, req *pb.SubmitUpdateRequest) error {
	if req.Codec != j.Spec.Codec {
		return status.Errorf(codes.InvalidArgument, "codec %q, job uses %q", req.Codec, j.Spec.Codec)
	}
	if req.Samples == 0 {
		return status.Error(codes.InvalidArgument, "samples is 0: an update must say how many examples it trained on")
	}
	if err := pb.CheckMetrics(req.Metrics); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if int64(len(req.Payload)) > c.cfg.MaxBlobBytes {
		return status.Errorf(codes.ResourceExhausted, "payload of %d bytes exceeds the limit of %d", len(req.Payload), c.cfg.MaxBlobBytes)
	}
	cd, err := codec.New(req.Codec)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	layout, err := c.modelLayout(j.Spec)
	if err != nil {
		return err
	}
	// No valid encoding of an update is larger than the model in fp32 plus
	// a header: anything bigger is refused before it is parsed.
	if limit := 4*layout.Len() + 1<<16; len(req.Payload) > limit {
		what := j.Spec.Model
		if l := j.Spec.Lora; l != nil {
			what = fmt.Sprintf("update of %s's rank-%d adapters", j.Spec.Model, l.Rank)
		}
		return status.Errorf(codes.ResourceExhausted, "payload of %d bytes is larger than any %s update can be (%d)", len(req.Payload), what, limit)
	}
	delta, err := codec.DecodeLimit(cd, req.Payload, layout.Len())
	if err != nil {
		return err
	}
	if err := tensor.SameLayout(delta, layout); err != nil {
		if j.Spec.Lora != nil {
			return fmt.Errorf("update does not fit the rank-%d adapters of model %s: %w", j.Spec.Lora.Rank, j.Spec.Model, err)
		}
		return fmt.Errorf("update does not fit model %s: %w", j.Spec.Model, err)
	}
	if err := delta.CheckFinite(); err != nil {
		return err
	}
	baseNorm, err := c.modelNorm(req.BaseModel)
	if err != nil {
		return fmt.Errorf("base model %.12s: %w", req.BaseModel, err)
	}
	if b, n := round.UpdateNormBound(j.Spec, baseNorm), delta.Norm(); !(n <= b) {
		return status.Errorf(codes.InvalidArgument, "update norm %.4g exceeds the job's bound %.4g (max_update_norm %g, max_update_ratio %g × base model norm %.4g)",
			n, b, j.Spec.MaxUpdateNorm, j.Spec.MaxUpdateRatio, baseNorm)
	}
	return nil
}

// modelNorm returns the L2 norm of the model stored under hash, cached:
// every update to a version is bounded relative to it.
func (c *Coordinator) modelNorm(hash string) (float64, error) {
	c.norms.mu.Lock()
	n, ok := c.norms.by[hash]
	c.norms.mu.Unlock()
	if ok {
		return n, nil
	}
	s, err := c.blobSet(context.Background(), hash)
	if err != nil {
		return 0, err
	}
	n = s.Norm()
	c.norms.mu.Lock()
	defer c.norms.mu.Unlock()
	if c.norms.by == nil || len(c.norms.by) >= 64 {
		c.norms.by = map[string]float64{} // versions move on; old ones are rarely asked again
	}
	c.norms.by[hash] = n
	return n, nil
}
