package aggregation

import (
	"fmt"
	"math"
	"slices"

	"github.com/fedtune/fedtune/tensor"
)

// Params are the hyper-parameters of the robust rules; zero values get the
// defaults noted.
type Params struct {
	TrimFraction float64 // trimmed mean: fraction β cut from each end per coordinate (default 0.1)
	F            int     // Krum, Multi-Krum, Bulyan: number of Byzantine updates tolerated (default: as many as n allows)
	M            int     // Multi-Krum: updates averaged (default n - f)
	ClipNorm     float64 // > 0: scale every update to at most this L2 norm before the rule
	Tau          float64 // centered clipping radius (default 10)
	Iterations   int     // centered clipping and geometric median iterations (default 3 and 10)
	Smoothing    float64 // geometric median ν (default 1e-6)
}

// Rules lists the rule names New accepts.
var Rules = []string{"fedavg", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "geomedian", "centered-clip"}

// NewRule returns the rule named name with params. Norm clipping, when
// params.ClipNorm > 0, wraps any rule.
func NewRule(name string, p Params) (Aggregator, error) {
	var a Aggregator
	switch name {
	case "", "fedavg":
		a = FedAvg{}
	case "median":
		a = Median{}
	case "trimmed-mean":
		b := p.TrimFraction
		if b == 0 {
			b = 0.1
		}
		if b < 0 || b >= 0.5 {
			return nil, fmt.Errorf("trimmed-mean: trim fraction %v, want [0, 0.5)", b)
		}
		a = TrimmedMean{Beta: b}
	case "krum":
		a = Krum{F: p.F, M: 1}
	case "multi-krum":
		a = Krum{F: p.F, M: p.M, Multi: true}
	case "bulyan":
		a = Bulyan{F: p.F}
	case "geomedian":
		it, nu := p.Iterations, p.Smoothing
		if it == 0 {
			it = DefaultGeoMedianIterations
		}
		if nu == 0 {
			nu = 1e-6
		}
		a = GeoMedian{Iterations: it, Nu: nu}
	case "centered-clip":
		tau, it := p.Tau, p.Iterations
		if tau == 0 {
			tau = 10
		}
		if it == 0 {
			it = 3
		}
		if tau < 0 {
			return nil, fmt.Errorf("centered-clip: tau %v must be positive", tau)
		}
		a = CenteredClip{Tau: tau, Iterations: it}
	default:
		return nil, fmt.Errorf("aggregation: unknown rule %q (known: %v)", name, Rules)
	}
	if p.F < 0 || p.M < 0 || p.Iterations < 0 || p.ClipNorm < 0 {
		return nil, fmt.Errorf("aggregation: negative parameter in %+v", p)
	}
	if p.ClipNorm > 0 {
		a = NormClip{Inner: a, Max: p.ClipNorm}
	}
	return a, nil
}

func uniform(n int) []float64 {
	w := make([]float64, n)
	for i := range w {
		w[i] = 1 / float64(n)
	}
	return w
}

// Median is the coordinate-wise median (the mean of the two middle values
// for an even count). It is unchanged by fewer than n/2 arbitrary updates
// as long as they stay fewer than the honest ones on each side.
type Median struct{}

// Name returns "median".
func (Median) Name() string { return "median" }

// Aggregate returns the coordinate-wise median.
func (Median) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	mid := func(n int) (int, int) { return (n - 1) / 2, n/2 + 1 } // the middle one or two
	return coordinateRule(updates, mid, func(s []float32, n int, out *[lanes]float32) {
		lo, hi := mid(n)
		meanRowsFinite(s, lo, hi, out)
	})
}

// TrimmedMean drops the ⌊βn⌋ largest and smallest values per coordinate
// and averages the rest (Yin et al. 2018).
type TrimmedMean struct{ Beta float64 }

// Name returns "trimmed-mean".
func (TrimmedMean) Name() string { return "trimmed-mean" }

// Aggregate returns the coordinate-wise trimmed mean.
func (r TrimmedMean) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	k := func(n int) int { return int(r.Beta * float64(n)) }
	return coordinateRule(updates, func(n int) (int, int) { return k(n), n - k(n) }, func(s []float32, n int, out *[lanes]float32) {
		meanRowsFinite(s, k(n), n-k(n), out)
	})
}

// meanRowsFinite is meanRows, whose float32 sums overflow for values near
// the float32 limit (the mean of two 3.4e38 is +Inf there): a lane that
// overflowed is summed again in float64, so the mean of finite values is
// finite. Other lanes keep meanRows' bits.
func meanRowsFinite(s []float32, a, b int, out *[lanes]float32) {
	meanRows(s, a, b, out)
	for l, v := range out {
		if !math.IsInf(float64(v), 0) {
			continue
		}
		var sum float64
		for r := a; r < b; r++ {
			sum += float64(s[r*lanes+l])
		}
		out[l] = float32(sum / float64(b-a))
	}
}

// maxNetwork is the largest column a sorting network sorts; longer ones
// use a comparison sort.
const maxNetwork = 128

// coordinateRule sorts each coordinate's column of values and reduces it
// with reduce, all lanes at once: s holds n sorted rows of lanes columns. The reduction only reads the sum of sorted
// positions span(n) = [lo, hi), so the sort is pruned to what that sum needs.
func coordinateRule(updates []Update, span func(n int) (int, int), reduce func(s []float32, n int, out *[lanes]float32)) (tensor.Set, []Score, error) {
	j, err := prepare(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	lo, hi := span(j.n)
	return j.combine(uniform(j.n), columns(j.n, sortNetwork(j.n).forSum(j.n, lo, hi), reduce))
}

// columns returns the fill of a coordinate-wise rule over the given rows,
// sorting each column with net (or, past maxNetwork, a comparison sort).
func columns(n int, net network, reduce func(s []float32, n int, out *[lanes]float32)) fill {
	return func(rows [][]float32, dst []float32, s []float32) {
		var out [lanes]float32
		var col []float32
		if n > maxNetwork {
			col = make([]float32, n)
		}
		for g := 0; g < len(dst); g += lanes {
			m := min(lanes, len(dst)-g)
			if n <= maxNetwork {
				loadLanes(rows, g, m, s)
				sortLanes(net, s)
			} else {
				sortColumnsSlow(rows, g, m, s, col)
			}
			reduce(s, n, &out)
			copy(dst[g:g+m], out[:m])
		}
	}
}

// sortColumnsSlow is loadLanes and sortLanes for columns too long for a
// network, one column at a time with a comparison sort (col: n floats of
// scratch).
func sortColumnsSlow(rows [][]float32, g, m int, s, col []float32) {
	for l := range m {
		for r, row := range rows {
			col[r] = row[g+l] + 0
		}
		slices.Sort(col)
		for r, v := range col {
			s[r*lanes+l] = v
		}
	}
}

// GeoMedian is the sample-weighted geometric median by smoothed Weiszfeld
// iterations (RFA, Pillutla et al. 2022), run until the iterate moves by
// less than GeoMedianTolerance of its scale or Iterations are done.
type GeoMedian struct {
	Iterations int // most iterations
	Nu         float64
}

// GeoMedianTolerance ends the Weiszfeld iterations: the iterate moved by
// less than this fraction of its norm plus its mean distance to the
// updates (the objective, so the test keeps its scale when the median is
// near zero). A weight change alone is no test: a weight of 1e-10 on an
// update of 1e19 still moves the median by 1e9.
const GeoMedianTolerance = 1e-7

// DefaultGeoMedianIterations caps the iterations when a job sets none.
// Converging takes a few dozen with one far outlier; the cap only bounds
// the time of a degenerate case.
const DefaultGeoMedianIterations = 1000

// Name returns "geomedian".
func (GeoMedian) Name() string { return "geomedian" }

// Aggregate returns the approximate geometric median. Every iterate is a
// weighted average of the updates, v = Σ c_j u_j, so the iterations run on
// the weights alone, with distances from the Gram matrix G
// (‖u_i − v‖² = G_ii − 2(Gc)_i + cᵀGc): one pass over the updates for G,
// one for the result, whatever the number of iterations.
func (r GeoMedian) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	j, err := prepare(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := j.n
	alpha := make([]float64, n)
	var total float64
	for i, u := range j.ups {
		alpha[i] = float64(max(u.Samples, 1))
		total += alpha[i]
	}
	c := make([]float64, n)
	for i := range c {
		c[i] = alpha[i] / total
	}
	if r.Iterations == 0 {
		return j.average(c)
	}
	g, err := j.gram()
	if err != nil {
		return tensor.Set{}, nil, err
	}
	next, dc := make([]float64, n), make([]float64, n)
	for it := 0; it < r.Iterations; it++ {
		d := distancesToCombination(g, c)
		var sum float64
		for i := range c {
			next[i] = alpha[i] / max(r.Nu, d[i])
			sum += next[i]
		}
		var objective float64
		for i := range c {
			next[i] /= sum
			dc[i] = next[i] - c[i]
			objective += c[i] * d[i]
		}
		moved, norm := quadForm(g, dc), quadForm(g, next)
		c, next = next, c
		if math.Sqrt(moved) <= GeoMedianTolerance*(math.Sqrt(norm)+objective) {
			break
		}
	}
	return j.linear(c, g)
}

// quadForm returns xᵀGx for the n×n matrix g (row-major), at least 0.
func quadForm(g, x []float64) float64 {
	n := len(x)
	var q float64
	for i := range n {
		var row float64
		for k := range n {
			row += g[i*n+k] * x[k]
		}
		q += x[i] * row
	}
	return max(q, 0)
}

// distancesToCombination returns ‖u_i − Σ_j c_j u_j‖ for every i from the
// Gram matrix g (n×n, row-major).
func distancesToCombination(g []float64, c []float64) []float64 {
	n := len(c)
	gc := make([]float64, n)
	var cgc float64
	for i := range n {
		for k := range n {
			gc[i] += g[i*n+k] * c[k]
		}
		cgc += c[i] * gc[i]
	}
	d := make([]float64, n)
	for i := range n {
		d[i] = math.Sqrt(max(g[i*n+i]-2*gc[i]+cgc, 0))
	}
	return d
}

// CenteredClip iterates v ← v + mean_i clip_τ(z_i − v) from v = 0
// (Karimireddy et al. 2021): each update moves the aggregate by at most τ.
// With workers sending momentum (sim's worker momentum) this is the
// paper's robust momentum method.
type CenteredClip struct {
	Tau        float64
	Iterations int
}

// Name returns "centered-clip".
func (CenteredClip) Name() string { return "centered-clip" }

// Aggregate returns the centered-clipping aggregate. Like GeoMedian it
// iterates on the weights of v = Σ c_j u_j with distances from the Gram
// matrix: v + (1/n)Σ s_i(u_i − v) has weights c(1 − Σs_i/n) + s/n.
func (r CenteredClip) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	j, err := prepare(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := j.n
	c := make([]float64, n)
	if r.Iterations == 0 {
		return j.average(c)
	}
	g, err := j.gram()
	if err != nil {
		return tensor.Set{}, nil, err
	}
	for it := 0; it < r.Iterations; it++ {
		d := distancesToCombination(g, c)
		var ssum float64
		s := make([]float64, n)
		for i := range s {
			s[i] = 1
			if d[i] > r.Tau {
				s[i] = r.Tau / d[i]
			}
			ssum += s[i]
		}
		for i := range c {
			c[i] = c[i]*(1-ssum/float64(n)) + s[i]/float64(n)
		}
	}
	return j.linear(c, g)
}

// NormClip scales every update to at most Max in L2 norm, then applies Inner.
type NormClip struct {
	Inner Aggregator
	Max   float64
}

// Name returns the inner rule's name with "+clip".
func (r NormClip) Name() string { return r.Inner.Name() + "+clip" }

// Aggregate clips, then aggregates with Inner. Scores report the original
// norms. Clipped updates are scaled as they are read, not copied.
func (r NormClip) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	j, err := prepare(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	norms, err := j.norms()
	if err != nil {
		return tensor.Set{}, nil, err
	}
	clipped := make([]Update, j.n)
	for i, u := range j.ups {
		clipped[i] = u
		if norms[i] > r.Max {
			clipped[i].Source = scaled{v: j.vs[i], by: float32(r.Max / norms[i])}
		}
	}
	out, s, err := r.Inner.Aggregate(clipped)
	for i := range s {
		s[i].Norm = norms[i]
	}
	return out, s, err
}

// scaled is a Vector multiplied by a constant as it is read.
type scaled struct {
	v  tensor.Vector
	by float32
}

func (s scaled) Layout() tensor.Layout { return s.v.Layout() }

func (s scaled) Block(lo, hi int, buf []float32) ([]float32, error) {
	b, err := s.v.Block(lo, hi, buf)
	if err != nil {
		return nil, err
	}
	out := buf[:hi-lo]
	copy(out, b)
	tensor.Scale(s.by, out)
	return out, nil
}
