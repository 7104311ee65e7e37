package round

import (
	"errors"
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
)

// TestControl walks a job through pause, resume and cancel: each applies
// only from the statuses it names, a pause or cancel abandons the open
// round and makes the next one a new attempt, and delete is refused for an
// active job unless forced.
func TestControl(t *testing.T) {
	j, err := NewJob(&pb.JobSpec{Name: "j", Rounds: 5, BaseModel: "b"}, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.StartRound(&pb.Round{Number: 1, BaseModel: "b", Selected: []string{"w1"}, Attempt: 2}); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		action string
		want   pb.JobStatus
		err    error
	}{
		{ActionResume, pb.JobStatus_JOB_STATUS_RUNNING, ErrJobNotActive},
		{ActionPause, pb.JobStatus_JOB_STATUS_PAUSED, nil},
		{ActionPause, pb.JobStatus_JOB_STATUS_PAUSED, ErrJobNotActive},
		{ActionResume, pb.JobStatus_JOB_STATUS_RUNNING, nil},
		{ActionPause, pb.JobStatus_JOB_STATUS_PAUSED, nil},
		{ActionCancel, pb.JobStatus_JOB_STATUS_CANCELLED, nil},
		{ActionResume, pb.JobStatus_JOB_STATUS_CANCELLED, ErrJobNotActive},
		{ActionCancel, pb.JobStatus_JOB_STATUS_CANCELLED, ErrJobNotActive},
		{"stop", pb.JobStatus_JOB_STATUS_CANCELLED, nil},
	}
	for i, s := range steps {
		err := j.Control(s.action, "maintenance")
		switch {
		case s.action == "stop" && err == nil:
			t.Errorf("step %d: unknown action taken", i)
		case s.action != "stop" && !errors.Is(err, s.err) && (err != nil || s.err != nil):
			t.Errorf("step %d %s: %v, want %v", i, s.action, err, s.err)
		}
		if j.Status != s.want {
			t.Errorf("step %d %s: status %v, want %v", i, s.action, j.Status, s.want)
		}
		if i == 1 && (j.OpenRound != nil || j.NextAttempt != 3 || j.Note != "maintenance") {
			t.Errorf("pause kept round %v, next attempt %d, note %q", j.OpenRound, j.NextAttempt, j.Note)
		}
	}
	if err := j.AcceptUpdate(1, &pb.AcceptedUpdate{Worker: "w1"}); err == nil {
		t.Error("a cancelled job accepted an update")
	}
	if err := j.CheckDelete(false); err != nil {
		t.Errorf("a cancelled job cannot be deleted: %v", err)
	}
	r, _ := NewJob(&pb.JobSpec{Name: "r"}, nil, 1)
	if err := r.CheckDelete(false); !errors.Is(err, ErrJobActive) {
		t.Errorf("delete of a running job without force: %v", err)
	}
	if err := r.CheckDelete(true); err != nil {
		t.Errorf("forced delete: %v", err)
	}
	if err := r.Control(ActionPause, string(make([]byte, MaxNote+1))); err == nil || r.Status != pb.JobStatus_JOB_STATUS_RUNNING {
		t.Errorf("an oversized reason: %v, status %v", err, r.Status)
	}
}
