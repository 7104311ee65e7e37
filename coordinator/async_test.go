package coordinator

import (
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

func asyncTestJob() *pb.Job {
	spec := &pb.JobSpec{Name: "a", Mode: round.ModeAsync, Seed: 7, RoundTimeoutSeconds: 60, Aggregator: "fedavg",
		Async: &pb.AsyncSpec{BufferSize: 2, Concurrency: 3, MaxStaleness: 2, MaxPerWorker: 1}}
	if err := round.NormalizeAsync(spec); err != nil {
		panic(err)
	}
	return &pb.Job{Spec: spec, CurrentModel: "m3", History: make([]*pb.RoundRecord, 3), Async: &pb.AsyncState{NextTask: 10}}
}

func workers(ids ...string) []*pb.WorkerInfo {
	var ws []*pb.WorkerInfo
	for _, id := range ids {
		ws = append(ws, &pb.WorkerInfo{Id: id})
	}
	return ws
}

// TestPlanAssignments: the async scheduling step withdraws expired and
// too-stale assignments and those of workers that left, fills the concurrency limit from the newest
// version with numbered tasks, skips workers already training or capped in
// the buffer, and prefers idle workers.
func TestPlanAssignments(t *testing.T) {
	now := t0.Add(time.Hour)
	j := asyncTestJob()
	j.Async.Assignments = []*pb.Assignment{
		{Worker: "a", Task: 7, Version: 3, DeadlineUnixNano: now.Add(time.Minute).UnixNano()},  // fine
		{Worker: "b", Task: 8, Version: 0, DeadlineUnixNano: now.Add(time.Minute).UnixNano()},  // 3 versions stale > 2
		{Worker: "c", Task: 9, Version: 3, DeadlineUnixNano: now.Add(-time.Second).UnixNano()}, // past its deadline
		{Worker: "g", Task: 5, Version: 3, DeadlineUnixNano: now.Add(time.Minute).UnixNano()},  // g is not live: it left
	}
	j.Async.Buffer = []*pb.AcceptedUpdate{{Worker: "d", Task: 6}} // d is at its cap of 1
	live := workers("a", "b", "c", "d", "e", "f")
	live[5].Labels = map[string]string{"idle": "false"} // f is busy
	assign, release := round.PlanAssignments(j, live, now)
	slices.Sort(release)
	if !slices.Equal(release, []uint64{5, 8, 9}) {
		t.Errorf("released %v, want tasks 5 (its worker left), 8 (too stale) and 9 (expired)", release)
	}
	// One assignment stays (a), so 2 slots: candidates b, c, e (idle) and f (busy).
	if len(assign) != 2 {
		t.Fatalf("assigned %d, want the 2 free slots", len(assign))
	}
	for i, a := range assign {
		if a.Task != uint64(10+i) || a.Version != 3 || a.BaseModel != "m3" || a.DeadlineUnixNano != now.Add(time.Minute).UnixNano() {
			t.Errorf("assignment %+v: want task %d from version 3 (m3), deadline a minute on", a, 10+i)
		}
		if a.Worker == "a" || a.Worker == "d" || a.Worker == "f" {
			t.Errorf("assigned %s: already training, capped, or busy while idle workers wait", a.Worker)
		}
	}
	again, _ := round.PlanAssignments(j, live, now)
	if !slices.EqualFunc(again, assign, func(x, y *pb.Assignment) bool { return x.Worker == y.Worker && x.Task == y.Task }) {
		t.Error("planning is not a function of its inputs")
	}
	j.Async.Assignments = append(j.Async.Assignments[:1], assign...)
	if more, rel := round.PlanAssignments(j, live, now); len(more) != 0 || len(rel) != 0 {
		t.Errorf("at the concurrency limit: assigned %d, released %v", len(more), rel)
	}
}

// TestFairWindow: max_per_worker counts a worker's updates over the
// buffer and the last fair_window−1 versions; workers at the cap wait, the
// rest are preferred by fewest updates in the window, and a window that
// would leave no one training shrinks to the buffer.
func TestFairWindow(t *testing.T) {
	now := t0.Add(time.Hour)
	history := []*pb.RoundRecord{{Workers: []string{"a", "b"}}, {Workers: []string{"a", "c"}}, {Workers: []string{"a", "d"}}}
	for _, c := range []struct {
		name      string
		window    uint32
		perWorker uint32
		live      []string
		inFlight  []string
		want      []string // assigned workers, sorted
	}{
		{"buffer only", 1, 1, []string{"a", "b", "c", "d"}, nil, []string{"a", "b", "c"}},
		{"last version", 2, 1, []string{"a", "b", "c", "d", "e"}, nil, []string{"b", "c", "e"}},
		{"two versions", 3, 1, []string{"a", "b", "c", "d", "e"}, nil, []string{"b", "e"}},
		{"cap of two", 3, 2, []string{"a", "b", "c", "d", "e"}, nil, []string{"b", "c", "e"}},
		{"fewest first", 4, 3, []string{"a", "b", "c", "d", "e"}, nil, []string{"b", "c", "e"}},
		{"window wider than the history", 9, 1, []string{"a", "b", "c", "d", "e"}, nil, []string{"e"}},
		{"all capped, nothing in flight: the buffer counts", 3, 1, []string{"a", "c", "d"}, nil, []string{"a", "c"}},
		{"all capped, one in flight: wait", 3, 1, []string{"a", "c", "d", "e"}, []string{"e"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			j := asyncTestJob()
			j.History = history
			j.Spec.Async.FairWindow, j.Spec.Async.MaxPerWorker = c.window, c.perWorker
			j.Async.Buffer = []*pb.AcceptedUpdate{{Worker: "d", Task: 6}}
			for i, w := range c.inFlight {
				j.Async.Assignments = append(j.Async.Assignments, &pb.Assignment{Worker: w, Task: uint64(i + 1), Version: 3, DeadlineUnixNano: now.Add(time.Minute).UnixNano()})
			}
			assign, _ := round.PlanAssignments(j, workers(c.live...), now)
			var got []string
			for _, a := range assign {
				got = append(got, a.Worker)
			}
			slices.Sort(got)
			if !slices.Equal(got, c.want) {
				t.Errorf("assigned %v, want %v (window counts %v)", got, c.want, round.WindowCounts(j, c.window))
			}
		})
	}
}

// TestFairBy: with fair_by, free workers of the group with the fewest
// updates in the window go first, and one plan spreads its
// slots over the groups; without it, the same fleet is planned by worker.
func TestFairBy(t *testing.T) {
	now := t0.Add(time.Hour)
	live := workers("a1", "a2", "a3", "a4", "b1", "b2", "c1")
	for _, w := range live {
		w.Labels = map[string]string{"region": w.Id[:1]}
	}
	for _, c := range []struct {
		name   string
		fairBy string
		check  func(regions map[string]int) bool
	}{
		// Every worker has one update in the window: region a 4, b 2, c 0.
		{"by region", "region", func(r map[string]int) bool { return r["c"] == 1 && r["b"] == 2 && r["a"] == 1 }},
		{"by worker", "", func(r map[string]int) bool { return r["c"] == 1 && r["a"]+r["b"] == 3 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			j := asyncTestJob()
			j.Spec.Async.Concurrency, j.Spec.Async.MaxPerWorker, j.Spec.Async.FairWindow, j.Spec.Async.FairBy = 4, 5, 3, c.fairBy
			j.History = []*pb.RoundRecord{{Workers: []string{"a1", "a2", "b1"}}, {Workers: []string{"a3", "a4", "b2"}}}
			assign, _ := round.PlanAssignments(j, live, now)
			regions := map[string]int{}
			for _, a := range assign {
				regions[a.Worker[:1]]++
			}
			if !c.check(regions) {
				t.Errorf("assigned by region %v", regions)
			}
		})
	}
}

// TestAsyncFSM: the replicated side of async jobs — tasks numbered in
// order, one per worker, accepted only against an open assignment and
// within max_staleness, each at most once; a version aggregates the
// buffer's oldest updates.
func TestAsyncFSM(t *testing.T) {
	h := &fsmHarness{t: t, f: NewFSM()}
	f := h.f
	j := asyncTestJob()
	j.Spec.Rounds = 5
	h.must(cRegister, &pb.RegisterJob{Spec: j.Spec})
	assign := func(tasks ...*pb.Assignment) error {
		return h.apply(pb.CommandType_COMMAND_TYPE_ASSIGN_TASKS, &pb.AssignTasks{Job: "a", Assign: tasks})
	}
	if err := assign(&pb.Assignment{Worker: "w1", Task: 2}); !errors.Is(err, ErrStaleRound) {
		t.Errorf("task 2 before task 1: %v", err)
	}
	if err := assign(&pb.Assignment{Worker: "w1", Task: 1}, &pb.Assignment{Worker: "w2", Task: 2}, &pb.Assignment{Worker: "w3", Task: 3}); err != nil {
		t.Fatal(err)
	}
	if err := assign(&pb.Assignment{Worker: "w1", Task: 4}); err == nil {
		t.Error("a second task for a worker already training")
	}
	accept := func(worker string, version uint32, task uint64) error {
		return h.apply(cAccept, &pb.AcceptUpdate{Job: "a", Round: version, Update: &pb.AcceptedUpdate{Worker: worker, Task: task, Samples: 1}})
	}
	if err := accept("w2", 0, 1); !errors.Is(err, ErrStaleRound) {
		t.Errorf("another worker's task: %v", err)
	}
	if err := accept("w1", 0, 1); err != nil {
		t.Fatal(err)
	}
	if err := accept("w1", 0, 1); !errors.Is(err, ErrDuplicate) {
		t.Errorf("the same task again: %v", err)
	}
	if err := accept("w2", 0, 2); err != nil {
		t.Fatal(err)
	}
	commit := func(version, n uint32) error {
		return h.apply(cCommit, &pb.CommitRound{Job: "a", Round: version, Model: "m", Buffered: n})
	}
	if err := commit(1, 3); err == nil {
		t.Error("a version of 3 updates from a buffer of 2")
	}
	if err := commit(2, 2); !errors.Is(err, ErrStaleRound) {
		t.Errorf("version 2 before version 1: %v", err)
	}
	for v := uint32(1); v <= 3; v++ {
		if v > 1 {
			next := uint64(2 * v)
			if err := assign(&pb.Assignment{Worker: "w1", Task: next, Version: v - 1}, &pb.Assignment{Worker: "w2", Task: next + 1, Version: v - 1}); err != nil {
				t.Fatal(err)
			}
			if err := accept("w1", v-1, next); err != nil {
				t.Fatal(err)
			}
			if err := accept("w2", v-1, next+1); err != nil {
				t.Fatal(err)
			}
		}
		if err := commit(v, 2); err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
	}
	// w3's task 3, from version 0, is now 3 versions old: max_staleness is 2.
	if err := accept("w3", 0, 3); !errors.Is(err, round.ErrTooStale) {
		t.Errorf("an update 3 versions stale: %v", err)
	}
	got, _ := f.Job("a")
	if len(got.History) != 3 || len(got.Async.Buffer) != 0 || got.History[0].Accepted[0].Task != 1 || got.History[0].Accepted[1].BaseVersion != 0 {
		t.Errorf("history %v, buffer %v", got.History, got.Async.Buffer)
	}
	if w := round.StalenessWeight(got.Spec.Async, 3); math.Abs(w-0.5) > 1e-12 {
		t.Errorf("(1+3)^-0.5 = %v", w)
	}
}

// TestConcurrencyAt: concurrency_final moves the limit linearly over the
// job's versions, rounded, and PlanAssignments fills only the current limit.
func TestConcurrencyAt(t *testing.T) {
	cases := []struct {
		name           string
		c0, cf, rounds uint32
		version, want  int
	}{
		{"constant without a schedule", 14, 0, 200, 150, 14},
		{"first version", 14, 6, 200, 0, 14},
		{"half way, rounded", 14, 6, 200, 100, 10}, // 14 − 8·100/199 = 9.98
		{"last version", 14, 6, 200, 199, 6},
		{"past the last (a job extended)", 14, 6, 200, 400, 6},
		{"upwards", 2, 10, 5, 2, 6},
		{"one-version job", 14, 6, 1, 0, 14},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			j := &pb.Job{Spec: &pb.JobSpec{Rounds: c.rounds, Async: &pb.AsyncSpec{Concurrency: c.c0, ConcurrencyFinal: c.cf}}, History: make([]*pb.RoundRecord, c.version)}
			if got := round.ConcurrencyAt(j); got != c.want {
				t.Errorf("round.ConcurrencyAt = %d, want %d", got, c.want)
			}
		})
	}

	now := t0.Add(time.Hour)
	j := asyncTestJob() // version 3
	j.Spec.Rounds, j.Spec.Async.Concurrency, j.Spec.Async.ConcurrencyFinal, j.Spec.Async.MaxStaleness = 7, 6, 3, 20
	// At version 3 of 7 the limit is 6 − 3·3/6 = 4.5 → 5 (math.Round rounds half away from zero).
	j.Async.Assignments = []*pb.Assignment{{Worker: "a", Task: 1, Version: 3, DeadlineUnixNano: now.Add(time.Minute).UnixNano()}}
	if assign, _ := round.PlanAssignments(j, workers("a", "b", "c", "d", "e", "f", "g", "h"), now); len(assign) != 4 {
		t.Errorf("assigned %d with 1 in flight, want 4 up to the scheduled limit of 5 (not the 6 of concurrency)", len(assign))
	}
	j.History = make([]*pb.RoundRecord, 6) // the last version: limit 3
	if assign, _ := round.PlanAssignments(j, workers("a", "b", "c", "d", "e", "f", "g", "h"), now); len(assign) != 2 {
		t.Errorf("assigned %d with 1 in flight at the last version, want 2 up to concurrency_final 3", len(assign))
	}
}
