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
	Worker  string
	Delta   tensor.Set // local - base
	Samples uint64     // examples it trained on (FedAvg weight)
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

// Aggregate returns sum_i (n_i / sum n) * delta_i.
func (FedAvg) Aggregate(updates []Update) (tensor.Set, []Score, error) {
	ups, err := sorted(updates)
	if err != nil {
		return tensor.Set{}, nil, err
	}
	var total float64
	for _, u := range ups {
		total += float64(u.Samples)
	}
	weights := make([]float64, len(ups))
	for i, u := range ups {
		if total > 0 {
			weights[i] = float64(u.Samples) / total
		} else {
			weights[i] = 1 / float64(len(ups))
		}
	}
	agg := tensor.ZerosLike(ups[0].Delta)
	for k, t := range agg.Tensors {
		forChunks(len(t.Data), func(_, lo, hi int) {
			dst := t.Data[lo:hi]
			for i, u := range ups {
				tensor.Axpy(float32(weights[i]), u.Delta.Tensors[k].Data[lo:hi], dst)
			}
		})
	}
	return agg, scores(ups, weights, agg), nil
}

// sorted checks updates share one layout and returns them by worker id.
func sorted(updates []Update) ([]Update, error) {
	if len(updates) == 0 {
		return nil, ErrNoUpdates
	}
	ups := append([]Update(nil), updates...)
	sort.Slice(ups, func(i, j int) bool { return ups[i].Worker < ups[j].Worker })
	for i, u := range ups {
		if i > 0 && ups[i-1].Worker == u.Worker {
			return nil, fmt.Errorf("aggregation: two updates from worker %s", u.Worker)
		}
		if err := tensor.SameLayout(u.Delta, ups[0].Delta); err != nil {
			return nil, fmt.Errorf("aggregation: update of %s: %w", u.Worker, err)
		}
	}
	return ups, nil
}

// scores computes each update's norm, and its distance and cosine to the
// aggregate, reading every update once: per fixed-size chunk, in parallel,
// partial sums combined in chunk order (deterministic).
func scores(ups []Update, weights []float64, agg tensor.Set) []Score {
	n := len(ups)
	uu := make([]float64, n) // ||u||^2
	ua := make([]float64, n) // u.a
	var aa float64
	for k, t := range agg.Tensors {
		chunks := (len(t.Data) + chunkSize - 1) / chunkSize
		puu := make([]float64, chunks*n)
		pua := make([]float64, chunks*n)
		paa := make([]float64, chunks)
		forChunks(len(t.Data), func(c, lo, hi int) {
			a := t.Data[lo:hi]
			paa[c] = tensor.Dot(a, a)
			for i, u := range ups {
				x := u.Delta.Tensors[k].Data[lo:hi]
				puu[c*n+i], pua[c*n+i] = tensor.Dot2(x, a)
			}
		})
		for c := 0; c < chunks; c++ {
			aa += paa[c]
			for i := range ups {
				uu[i] += puu[c*n+i]
				ua[i] += pua[c*n+i]
			}
		}
	}
	aggNorm := math.Sqrt(aa)
	out := make([]Score, n)
	for i, u := range ups {
		nrm := math.Sqrt(uu[i])
		cos := 0.0
		if nrm > 0 && aggNorm > 0 {
			cos = ua[i] / (nrm * aggNorm)
		}
		// ||u - a||^2 = ||u||^2 - 2 u.a + ||a||^2
		dist := math.Sqrt(max(uu[i]-2*ua[i]+aa, 0))
		out[i] = Score{Worker: u.Worker, Weight: weights[i], Norm: nrm, Distance: dist, Cosine: cos, Kept: true}
	}
	return out
}
