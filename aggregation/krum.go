package aggregation

import (
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/fedtune/fedtune/tensor"
)

// gram returns the n×n Gram matrix of the updates (row-major, symmetric):
// every pair's dot product, computed sub-block by sub-block while the
// sub-block is in cache, on all cores, with the chunks' partial sums added
// in chunk order so the result is deterministic. It is one pass over the
// updates, and the distances of Krum and Bulyan (‖a‖² + ‖b‖² − 2a·b) and
// the iterations of the geometric median and centered clipping all come
// from it.
//
// The products are summed in float32 lanes for speed; updates with values
// near 1e19 would overflow them. Then, and only then, the Gram matrix is
// computed again from the updates scaled by a power of two (exact) that
// brings their largest value near 2^40, and scaled back in float64 — so
// ordinary updates get exactly the fast path's bits, and huge ones a
// finite matrix.
func (j *job) gram() ([]float64, error) {
	g, err := gramOf(j.vs, j.d)
	if err != nil || allFinite(g) {
		return g, err
	}
	m, err := maxAbs(j.vs, j.d)
	if err != nil {
		return nil, err
	}
	_, e := math.Frexp(m)
	k := e - 40
	by := float32(math.Ldexp(1, -k))
	scaledVs := make([]tensor.Vector, len(j.vs))
	for i, v := range j.vs {
		scaledVs[i] = scaled{v: v, by: by}
	}
	if g, err = gramOf(scaledVs, j.d); err != nil {
		return nil, err
	}
	back := math.Ldexp(1, 2*k)
	for i := range g {
		g[i] *= back
	}
	return g, nil
}

// maxAbs returns the largest absolute value in the vectors (of length d).
func maxAbs(vs []tensor.Vector, d int) (float64, error) {
	var m float64
	buf := make([]float32, min(d, 1<<16))
	for _, v := range vs {
		for lo := 0; lo < d; lo += len(buf) {
			b, err := v.Block(lo, min(lo+len(buf), d), buf)
			if err != nil {
				return 0, fmt.Errorf("aggregation: %w", err)
			}
			for _, x := range b {
				m = max(m, math.Abs(float64(x)))
			}
		}
	}
	return m, nil
}

func allFinite(x []float64) bool {
	for _, v := range x {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// gramOf is gram's pass over the vectors vs of length d.
func gramOf(vs []tensor.Vector, d int) ([]float64, error) {
	n := len(vs)
	chunks := numChunks(d)
	partial := make([]float64, chunks*n*n)
	rd := newReader(vs, d)
	subs := make([][][]float32, workers(d))
	err := forChunks(d, func(w, c, lo, hi int) error {
		blocks, err := rd.chunk(w, lo, hi, nil)
		if err != nil {
			return err
		}
		if subs[w] == nil {
			subs[w] = make([][]float32, n)
		}
		p := partial[c*n*n : (c+1)*n*n]
		for s := 0; s < hi-lo; s += gramBlock {
			e := min(s+gramBlock, hi-lo)
			for i, b := range blocks {
				subs[w][i] = b[s:e]
			}
			gram(subs[w], p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("aggregation: %w", err)
	}
	g := make([]float64, n*n)
	for c := 0; c < chunks; c++ {
		for k, x := range partial[c*n*n : (c+1)*n*n] {
			g[k] += x
		}
	}
	for i := 0; i < n; i++ {
		for k := i + 1; k < n; k++ {
			g[k*n+i] = g[i*n+k]
		}
	}
	return g, nil
}

// gramBlock is the stretch of coordinates the Gram kernel works on at
// once: rows of 8 KiB, long enough to amortise each pair's lane reduction.
const gramBlock = 2048

// norms returns every update's L2 norm.
func (j *job) norms() ([]float64, error) {
	n := j.n
	chunks := numChunks(j.d)
	partial := make([]float64, chunks*n)
	rd := newReader(j.vs, j.d)
	err := forChunks(j.d, func(w, c, lo, hi int) error {
		blocks, err := rd.chunk(w, lo, hi, nil)
		if err != nil {
			return err
		}
		for i, b := range blocks {
			partial[c*n+i] = tensor.Dot(b, b)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("aggregation: %w", err)
	}
	out := make([]float64, n)
	for c := 0; c < chunks; c++ {
		for i := range n {
			out[i] += partial[c*n+i]
		}
	}
	for i := range out {
		out[i] = math.Sqrt(out[i])
	}
	return out, nil
}

// sqDistances returns the n×n squared L2 distances from the Gram matrix.
func sqDistances(g []float64, n int) [][]float64 {
	out := make([][]float64, n)
	for i := range out {
		out[i] = make([]float64, n)
	}
	for i := 0; i < n; i++ {
		for k := i + 1; k < n; k++ {
			x := max(g[i*n+i]+g[k*n+k]-2*g[i*n+k], 0)
			out[i][k], out[k][i] = x, x
		}
	}
	return out
}

// krumScores returns, for each update among idx, the sum of squared
// distances to its n−f−2 nearest others among idx (Blanchard et al. 2017).
func krumScores(d [][]float64, idx []int, f int) []float64 {
	n := len(idx)
	k := max(n-f-2, 1)
	out := make([]float64, n)
	row := make([]float64, 0, n)
	for a, i := range idx {
		row = row[:0]
		for _, j := range idx {
			if j != i {
				row = append(row, d[i][j])
			}
		}
		sort.Float64s(row)
		for _, x := range row[:min(k, len(row))] {
			out[a] += x
		}
	}
	return out
}

func defaultF(n int, f int) int {
	if f > 0 {
		return f
	}
	return max((n-3)/2, 0) // the most Krum tolerates: n ≥ 2f + 3
}

// Krum selects the update closest to its n−f−2 nearest neighbours; with
// Multi, the M best are averaged (Multi-Krum). Ties go to the smaller
// worker id.
type Krum struct {
	F, M  int
	Multi bool
}

// Name returns "krum" or "multi-krum".
func (r Krum) Name() string {
	if r.Multi {
		return "multi-krum"
	}
	return "krum"
}

// Aggregate returns the Krum choice, or the Multi-Krum average.
func (r Krum) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	j, err := prepare(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := j.n
	f := defaultF(n, r.F)
	if n < 2*f+3 {
		return tensor.Set{}, nil, fmt.Errorf("%s: %d updates cannot tolerate f=%d (needs n ≥ 2f+3 = %d)", r.Name(), n, f, 2*f+3)
	}
	g, err := j.gram()
	if err != nil {
		return tensor.Set{}, nil, err
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	sc := krumScores(sqDistances(g, n), idx, f)
	order := slices.Clone(idx)
	sort.SliceStable(order, func(a, b int) bool { return sc[order[a]] < sc[order[b]] })
	m := 1
	if r.Multi {
		m = r.M
		if m == 0 {
			m = n - f
		}
		m = min(m, n)
	}
	weights := make([]float64, n)
	for _, i := range order[:m] {
		weights[i] = 1 / float64(m)
	}
	out, s, err := j.linear(weights, g)
	for i := range s {
		s[i].Kept = weights[i] > 0
	}
	return out, s, err
}

// Bulyan (El Mhamdi et al. 2018) picks θ = n − 2f updates by repeated Krum,
// then per coordinate averages the β = θ − 2f values closest to their
// median. It needs n ≥ 4f + 3.
type Bulyan struct{ F int }

// Name returns "bulyan".
func (Bulyan) Name() string { return "bulyan" }

// Aggregate returns the Bulyan aggregate.
func (r Bulyan) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	j, err := prepare(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := j.n
	f := r.F
	if f == 0 {
		f = max((n-3)/4, 0)
	}
	if n < 4*f+3 {
		return tensor.Set{}, nil, fmt.Errorf("bulyan: %d updates cannot tolerate f=%d (needs n ≥ 4f+3 = %d)", n, f, 4*f+3)
	}
	g, err := j.gram()
	if err != nil {
		return tensor.Set{}, nil, err
	}
	d := sqDistances(g, n)
	theta := n - 2*f
	remaining := make([]int, n)
	for i := range remaining {
		remaining[i] = i
	}
	var chosen []int
	for len(chosen) < theta {
		sc := krumScores(d, remaining, f)
		best := 0
		for a := range sc {
			if sc[a] < sc[best] {
				best = a
			}
		}
		chosen = append(chosen, remaining[best])
		remaining = slices.Delete(remaining, best, best+1)
	}
	slices.Sort(chosen)
	beta := theta - 2*f
	weights := make([]float64, n)
	for _, i := range chosen {
		weights[i] = 1 / float64(theta)
	}
	// Per coordinate: the mean of the β chosen values nearest their
	// median. In sorted order those are a contiguous window: the one whose
	// farther end is nearest the median (ties: the lower window).
	cols := columns(theta, sortNetwork(theta), func(s []float32, _ int, out *[lanes]float32) {
		for l := range lanes {
			med := s[theta/2*lanes+l]
			if theta%2 == 0 {
				med = s[(theta/2-1)*lanes+l]*0.5 + med*0.5
			}
			best, bestCost := 0, float32(math.Inf(1))
			for w := 0; w+beta <= theta; w++ {
				if cost := max(med-s[w*lanes+l], s[(w+beta-1)*lanes+l]-med); cost < bestCost {
					best, bestCost = w, cost
				}
			}
			sum := s[best*lanes+l]
			for w := best + 1; w < best+beta; w++ {
				sum += s[w*lanes+l]
			}
			out[l] = sum / float32(beta)
			if math.IsInf(float64(out[l]), 0) {
				// float32 overflow near its limit: sum again in float64.
				var sum64 float64
				for w := best; w < best+beta; w++ {
					sum64 += float64(s[w*lanes+l])
				}
				out[l] = float32(sum64 / float64(beta))
			}
		}
	})
	out, s, err := j.combine(weights, func(blocks [][]float32, dst, scratch []float32) {
		rows := make([][]float32, theta)
		for a, i := range chosen {
			rows[a] = blocks[i]
		}
		cols(rows, dst, scratch)
	})
	for i := range s {
		s[i].Kept = weights[i] > 0
	}
	return out, s, err
}
