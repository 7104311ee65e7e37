package sim

import (
	"bytes"
	"context"
	"encoding/csv"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fedtune/fedtune/privacy"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestSimDP: a DP run clips, adds the coordinator's noise and accounts for
// every round at the rate it sampled; a budget ends the run before the
// round that would pass it, and that last round is evaluated.
func TestSimDP(t *testing.T) {
	train, test := data(t)
	base := cfg("fedavg", "none")
	base.Workers, base.ClientsPerRound, base.Rounds, base.EvalEvery = 20, 5, 6, 100
	plain, err := Run(context.Background(), base, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	dp := base
	dp.DP = &pb.DPSpec{NoiseMultiplier: 1.2, ClipNorm: 0.5}
	got, err := Run(context.Background(), dp, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != base.Rounds {
		t.Fatalf("%d rounds, want %d", len(got), base.Rounds)
	}
	// The same sampling rate every round (5 of 20): the accountant's own
	// composition gives the ε of each round.
	a := privacy.NewAccountant()
	for i, r := range got {
		if err := a.Compose(0.25, 1.2, 1); err != nil {
			t.Fatal(err)
		}
		want, _, err := a.Epsilon(1e-5)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(r.Epsilon-want) > 1e-9*want {
			t.Errorf("round %d: ε %v, want %v", i+1, r.Epsilon, want)
		}
		if i > 0 && r.Epsilon <= got[i-1].Epsilon {
			t.Errorf("round %d: ε %v not above round %d's %v", i+1, r.Epsilon, i, got[i-1].Epsilon)
		}
	}
	last := got[len(got)-1]
	if last.Loss == plain[len(plain)-1].Loss {
		t.Error("the DP run ended on the plain run's model: no clipping or noise")
	}
	again, _ := Run(context.Background(), dp, train, test, nil)
	if again[len(again)-1].Loss != last.Loss {
		t.Errorf("DP run not reproducible: loss %v then %v", last.Loss, again[len(again)-1].Loss)
	}

	// Distributed noise: the same accounting, other noise (the workers').
	dist := dp
	dist.DP = &pb.DPSpec{NoiseMultiplier: 1.2, ClipNorm: 0.5, Distributed: true}
	dres, err := Run(context.Background(), dist, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := dres[len(dres)-1]; d.Epsilon != last.Epsilon || d.Loss == last.Loss || math.IsNaN(d.Accuracy) {
		t.Errorf("distributed: ε %v (central %v), loss %v (central %v)", d.Epsilon, last.Epsilon, d.Loss, last.Loss)
	}

	// Adaptive clipping from a clip far below the updates' norms: it
	// rises every round; from far above: it falls.
	for _, c := range []struct {
		start float64
		up    bool
	}{{0.001, true}, {1000, false}} {
		ad := dp
		ad.DP = &pb.DPSpec{NoiseMultiplier: 1.2, ClipNorm: c.start, AdaptiveClip: true, CountNoise: 1}
		ares, err := Run(context.Background(), ad, train, test, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(ares); i++ {
			if (ares[i].Clip > ares[i-1].Clip) != c.up {
				t.Errorf("adaptive clip from %v: round %d clip %v after %v", c.start, i+1, ares[i].Clip, ares[i-1].Clip)
			}
		}
		if ares[0].Clip != c.start {
			t.Errorf("round 1 clipped at %v, want the starting %v", ares[0].Clip, c.start)
		}
	}

	// A budget between rounds 3 and 4: three rounds run, the third says
	// so and was evaluated though eval_every skips it.
	dp.DP = &pb.DPSpec{NoiseMultiplier: 1.2, ClipNorm: 0.5, Epsilon: (got[2].Epsilon + got[3].Epsilon) / 2}
	short, err := Run(context.Background(), dp, train, test, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(short) != 3 || !short[2].BudgetReached || math.IsNaN(short[2].Accuracy) {
		t.Fatalf("budget %v: %d rounds (want 3), last budget-reached %v, accuracy %v", dp.DP.Epsilon, len(short), short[len(short)-1].BudgetReached, short[len(short)-1].Accuracy)
	}
	for i := range short[:2] {
		if short[i].BudgetReached {
			t.Errorf("round %d says the budget is reached", i+1)
		}
	}
	// A budget the first round alone passes: nothing runs.
	dp.DP.Epsilon = got[0].Epsilon / 2
	if none, err := Run(context.Background(), dp, train, test, nil); err != nil || len(none) != 0 {
		t.Errorf("budget below one round: %d rounds, err %v", len(none), err)
	}
}

// TestSweepDP: a sweep with DP runs writes an epsilon column (empty for the
// run without DP) and says which run stopped at its budget.
func TestSweepDP(t *testing.T) {
	e, _ := points(t, "workers: 20\nclients_per_round: 5\nrounds: 4\nlocal_steps: 5\ndp_noise: [0, 1]\ndp_clip: 0.5\ndp_epsilon: 4.5")
	dir := t.TempDir()
	sum, err := Sweep(context.Background(), e, SweepOptions{Out: dir, Data: loader(t)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.csv"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := slices.Index(rows[0], "epsilon")
	if col < 0 {
		t.Fatalf("no epsilon column: %v", rows[0])
	}
	for _, r := range rows[1:] {
		if (r[1] == "0") != (r[col] == "") {
			t.Errorf("row %v: ε %q", r, r[col])
		}
	}
	plain, dp := sum.Runs[0], sum.Runs[1]
	if plain.Epsilon != 0 || plain.Budget || plain.Rounds != 4 {
		t.Errorf("run without DP: %+v", plain)
	}
	// σ 1 at q 0.25: ε 4.42 after 3 rounds, 4.87 after 4
	if !dp.Budget || dp.Rounds != 3 || dp.Epsilon > 4.5 || dp.DivergedAtDone {
		t.Errorf("DP run: %d rounds, ε %v, stopped at budget %v, diverged %v", dp.Rounds, dp.Epsilon, dp.Budget, dp.DivergedAtDone)
	}
}
