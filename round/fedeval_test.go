package round

import (
	"errors"
	"math"
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
)

func fedJob(t *testing.T) Job {
	t.Helper()
	j, err := NewJob(&pb.JobSpec{Name: "j", Evaluation: EvalFederated, EvalGroupBy: "lang", BaseModel: "base", Rounds: 3}, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	j.History = []*pb.RoundRecord{{Number: 1, Model: "m1"}}
	return j
}

// TestRecordEval: reports are kept by worker, their count-weighted means
// (overall and per group) become the round's metrics, a repeat or a bad
// report changes nothing, and a committed record is replaced, not changed.
func TestRecordEval(t *testing.T) {
	j := fedJob(t)
	shared := j.History[0]
	for _, r := range []*pb.EvalReport{
		{Worker: "w2", LossSum: 300, Count: 100, Correct: 10, Group: "de"},
		{Worker: "w1", LossSum: 100, Count: 100, Correct: 30, Group: "fr"},
		{Worker: "w3", LossSum: 200, Count: 200, Correct: 20, Group: "fr"},
	} {
		if err := j.RecordEval(1, r); err != nil {
			t.Fatal(err)
		}
	}
	if shared.Evals != nil || shared.Metrics != nil {
		t.Error("the committed record a reader may hold was changed in place")
	}
	m := j.History[0].Metrics
	want := map[string]float64{"fed_loss": 1.5, "fed_accuracy": 0.15, "fed_count": 400, "fed_perplexity": math.Exp(1.5),
		"fed_loss/lang=fr": 1, "fed_loss/lang=de": 3, "fed_perplexity/lang=de": math.Exp(3)}
	for k, v := range want {
		if math.Abs(m[k]-v) > 1e-12 {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if w := j.History[0].Evals; len(w) != 3 || w[0].Worker != "w1" || w[2].Worker != "w3" {
		t.Errorf("reports not kept in worker order: %v", w)
	}
	if err := j.RecordEval(0, &pb.EvalReport{Worker: "w1", LossSum: 5, Count: 1}); err != nil || j.BaseMetrics["fed_loss"] != 5 {
		t.Errorf("base evaluation: %v, metrics %v", err, j.BaseMetrics)
	}
	bad := []struct {
		name  string
		round uint32
		r     *pb.EvalReport
		want  error
	}{
		{"repeat", 1, &pb.EvalReport{Worker: "w1", LossSum: 1, Count: 1}, ErrEvalDone},
		{"future round", 2, &pb.EvalReport{Worker: "w9", LossSum: 1, Count: 1}, ErrStaleRound},
		{"no count", 1, &pb.EvalReport{Worker: "w9", LossSum: 1}, nil},
		{"negative loss", 1, &pb.EvalReport{Worker: "w9", LossSum: -1, Count: 1}, nil},
		{"NaN loss", 1, &pb.EvalReport{Worker: "w9", LossSum: math.NaN(), Count: 1}, nil},
		{"absurd loss", 1, &pb.EvalReport{Worker: "w9", LossSum: 1e9, Count: 1}, nil},
		{"more correct than counted", 1, &pb.EvalReport{Worker: "w9", LossSum: 1, Count: 1, Correct: 2}, nil},
		{"no worker", 1, &pb.EvalReport{LossSum: 1, Count: 1}, nil},
	}
	for _, b := range bad {
		before := len(j.History[0].Evals)
		err := j.RecordEval(b.round, b.r)
		if err == nil || (b.want != nil && !errors.Is(err, b.want)) {
			t.Errorf("%s: %v, want an error (%v)", b.name, err, b.want)
		}
		if len(j.History[0].Evals) != before {
			t.Errorf("%s: a refused report was kept", b.name)
		}
	}
	other, _ := NewJob(&pb.JobSpec{Name: "c", Evaluation: EvalCentral}, nil, 1)
	if err := other.RecordEval(0, &pb.EvalReport{Worker: "w1", LossSum: 1, Count: 1}); err == nil {
		t.Error("a centrally evaluated job took a federated report")
	}
}
