package round

import (
	"errors"
	"math"
	"strings"
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

func vec(xs ...float32) tensor.Set {
	return tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{len(xs)}, Data: xs})
}

// TestCorrectDrift: a stale update loses the share β of its component
// along the drift when that component is positive, keeps the rest, and is
// left alone when it points against or across the drift, when nothing
// drifted, or with β = 0.
func TestCorrectDrift(t *testing.T) {
	cases := []struct {
		name          string
		update, drift tensor.Set
		beta, coef    float64
		want          []float32
	}{
		{"along the drift: half of it removed", vec(2, 1), vec(1, 0), 0.5, 1, []float32{1, 1}},
		{"all of it removed with β 1", vec(2, 1), vec(1, 0), 1, 2, []float32{0, 1}},
		{"scaled by the drift's length", vec(2, 1), vec(4, 0), 0.5, 0.25, []float32{1, 1}},
		{"against the drift: kept", vec(-2, 1), vec(1, 0), 0.5, 0, []float32{-2, 1}},
		{"across the drift: kept", vec(0, 3), vec(1, 0), 0.5, 0, []float32{0, 3}},
		{"no drift", vec(2, 1), vec(0, 0), 0.5, 0, []float32{2, 1}},
		{"β 0", vec(2, 1), vec(1, 0), 0, 0, []float32{2, 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			drift, err := NewDrift(c.drift, tensor.ZerosLike(c.drift))
			if err != nil {
				t.Fatal(err)
			}
			out, coef, err := drift.Correct(tensor.SetVector(c.update), c.beta)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tensor.Materialize(out)
			if err != nil {
				t.Fatal(err)
			}
			for i, w := range c.want {
				if math.Abs(float64(got.Tensors[0].Data[i]-w)) > 1e-6 {
					t.Errorf("corrected update %v, want %v", got.Tensors[0].Data, c.want)
					break
				}
			}
			if math.Abs(coef-c.coef) > 1e-9 {
				t.Errorf("coefficient %v, want %v", coef, c.coef)
			}
		})
	}
	other, err := NewDrift(vec(1, 2, 3), vec(0, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Correct(tensor.SetVector(vec(1, 2)), 0.5); err == nil {
		t.Error("a drift of another shape was accepted")
	}
	if _, err := NewDrift(vec(1, 2, 3), vec(1, 2)); err == nil {
		t.Error("a drift between models of different shapes was accepted")
	}
	for _, bad := range []float64{-0.1, 1.5, math.NaN()} {
		spec := &pb.JobSpec{Mode: ModeAsync, Aggregator: "fedavg", Async: &pb.AsyncSpec{DriftCorrection: bad}}
		if err := NormalizeAsync(spec); err == nil {
			t.Errorf("drift_correction %v accepted", bad)
		}
	}
}

// TestVersionModel: version 0 is the job's initial model, version v the
// model committed as version v.
func TestVersionModel(t *testing.T) {
	j := &pb.Job{Spec: &pb.JobSpec{BaseModel: "m0"}, History: []*pb.RoundRecord{{Model: "m1"}, {Model: "m2"}}}
	for v, want := range []string{InitialModel(j.Spec), "m1", "m2"} {
		if got := VersionModel(j, uint32(v)); got != want {
			t.Errorf("version %d: %q, want %q", v, got, want)
		}
	}
}

// TestDrifts: a version's corrector reads each base version's model once,
// however many updates come from it, corrects each against its own base,
// sums the coefficients it removed, and names the version it cannot read.
func TestDrifts(t *testing.T) {
	models := map[uint32]tensor.Set{1: vec(0, 0), 2: vec(1, 0)}
	reads := map[uint32]int{}
	ds := NewDrifts(vec(2, 0), 0.5, func(v uint32) (tensor.Set, error) {
		reads[v]++
		m, ok := models[v]
		if !ok {
			return tensor.Set{}, errors.New("not stored")
		}
		return m, nil
	})
	for _, c := range []struct {
		base uint32
		want []float32
	}{
		{1, []float32{1, 1}}, // drift (2, 0): ⟨(2,1), d⟩/‖d‖² = 1, half of d removed
		{1, []float32{1, 1}},
		{2, []float32{1, 1}}, // drift (1, 0): coefficient 2 × 0.5 = 1
	} {
		out, err := ds.Correct(tensor.SetVector(vec(2, 1)), c.base)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tensor.Materialize(out)
		if err != nil {
			t.Fatal(err)
		}
		if g := got.Tensors[0].Data; g[0] != c.want[0] || g[1] != c.want[1] {
			t.Errorf("update from version %d corrected to %v, want %v", c.base, g, c.want)
		}
	}
	if reads[1] != 1 || reads[2] != 1 {
		t.Errorf("base models read %v times, want once each", reads)
	}
	if got := ds.Removed(); math.Abs(got-(0.5+0.5+1)) > 1e-9 {
		t.Errorf("removed %v, want 2", got)
	}
	if _, err := ds.Correct(tensor.SetVector(vec(2, 1)), 7); err == nil || !strings.Contains(err.Error(), "version 7") {
		t.Errorf("a base version that cannot be read: %v", err)
	}
}
