package round

import (
	"errors"
	"fmt"

	pb "github.com/fedtune/fedtune/protocol"
)

// Operators' commands on a job, through the log (ControlJob).
const (
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionCancel = "cancel"
	ActionDelete = "delete"
)

// ErrJobActive refuses to delete a running or paused job without force.
var ErrJobActive = errors.New("job is running or paused")

// MaxNote bounds the reason an operator gives.
const MaxNote = 1024

// Control applies pause, resume or cancel (delete removes the job from
// the state, which is the FSM's: CheckDelete says whether it may). A pause
// or a cancel abandons the open round (its updates are no longer
// referenced; the next round after a resume starts a new attempt, so
// workers that reported in the abandoned one take part again) and an
// async job's assignments; the buffer and every committed round are kept.
func (j Job) Control(action, reason string) error {
	name := j.Spec.GetName()
	if len(reason) > MaxNote {
		return fmt.Errorf("%s %q: reason of %d bytes (at most %d)", action, name, len(reason), MaxNote)
	}
	switch action {
	case ActionPause:
		if err := j.Running(); err != nil {
			return err
		}
		j.abandon()
		j.Status, j.Note = pb.JobStatus_JOB_STATUS_PAUSED, reason
	case ActionResume:
		if j.Status != pb.JobStatus_JOB_STATUS_PAUSED {
			return fmt.Errorf("resume %q: it is %s, not paused: %w", name, j.Status, ErrJobNotActive)
		}
		j.Status, j.Note = pb.JobStatus_JOB_STATUS_RUNNING, ""
		if j.Async != nil {
			// a paused async job's versions wait on no one: the next starts now
			j.Async.Assignments = nil
		}
	case ActionCancel:
		if j.Status != pb.JobStatus_JOB_STATUS_RUNNING && j.Status != pb.JobStatus_JOB_STATUS_PAUSED {
			return fmt.Errorf("cancel %q: it is %s: %w", name, j.Status, ErrJobNotActive)
		}
		j.abandon()
		j.Status, j.Note = pb.JobStatus_JOB_STATUS_CANCELLED, reason
	default:
		return fmt.Errorf("job command %q: want pause, resume, cancel or delete", action)
	}
	return nil
}

// abandon drops the open round, remembering to start its next attempt
// afresh, and an async job's assignments.
func (j Job) abandon() {
	if r := j.OpenRound; r != nil {
		j.NextAttempt = r.Attempt + 1
		j.OpenRound = nil
	}
	if j.Async != nil {
		j.Async.Assignments = nil
	}
}

// CheckDelete refuses to delete a running or paused job unless forced.
func (j Job) CheckDelete(force bool) error {
	if !force && (j.Status == pb.JobStatus_JOB_STATUS_RUNNING || j.Status == pb.JobStatus_JOB_STATUS_PAUSED) {
		return fmt.Errorf("delete %q: it is %s; cancel it first or force: %w", j.Spec.GetName(), j.Status, ErrJobActive)
	}
	return nil
}
