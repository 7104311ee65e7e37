package aggregation

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

// honest returns n updates scattered around a common direction.
func honest(r *rand.Rand, n int) []Update {
	center := randUpdate(r, "c", 1).Delta
	ups := make([]Update, n)
	for i := range ups {
		d := center.Clone()
		for _, t := range d.Tensors {
			for j := range t.Data {
				t.Data[j] += float32(0.1 * r.NormFloat64())
			}
		}
		ups[i] = Update{Worker: fmt.Sprintf("h%02d", i), Delta: d, Samples: uint64(10 + r.IntN(90))}
	}
	return ups
}

func vecs(ups []Update) [][]float64 {
	out := make([][]float64, len(ups))
	for i, u := range ups {
		for _, v := range flat(u.Delta) {
			out[i] = append(out[i], float64(v))
		}
	}
	return out
}

func sortedByWorker(ups []Update) []Update {
	j, _ := prepare(ups)
	return j.ups
}

// flat is a Set as one vector, its tensors concatenated in name order.
func flat(s tensor.Set) []float32 {
	var out []float32
	for _, t := range s.Tensors {
		out = append(out, t.Data...)
	}
	return out
}

// Plain references, in float64, written for clarity.

func refColumns(vs [][]float64, f func([]float64) float64) []float64 {
	out := make([]float64, len(vs[0]))
	for c := range out {
		col := make([]float64, len(vs))
		for i := range vs {
			col[i] = vs[i][c]
		}
		sort.Float64s(col)
		out[c] = f(col)
	}
	return out
}

func refMedian(col []float64) float64 {
	n := len(col)
	if n%2 == 1 {
		return col[n/2]
	}
	return (col[n/2-1] + col[n/2]) / 2
}

func refTrimmed(beta float64) func([]float64) float64 {
	return func(col []float64) float64 {
		k := int(beta * float64(len(col)))
		var s float64
		for _, v := range col[k : len(col)-k] {
			s += v
		}
		return s / float64(len(col)-2*k)
	}
}

func dist2(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += (a[i] - b[i]) * (a[i] - b[i])
	}
	return s
}

func refKrum(vs [][]float64, f, m int) []float64 {
	n := len(vs)
	score := make([]float64, n)
	for i := range vs {
		var ds []float64
		for j := range vs {
			if i != j {
				ds = append(ds, dist2(vs[i], vs[j]))
			}
		}
		sort.Float64s(ds)
		for _, d := range ds[:n-f-2] {
			score[i] += d
		}
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return score[idx[a]] < score[idx[b]] })
	out := make([]float64, len(vs[0]))
	for _, i := range idx[:m] {
		for c := range out {
			out[c] += vs[i][c] / float64(m)
		}
	}
	return out
}

func close5(t *testing.T, name string, got tensor.Set, want []float64) {
	t.Helper()
	g := flat(got)
	for i := range want {
		if math.Abs(float64(g[i])-want[i]) > 1e-5*(1+math.Abs(want[i])) {
			t.Fatalf("%s: coordinate %d = %v, reference %v", name, i, g[i], want[i])
		}
	}
}

func TestRulesMatchReferences(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for trial := 0; trial < 30; trial++ {
		n := 7 + r.IntN(10)
		ups := honest(r, n)
		vs := vecs(sortedByWorker(ups))
		got, _, err := Median{}.Aggregate(ups)
		if err != nil {
			t.Fatal(err)
		}
		close5(t, "median", got, refColumns(vs, refMedian))
		got, _, _ = TrimmedMean{Beta: 0.2}.Aggregate(ups)
		close5(t, "trimmed-mean", got, refColumns(vs, refTrimmed(0.2)))
		f := (n - 3) / 2
		got, _, err = Krum{F: f}.Aggregate(ups)
		if err != nil {
			t.Fatal(err)
		}
		close5(t, "krum", got, refKrum(vs, f, 1))
		got, _, _ = Krum{F: f, M: 3, Multi: true}.Aggregate(ups)
		close5(t, "multi-krum", got, refKrum(vs, f, 3))
	}
}

// TestGeoMedianMinimises: the Weiszfeld result has a smaller sum of
// weighted distances than the mean and than every input.
func TestGeoMedianMinimises(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ups := honest(r, 9)
	ups[0].Delta.Tensors[0].Data[0] = 50
	vs := vecs(sortedByWorker(ups))
	w := make([]float64, len(ups))
	for i, u := range sortedByWorker(ups) {
		w[i] = float64(u.Samples)
	}
	cost := func(x []float64) float64 {
		var s float64
		for i := range vs {
			s += w[i] * math.Sqrt(dist2(x, vs[i]))
		}
		return s
	}
	got, _, _ := GeoMedian{Iterations: 50, Nu: 1e-9}.Aggregate(ups)
	var g []float64
	for _, v := range flat(got) {
		g = append(g, float64(v))
	}
	mean, _, _ := FedAvg{}.Aggregate(ups)
	var m []float64
	for _, v := range flat(mean) {
		m = append(m, float64(v))
	}
	if cost(g) > cost(m) {
		t.Errorf("geometric median cost %v above the mean's %v", cost(g), cost(m))
	}
	for i := range vs {
		if cost(g) > cost(vs[i])+1e-6 {
			t.Errorf("geometric median cost %v above input %d's %v", cost(g), i, cost(vs[i]))
		}
	}
}

// TestRobustness: with f Byzantine updates at ±1e6, each robust rule stays
// within the honest updates' coordinate range (or near their mean), while
// FedAvg is dragged away.
func TestRobustness(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	const n, f = 15, 3
	ups := honest(r, n-f)
	lo, hi := make([]float64, 15), make([]float64, 15)
	for c := range lo {
		lo[c], hi[c] = math.Inf(1), math.Inf(-1)
	}
	mean := make([]float64, 15)
	for _, u := range ups {
		for c, v := range flat(u.Delta) {
			lo[c], hi[c] = min(lo[c], float64(v)), max(hi[c], float64(v))
			mean[c] += float64(v) / float64(n-f)
		}
	}
	for k := 0; k < f; k++ {
		bad := ups[0].Delta.Clone()
		for _, t := range bad.Tensors {
			for j := range t.Data {
				t.Data[j] = float32(1e6 * float64(1-2*(k%2)))
			}
		}
		ups = append(ups, Update{Worker: fmt.Sprintf("z%02d", k), Delta: bad, Samples: 50})
	}
	inRange := func(s tensor.Set, slack float64) bool {
		for c, v := range flat(s) {
			if float64(v) < lo[c]-slack || float64(v) > hi[c]+slack {
				return false
			}
		}
		return true
	}
	for _, name := range []string{"median", "trimmed-mean", "krum", "multi-krum", "bulyan", "geomedian", "centered-clip"} {
		a, err := NewRule(name, Params{F: f, TrimFraction: 0.25, Tau: 1})
		if err != nil {
			t.Fatal(err)
		}
		got, sc, err := a.Aggregate(ups)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		slack := 0.0
		if name == "geomedian" || name == "centered-clip" {
			slack = 0.5 // not coordinate-wise: close to, not inside, the honest box
		}
		if !inRange(got, slack) {
			t.Errorf("%s: aggregate left the honest range under %d outliers: %v", name, f, flat(got)[:4])
		}
		for _, s := range sc {
			if (name == "krum" || name == "multi-krum" || name == "bulyan") && s.Worker[0] == 'z' && s.Kept {
				t.Errorf("%s kept outlier %s", name, s.Worker)
			}
		}
	}
	avg, _, _ := FedAvg{}.Aggregate(ups)
	if inRange(avg, 0.5) {
		t.Error("FedAvg stayed in range: the outliers are not strong enough for this test to mean anything")
	}
}

func TestRuleErrors(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	ups := honest(r, 5)
	if _, _, err := (Krum{F: 2}).Aggregate(ups); err == nil {
		t.Error("krum with n < 2f+3 accepted")
	}
	if _, _, err := (Bulyan{F: 1}).Aggregate(ups); err == nil {
		t.Error("bulyan with n < 4f+3 accepted")
	}
	for _, p := range []Params{{TrimFraction: 0.5}, {F: -1}, {Tau: -1}} {
		name := "trimmed-mean"
		if p.Tau < 0 {
			name = "centered-clip"
		} else if p.F < 0 {
			name = "krum"
		}
		if _, err := NewRule(name, p); err == nil {
			t.Errorf("%s with %+v accepted", name, p)
		}
	}
}

func TestNormClip(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	ups := honest(r, 4)
	a, _ := NewRule("fedavg", Params{ClipNorm: 0.5})
	got, sc, err := a.Aggregate(ups)
	if err != nil {
		t.Fatal(err)
	}
	if got.Norm() > 0.5+1e-6 {
		t.Errorf("clipped average has norm %v > 0.5", got.Norm())
	}
	if sc[0].Norm <= 0.5 {
		t.Errorf("score reports the clipped norm %v, want the original", sc[0].Norm)
	}
}

func TestSortNetwork(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	for n := 1; n <= 130; n++ {
		net := sortNetwork(n)
		for trial := 0; trial < 20; trial++ {
			v := make([]float32, n)
			for i := range v {
				v[i] = float32(r.IntN(7)) - 3 // many ties
				if trial%2 == 1 {
					v[i] = float32(r.NormFloat64())
				}
			}
			want := append([]float32(nil), v...)
			sort.Slice(want, func(a, b int) bool { return want[a] < want[b] })
			net.sort(v)
			for i := range v {
				if v[i] != want[i] {
					t.Fatalf("n=%d: network sorted to %v, want %v", n, v, want)
				}
			}
		}
	}
}

// TestBulyanCoordinateStep checks Bulyan against its coordinate step written
// plainly: over the kept updates, the mean of the β values nearest the median.
func TestBulyanCoordinateStep(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	for trial := 0; trial < 50; trial++ {
		n := 7 + r.IntN(8) // f = 1, θ = n - 2, β = θ - 2
		ups := honest(r, n)
		got, sc, err := Bulyan{F: 1}.Aggregate(ups)
		if err != nil {
			t.Fatal(err)
		}
		var chosen [][]float64
		for i, u := range sortedByWorker(ups) {
			if sc[i].Kept {
				chosen = append(chosen, vecs([]Update{u})[0])
			}
		}
		theta := len(chosen)
		if theta != n-2 {
			t.Fatalf("bulyan kept %d updates, want %d", theta, n-2)
		}
		beta := theta - 2
		g := flat(got)
		for c := range g {
			col := make([]float64, theta)
			for a := range chosen {
				col[a] = chosen[a][c]
			}
			sort.Float64s(col)
			med := refMedian(col)
			sort.SliceStable(col, func(a, b int) bool { return math.Abs(col[a]-med) < math.Abs(col[b]-med) })
			var s float64
			for _, v := range col[:beta] {
				s += v
			}
			if want := s / float64(beta); math.Abs(float64(g[c])-want) > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("n=%d coordinate %d: %v, reference %v", n, c, g[c], want)
			}
		}
	}
}

// sort sorts v, whose length must be the network's, one compare-exchange at
// a time: the plain reference the lane kernels are checked against.
func (net network) sort(v []float32) {
	for _, c := range net {
		a, b := v[c[0]], v[c[1]]
		v[c[0]], v[c[1]] = min(a, b), max(a, b)
	}
}
