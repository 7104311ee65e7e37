package aggregation

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

func constUpdate(worker string, d int, v float32, noise float64, r *rand.Rand) Update {
	x := make([]float32, d)
	for i := range x {
		x[i] = v + float32(noise*r.NormFloat64())
	}
	return Update{Worker: worker, Samples: 100, Delta: tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{d}, Data: x})}
}

// TestHostileMagnitudes: one huge (finite) update among six honest ones
// around 0.45 never makes an aggregate NaN or infinite, and the robust
// rules stay near the honest value — the float32 sums of the Gram matrix
// and of the coordinate-wise means overflowed before, and geomedian's ten
// fixed iterations ended far from converged.
func TestHostileMagnitudes(t *testing.T) {
	const d = 999 // not a multiple of the lanes
	for _, big := range []float32{1e12, 1e19, 3e38} {
		for _, rule := range Rules {
			t.Run(fmt.Sprintf("%s/%g", rule, big), func(t *testing.T) {
				r := rand.New(rand.NewPCG(1, 2))
				var ups []Update
				for i := range 6 {
					ups = append(ups, constUpdate(fmt.Sprintf("h%d", i), d, 0.45, 0.05, r))
				}
				ups = append(ups, constUpdate("z-attacker", d, big, 0, r))
				agg, err := NewRule(rule, Params{F: 1, TrimFraction: 0.2})
				if err != nil {
					t.Fatal(err)
				}
				out, scores, err := agg.Aggregate(ups)
				if err != nil {
					t.Fatal(err)
				}
				if err := out.CheckFinite(); err != nil {
					t.Fatalf("aggregate not finite: %v", err)
				}
				for _, s := range scores {
					if math.IsNaN(s.Weight) || math.IsInf(s.Weight, 0) {
						t.Errorf("score of %s: weight %v", s.Worker, s.Weight)
					}
				}
				mean := tensor.Dot(out.Tensors[0].Data, ones(d)) / d
				t.Logf("mean %.6f", mean)
				// Centered clipping moves by at most τ per iteration
				// towards the attacker (3 × 10/7 in norm here).
				if rule != "fedavg" && math.Abs(mean-0.45) > 0.15 {
					t.Errorf("mean %.4g, want near the honest 0.45", mean)
				}
			})
		}
	}
}

func ones(d int) []float32 {
	x := make([]float32, d)
	for i := range x {
		x[i] = 1
	}
	return x
}

// TestAggregatesAtTheFloat32Limit: n updates all at the largest float32
// average to it, not to +Inf (each float32 weight 1/n may round up, and
// the float32 sums overflowed for n = 10 and 18), and their scores are
// finite (the float32 lanes of the norms overflowed).
func TestAggregatesAtTheFloat32Limit(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{3, 10, 16, 18, 20} {
		var ups []Update
		for i := range n {
			ups = append(ups, constUpdate(fmt.Sprint(i), 40, math.MaxFloat32, 0, r))
		}
		for _, rule := range Rules {
			agg, err := NewRule(rule, Params{Tau: 1e39})
			if err != nil {
				t.Fatal(err)
			}
			out, scores, err := agg.Aggregate(ups)
			if err != nil {
				continue // e.g. bulyan needs more updates than f allows
			}
			if err := out.CheckFinite(); err != nil {
				t.Errorf("%s of %d: %v", rule, n, err)
			}
			for _, s := range scores {
				for _, v := range []float64{s.Weight, s.Norm, s.Distance, s.Cosine} {
					if math.IsNaN(v) || math.IsInf(v, 0) {
						t.Errorf("%s of %d: score %+v", rule, n, s)
					}
				}
			}
		}
	}
}

// TestMedianOfHugeValues: the mean of the two middle values of an even
// count does not overflow.
func TestMedianOfHugeValues(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ups := []Update{constUpdate("a", 33, 3.4e38, 0, r), constUpdate("b", 33, 3.4e38, 0, r)}
	for _, rule := range []Aggregator{Median{}, TrimmedMean{Beta: 0.1}} {
		out, _, err := rule.Aggregate(ups)
		if err != nil {
			t.Fatal(err)
		}
		if err := out.CheckFinite(); err != nil {
			t.Errorf("%s: %v", rule.Name(), err)
		}
	}
}
