package round

import (
	"fmt"
	"slices"
	"strings"

	pb "github.com/fedtune/fedtune/protocol"
)

// AcceptedTask reports whether an async job already accepted the update of
// task (in its buffer or in a committed version).
func (j Job) AcceptedTask(task uint64) bool {
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

// CheckAsyncUpdate checks an update against an async job's state: it must
// answer an open assignment of this worker, trained from that assignment's
// version, and not be staler than max_staleness. It returns ErrDuplicate
// for a task already accepted and ErrTooStale for one too old.
func (j Job) CheckAsyncUpdate(worker string, version uint32, task uint64) error {
	now := Version(j.Job)
	maxStale := j.Spec.GetAsync().GetMaxStaleness()
	if j.AcceptedTask(task) {
		return fmt.Errorf("task %d: %w", task, ErrDuplicate)
	}
	if version > now {
		return fmt.Errorf("trained from version %d, the job is at version %d: %w", version, now, ErrStaleRound)
	}
	if now-version > maxStale {
		return fmt.Errorf("trained from version %d, %d versions behind the job's %d; max_staleness is %d: %w", version, now-version, now, maxStale, ErrTooStale)
	}
	a, ok := Assignment(j.Job, task)
	if !ok || a.Worker != worker || a.Version != version {
		return fmt.Errorf("no open assignment %d of worker %q from version %d (withdrawn after its deadline, or never made): %w", task, worker, version, ErrStaleRound)
	}
	return nil
}

// AssignTasks withdraws the assignments of the tasks in release and makes
// the new assignments (numbered from the job's next task, at most one per
// worker), as PlanAssignments planned them.
func (j Job) AssignTasks(assign []*pb.Assignment, release []uint64) error {
	name := j.Spec.GetName()
	if err := j.Running(); err != nil {
		return err
	}
	if !IsAsync(j.Spec) || j.Async == nil {
		return fmt.Errorf("assign tasks: job %q is not async", name)
	}
	st := j.Async
	// Checked before anything changes: a refused command leaves no trace.
	next := max(st.NextTask, 1)
	kept := slices.DeleteFunc(slices.Clone(st.Assignments), func(a *pb.Assignment) bool { return slices.Contains(release, a.Task) })
	for _, a := range assign {
		if a.GetWorker() == "" {
			return fmt.Errorf("assign tasks of %q: an assignment without a worker", name)
		}
		if a.GetTask() != next {
			return fmt.Errorf("assign task %d of %q: next task is %d: %w", a.GetTask(), name, next, ErrStaleRound)
		}
		if slices.ContainsFunc(kept, func(o *pb.Assignment) bool { return o.Worker == a.Worker }) {
			return fmt.Errorf("assign task %d of %q: worker %q is already training for it", a.Task, name, a.Worker)
		}
		next = a.Task + 1
		i, _ := slices.BinarySearchFunc(kept, a.Worker, func(x *pb.Assignment, w string) int { return strings.Compare(x.Worker, w) })
		kept = slices.Insert(kept, i, a)
	}
	st.Assignments = kept
	if len(assign) > 0 {
		st.NextTask = next
	}
	return nil
}

// acceptAsync moves an update from its assignment to the buffer.
func (j Job) acceptAsync(version uint32, u *pb.AcceptedUpdate) error {
	name := j.Spec.GetName()
	if u == nil || j.Async == nil {
		return fmt.Errorf("accept update of %q: no update", name)
	}
	if err := j.CheckAsyncUpdate(u.GetWorker(), version, u.GetTask()); err != nil {
		return fmt.Errorf("job %q: %w", name, err)
	}
	u.BaseVersion = version
	j.Async.Assignments = slices.DeleteFunc(j.Async.Assignments, func(a *pb.Assignment) bool { return a.Task == u.Task })
	j.Async.Buffer = append(j.Async.Buffer, u)
	return nil
}

// commitAsync makes the next version from the buffer's oldest c.Buffered
// updates.
func (j Job) commitAsync(c *pb.CommitRound, at int64) error {
	name := j.Spec.GetName()
	st := j.Async
	if st == nil {
		return fmt.Errorf("commit version of %q: no async state", name)
	}
	if want := Version(j.Job) + 1; c.Round != want {
		return fmt.Errorf("commit version %d of %q, next is %d: %w", c.Round, name, want, ErrStaleRound)
	}
	if c.Buffered == 0 || int(c.Buffered) > len(st.Buffer) {
		return fmt.Errorf("commit version %d of %q: %d buffered updates named, %d in the buffer", c.Round, name, c.Buffered, len(st.Buffer))
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
	if Version(j.Job) >= j.Spec.GetRounds() {
		j.Status = pb.JobStatus_JOB_STATUS_DONE
		st.Assignments = nil
	}
	return nil
}
