package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

func (s *scheduler) step(ctx context.Context, j *pb.Job, alive map[string]*pb.WorkerInfo) error {
	if round.IsAsync(j.Spec) {
		return s.stepAsync(ctx, j, alive)
	}
	name := j.Spec.Name
	now := s.c.clock.Now()
	r := j.OpenRound
	if r == nil {
		live := s.withLoad(name, alive)
		plan, err := round.PlanRound(j, live, now, max(s.attempts[name], j.NextAttempt))
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
		if over, eps, err := round.DPWouldExceed(j, len(plan.Selected), int(plan.Eligible)); err != nil {
			return fmt.Errorf("privacy accounting: %w", err)
		} else if over {
			reason := fmt.Sprintf("privacy budget reached: round %d would spend ε %.4f, past the budget %g (δ %g)", plan.Number, eps, j.Spec.Dp.Epsilon, j.Spec.Dp.Delta)
			s.log.Info("job stopped at its privacy budget", "job", name, "round", plan.Number, "epsilon_next", eps, "budget", j.Spec.Dp.Epsilon)
			return s.c.apply(pb.CommandType_COMMAND_TYPE_FINISH_JOB, &pb.FinishJob{Job: name, Status: pb.JobStatus_JOB_STATUS_DONE, Error: reason})
		}
		if err := s.c.apply(pb.CommandType_COMMAND_TYPE_START_ROUND, &pb.StartRound{Job: name, Round: plan}); err != nil {
			return fmt.Errorf("start round %d: %w", plan.Number, err)
		}
		s.load.set(name, plan.Selected) // jobs planned later in this tick see them busy
		s.c.metrics.roundsStarted.Inc()
		s.log.Info("round started", "job", name, "round", plan.Number, "selected", len(plan.Selected), "deadline", time.Unix(0, plan.DeadlineUnixNano).Format(time.TimeOnly))
		return nil
	}
	isAlive := make(map[string]bool, len(alive))
	for id := range alive {
		isAlive[id] = true
	}
	if r.Secagg != nil {
		return s.stepSecAgg(ctx, j, r, isAlive, now)
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
	var training []string
	for _, a := range j.Async.GetAssignments() {
		if !slices.Contains(release, a.Task) {
			training = append(training, a.Worker)
		}
	}
	for _, a := range assign {
		training = append(training, a.Worker)
	}
	s.load.set(name, training)
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
