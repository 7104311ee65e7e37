package aggregation

import (
	"fmt"
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
			it = 10
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

// flat is an update as one vector (the Set's tensors concatenated in name
// order), which is what the robust rules reason about.
func flat(s tensor.Set) []float32 {
	out := make([]float32, 0, s.Len())
	for _, t := range s.Tensors {
		out = append(out, t.Data...)
	}
	return out
}

// flatten checks and orders updates (as sorted does) and flattens each.
func flatten(updates []Update) ([]Update, [][]float32, error) {
	ups, err := sorted(updates)
	if err != nil {
		return nil, nil, err
	}
	vs := make([][]float32, len(ups))
	for i, u := range ups {
		vs[i] = flat(u.Delta)
	}
	return ups, vs, nil
}

// unflat writes v into a Set with the layout of like.
func unflat(v []float32, like tensor.Set) tensor.Set {
	out := tensor.ZerosLike(like)
	off := 0
	for _, t := range out.Tensors {
		copy(t.Data, v[off:off+len(t.Data)])
		off += len(t.Data)
	}
	return out
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
	net := sortNetwork(len(updates))
	return coordinateRule(updates, func(col []float32) float32 {
		n := len(col)
		if n <= maxNetwork {
			net.sort(col)
			if n%2 == 1 {
				return col[n/2]
			}
			return float32((float64(col[n/2-1]) + float64(col[n/2])) / 2)
		}
		if n%2 == 1 {
			return selectK(col, n/2)
		}
		lo := selectK(col, n/2-1)
		hi := selectK(col, n/2)
		return float32((float64(lo) + float64(hi)) / 2)
	})
}

// TrimmedMean drops the ⌊βn⌋ largest and smallest values per coordinate
// and averages the rest (Yin et al. 2018).
type TrimmedMean struct{ Beta float64 }

// Name returns "trimmed-mean".
func (TrimmedMean) Name() string { return "trimmed-mean" }

// Aggregate returns the coordinate-wise trimmed mean.
func (r TrimmedMean) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	net := sortNetwork(len(updates))
	return coordinateRule(updates, func(col []float32) float32 {
		k := int(r.Beta * float64(len(col)))
		if len(col) <= maxNetwork {
			net.sort(col)
		} else {
			slices.Sort(col)
		}
		var s float64
		for _, v := range col[k : len(col)-k] {
			s += float64(v)
		}
		return float32(s / float64(len(col)-2*k))
	})
}

// maxNetwork is the largest column a sorting network sorts; longer ones
// use selection or a comparison sort.
const maxNetwork = 128

// coordinateBlock is how many coordinates a coordinate-wise rule gathers at
// once: the n × block buffer stays in cache.
const coordinateBlock = 256

// coordinateRule applies f to each coordinate's column of values (in
// worker-id order; f may reorder the column), block by block.
func coordinateRule(updates []Update, f func(col []float32) float32) (tensor.Set, []Score, error) {
	ups, err := sorted(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := len(ups)
	out := tensor.ZerosLike(ups[0].Delta)
	for k, t := range out.Tensors {
		forChunks(len(t.Data), func(_, clo, chi int) {
			buf := make([]float32, n*coordinateBlock)
			for lo := clo; lo < chi; lo += coordinateBlock {
				hi := min(lo+coordinateBlock, chi)
				for i, u := range ups {
					src := u.Delta.Tensors[k].Data[lo:hi]
					for j, v := range src {
						buf[j*n+i] = v
					}
				}
				for j := 0; j < hi-lo; j++ {
					t.Data[lo+j] = f(buf[j*n : (j+1)*n])
				}
			}
		})
	}
	return out, scores(ups, uniform(n), out), nil
}

// selectK returns the k-th smallest value of v (0-based), reordering v.
func selectK(v []float32, k int) float32 {
	lo, hi := 0, len(v)-1
	for lo < hi {
		p := v[(lo+hi)/2]
		i, j := lo, hi
		for i <= j {
			for v[i] < p {
				i++
			}
			for v[j] > p {
				j--
			}
			if i <= j {
				v[i], v[j] = v[j], v[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return v[k]
		}
	}
	return v[k]
}

// GeoMedian is the sample-weighted geometric median by smoothed Weiszfeld
// iterations (RFA, Pillutla et al. 2022).
type GeoMedian struct {
	Iterations int
	Nu         float64
}

// Name returns "geomedian".
func (GeoMedian) Name() string { return "geomedian" }

// Aggregate returns the approximate geometric median.
func (r GeoMedian) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	ups, vs, err := flatten(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := len(ups)
	alpha := make([]float64, n)
	var total float64
	for i, u := range ups {
		alpha[i] = float64(max(u.Samples, 1))
		total += alpha[i]
	}
	v := make([]float32, len(vs[0]))
	for i := range vs {
		tensor.Axpy(float32(alpha[i]/total), vs[i], v)
	}
	w := make([]float64, n)
	diff := make([]float32, len(v))
	for it := 0; it < r.Iterations; it++ {
		var sum float64
		for i := range vs {
			copy(diff, vs[i])
			tensor.Axpy(-1, v, diff)
			w[i] = alpha[i] / max(r.Nu, tensor.Norm(diff))
			sum += w[i]
		}
		clear(v)
		for i := range vs {
			w[i] /= sum
			tensor.Axpy(float32(w[i]), vs[i], v)
		}
	}
	out := unflat(v, ups[0].Delta)
	if r.Iterations == 0 {
		for i := range w {
			w[i] = alpha[i] / total
		}
	}
	return out, scores(ups, w, out), nil
}

// CenteredClip iterates v ← v + mean_i clip_τ(z_i − v) from v = 0
// (Karimireddy et al. 2021): each update moves the aggregate by at most τ.
type CenteredClip struct {
	Tau        float64
	Iterations int
}

// Name returns "centered-clip".
func (CenteredClip) Name() string { return "centered-clip" }

// Aggregate returns the centered-clipping aggregate.
func (r CenteredClip) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	ups, vs, err := flatten(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	n := len(ups)
	v := make([]float32, len(vs[0]))
	step := make([]float32, len(v))
	diff := make([]float32, len(v))
	for it := 0; it < r.Iterations; it++ {
		clear(step)
		for i := range vs {
			copy(diff, vs[i])
			tensor.Axpy(-1, v, diff)
			scale := 1.0
			if nrm := tensor.Norm(diff); nrm > r.Tau {
				scale = r.Tau / nrm
			}
			tensor.Axpy(float32(scale/float64(n)), diff, step)
		}
		tensor.Axpy(1, step, v)
	}
	out := unflat(v, ups[0].Delta)
	return out, scores(ups, uniform(n), out), nil
}

// NormClip scales every update to at most Max in L2 norm, then applies Inner.
type NormClip struct {
	Inner Aggregator
	Max   float64
}

// Name returns the inner rule's name with "+clip".
func (r NormClip) Name() string { return r.Inner.Name() + "+clip" }

// Aggregate clips, then aggregates with Inner. Scores report the original norms.
func (r NormClip) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	clipped := make([]Update, len(updates))
	norms := map[string]float64{}
	for i, u := range updates {
		nrm := u.Delta.Norm()
		norms[u.Worker] = nrm
		clipped[i] = u
		if nrm > r.Max {
			d := u.Delta.Clone()
			for _, t := range d.Tensors {
				tensor.Scale(float32(r.Max/nrm), t.Data)
			}
			clipped[i].Delta = d
		}
	}
	out, s, err := r.Inner.Aggregate(clipped)
	for i := range s {
		s[i].Norm = norms[s[i].Worker]
	}
	return out, s, err
}
