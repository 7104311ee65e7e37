// Package aggregation combines workers' updates into one: the Aggregator
// interface, sample-weighted FedAvg, and the per-update scores that feed the
// contribution ledger.
//
// Every rule is deterministic: updates are processed in worker-id order and
// summed in a fixed order, so any coordinator recomputing a round from the
// same accepted updates gets the same bytes.
package aggregation

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/fedtune/fedtune/tensor"
)

// Update is one worker's contribution to a round.
type Update struct {
	Worker string
	// Delta is the update (local - base) in memory; or
	Delta tensor.Set
	// Source, when not nil, is read instead of Delta: an update streamed
	// block by block from storage (a blob file, a compressed payload), so
	// that aggregating n updates never holds n models in memory.
	Source  tensor.Vector
	Samples uint64 // examples it trained on (FedAvg weight)
}

// vector returns the update as a tensor.Vector.
func (u Update) vector() tensor.Vector {
	if u.Source != nil {
		return u.Source
	}
	return tensor.SetVector(u.Delta)
}

// Score describes what one update contributed to an aggregate.
type Score struct {
	Worker   string
	Weight   float64 // share of the aggregate (sums to 1 over kept updates)
	Norm     float64 // L2 norm of the update
	Distance float64 // L2 distance from the aggregate
	Cosine   float64 // cosine similarity with the aggregate (0 if either is zero)
	Kept     bool    // false when a robust rule rejected the update
}

// Aggregator turns a round's updates into one delta.
type Aggregator interface {
	// Name is the rule's name as a job spec gives it.
	Name() string
	// Aggregate returns the combined delta and one Score per update, in the
	// order of updates sorted by worker id. Updates must share one layout.
	Aggregate(updates []Update) (tensor.Set, []Score, error)
}

// ErrNoUpdates is returned when there is nothing to aggregate.
var ErrNoUpdates = errors.New("aggregation: no updates")

// New returns the rule named name with default parameters ("" means fedavg).
func New(name string) (Aggregator, error) { return NewRule(name, Params{}) }

// FedAvg is McMahan et al.'s federated averaging: the mean of the updates
// weighted by each worker's sample count (equal weights when all are 0).
type FedAvg struct{}

// Name returns "fedavg".
func (FedAvg) Name() string { return "fedavg" }

// Aggregate returns sum_i (n_i / sum n) * delta_i, reading each update
// once, with no copy of it.
func (FedAvg) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	j, err := prepare(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	var total float64
	for _, u := range j.ups {
		total += float64(u.Samples)
	}
	weights := make([]float64, j.n)
	for i, u := range j.ups {
		if total > 0 {
			weights[i] = float64(u.Samples) / total
		} else {
			weights[i] = 1 / float64(j.n)
		}
	}
	return j.average(weights)
}

// job is one aggregation: the updates sorted by worker id, as vectors of
// one layout.
type job struct {
	ups    []Update
	vs     []tensor.Vector
	layout tensor.Layout
	n, d   int
}

// prepare checks updates share one layout and orders them by worker id.
func prepare(updates []Update) (*job, error) {
	if len(updates) == 0 {
		return nil, ErrNoUpdates
	}
	ups := append([]Update(nil), updates...)
	sort.Slice(ups, func(i, j int) bool { return ups[i].Worker < ups[j].Worker })
	j := &job{ups: ups, vs: make([]tensor.Vector, len(ups)), n: len(ups)}
	for i, u := range ups {
		if i > 0 && ups[i-1].Worker == u.Worker {
			return nil, fmt.Errorf("aggregation: two updates from worker %s", u.Worker)
		}
		j.vs[i] = u.vector()
		l := j.vs[i].Layout()
		if i == 0 {
			j.layout = l
		} else if err := l.Check(j.layout); err != nil {
			return nil, fmt.Errorf("aggregation: update of %s: %w", u.Worker, err)
		}
	}
	j.d = j.layout.Len()
	return j, nil
}

// fill computes dst, a stretch of the aggregate, from the same stretch of
// every update (blocks[i] is update i's); s is per-goroutine scratch of
// n × lanes floats.
type fill func(blocks [][]float32, dst []float32, s []float32)

// combine computes the aggregate with f and every update's score against
// it (with the given weights) in one pass over the updates: chunk by
// chunk on all cores, each chunk in sub-blocks that stay in cache while
// the scores' dot products read them again. Partial sums are combined in
// chunk order, so the result is deterministic.
func (j *job) combine(weights []float64, f fill) (tensor.Set, []Score, error) {
	out, flat := j.layout.Zeros()
	n := j.n
	chunks := numChunks(j.d)
	puu := make([]float64, chunks*n) // ||u||^2 per chunk
	pua := make([]float64, chunks*n) // u.a per chunk
	paa := make([]float64, chunks)   // ||a||^2 per chunk
	rd := newReader(j.vs, j.d)
	sb := subBlock(n)
	scratch := make([][]float32, workers(j.d))
	subs := make([][][]float32, workers(j.d))
	err := forChunks(j.d, func(w, c, lo, hi int) error {
		blocks, err := rd.chunk(w, lo, hi, nil)
		if err != nil {
			return err
		}
		if scratch[w] == nil {
			scratch[w] = make([]float32, n*lanes)
			subs[w] = make([][]float32, n)
		}
		sub := subs[w]
		for s := 0; s < hi-lo; s += sb {
			e := min(s+sb, hi-lo)
			for i, b := range blocks {
				sub[i] = b[s:e]
			}
			dst := flat[lo+s : lo+e]
			f(sub, dst, scratch[w])
			paa[c] += dotLanes(dst, dst)
			for i, b := range sub {
				uu, ua := dot2Lanes(b, dst)
				puu[c*n+i] += uu
				pua[c*n+i] += ua
			}
		}
		return nil
	})
	if err != nil {
		return tensor.Set{}, nil, fmt.Errorf("aggregation: %w", err)
	}
	uu := make([]float64, n)
	ua := make([]float64, n)
	var aa float64
	for c := 0; c < chunks; c++ {
		aa += paa[c]
		for i := range n {
			uu[i] += puu[c*n+i]
			ua[i] += pua[c*n+i]
		}
	}
	if !allFinite(uu) || !allFinite(ua) || !allFinite([]float64{aa}) {
		// The float32 lanes overflowed (values near 1e19): the scores'
		// dot products again, in float64.
		if uu, ua, aa, err = j.dotsFloat64(flat); err != nil {
			return tensor.Set{}, nil, err
		}
	}
	return out, j.scoresFrom(weights, uu, ua, aa), nil
}

// dotsFloat64 returns ‖u_i‖², u_i·a and ‖a‖² for the aggregate a (flat)
// with float64 products and sums, which cannot overflow for float32 data.
func (j *job) dotsFloat64(a []float32) (uu, ua []float64, aa float64, err error) {
	uu, ua = make([]float64, j.n), make([]float64, j.n)
	aa = tensor.Dot(a, a)
	buf := make([]float32, min(j.d, 1<<16))
	for i, v := range j.vs {
		for lo := 0; lo < j.d; lo += len(buf) {
			hi := min(lo+len(buf), j.d)
			b, err := v.Block(lo, hi, buf)
			if err != nil {
				return nil, nil, 0, fmt.Errorf("aggregation: %w", err)
			}
			uu[i] += tensor.Dot(b, b)
			ua[i] += tensor.Dot(b, a[lo:hi])
		}
	}
	return uu, ua, aa, nil
}

// weightedSumFinite is weightedSum (dst = Σ w_i·xs_i, dst zero on entry),
// whose float32 sums can overflow at the float32 limit when the rounded
// weights add up to a little over 1: such elements are summed again in
// float64 and clamped to the largest float32 (the exact weighted mean of
// finite values cannot exceed it). Others keep weightedSum's bits.
func weightedSumFinite(dst []float32, w []float32, xs [][]float32) {
	weightedSum(dst, w, xs)
	if tensor.FirstNonFinite(dst) < 0 {
		return
	}
	for k, v := range dst {
		if v-v == 0 {
			continue
		}
		var sum float64
		for i, x := range xs {
			sum += float64(w[i]) * float64(x[k])
		}
		dst[k] = float32(max(min(sum, math.MaxFloat32), -math.MaxFloat32))
	}
}

// scoresFrom turns ‖u_i‖², u_i·a and ‖a‖² into scores.
func (j *job) scoresFrom(weights, uu, ua []float64, aa float64) []Score {
	aggNorm := math.Sqrt(aa)
	sc := make([]Score, j.n)
	for i, u := range j.ups {
		nrm := math.Sqrt(uu[i])
		cos := 0.0
		if nrm > 0 && aggNorm > 0 {
			cos = ua[i] / (nrm * aggNorm)
		}
		// ||u - a||^2 = ||u||^2 - 2 u.a + ||a||^2
		dist := math.Sqrt(max(uu[i]-2*ua[i]+aa, 0))
		sc[i] = Score{Worker: u.Worker, Weight: weights[i], Norm: nrm, Distance: dist, Cosine: cos, Kept: true}
	}
	return sc
}

// linear returns sum_i weights[i] * u_i for rules that already hold the
// Gram matrix g: only updates of non-zero weight are read, and the scores
// come from g (u_i·a = Σ_k w_k G_ik, ‖a‖² = wᵀGw) rather than another
// pass over the updates.
func (j *job) linear(weights, g []float64) (tensor.Set, []Score, error) {
	n := j.n
	var idx []int
	w32 := make([]float32, 0, n)
	for i, w := range weights {
		if w != 0 {
			idx = append(idx, i)
			w32 = append(w32, float32(w))
		}
	}
	out, flat := j.layout.Zeros()
	rd := newReader(j.vs, j.d)
	err := forChunks(j.d, func(w, c, lo, hi int) error {
		blocks, err := rd.chunk(w, lo, hi, idx)
		if err != nil {
			return err
		}
		weightedSumFinite(flat[lo:hi], w32, blocks)
		return nil
	})
	if err != nil {
		return tensor.Set{}, nil, fmt.Errorf("aggregation: %w", err)
	}
	uu, ua := make([]float64, n), make([]float64, n)
	var aa float64
	for i := range n {
		uu[i] = g[i*n+i]
		for k := range n {
			ua[i] += g[i*n+k] * weights[k]
		}
		aa += weights[i] * ua[i]
	}
	return out, j.scoresFrom(weights, uu, ua, aa), nil
}

// average returns sum_i weights[i] * u_i with the scores; updates of
// weight 0 are not added.
func (j *job) average(weights []float64) (tensor.Set, []Score, error) {
	var w32 []float32
	var idx []int
	for i, w := range weights {
		if w != 0 {
			w32 = append(w32, float32(w))
			idx = append(idx, i)
		}
	}
	return j.combine(weights, func(blocks [][]float32, dst, _ []float32) {
		xs := make([][]float32, len(idx))
		for a, i := range idx {
			xs[a] = blocks[i]
		}
		weightedSumFinite(dst, w32, xs)
	})
}
