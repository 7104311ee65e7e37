package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/secagg"
	"github.com/fedtune/fedtune/tensor"
)

// SecAgg takes a worker's secure-aggregation message for its round (keys,
// shares or reveals), commits it, and long-polls until the round reaches
// the phase the worker awaits; it answers with what the worker may see of
// the round: everyone's keys, the workers that shared, the shares sealed
// for this worker, the survivors.
func (s *workerService) SecAgg(ctx context.Context, req *pb.SecAggRequest) (*pb.SecAggResponse, error) {
	c := s.c
	if err := c.checkWorkerID(ctx, req.WorkerId); err != nil {
		return nil, err
	}
	if !c.IsLeader() {
		return &pb.SecAggResponse{LeaderAddr: c.leaderGRPC(), NotLeader: true}, nil
	}
	if req.Phase != 0 {
		m := &pb.SecAggMessage{Job: req.Job, Round: req.Round, Attempt: req.Attempt, Worker: req.WorkerId, Phase: req.Phase, Keys: req.Keys, Shares: req.Shares, Reveals: req.Reveals}
		if err := c.acceptSecAgg(m); err != nil && !errors.Is(err, ErrDuplicate) {
			c.log.Warn("secagg message refused", "job", req.Job, "round", req.Round, "worker", req.WorkerId, "phase", req.Phase, "err", err)
			return nil, toStatus(fmt.Errorf("secagg %s/%d phase %d from %s: %w", req.Job, req.Round, req.Phase, req.WorkerId, err))
		}
	}
	if !c.polls.acquire(req.WorkerId) {
		return nil, status.Errorf(codes.ResourceExhausted, "secagg: worker %s already has %d calls waiting", req.WorkerId, MaxPollsPerWorker)
	}
	defer c.polls.release(req.WorkerId)
	wait := min(time.Duration(req.WaitSeconds*float64(time.Second)), MaxPollWait)
	deadline := time.NewTimer(max(wait, 0))
	defer deadline.Stop()
	for {
		changed := c.fsm.Changed()
		resp := c.secaggView(req)
		if resp.Ended || resp.Phase >= req.Await {
			return resp, nil
		}
		select {
		case <-ctx.Done():
			return nil, toStatus(ctx.Err())
		case <-deadline.C:
			return resp, nil
		case <-changed:
			if !c.IsLeader() {
				return &pb.SecAggResponse{LeaderAddr: c.leaderGRPC(), NotLeader: true}, nil
			}
		case <-c.done:
			return nil, status.Error(codes.Unavailable, "coordinator shutting down")
		}
	}
}

// acceptSecAgg checks a worker's message against the open round and
// commits it.
func (c *Coordinator) acceptSecAgg(m *pb.SecAggMessage) error {
	j, ok := c.fsm.Job(m.Job)
	if !ok {
		return fmt.Errorf("job %q: %w", m.Job, ErrUnknownJob)
	}
	r := j.OpenRound
	if j.Status != pb.JobStatus_JOB_STATUS_RUNNING || r == nil || r.Number != m.Round || r.Attempt != m.Attempt || r.Secagg == nil {
		return fmt.Errorf("round %d attempt %d is not open: %w", m.Round, m.Attempt, ErrStaleRound)
	}
	if r.Secagg.Phase != m.Phase {
		return fmt.Errorf("round %d is in phase %d, not %d: %w", m.Round, r.Secagg.Phase, m.Phase, ErrStaleRound)
	}
	if err := round.CheckSecAggMessage(j.Spec, r, m); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return c.apply(pb.CommandType_COMMAND_TYPE_SECAGG_MESSAGE, m)
}

// secaggView is a worker's view of its SecAgg round.
func (c *Coordinator) secaggView(req *pb.SecAggRequest) *pb.SecAggResponse {
	j, ok := c.fsm.Job(req.Job)
	if !ok || j.Status != pb.JobStatus_JOB_STATUS_RUNNING || j.OpenRound == nil || j.OpenRound.Number != req.Round || j.OpenRound.Attempt != req.Attempt || j.OpenRound.Secagg == nil {
		return &pb.SecAggResponse{Ended: true}
	}
	r, sa := j.OpenRound, j.OpenRound.Secagg
	resp := &pb.SecAggResponse{Phase: sa.Phase}
	if sa.Phase >= round.PhaseShares {
		resp.Keys = sa.Keys
	}
	if sa.Phase >= round.PhaseMasked {
		resp.Shared = sa.Shared
		for _, s := range sa.Shares {
			if s.To == req.WorkerId && slices.Contains(sa.Shared, s.From) {
				resp.Inbox = append(resp.Inbox, s)
			}
		}
	}
	if sa.Phase >= round.PhaseUnmask {
		for _, u := range r.Updates {
			resp.Survivors = append(resp.Survivors, u.Worker)
		}
	}
	return resp
}

// stepSecAgg drives an open SecAgg round through its phases.
func (s *scheduler) stepSecAgg(ctx context.Context, j *pb.Job, r *pb.Round, alive map[string]bool, now time.Time) error {
	d := round.DecideSecAgg(j.Spec, r, alive, now)
	switch {
	case d.Action == round.Abort:
		return s.abort(j, r, d.Reason)
	case d.Action == round.Commit:
		err := s.commit(ctx, j, r)
		if errors.Is(err, ErrNotFinite) || errors.Is(err, errUnmask) {
			s.c.metrics.roundsRefused.Inc()
			return s.abort(j, r, fmt.Sprintf("not committed: %v", err))
		}
		if err != nil {
			return fmt.Errorf("commit round %d: %w", r.Number, err)
		}
		delete(s.attempts, j.Spec.Name)
	case d.Next != 0:
		timeout := time.Duration(j.Spec.Secagg.GetPhaseTimeoutSeconds()) * time.Second
		if err := s.c.apply(pb.CommandType_COMMAND_TYPE_SECAGG_PHASE, &pb.SecAggPhase{Job: j.Spec.Name, Round: r.Number, Attempt: r.Attempt,
			Phase: d.Next, DeadlineUnixNano: now.Add(timeout).UnixNano()}); err != nil {
			return fmt.Errorf("secagg phase %d of round %d: %w", d.Next, r.Number, err)
		}
		s.log.Info("secagg phase", "job", j.Spec.Name, "round", r.Number, "phase", d.Next)
	}
	return nil
}

// errUnmask marks a SecAgg round whose sum could not be recovered from
// what was committed (malformed masked updates, shares that do not add
// up): the round is planned again, never committed with a wrong sum.
var errUnmask = errors.New("secagg: cannot unmask")

// secaggMean recovers round r's mean update from its masked updates and
// revealed shares.
func (c *Coordinator) secaggMean(ctx context.Context, j *pb.Job, r *pb.Round) (tensor.Set, error) {
	layout, err := c.modelLayout(j.Spec)
	if err != nil {
		return tensor.Set{}, err
	}
	n := layout.Len()
	inputs := make(map[string][]uint32, len(r.Updates))
	for _, u := range r.Updates {
		payload, err := c.blob(ctx, u.Blob)
		if err != nil {
			return tensor.Set{}, fmt.Errorf("masked update of %s: %w", u.Worker, err)
		}
		if inputs[u.Worker], err = secagg.DecodeMasked(payload, n); err != nil {
			return tensor.Set{}, fmt.Errorf("%w: masked update of %s: %v", errUnmask, u.Worker, err)
		}
	}
	sa := r.GetSecagg()
	sum, err := secagg.Unmask(round.SecAggParams(j.Spec, r), sa.GetKeys(), sa.GetShared(), inputs, sa.GetReveals())
	if err != nil {
		return tensor.Set{}, fmt.Errorf("%w: %w", errUnmask, err)
	}
	out, flat := layout.Layout().Zeros()
	copy(flat, round.SecAggMean(sum, sa.GetFracBits(), len(inputs)))
	return out, nil
}

// checkMasked checks a masked update: the round is collecting them, the
// worker's shares were delivered, and the payload is the model's size in
// 32-bit fixed point (its values are uniformly random to anyone without
// the masks: there is nothing else to check).
func (c *Coordinator) checkMasked(j *pb.Job, r *pb.Round, req *pb.SubmitUpdateRequest) error {
	if r.Secagg.Phase != round.PhaseMasked || r.Attempt != req.Attempt {
		return fmt.Errorf("round %d attempt %d is in secagg phase %d, not collecting masked updates: %w", r.Number, r.Attempt, r.Secagg.Phase, ErrStaleRound)
	}
	if _, ok := slices.BinarySearch(r.Secagg.Shared, req.WorkerId); !ok {
		return fmt.Errorf("worker %s's shares were not delivered this round: %w", req.WorkerId, ErrNotSelected)
	}
	if req.Codec != round.CodecSecAgg {
		return status.Errorf(codes.InvalidArgument, "codec %q, a secagg round takes %q", req.Codec, round.CodecSecAgg)
	}
	if req.Samples == 0 {
		return status.Error(codes.InvalidArgument, "samples is 0: an update must say how many examples it trained on")
	}
	if err := pb.CheckMetrics(req.Metrics); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	layout, err := c.modelLayout(j.Spec)
	if err != nil {
		return err
	}
	if want := 4 * layout.Len(); len(req.Payload) != want {
		return status.Errorf(codes.InvalidArgument, "masked update of %d bytes, the model needs %d", len(req.Payload), want)
	}
	return nil
}
