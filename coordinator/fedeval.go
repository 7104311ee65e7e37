package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// Federated evaluation (a job with evaluation "federated"): the newest
// committed model of each such job — its first version before any round
// commits, its last after the job ends — and its first version (the
// reference) are offered to every live worker its selector matches (up to
// eval_clients each), as tasks with eval_only set, when the worker has no
// training to do. The worker scores it on its
// held-out data and calls SubmitEval; the leader commits RecordEval, and
// the round core keeps the reports and their count-weighted means with
// that round. The coordinator never sees the data, only sums and counts.

// evalTaskFor returns a federated evaluation task for worker, if one waits.
func (c *Coordinator) evalTaskFor(worker string, done []string) *pb.Task {
	w, ok := c.fsm.Worker(worker)
	if !ok {
		return nil // not rostered (yet)
	}
	labels := w.Labels
	var out *pb.Task
	c.fsm.ReadJobs(func(j *pb.Job) {
		if out != nil || j.Spec.GetEvaluation() != round.EvalFederated || (j.Status != pb.JobStatus_JOB_STATUS_RUNNING && j.Status != pb.JobStatus_JOB_STATUS_DONE) {
			return
		}
		if !round.Matches(j.Spec.Selector, labels) || !round.Allowed(j.Spec, worker) {
			return
		}
		// The newest model, then the first version (the reference every
		// later round is compared with): a worker busy training when the
		// job began still scores the base once it is free.
		rj := round.Job{Job: j}
		candidates := []uint32{uint32(len(j.History))}
		if candidates[0] > 0 {
			candidates = append(candidates, 0)
		}
		for _, n := range candidates {
			if slices.Contains(done, pb.EvalKey(j.Spec.Name, n)) {
				continue
			}
			reports, _ := rj.EvalReports(n)
			if slices.ContainsFunc(reports, func(r *pb.EvalReport) bool { return r.Worker == worker }) {
				continue
			}
			if k := j.Spec.EvalClients; k > 0 && uint32(len(reports)) >= k {
				continue
			}
			out = &pb.Task{Job: j.Spec.Name, Round: n, Base: &pb.ModelRef{Hash: rj.EvalModel(n)}, Model: j.Spec.Model, Dataset: j.Spec.Dataset,
				Seed: j.Spec.Seed, EvalOnly: true, Train: j.Spec.Train}
			c.addModel(j, out) // reads blob sizes only, not the FSM
			return
		}
	})
	return out
}

// SubmitEval records a worker's federated evaluation of a committed model.
// Reports are idempotent by (job, round, worker).
func (s *workerService) SubmitEval(ctx context.Context, req *pb.SubmitEvalRequest) (*pb.SubmitEvalResponse, error) {
	c := s.c
	if err := c.checkWorkerID(ctx, req.WorkerId); err != nil {
		return nil, err
	}
	if !c.IsLeader() {
		return &pb.SubmitEvalResponse{LeaderAddr: c.leaderGRPC(), NotLeader: true}, nil
	}
	j, ok := c.fsm.Job(req.Job)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "evaluation of %q: %v", req.Job, ErrUnknownJob)
	}
	if j.Spec.GetEvaluation() != round.EvalFederated {
		return nil, status.Errorf(codes.FailedPrecondition, "evaluation of %q: the job does not evaluate federatedly (evaluation %q)", req.Job, j.Spec.GetEvaluation())
	}
	w, rostered := c.fsm.Worker(req.WorkerId)
	labels := w.GetLabels()
	if !rostered || !round.Matches(j.Spec.Selector, labels) || !round.Allowed(j.Spec, req.WorkerId) {
		return nil, status.Errorf(codes.PermissionDenied, "evaluation of %q: worker %s is not rostered with labels the job selects", req.Job, req.WorkerId)
	}
	rep := &pb.EvalReport{Worker: req.WorkerId, LossSum: req.LossSum, Count: req.Count, Correct: req.Correct}
	if g := j.Spec.EvalGroupBy; g != "" {
		rep.Group = labels[g]
	}
	if err := round.CheckEvalReport(rep); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "evaluation of %q round %d: %v", req.Job, req.Round, err)
	}
	err := c.apply(pb.CommandType_COMMAND_TYPE_RECORD_EVAL, &pb.RecordEval{Job: req.Job, Round: req.Round, Report: rep})
	switch {
	case errors.Is(err, round.ErrEvalDone):
		return &pb.SubmitEvalResponse{Duplicate: true}, nil
	case err != nil:
		return nil, toStatus(fmt.Errorf("evaluation of %q round %d from %s: %w", req.Job, req.Round, req.WorkerId, err))
	}
	c.log.Info("evaluation recorded", "job", req.Job, "round", req.Round, "worker", req.WorkerId, "count", req.Count, "mean_loss", req.LossSum/float64(req.Count))
	return &pb.SubmitEvalResponse{}, nil
}
