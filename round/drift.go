package round

import (
	"fmt"
	"math"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// Drift correction for stale async updates. An update trained from
// version v and aggregated into version t+1 was computed where the model
// was, not where it is: the versions in between moved the model by
// d = w_t − w_v, mostly the way the buffered updates of that time pointed —
// which is also the way this update points, since it learned from the same
// kind of data at the same place. Adding it in full counts that progress
// twice; the staleness weight s(τ) shrinks the whole update to make up for
// it, the useful part with the duplicate. With drift_correction β the
// duplicate is removed instead: the update loses the share β of its
// component along d when that component is positive,
//
//	Δ' = Δ − β · max(0, ⟨Δ, d⟩ / ‖d‖²) · d,
//
// and keeps everything the model has not done yet. s(τ) still applies to
// Δ'. d comes from committed models, so verification recomputes it.

// VersionModel is the hash of an async job's model version v: its initial
// model for 0, else version v's committed model.
func VersionModel(j *pb.Job, v uint32) string {
	if v == 0 || int(v) > len(j.GetHistory()) {
		return InitialModel(j.GetSpec())
	}
	return j.History[v-1].Model
}

// Drift is the model's movement since a stale update's base version,
// d = w_now − w_base, with its squared norm: computed once per base version
// and applied to each update trained from it.
type Drift struct {
	d     tensor.Set
	norm2 float64
}

// NewDrift returns the drift from base to current.
func NewDrift(current, base tensor.Set) (*Drift, error) {
	d, err := tensor.Diff(current, base)
	if err != nil {
		return nil, fmt.Errorf("drift: %w", err)
	}
	n := d.Norm()
	return &Drift{d: d, norm2: n * n}, nil
}

// Drifts corrects the stale updates of one version against the model
// current, building each base version's Drift once (a buffer may hold
// several updates trained from one version), and sums the coefficients it
// removed. The coordinator and the simulator aggregate through it alike.
type Drifts struct {
	current tensor.Set
	beta    float64
	model   func(v uint32) (tensor.Set, error) // the committed model of version v
	byBase  map[uint32]*Drift
	removed float64
}

// NewDrifts returns a corrector with share beta against current, which
// reads base versions' models with model.
func NewDrifts(current tensor.Set, beta float64, model func(v uint32) (tensor.Set, error)) *Drifts {
	return &Drifts{current: current, beta: beta, model: model, byBase: map[uint32]*Drift{}}
}

// Correct returns update, trained from version base, corrected
// (Drift.Correct).
func (ds *Drifts) Correct(update tensor.Vector, base uint32) (tensor.Vector, error) {
	d, ok := ds.byBase[base]
	if !ok {
		m, err := ds.model(base)
		if err != nil {
			return nil, fmt.Errorf("drift since version %d: %w", base, err)
		}
		if d, err = NewDrift(ds.current, m); err != nil {
			return nil, fmt.Errorf("drift since version %d: %w", base, err)
		}
		ds.byBase[base] = d
	}
	out, c, err := d.Correct(update, ds.beta)
	if err != nil {
		return nil, err
	}
	ds.removed += c
	return out, nil
}

// Removed is the sum of the coefficients Correct removed.
func (ds *Drifts) Removed() float64 { return ds.removed }

// Correct returns update with the share beta of its component along the
// drift removed when that component is positive, and the coefficient c
// subtracted as c·drift. A zero drift or beta leaves the update as it is.
func (d *Drift) Correct(update tensor.Vector, beta float64) (tensor.Vector, float64, error) {
	if beta == 0 || d.norm2 == 0 || math.IsInf(d.norm2, 0) || math.IsNaN(d.norm2) {
		return update, 0, nil
	}
	dot, err := tensor.DotSet(update, d.d)
	if err != nil {
		return nil, 0, fmt.Errorf("drift correction: %w", err)
	}
	c := beta * max(dot/d.norm2, 0)
	if c == 0 {
		return update, 0, nil
	}
	out, err := tensor.Plus(update, float32(-c), d.d)
	if err != nil {
		return nil, 0, fmt.Errorf("drift correction: %w", err)
	}
	return out, c, nil
}
