package coordinator

import (
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
)

// TestTaskForRescheduledRound: a worker whose update was accepted in an
// attempt that was then aborted gets the rescheduled round again, and is
// not offered an attempt it already reported in.
func TestTaskForRescheduledRound(t *testing.T) {
	blobs, _ := OpenBlobStore(t.TempDir())
	c := &Coordinator{fsm: NewFSM(), blobs: blobs}
	h := &fsmHarness{t: t, f: c.fsm}
	h.must(cRegister, &pb.RegisterJob{Spec: spec("j", 2)})
	h.must(cStart, &pb.StartRound{Job: "j", Round: roundAt(1, "base", "w1", "w2")})
	h.must(cAccept, &pb.AcceptUpdate{Job: "j", Round: 1, Update: upd("w1")})
	done := []string{pb.AttemptKey("j", 1, 0)}
	if task := c.taskFor("w1", done); task != nil {
		t.Fatalf("w1 offered round 1 again after reporting: %v", task)
	}
	if task := c.taskFor("w2", nil); task == nil || task.Round != 1 || task.Attempt != 0 {
		t.Fatalf("w2 not offered round 1: %v", task)
	}
	h.must(cAbort, &pb.AbortRound{Job: "j", Round: 1})
	retry := roundAt(1, "base", "w1", "w2")
	retry.Attempt = 1
	h.must(cStart, &pb.StartRound{Job: "j", Round: retry})
	task := c.taskFor("w1", done)
	if task == nil || task.Attempt != 1 {
		t.Fatalf("w1 not offered the rescheduled round: %v", task)
	}
	if c.taskFor("w9", nil) != nil {
		t.Error("unselected worker offered a task")
	}
}
