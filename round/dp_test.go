package round

import (
	"errors"
	"math"
	"testing"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/privacy"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// TestNormalizeDP: a DP job needs a noise multiplier and a clipping norm,
// FedAvg, sync rounds; δ defaults to 1e-5; the rule clips at the DP norm.
func TestNormalizeDP(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(*pb.JobSpec)
		field string
	}{
		{"ok", func(s *pb.JobSpec) {}, ""},
		{"no noise", func(s *pb.JobSpec) { s.Dp.NoiseMultiplier = 0 }, "dp.noise_multiplier"},
		{"no clip", func(s *pb.JobSpec) { s.Dp.ClipNorm = 0 }, "dp.clip_norm"},
		{"delta 1", func(s *pb.JobSpec) { s.Dp.Delta = 1 }, "dp.delta"},
		{"negative budget", func(s *pb.JobSpec) { s.Dp.Epsilon = -1 }, "dp.epsilon"},
		{"robust rule", func(s *pb.JobSpec) { s.Aggregator = "median" }, "aggregator"},
		{"async", func(s *pb.JobSpec) { s.Mode = ModeAsync }, "mode"},
		{"other clipping", func(s *pb.JobSpec) { s.AggregatorParams = &pb.AggregatorParams{ClipNorm: 3} }, "aggregator_params.clip_norm"},
		{"distributed, coordinator clipping", func(s *pb.JobSpec) {
			s.Dp.Distributed, s.AggregatorParams = true, &pb.AggregatorParams{ClipNorm: 0.5}
		}, "aggregator_params.clip_norm"},
	}
	for _, c := range cases {
		s := &pb.JobSpec{Name: "j", Model: "m", Dataset: "d", Rounds: 1, Dp: &pb.DPSpec{NoiseMultiplier: 1, ClipNorm: 0.5}}
		c.edit(s)
		err := NormalizeSpec(s, fakeModels{}, nil)
		if c.field == "" {
			if err != nil || s.Dp.Delta != DefaultDPDelta || s.AggregatorParams.GetClipNorm() != 0.5 {
				t.Errorf("%s: %v, δ %v, clip %v", c.name, err, s.Dp.GetDelta(), s.AggregatorParams.GetClipNorm())
			}
			continue
		}
		if fe, ok := errors.AsType[*FieldError](err); !ok || fe.Field != c.field {
			t.Errorf("%s: %v, want an error about %s", c.name, err, c.field)
		}
	}
}

// TestDPNoise: the noise is the same for the same seed and round (verify
// recomputes it), other for another round, with standard deviation σC/n.
func TestDPNoise(t *testing.T) {
	dp := &pb.DPSpec{NoiseMultiplier: 2, ClipNorm: 0.5}
	zeros := func() tensor.Set {
		return tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{200, 100}, Data: make([]float32, 20000)})
	}
	a, b, c := zeros(), zeros(), zeros()
	std := addDPNoise(dp, 7, 3, 10, 0, a)
	addDPNoise(dp, 7, 3, 10, 0, b)
	addDPNoise(dp, 7, 4, 10, 0, c)
	if std != 0.1 {
		t.Errorf("std %v, want σC/n = 0.1", std)
	}
	var ss float64
	same, differ := true, false
	for i, v := range a.Tensors[0].Data {
		ss += float64(v) * float64(v)
		same = same && v == b.Tensors[0].Data[i]
		differ = differ || v != c.Tensors[0].Data[i]
	}
	if !same || !differ {
		t.Errorf("noise the same for the same round %v, different for another %v", same, differ)
	}
	if got := math.Sqrt(ss / 20000); math.Abs(got-0.1) > 0.003 {
		t.Errorf("empirical std %v, want 0.1", got)
	}
}

// TestDPAccounting: a committed round carries the ε spent so far, as the
// accountant composes each round at its own rate; a round that would pass
// the budget is refused by DPWouldExceed.
func TestDPAccounting(t *testing.T) {
	spec := &pb.JobSpec{Name: "j", Rounds: 10, BaseModel: "b", Dp: &pb.DPSpec{NoiseMultiplier: 1.1, ClipNorm: 1, Delta: 1e-5, Epsilon: 3}}
	j, err := NewJob(spec, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := privacy.NewAccountant()
	for n, sel := range []int{10, 20} {
		r := &pb.Round{Number: uint32(n + 1), BaseModel: "b", Eligible: 100, DeadlineUnixNano: 2}
		for i := range sel {
			r.Selected = append(r.Selected, string(rune('a'+i/26))+string(rune('a'+i%26)))
		}
		if err := j.StartRound(r); err != nil {
			t.Fatal(err)
		}
		if err := j.AcceptUpdate(uint32(n+1), &pb.AcceptedUpdate{Worker: r.Selected[0], Samples: 1}); err != nil {
			t.Fatal(err)
		}
		if err := j.CommitRound(&pb.CommitRound{Job: "j", Round: uint32(n + 1), Model: "m"}, 3); err != nil {
			t.Fatal(err)
		}
		if err := want.Compose(float64(sel)/100, 1.1, 1); err != nil {
			t.Fatal(err)
		}
		eps, _, _ := want.Epsilon(1e-5)
		if got := j.History[n].Metrics["dp_epsilon"]; math.Abs(got-eps) > 1e-12 {
			t.Errorf("round %d: dp_epsilon %v, accountant %v", n+1, got, eps)
		}
	}
	over, eps, err := DPWouldExceed(j.Job, 100, 100) // a round taking everyone: q = 1
	if err != nil || !over || eps <= 3 {
		t.Errorf("a round at q = 1 with σ 1.1 and budget 3: over %v, ε %v, %v", over, eps, err)
	}
	if over, _, _ := DPWouldExceed(j.Job, 1, 1000); over {
		t.Error("a round at q = 0.001 refused with budget left")
	}
}

// TestDistributedDP: each worker's share of the noise makes the mean's
// noise σC/n; a round whose updates were fewer than its selected workers
// carried less noise, and is accounted with σ·√(m/n).
func TestDistributedDP(t *testing.T) {
	dp := &pb.DPSpec{NoiseMultiplier: 2, ClipNorm: 0.5, Distributed: true, Delta: 1e-5}
	if got, want := WorkerNoiseStd(dp, 16), 2*0.5/4.0; got != want {
		t.Errorf("worker noise %v, want %v", got, want)
	}
	// n workers' noise of std σC/√n, averaged: σC/n
	if n := 16.0; math.Abs(WorkerNoiseStd(dp, 16)*math.Sqrt(n)/n-2*0.5/n) > 1e-12 {
		t.Error("the mean's noise is not σC/n")
	}
	s := &pb.JobSpec{Name: "j", Model: "m", Dataset: "d", Rounds: 1, Dp: dp}
	if err := NormalizeSpec(s, fakeModels{}, nil); err != nil || s.AggregatorParams.GetClipNorm() != 0 {
		t.Fatalf("distributed DP spec: %v, coordinator clip %v", err, s.AggregatorParams.GetClipNorm())
	}
	full := &pb.RoundRecord{Selected: 10, Updates: 10, Eligible: 20}
	half := &pb.RoundRecord{Selected: 10, Updates: 5, Eligible: 20}
	if roundSigma(dp, full) != 2 || math.Abs(roundSigma(dp, half)-2*math.Sqrt(0.5)) > 1e-12 {
		t.Errorf("σ of a full round %v, of a half round %v", roundSigma(dp, full), roundSigma(dp, half))
	}
	central := &pb.DPSpec{NoiseMultiplier: 2, ClipNorm: 0.5}
	if roundSigma(central, half) != 2 {
		t.Error("central noise does not depend on who arrived")
	}
	a, _ := DPEpsilon(&pb.Job{Spec: &pb.JobSpec{Dp: dp}, History: []*pb.RoundRecord{full}})
	b, _ := DPEpsilon(&pb.Job{Spec: &pb.JobSpec{Dp: dp}, History: []*pb.RoundRecord{half}})
	if !(b > a) {
		t.Errorf("a round with dropouts spent ε %v, a full one %v: want more", b, a)
	}
}

// TestAdaptiveClip: the count's noise must leave room for the update's
// (σ_b > σ/2), the update's noise multiplier is raised so that the two
// cost σ, and the clip moves toward the target quantile of the norms,
// deterministically.
func TestAdaptiveClip(t *testing.T) {
	spec := func(edit func(*pb.DPSpec)) *pb.JobSpec {
		s := &pb.JobSpec{Name: "j", Model: "m", Dataset: "d", Rounds: 1, ClientsPerRound: 100, Dp: &pb.DPSpec{NoiseMultiplier: 1, ClipNorm: 0.5, AdaptiveClip: true}}
		edit(s.Dp)
		return s
	}
	s := spec(func(*pb.DPSpec) {})
	if err := NormalizeSpec(s, fakeModels{}, nil); err != nil || s.Dp.CountNoise != 5 || s.Dp.TargetQuantile != 0.5 || s.Dp.ClipLr != 0.2 {
		t.Fatalf("defaults: %v %v", err, s.Dp)
	}
	if got, want := updateSigma(s.Dp), 1/math.Sqrt(1-1.0/100); math.Abs(got-want) > 1e-12 {
		t.Errorf("σ_Δ %v, want %v", got, want)
	}
	for name, edit := range map[string]func(*pb.DPSpec){
		"count noise too small": func(d *pb.DPSpec) { d.CountNoise = 0.4 },
		"distributed":           func(d *pb.DPSpec) { d.Distributed = true },
		"quantile 1":            func(d *pb.DPSpec) { d.TargetQuantile = 1 },
	} {
		if err := NormalizeSpec(spec(edit), fakeModels{}, nil); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	scores := func(norms ...float64) []aggregation.Score {
		var out []aggregation.Score
		for _, n := range norms {
			out = append(out, aggregation.Score{Norm: n})
		}
		return out
	}
	dp := &pb.DPSpec{NoiseMultiplier: 1, ClipNorm: 1, AdaptiveClip: true, TargetQuantile: 0.5, ClipLr: 0.2, CountNoise: 1e-9}
	if _, next := adaptClip(dp, 1, 1, 1, scores(2, 3, 4, 5)); !(next > 1) {
		t.Errorf("every update clipped, the clip went to %v: want it up", next)
	}
	if _, next := adaptClip(dp, 1, 1, 1, scores(0.1, 0.2, 0.3, 0.4)); !(next < 1) {
		t.Errorf("no update clipped, the clip went to %v: want it down", next)
	}
	if f, next := adaptClip(dp, 1, 1, 1, scores(0.5, 0.6, 2, 3)); math.Abs(f-0.5) > 1e-6 || math.Abs(next-1) > 1e-6 {
		t.Errorf("half clipped: fraction %v, next %v: want 0.5 and the clip kept", f, next)
	}
	dp.CountNoise = 1
	a1, _ := adaptClip(dp, 7, 3, 1, scores(1, 2))
	a2, _ := adaptClip(dp, 7, 3, 1, scores(1, 2))
	b, _ := adaptClip(dp, 7, 4, 1, scores(1, 2))
	if a1 != a2 || a1 == b {
		t.Errorf("the count's noise is not a function of the seed and round: %v %v %v", a1, a2, b)
	}
	j := &pb.Job{Spec: &pb.JobSpec{Dp: dp}, History: []*pb.RoundRecord{{Metrics: map[string]float64{"dp_clip_next": 1.7}}}}
	if DPClip(j, 1) != 1 || DPClip(j, 2) != 1.7 {
		t.Errorf("clips of rounds 1 and 2: %v %v", DPClip(j, 1), DPClip(j, 2))
	}
}
