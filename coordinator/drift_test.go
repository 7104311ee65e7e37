package coordinator

import (
	"math"
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
