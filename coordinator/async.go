package coordinator

import (
	"fmt"
	"slices"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// acceptedTask reports whether an async job already accepted the update of
// task (in its buffer or in a committed version).
func acceptedTask(j *pb.Job, task uint64) bool {
	has := func(us []*pb.AcceptedUpdate) bool {
		return slices.ContainsFunc(us, func(u *pb.AcceptedUpdate) bool { return u.Task == task })
	}
	if has(j.GetAsync().GetBuffer()) {
		return true
	}
	for _, r := range j.History {
		if has(r.Accepted) {
			return true
		}
	}
	return false
}

// checkAsyncUpdate checks an update against an async job's state: it must
// answer an open assignment of this worker, trained from that assignment's
// version, and not be staler than max_staleness. It returns ErrDuplicate
// for a task already accepted and ErrTooStale for one too old.
func checkAsyncUpdate(j *pb.Job, worker string, version uint32, task uint64) error {
	now := round.Version(j)
	maxStale := j.Spec.GetAsync().GetMaxStaleness()
	if acceptedTask(j, task) {
		return fmt.Errorf("task %d: %w", task, ErrDuplicate)
	}
	if version > now {
		return fmt.Errorf("trained from version %d, the job is at version %d: %w", version, now, ErrStaleRound)
	}
	if now-version > maxStale {
		return fmt.Errorf("trained from version %d, %d versions behind the job's %d; max_staleness is %d: %w", version, now-version, now, maxStale, round.ErrTooStale)
	}
	a, ok := round.Assignment(j, task)
	if !ok || a.Worker != worker || a.Version != version {
		return fmt.Errorf("no open assignment %d of worker %q from version %d (withdrawn after its deadline, or never made): %w", task, worker, version, ErrStaleRound)
	}
	return nil
}

func applyAssignTasks(f *FSM, payload []byte, _ int64) error {
	var c pb.AssignTasks
	if err := decode(payload, &c); err != nil {
		return err
	}
	j, err := f.runningJob(c.Job)
	if err != nil {
		return err
	}
	if !round.IsAsync(j.Spec) || j.Async == nil {
		return fmt.Errorf("assign tasks: job %q is not async", c.Job)
	}
	st := j.Async
	st.Assignments = slices.DeleteFunc(st.Assignments, func(a *pb.Assignment) bool { return slices.Contains(c.Release, a.Task) })
	for _, a := range c.Assign {
		if a.GetWorker() == "" {
			return fmt.Errorf("assign tasks of %q: an assignment without a worker", c.Job)
		}
		if a.GetTask() != max(st.NextTask, 1) {
			return fmt.Errorf("assign task %d of %q: next task is %d: %w", a.GetTask(), c.Job, max(st.NextTask, 1), ErrStaleRound)
		}
		if slices.ContainsFunc(st.Assignments, func(o *pb.Assignment) bool { return o.Worker == a.Worker }) {
			return fmt.Errorf("assign task %d of %q: worker %q is already training for it", a.Task, c.Job, a.Worker)
		}
		st.NextTask = a.Task + 1
		i, _ := slices.BinarySearchFunc(st.Assignments, a.Worker, func(x *pb.Assignment, w string) int { return cmpString(x.Worker, w) })
		st.Assignments = slices.Insert(st.Assignments, i, a)
	}
	return nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// acceptAsync moves an update from its assignment to the buffer.
func acceptAsync(j *pb.Job, c *pb.AcceptUpdate) error {
	u := c.Update
	if u == nil || j.Async == nil {
		return fmt.Errorf("accept update of %q: no update", c.Job)
	}
	if err := checkAsyncUpdate(j, u.GetWorker(), c.Round, u.GetTask()); err != nil {
		return fmt.Errorf("job %q: %w", c.Job, err)
	}
	u.BaseVersion = c.Round
	j.Async.Assignments = slices.DeleteFunc(j.Async.Assignments, func(a *pb.Assignment) bool { return a.Task == u.Task })
	j.Async.Buffer = append(j.Async.Buffer, u)
	return nil
}

// commitAsync makes the next version from the buffer's oldest c.Buffered
// updates.
func commitAsync(j *pb.Job, c *pb.CommitRound, at int64) error {
	st := j.Async
	if st == nil {
		return fmt.Errorf("commit version of %q: no async state", c.Job)
	}
	if want := round.Version(j) + 1; c.Round != want {
		return fmt.Errorf("commit version %d of %q, next is %d: %w", c.Round, c.Job, want, ErrStaleRound)
	}
	if c.Buffered == 0 || int(c.Buffered) > len(st.Buffer) {
		return fmt.Errorf("commit version %d of %q: %d buffered updates named, %d in the buffer", c.Round, c.Job, c.Buffered, len(st.Buffer))
	}
	used := st.Buffer[:c.Buffered]
	rec := &pb.RoundRecord{Number: c.Round, Model: c.Model, Updates: c.Buffered, Metrics: c.Metrics, StartedUnixNano: st.VersionStartedUnixNano,
		CommittedUnixNano: at, Accepted: used, Scores: c.Scores, OptimizerState: c.OptimizerState}
	for _, u := range used {
		rec.Samples += u.Samples
		rec.Workers = append(rec.Workers, u.Worker)
	}
	st.Buffer = slices.Clone(st.Buffer[c.Buffered:])
	st.VersionStartedUnixNano = at
	j.History = append(j.History, rec)
	j.CurrentModel = c.Model
	if round.Version(j) >= j.Spec.GetRounds() {
		j.Status = pb.JobStatus_JOB_STATUS_DONE
		st.Assignments = nil
	}
	return nil
}
