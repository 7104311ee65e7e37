package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// ReportFailure records that a selected worker's task failed, and why, in
// the open round (committed, so every coordinator's job status shows it).
// The round goes on without the worker.
func (s *workerService) ReportFailure(ctx context.Context, req *pb.ReportFailureRequest) (*pb.ReportFailureResponse, error) {
	c := s.c
	if err := c.checkWorkerID(ctx, req.WorkerId); err != nil {
		return nil, err
	}
	if !c.IsLeader() {
		return &pb.ReportFailureResponse{LeaderAddr: c.leaderGRPC(), NotLeader: true}, nil
	}
	f := &pb.TaskFailure{Worker: req.WorkerId, Kind: req.Kind, Reason: req.Reason}
	if err := round.NormalizeFailure(f); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	j, ok := c.fsm.Job(req.Job)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "failure report: job %q: %v", req.Job, ErrUnknownJob)
	}
	if round.IsAsync(j.Spec) {
		// an async job's tasks are withdrawn at their deadline; its failures are logged and counted only
		c.metrics.taskFailures.WithLabelValues(req.Job, f.Kind).Inc()
		c.log.Warn("task failed", "job", req.Job, "worker", req.WorkerId, "kind", f.Kind, "reason", f.Reason)
		return &pb.ReportFailureResponse{}, nil
	}
	err := c.apply(pb.CommandType_COMMAND_TYPE_RECORD_FAILURE, &pb.RecordFailure{Job: req.Job, Round: req.Round, Attempt: req.Attempt, Failure: f})
	switch {
	case errors.Is(err, ErrDuplicate):
		return &pb.ReportFailureResponse{}, nil
	case err != nil:
		return nil, toStatus(fmt.Errorf("failure report from %s: %w", req.WorkerId, err))
	}
	c.metrics.taskFailures.WithLabelValues(req.Job, f.Kind).Inc()
	c.log.Warn("task failed", "job", req.Job, "round", req.Round, "worker", req.WorkerId, "kind", f.Kind, "reason", f.Reason)
	return &pb.ReportFailureResponse{}, nil
}

// liveWorkers returns the rostered workers this node's gossip sees alive:
// what conditions counts, read once per status answer or dashboard state
// rather than once per job.
func (c *Coordinator) liveWorkers() []*pb.WorkerInfo {
	alive := map[string]bool{}
	for _, m := range c.gossip.WithRole(gossip.RoleWorker) {
		alive[m.Name] = true
	}
	var live []*pb.WorkerInfo
	for _, w := range c.fsm.Workers() {
		if alive[w.Id] {
			live = append(live, w)
		}
	}
	return live
}

// conditions says why a running job is not progressing, if it is not, from
// this node's replica and its live workers (liveWorkers): no live worker
// matching its selector, or the workers an open round waits for and those
// that failed.
func conditions(j *pb.Job, live []*pb.WorkerInfo, now time.Time) []string {
	if j.Status != pb.JobStatus_JOB_STATUS_RUNNING {
		return nil
	}
	matching := 0
	for _, w := range live {
		if round.Matches(j.Spec.Selector, w.Labels) && round.Allowed(j.Spec, w.Id) {
			matching++
		}
	}
	var out []string
	need := 1
	if !round.IsAsync(j.Spec) {
		need = max(int(j.Spec.GetMinUpdates()), 1)
	}
	if sel := describeSelector(j.Spec); matching < need {
		switch {
		case sel == "":
			out = append(out, fmt.Sprintf("%d workers alive, %d needed", len(live), need))
		case matching == 0:
			out = append(out, fmt.Sprintf("no worker matches selector %s; %d workers alive", sel, len(live)))
		default:
			out = append(out, fmt.Sprintf("%d workers match selector %s, %d needed; %d workers alive", matching, sel, need, len(live)))
		}
	}
	r := j.OpenRound
	if r == nil {
		return out
	}
	done := map[string]bool{}
	for _, u := range r.Updates {
		done[u.Worker] = true
	}
	var failed []string
	for _, f := range r.Failures {
		done[f.Worker] = true
		failed = append(failed, fmt.Sprintf("%s (%s: %s)", f.Worker, f.Kind, f.Reason))
	}
	var waiting []string
	for _, w := range r.Selected {
		if !done[w] {
			waiting = append(waiting, w)
		}
	}
	left := time.Duration(r.DeadlineUnixNano - now.UnixNano()).Round(time.Second)
	if sa := r.Secagg; sa != nil && sa.Phase > round.PhaseKeys {
		// past training: what the protocol's phase still waits for
		left := time.Duration(sa.PhaseDeadlineUnixNano - now.UnixNano()).Round(time.Second)
		if w := round.SecAggWaiting(r); len(w) > 0 {
			out = append(out, fmt.Sprintf("round %d, secure aggregation (%s), waiting for %s; phase deadline in %v", r.Number, round.SecAggPhaseNames[sa.Phase], strings.Join(w, ", "), max(left, 0)))
		}
		return out
	}
	if len(failed) > 0 {
		out = append(out, fmt.Sprintf("round %d: %d of %d selected workers failed: %s", r.Number, len(failed), len(r.Selected), strings.Join(failed, "; ")))
	}
	if len(waiting) > 0 {
		out = append(out, fmt.Sprintf("round %d waiting for %s; deadline in %v", r.Number, strings.Join(waiting, ", "), max(left, 0)))
	} else if len(r.Updates) < max(int(j.Spec.GetMinUpdates()), 1) {
		out = append(out, fmt.Sprintf("round %d: %d updates, fewer than the %d needed; planned again at its deadline in %v", r.Number, len(r.Updates), j.Spec.GetMinUpdates(), max(left, 0)))
	}
	return out
}

// describeSelector renders a job's selector and allow list: "lang=sw",
// "region=eu, device=gpu and allow w1, w2".
func describeSelector(spec *pb.JobSpec) string {
	var kv []string
	for k, v := range spec.Selector {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	s := strings.Join(kv, ", ")
	if len(spec.Allow) > 0 {
		allow := slices.Clone(spec.Allow)
		sort.Strings(allow)
		if s != "" {
			s += " and "
		}
		s += "allow " + strings.Join(allow, ", ")
	}
	return s
}
