package progress

import (
	"strings"
	"testing"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
)

func TestBar(t *testing.T) {
	for _, c := range []struct {
		done, total, width int
		want               string
	}{
		{0, 10, 4, "[----]"},
		{5, 10, 4, "[##--]"},
		{10, 10, 4, "[####]"},
		{12, 10, 4, "[####]"}, // past the end: full
		{-1, 10, 4, "[----]"},
		{3, 0, 4, "[####]"}, // no total: treated as 1
	} {
		if got := Bar(c.done, c.total, c.width); got != c.want {
			t.Errorf("Bar(%d, %d, %d) = %q, want %q", c.done, c.total, c.width, got, c.want)
		}
	}
}

func TestOpenRoundLine(t *testing.T) {
	t0 := time.Unix(1000, 0)
	j := &pb.Job{Spec: &pb.JobSpec{Name: "j", Rounds: 5}, Status: pb.JobStatus_JOB_STATUS_RUNNING,
		BaseMetrics: map[string]float64{"test_accuracy": 0.5},
		OpenRound: &pb.Round{Number: 2, Selected: []string{"a", "b", "c"}, Updates: []*pb.AcceptedUpdate{{Worker: "a"}},
			StartedUnixNano: t0.UnixNano(), DeadlineUnixNano: t0.Add(60 * time.Second).UnixNano()}}
	got := OpenRoundLine(j, t0.Add(15*time.Second))
	for _, want := range []string{"round 2", "1/3 updates", "[#####---------------]", "45s to deadline", "test accuracy 50.00%"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	j.History = []*pb.RoundRecord{{Number: 1, Metrics: map[string]float64{"test_accuracy": 0.9}}}
	if got := OpenRoundLine(j, t0); !strings.Contains(got, "test accuracy 90.00%") {
		t.Errorf("after a committed round: %q", got)
	}
	j.OpenRound.Secagg = &pb.SecAggRound{Phase: 3, Keys: make([]*pb.SecAggKeys, 3), Shared: []string{"a", "b"}, PhaseDeadlineUnixNano: t0.Add(20 * time.Second).UnixNano()}
	if got := OpenRoundLine(j, t0.Add(15*time.Second)); got != "round 2: secure aggregation, masked updates: 3 keys, 2 shared, 1 masked updates, 5s to the phase's deadline, test accuracy 90.00%" {
		t.Errorf("secagg: %q", got)
	}
	j.OpenRound = nil
	if got := OpenRoundLine(j, t0); got != "job j: running, 1/5 rounds committed" {
		t.Errorf("between rounds: %q", got)
	}
	j.Spec.Async = &pb.AsyncSpec{BufferSize: 4}
	j.Async = &pb.AsyncState{Buffer: []*pb.AcceptedUpdate{{}, {}}, Assignments: []*pb.Assignment{{}, {}, {}}}
	if got := OpenRoundLine(j, t0); got != "version 1: buffer [#####-----] 2/4 updates, 3 training, test accuracy 90.00%" {
		t.Errorf("async: %q", got)
	}
}

func TestRoundLineTrainingRate(t *testing.T) {
	j := &pb.Job{Spec: &pb.JobSpec{Rounds: 2}}
	for _, tc := range []struct {
		ups  []*pb.AcceptedUpdate
		want string
	}{
		{nil, "  -"},
		{[]*pb.AcceptedUpdate{{Metrics: map[string]float64{"samples_per_second": 1000}}, {Metrics: map[string]float64{"samples_per_second": 3000}}, {}}, "  2000"},
	} {
		got := RoundLine(j, &pb.RoundRecord{Number: 1, Accepted: tc.ups})
		if !strings.HasSuffix(got, tc.want) {
			t.Errorf("RoundLine = %q, want it to end with the mean samples/s %q", got, tc.want)
		}
	}
}

func TestFedEvalLine(t *testing.T) {
	j := &pb.Job{Spec: &pb.JobSpec{Evaluation: "federated"},
		BaseMetrics: map[string]float64{"fed_perplexity": 900, "fed_perplexity/lang=fr": 1000, "fed_perplexity/lang=de": 800},
		BaseEvals:   []*pb.EvalReport{{Worker: "a"}, {Worker: "b"}}}
	last := &pb.RoundRecord{Number: 8, Metrics: map[string]float64{"fed_perplexity": 300}, Evals: []*pb.EvalReport{{Worker: "a"}}}
	want := "federated evaluation: first version perplexity 900.00 (2 workers; lang=de 800.00, lang=fr 1000.00); round 8 perplexity 300.00 (1 workers)"
	if got := FedEvalLine(j, last); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got := FedEvalLine(&pb.Job{Spec: &pb.JobSpec{}}, last); got != "" {
		t.Errorf("a centrally evaluated job: %q", got)
	}
}
