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

// TestEvalTaskFor: a federatedly evaluated job offers its newest committed
// model (the first version before any commit) to each rostered worker its
// selector matches, once, up to eval_clients, and after the job ends; a
// training task comes first.
func TestEvalTaskFor(t *testing.T) {
	blobs, _ := OpenBlobStore(t.TempDir())
	c := &Coordinator{fsm: NewFSM(), blobs: blobs}
	h := &fsmHarness{t: t, f: c.fsm}
	for _, w := range []struct{ id, lang string }{{"w1", "fr"}, {"w2", "fr"}, {"w3", "de"}, {"w4", "fr"}} {
		h.must(cUpsert, &pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: w.id, Labels: map[string]string{"lang": w.lang}}})
	}
	s := spec("j", 1)
	s.Evaluation, s.EvalClients, s.Selector = "federated", 2, map[string]string{"lang": "fr"}
	h.must(cRegister, &pb.RegisterJob{Spec: s})
	if task := c.taskFor("w1", nil); task == nil || !task.EvalOnly || task.Round != 0 || task.Base.GetHash() != s.BaseModel {
		t.Fatalf("w1 not offered the base's evaluation: %v", task)
	}
	if task := c.taskFor("w3", nil); task != nil {
		t.Errorf("a worker the selector does not match offered %v", task)
	}
	if task := c.taskFor("w9", nil); task != nil {
		t.Errorf("an unrostered worker offered %v", task)
	}
	if task := c.taskFor("w1", []string{pb.EvalKey("j", 0)}); task != nil {
		t.Errorf("an evaluation the worker finished offered again: %v", task)
	}
	h.must(cEval, &pb.RecordEval{Job: "j", Round: 0, Report: &pb.EvalReport{Worker: "w1", LossSum: 3, Count: 2}})
	if task := c.taskFor("w1", nil); task != nil {
		t.Errorf("w1 offered %v after reporting", task)
	}
	h.must(cStart, &pb.StartRound{Job: "j", Round: roundAt(1, s.BaseModel, "w2")})
	if task := c.taskFor("w2", nil); task == nil || task.EvalOnly {
		t.Errorf("w2 offered %v, want its training task first", task)
	}
	h.must(cEval, &pb.RecordEval{Job: "j", Round: 0, Report: &pb.EvalReport{Worker: "w4", LossSum: 3, Count: 2}})
	if task := c.taskFor("w2", []string{pb.AttemptKey("j", 1, 0)}); task != nil {
		t.Errorf("eval_clients 2 reached, w2 offered %v", task)
	}
	h.must(cAccept, &pb.AcceptUpdate{Job: "j", Round: 1, Update: upd("w2")})
	h.must(cCommit, &pb.CommitRound{Job: "j", Round: 1, Model: "m1"})
	if task := c.taskFor("w2", nil); task == nil || !task.EvalOnly || task.Round != 1 || task.Base.GetHash() != "m1" {
		t.Errorf("after the job ended, w2 not offered the last model's evaluation: %v", task)
	}
	// the base is still offered to a worker that has not scored it, once
	// it has scored the newest model; not past eval_clients
	s2 := spec("k", 1)
	s2.Evaluation = "federated"
	h.must(cRegister, &pb.RegisterJob{Spec: s2})
	h.must(cStart, &pb.StartRound{Job: "k", Round: roundAt(1, s2.BaseModel, "w3")})
	h.must(cAccept, &pb.AcceptUpdate{Job: "k", Round: 1, Update: upd("w3")})
	h.must(cCommit, &pb.CommitRound{Job: "k", Round: 1, Model: "k1"})
	done := []string{pb.EvalKey("j", 1), pb.EvalKey("j", 0)}
	if task := c.taskFor("w3", done); task == nil || task.Job != "k" || task.Round != 1 {
		t.Fatalf("w3 not offered k's last model first: %v", task)
	}
	if task := c.taskFor("w3", append(done, pb.EvalKey("k", 1))); task == nil || task.Job != "k" || task.Round != 0 || task.Base.GetHash() != s2.BaseModel {
		t.Errorf("w3, busy training when k began, not offered its base afterwards: %v", task)
	}
	// a rostered worker without labels evaluates job k, which has no selector
	h.must(cUpsert, &pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: "bare"}})
	if task := c.taskFor("bare", nil); task == nil || task.Job != "k" || !task.EvalOnly {
		t.Errorf("a worker without labels not offered the evaluation of a job without a selector: %v", task)
	}
}
