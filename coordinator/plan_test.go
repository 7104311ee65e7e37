package coordinator

import (
	"errors"
	"slices"
	"testing"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
)

func TestPlanRound(t *testing.T) {
	live := []*pb.WorkerInfo{
		{Id: "a", Labels: map[string]string{"region": "eu"}},
		{Id: "b", Labels: map[string]string{"region": "eu", "lang": "fr"}},
		{Id: "c", Labels: map[string]string{"region": "us"}},
		{Id: "d", Labels: map[string]string{"region": "eu"}},
		{Id: "e", Labels: map[string]string{"region": "eu"}},
	}
	job := &pb.Job{CurrentModel: "m", Spec: &pb.JobSpec{Name: "j", Seed: 3, ClientsPerRound: 2, MinUpdates: 2, OverSelect: 0.5,
		RoundTimeoutSeconds: 60, Selector: map[string]string{"region": "eu"}}}
	r, err := PlanRound(job, live, t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Selected) != 3 || slices.Contains(r.Selected, "c") || !slices.IsSorted(r.Selected) {
		t.Errorf("selected %v: want 3 sorted eu workers (2 + 50%% over-selection)", r.Selected)
	}
	if r.Number != 1 || r.BaseModel != "m" || r.DeadlineUnixNano != t0.Add(time.Minute).UnixNano() {
		t.Errorf("round %v", r)
	}
	again, _ := PlanRound(job, live, t0, 0)
	if !slices.Equal(again.Selected, r.Selected) {
		t.Error("planning is not a function of its inputs")
	}
	job.Spec.Allow = []string{"a", "c", "e"} // c is allowed but not in region eu
	if r, err := PlanRound(job, live, t0, 0); err != nil || !slices.Equal(r.Selected, []string{"a", "e"}) {
		t.Errorf("allow-list a, c, e with selector region=eu: selected %v (%v), want [a e]", r.GetSelected(), err)
	}
	job.Spec.Allow = nil
	job.Spec.Selector = map[string]string{"lang": "fr"}
	if _, err := PlanRound(job, live, t0, 0); !errors.Is(err, ErrNotEnoughWorkers) {
		t.Errorf("1 matching worker for min 2: %v", err)
	}
}

func TestDecideRound(t *testing.T) {
	spec := &pb.JobSpec{ClientsPerRound: 3, MinUpdates: 2}
	deadline := t0.Add(time.Minute)
	mk := func(reported ...string) *pb.Round {
		r := &pb.Round{Selected: []string{"a", "b", "c", "d"}, DeadlineUnixNano: deadline.UnixNano()}
		for _, w := range reported {
			r.Updates = append(r.Updates, &pb.AcceptedUpdate{Worker: w})
		}
		return r
	}
	all := map[string]bool{"a": true, "b": true, "c": true, "d": true}
	cases := []struct {
		name  string
		r     *pb.Round
		alive map[string]bool
		now   time.Time
		want  RoundDecision
	}{
		{"early, few", mk("a"), all, t0, Wait},
		{"early, clients_per_round in", mk("a", "b", "c"), all, t0, Commit},
		{"early, min in, rest alive", mk("a", "b"), all, t0, Wait},
		{"early, min in, rest dead", mk("a", "b"), map[string]bool{"a": true, "b": true}, t0, Commit},
		{"deadline, min in", mk("a", "b"), all, deadline, Commit},
		{"deadline, too few", mk("a"), all, deadline, Abort},
	}
	for _, c := range cases {
		if got := DecideRound(spec, c.r, c.alive, c.now); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
