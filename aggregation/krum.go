package aggregation

import (
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/fedtune/fedtune/tensor"
)

// sqDistances returns the n×n squared L2 distances between the updates
// from their Gram matrix (‖a‖² + ‖b‖² − 2a·b). The Gram matrix is computed
// block by block — every pair's dot product over one chunk of coordinates
// while that chunk is in cache — on all cores, with the chunks' partial
// sums added in chunk order so the result is deterministic.
func sqDistances(vs [][]float32) [][]float64 {
	n := len(vs)
	d := len(vs[0])
	chunks := (d + chunkSize - 1) / chunkSize
	partial := make([]float64, chunks*n*n)
	forChunks(d, func(c, lo, hi int) {
		p := partial[c*n*n : (c+1)*n*n]
		for i := 0; i < n; i++ {
			for j := i; j < n; j++ {
				p[i*n+j] = tensor.Dot(vs[i][lo:hi], vs[j][lo:hi])
			}
		}
	})
	gram := make([]float64, n*n)
	for c := 0; c < chunks; c++ {
		for k, x := range partial[c*n*n : (c+1)*n*n] {
			gram[k] += x
		}
	}
	out := make([][]float64, n)
	for i := range out {
		out[i] = make([]float64, n)
	}
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			x := max(gram[i*n+i]+gram[j*n+j]-2*gram[i*n+j], 0)
			out[i][j], out[j][i] = x, x
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
	ups, vs, err := flatten(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := len(ups)
	f := defaultF(n, r.F)
	if n < 2*f+3 {
		return tensor.Set{}, nil, fmt.Errorf("%s: %d updates cannot tolerate f=%d (needs n ≥ 2f+3 = %d)", r.Name(), n, f, 2*f+3)
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	sc := krumScores(sqDistances(vs), idx, f)
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
	agg := make([]float32, len(vs[0]))
	for _, i := range order[:m] {
		weights[i] = 1 / float64(m)
	}
	for i := range vs {
		if weights[i] > 0 {
			tensor.Axpy(float32(weights[i]), vs[i], agg)
		}
	}
	out := unflat(agg, ups[0].Delta)
	s := scores(ups, weights, out)
	for i := range s {
		s[i].Kept = weights[i] > 0
	}
	return out, s, nil
}

// Bulyan (El Mhamdi et al. 2018) picks θ = n − 2f updates by repeated Krum,
// then per coordinate averages the β = θ − 2f values closest to their
// median. It needs n ≥ 4f + 3.
type Bulyan struct{ F int }

// Name returns "bulyan".
func (Bulyan) Name() string { return "bulyan" }

// Aggregate returns the Bulyan aggregate.
func (r Bulyan) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	ups, vs, err := flatten(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := len(ups)
	f := r.F
	if f == 0 {
		f = max((n-3)/4, 0)
	}
	if n < 4*f+3 {
		return tensor.Set{}, nil, fmt.Errorf("bulyan: %d updates cannot tolerate f=%d (needs n ≥ 4f+3 = %d)", n, f, 4*f+3)
	}
	d := sqDistances(vs)
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
	agg := make([]float32, len(vs[0]))
	net := sortNetwork(theta)
	forChunks(len(agg), func(_, lo, hi int) {
		col := make([]float32, theta)
		for c := lo; c < hi; c++ {
			for a, i := range chosen {
				col[a] = vs[i][c]
			}
			if theta <= maxNetwork {
				net.sort(col)
			} else {
				slices.Sort(col)
			}
			med := col[theta/2]
			if theta%2 == 0 {
				med = float32((float64(col[theta/2-1]) + float64(col[theta/2])) / 2)
			}
			// In sorted order the β values nearest the median are a
			// contiguous window: the one whose farther end is nearest
			// (ties: the lower window).
			best, bestCost := 0, float32(math.Inf(1))
			for s := 0; s+beta <= theta; s++ {
				if cost := max(med-col[s], col[s+beta-1]-med); cost < bestCost {
					best, bestCost = s, cost
				}
			}
			var sum float64
			for _, v := range col[best : best+beta] {
				sum += float64(v)
			}
			agg[c] = float32(sum / float64(beta))
		}
	})
	out := unflat(agg, ups[0].Delta)
	weights := make([]float64, n)
	for _, i := range chosen {
		weights[i] = 1 / float64(theta)
	}
	s := scores(ups, weights, out)
	for i := range s {
		s[i].Kept = weights[i] > 0
	}
	return out, s, nil
}
