package round

import (
	"errors"
	"slices"
	"testing"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
)

var t0 = time.Unix(1_700_000_000, 0)

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

// TestPlanRoundPrefersIdle: busy workers (idle=false) are chosen only
// when too few idle ones match, whatever the seed.
func TestPlanRoundPrefersIdle(t *testing.T) {
	var live []*pb.WorkerInfo
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		l := map[string]string{"idle": "false"}
		if id == "b" || id == "e" {
			l["idle"] = "true"
		}
		if id == "f" {
			l = nil // no idle label: counts as idle
		}
		live = append(live, &pb.WorkerInfo{Id: id, Labels: l})
	}
	for seed := range uint64(20) {
		for _, tc := range []struct {
			clients  uint32
			mustHave []string
		}{
			{1, nil}, {3, []string{"b", "e", "f"}}, {4, []string{"b", "e", "f"}},
		} {
			job := &pb.Job{Spec: &pb.JobSpec{Name: "j", Seed: seed, ClientsPerRound: tc.clients, MinUpdates: 1, RoundTimeoutSeconds: 60}}
			r, err := PlanRound(job, live, t0, 0)
			if err != nil {
				t.Fatal(err)
			}
			idle := 0
			for _, id := range r.Selected {
				if id == "b" || id == "e" || id == "f" {
					idle++
				}
			}
			if idle != min(int(tc.clients), 3) || len(r.Selected) != int(tc.clients) {
				t.Errorf("seed %d, %d clients: selected %v, want the idle b, e, f first", seed, tc.clients, r.Selected)
			}
		}
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
