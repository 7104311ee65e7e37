package sim

import (
	"context"
	"maps"
	"math"
	"slices"
	"testing"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
)

func TestParseSpeeds(t *testing.T) {
	for _, c := range []struct {
		spec     string
		lo, hi   float64
		distinct bool
	}{
		{"", 1, 1, false},
		{"1", 1, 1, false},
		{"uniform:1,10", 1, 10, true},
		{"lognormal:1", 1, math.Inf(1), true},
		{"tiers:gpu=1,cpu=10", 1, 10, true},
	} {
		s, err := ParseSpeeds(c.spec, 20, 1)
		if err != nil {
			t.Fatalf("%q: %v", c.spec, err)
		}
		least, most := math.Inf(1), 0.0
		for _, v := range s {
			least, most = min(least, v), max(most, v)
		}
		if least < c.lo-1e-9 || most > c.hi || (most > least) != c.distinct {
			t.Errorf("%q: factors in [%v, %v]", c.spec, least, most)
		}
		again, _ := ParseSpeeds(c.spec, 20, 1)
		for i := range s {
			if s[i] != again[i] {
				t.Fatalf("%q: not a function of its seed", c.spec)
			}
		}
	}
	if s, _ := ParseSpeeds("tiers:gpu=1,cpu=10", 4, 1); s[0] != 1 || s[1] != 10 || s[2] != 1 {
		t.Errorf("tiers dealt %v", s)
	}
	for _, bad := range []string{"uniform:10,1", "uniform:0,1", "lognormal:x", "tiers:gpu", "warp:9"} {
		if _, err := ParseSpeeds(bad, 4, 1); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestSimAsync: async mode in simulated time is reproducible, aggregates
// buffer_size updates per version with staleness within its bound, and
// with speeds differing tenfold gets through the same number of updates in
// less simulated time than sync rounds, which wait for their slowest
// worker, while learning as well.
func TestSimAsync(t *testing.T) {
	train, test := data(t)
	base := Config{Model: "mnist-mlp-small", Workers: 20, Rounds: 8, ClientsPerRound: 5, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 15, BatchSize: 32, LR: 0.1, Momentum: 0.5}, Rule: "fedavg", Seed: 3, Speed: "uniform:1,10"}
	async := base
	async.Mode, async.Async = "async", &pb.AsyncSpec{BufferSize: 5, Concurrency: 10, MaxStaleness: 3}
	a, err := Run(context.Background(), async, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Run(context.Background(), async, train, test, nil)
	sync, err := Run(context.Background(), base, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	var staleness float64
	for i, r := range a {
		if r.Accuracy != again[i].Accuracy || r.SimTime != again[i].SimTime {
			t.Fatalf("version %d differs between two runs: %+v vs %+v", i+1, r, again[i])
		}
		if r.Participants != 5 || r.MeanStaleness > 3 || (i > 0 && r.SimTime < a[i-1].SimTime) {
			t.Errorf("version %d: %+v", i+1, r)
		}
		staleness += r.MeanStaleness
	}
	la, ls := a[len(a)-1], sync[len(sync)-1]
	t.Logf("8 versions/rounds of 5 updates: async %.1f s (accuracy %.3f, mean staleness %.2f), sync %.1f s (accuracy %.3f)",
		la.SimTime, la.Accuracy, staleness/float64(len(a)), ls.SimTime, ls.Accuracy)
	if la.SimTime > 0.7*ls.SimTime {
		t.Errorf("async took %.1f simulated s, sync %.1f: async should not wait for stragglers", la.SimTime, ls.SimTime)
	}
	if staleness == 0 {
		t.Error("no update was stale: the simulation ran in lockstep")
	}
	if la.Accuracy < ls.Accuracy-0.05 {
		t.Errorf("async accuracy %.3f, sync %.3f", la.Accuracy, ls.Accuracy)
	}
	bad := async
	bad.Attack, bad.Byzantine = "ipm", 0.2
	if _, err := Run(context.Background(), bad, train, test, nil); err == nil {
		t.Error("an attack in async mode was accepted")
	}
}

// TestSimOverSelect: sync rounds that over-select sample more workers,
// train them all, keep the first clients_per_round to arrive, and so wait
// less than rounds that wait for every sampled worker.
func TestSimOverSelect(t *testing.T) {
	train, test := data(t)
	base := Config{Model: "mnist-mlp-small", Workers: 20, Rounds: 4, ClientsPerRound: 5, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 10, BatchSize: 32, LR: 0.1, Momentum: 0.5}, Rule: "fedavg", Seed: 3, Speed: "uniform:1,10"}
	over := base
	over.OverSelect = 0.4
	plain, err := Run(context.Background(), base, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Run(context.Background(), over, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range got {
		if r.Participants != 5 || r.Trained != 7 || plain[i].Trained != 5 {
			t.Errorf("round %d: %d kept of %d trained (plain: %d of %d), want 5 of 7 (5 of 5)", r.Round, r.Participants, r.Trained, plain[i].Participants, plain[i].Trained)
		}
	}
	if last, p := got[len(got)-1], plain[len(plain)-1]; !(last.SimTime < p.SimTime) {
		t.Errorf("over-selected rounds took %.1f simulated s, plain ones %.1f: keeping the first arrivals should wait less", last.SimTime, p.SimTime)
	}
}

// TestSimFairWindow: with fair_window W and max_per_worker 1, no worker
// has two updates within W consecutive versions, so the slow half of an
// uneven fleet gets a larger share of the versions than with the cap on
// the buffer alone, and Jain's index of the per-worker updates rises; so
// does the slow tier's share with fair_by tier (groups before workers).
func TestSimFairWindow(t *testing.T) {
	train, test := data(t)
	cfg := Config{Model: "mnist-mlp-small", Workers: 20, Rounds: 20, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 3, BatchSize: 16, LR: 0.1}, Rule: "fedavg", Seed: 5, Speed: "tiers:gpu=1,cpu=10", Mode: "async", EvalEvery: 20}
	run := func(window uint32, fairBy string) (slowShare, jain float64) {
		c := cfg
		c.Async = &pb.AsyncSpec{BufferSize: 4, Concurrency: 8, MaxPerWorker: 1, FairWindow: window, FairBy: fairBy}
		res, err := Run(context.Background(), c, train, test, nil)
		if err != nil {
			t.Fatal(err)
		}
		counts := make([]int, c.Workers)
		last := map[int]int{} // worker → last version with its update
		slow, total := 0, 0
		for _, r := range res {
			for _, w := range r.Workers {
				if v, ok := last[w]; ok && r.Round-v < int(window) {
					t.Errorf("window %d: worker %d in versions %d and %d", window, w, v, r.Round)
				}
				last[w] = r.Round
				counts[w]++
				total++
				if w%2 == 1 { // tiers are dealt in turn: odd workers are the slow tier
					slow++
				}
			}
		}
		return float64(slow) / float64(total), Jain(counts)
	}
	s1, j1 := run(1, "")
	s5, j5 := run(5, "")
	sb, _ := run(1, "tier")
	t.Logf("slow tier's share of updates: %.2f (buffer only), %.2f (window of 5 versions), %.2f (buffer only, fair by tier); Jain's index %.2f → %.2f", s1, s5, sb, j1, j5)
	if !(s5 > s1+0.1) || !(j5 > j1) {
		t.Errorf("window of 5 versions: slow share %.2f (buffer only %.2f), Jain %.2f (%.2f): want both higher", s5, s1, j5, j1)
	}
	if !(sb > s1+0.05) {
		t.Errorf("fair by tier: slow share %.2f, buffer only %.2f: want it higher", sb, s1)
	}
}

func TestJain(t *testing.T) {
	for _, c := range []struct {
		counts []int
		want   float64
	}{
		{[]int{3, 3, 3}, 1},
		{[]int{4, 0, 0, 0}, 0.25},
		{[]int{1, 0}, 0.5},
		{[]int{0, 0}, 1},
		{[]int{2, 1, 1}, 16.0 / 18},
	} {
		if got := Jain(c.counts); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("Jain(%v) = %v, want %v", c.counts, got, c.want)
		}
	}
}

// TestSimAsyncDropout: in async mode a worker that vanishes mid-task frees
// its slot at once (the coordinator's PlanAssignments withdraws the
// assignments of workers no longer live): with a third of the tasks lost
// and eight slots, the job would stall within a few versions if lost tasks
// kept theirs. It still makes every version of buffer_size updates,
// reproducibly, and the losses change the run.
func TestSimAsyncDropout(t *testing.T) {
	train, test := data(t)
	cfg := Config{Model: "mnist-mlp-small", Workers: 20, Rounds: 15, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 3, BatchSize: 16, LR: 0.1}, Rule: "fedavg", Seed: 5, Speed: "uniform:1,10", Mode: "async", EvalEvery: 15,
		Async: &pb.AsyncSpec{BufferSize: 4, Concurrency: 8}}
	plain, err := Run(context.Background(), cfg, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dropout = 0.33
	var runs [2][]RoundResult
	for i := range runs {
		if runs[i], err = Run(context.Background(), cfg, train, test, nil); err != nil {
			t.Fatalf("with dropout: %v", err)
		}
	}
	if len(runs[0]) != 15 {
		t.Fatalf("%d versions, want 15", len(runs[0]))
	}
	same := true
	for i, r := range runs[0] {
		if r.Participants != 4 || len(r.Workers) != 4 {
			t.Errorf("version %d aggregates %d updates, want 4", r.Round, r.Participants)
		}
		if r.SimTime != runs[1][i].SimTime || r.Accuracy != runs[1][i].Accuracy && !math.IsNaN(r.Accuracy) {
			t.Fatalf("version %d differs between two runs", r.Round)
		}
		same = same && slices.Equal(r.Workers, plain[i].Workers) && r.SimTime == plain[i].SimTime
	}
	if same {
		t.Error("dropout 0.33 changed nothing: no task was lost")
	}
	t.Logf("15 versions: %.1f simulated s without dropout, %.1f s with a third of the tasks lost", plain[14].SimTime, runs[0][14].SimTime)
}

// TestWorkerLabels: simulated workers carry the labels fair_by can name —
// their speed tier, dealt in turn as ParseSpeeds deals the factors, and
// their language group, dealt as dataset.SplitGroups deals them.
func TestWorkerLabels(t *testing.T) {
	for _, c := range []struct {
		cfg    Config
		groups int
		w      int
		want   map[string]string
	}{
		{Config{Speed: "uniform:1,10"}, 0, 3, map[string]string{}},
		{Config{Speed: "tiers:gpu=1,cpu=10"}, 0, 0, map[string]string{"tier": "gpu"}},
		{Config{Speed: "tiers:gpu=1,cpu=10"}, 0, 3, map[string]string{"tier": "cpu"}},
		{Config{Speed: "tiers:a=1,b=2,c=4", Partition: dataset.Partition{Kind: "groups"}}, 2, 5, map[string]string{"tier": "c", "group": "1"}},
		{Config{Partition: dataset.Partition{Kind: "iid"}}, 2, 5, map[string]string{}},
	} {
		if got := workerLabels(c.cfg, c.groups, c.w); !maps.Equal(got, c.want) {
			t.Errorf("%+v, worker %d: labels %v, want %v", c.cfg, c.w, got, c.want)
		}
	}
}

// TestDetectSeconds: a worker that vanishes holds a sync round until the
// coordinator notices (detect_seconds after it vanished), and an async slot
// as long; learning is unchanged, only time moves.
func TestDetectSeconds(t *testing.T) {
	train, test := data(t)
	base := Config{Model: "mnist-mlp-small", Workers: 20, Rounds: 6, ClientsPerRound: 5, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 3, BatchSize: 16, LR: 0.1}, Rule: "fedavg", Seed: 5, Speed: "uniform:1,10", Dropout: 0.3, EvalEvery: 6}
	async := base
	async.Mode, async.Async = "async", &pb.AsyncSpec{BufferSize: 4, Concurrency: 8}
	for _, c := range []struct {
		name string
		cfg  Config
	}{{"sync", base}, {"async", async}} {
		t.Run(c.name, func(t *testing.T) {
			var runs [2][]RoundResult
			for i, detect := range []float64{0, 10} {
				cfg := c.cfg
				cfg.DetectSeconds = detect
				res, err := Run(context.Background(), cfg, train, test, nil)
				if err != nil {
					t.Fatal(err)
				}
				runs[i] = res
			}
			at, slow := runs[0][len(runs[0])-1], runs[1][len(runs[1])-1]
			t.Logf("%d rounds/versions: %.1f simulated s noticed at once, %.1f s noticed after 10 s", len(runs[0]), at.SimTime, slow.SimTime)
			// A sync round waits 10 s more for each loss; async loses the
			// slot for 10 s while the other slots go on.
			if want := at.SimTime + 10; c.name == "sync" && !(slow.SimTime > want) || !(slow.SimTime > at.SimTime) {
				t.Errorf("noticing vanished workers 10 s late took %.1f s, at once %.1f s", slow.SimTime, at.SimTime)
			}
			if c.name == "sync" {
				if at.Accuracy != slow.Accuracy {
					t.Errorf("accuracy %v and %v: detection changed what sync rounds learn", at.Accuracy, slow.Accuracy)
				}
				prev := 0.0
				for _, r := range runs[1] {
					if r.Participants < base.ClientsPerRound && r.SimTime-prev < 10 {
						t.Errorf("round %d lost a worker and lasted %.1f s, less than the 10 s to notice", r.Round, r.SimTime-prev)
					}
					prev = r.SimTime
				}
			}
		})
	}
}

// TestSimConcurrencySchedule: with concurrency_final the simulator keeps
// fewer workers training as the job goes on (it plans with
// round.PlanAssignments), so the last versions are fresher than the
// first, while a constant limit keeps them as stale throughout.
func TestSimConcurrencySchedule(t *testing.T) {
	train, test := data(t)
	cfg := Config{Model: "mnist-mlp-small", Workers: 20, Rounds: 20, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 3, BatchSize: 16, LR: 0.1}, Rule: "fedavg", Seed: 5, Speed: "uniform:1,10", Mode: "async", EvalEvery: 20}
	staleness := func(final uint32) (first, last float64) {
		cfg.Async = &pb.AsyncSpec{BufferSize: 2, Concurrency: 10, ConcurrencyFinal: final, MaxStaleness: 20}
		res, err := Run(context.Background(), cfg, train, test, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			first += res[i+2].MeanStaleness / 5 // from the third version: the first ones cannot be stale yet
			last += res[len(res)-5+i].MeanStaleness / 5
		}
		return first, last
	}
	cFirst, cLast := staleness(0)
	sFirst, sLast := staleness(1)
	t.Logf("mean staleness of versions 3–7 and 16–20: constant 10 training %.2f and %.2f, 10 → 1 %.2f and %.2f", cFirst, cLast, sFirst, sLast)
	if sLast > 1 || sLast > sFirst/3 {
		t.Errorf("10 → 1 training at once: staleness %.2f early, %.2f late; want the late versions (≤ 3 training) nearly fresh", sFirst, sLast)
	}
	if cLast < cFirst/2 {
		t.Errorf("constant concurrency: staleness %.2f early, %.2f late; want it steady", cFirst, cLast)
	}
}

// TestSimDriftCorrection: drift_correction changes what stale updates add
// (the simulator corrects them with round.Drift, from the
// versions it keeps), reproducibly, and the job still learns.
func TestSimDriftCorrection(t *testing.T) {
	train, test := data(t)
	cfg := Config{Model: "mnist-mlp-small", Workers: 20, Rounds: 10, Partition: dataset.Partition{Kind: "iid", Seed: 1},
		Train: model.TrainConfig{Steps: 15, BatchSize: 32, LR: 0.1, Momentum: 0.5}, Rule: "fedavg", Seed: 3, Speed: "uniform:1,10", Mode: "async", EvalEvery: 5}
	run := func(beta float64) []RoundResult {
		cfg.Async = &pb.AsyncSpec{BufferSize: 3, Concurrency: 8, MaxStaleness: 4, DriftCorrection: beta}
		res, err := Run(context.Background(), cfg, train, test, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	plain, corrected, again := run(0), run(0.5), run(0.5)
	last := len(plain) - 1
	t.Logf("accuracy after %d versions: %.4f plain, %.4f drift-corrected", last+1, plain[last].Accuracy, corrected[last].Accuracy)
	if corrected[last].Accuracy != again[last].Accuracy {
		t.Errorf("two drift-corrected runs differ: %.4f and %.4f", corrected[last].Accuracy, again[last].Accuracy)
	}
	if corrected[last].Accuracy == plain[last].Accuracy {
		t.Error("drift correction changed nothing")
	}
	if corrected[last].Accuracy < plain[last].Accuracy-0.05 || corrected[last].Accuracy < 0.6 {
		t.Errorf("drift-corrected accuracy %.4f against %.4f without", corrected[last].Accuracy, plain[last].Accuracy)
	}
}

// TestSimSpeedJitter: a task's jitter factor has mean 1 and the log-spread
// σ asked for, and none at σ 0; with jitter, sync rounds take other times
// but train the same models (their time decides nothing in sync), async
// runs change (arrival order does), and both are reproducible.
func TestSimSpeedJitter(t *testing.T) {
	for _, sigma := range []float64{0, 0.25, 0.5, 1} {
		var sum, sumLog, sumLog2 float64
		const n = 20000
		for k := range uint64(n) {
			f := jitterFactor(sigma, k)
			sum += f
			sumLog += math.Log(f)
			sumLog2 += math.Log(f) * math.Log(f)
		}
		mean, sd := sum/n, math.Sqrt(sumLog2/n-(sumLog/n)*(sumLog/n))
		if math.Abs(mean-1) > 0.03*(1+sigma) || math.Abs(sd-sigma) > 0.02 {
			t.Errorf("σ %.2f: factors of mean %.3f and log-spread %.3f, want 1 and %.2f", sigma, mean, sd, sigma)
		}
	}
	train, test := data(t)
	run := func(mode string, jitter float64) []RoundResult {
		cfg := Config{Model: "mnist-mlp-small", Workers: 12, Rounds: 6, ClientsPerRound: 4, Partition: dataset.Partition{Kind: "iid", Seed: 1},
			Train: model.TrainConfig{Steps: 5, BatchSize: 16, LR: 0.1}, Rule: "fedavg", Seed: 4, Speed: "uniform:1,10", Mode: mode, EvalEvery: 3,
			SpeedJitter: jitter, Async: &pb.AsyncSpec{BufferSize: 2, Concurrency: 4, MaxStaleness: 10}}
		res, err := Run(context.Background(), cfg, train, test, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	same := func(a, b []RoundResult, time bool) bool {
		for i := range a {
			if a[i].Accuracy != b[i].Accuracy && !(math.IsNaN(a[i].Accuracy) && math.IsNaN(b[i].Accuracy)) {
				return false
			}
			if time && a[i].SimTime != b[i].SimTime {
				return false
			}
		}
		return len(a) == len(b)
	}
	syncPlain, syncJit := run("sync", 0), run("sync", 0.5)
	if !same(syncPlain, syncJit, false) {
		t.Error("sync: jitter changed what was trained")
	}
	if same(syncPlain, syncJit, true) {
		t.Error("sync: jitter changed no round's time")
	}
	if !same(syncJit, run("sync", 0.5), true) {
		t.Error("sync with jitter is not reproducible")
	}
	asyncJit := run("async", 0.5)
	if !same(asyncJit, run("async", 0.5), true) {
		t.Error("async with jitter is not reproducible")
	}
	if same(run("async", 0), asyncJit, true) {
		t.Error("async: jitter changed nothing")
	}
}
