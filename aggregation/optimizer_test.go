package aggregation

import (
	"math"
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

func one(x float32) tensor.Set {
	return tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{1}, Data: []float32{x}})
}

// TestServerOptimizers follows each optimizer for three rounds on one
// coordinate against the formulas of Reddi et al., computed in float64.
func TestServerOptimizers(t *testing.T) {
	deltas := []float64{0.5, -0.2, 0.3}
	for _, name := range Optimizers {
		o, err := NewServerOptimizer(ServerOptimizer{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		x, m, v := 1.0, 0.0, 0.0
		model, state := one(1), tensor.Set{}
		for _, d := range deltas {
			switch name {
			case "plain":
				x += o.LR * d
			case "fedavgm":
				m = o.Beta1*m + d
				x += o.LR * m
			case "fedadam":
				m = o.Beta1*m + (1-o.Beta1)*d
				v = o.Beta2*v + (1-o.Beta2)*d*d
				x += o.LR * m / (math.Sqrt(v) + o.Eps)
			case "fedyogi":
				m = o.Beta1*m + (1-o.Beta1)*d
				s := 0.0
				if v-d*d > 0 {
					s = 1
				} else if v-d*d < 0 {
					s = -1
				}
				v -= (1 - o.Beta2) * d * d * s
				x += o.LR * m / (math.Sqrt(v) + o.Eps)
			}
			model, state, err = o.Step(model, one(float32(d)), state)
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := float64(model.Tensors[0].Data[0]); math.Abs(got-x) > 1e-5 {
			t.Errorf("%s: %v after 3 rounds, formula gives %v", name, got, x)
		}
		if o.Stateful() != (len(state.Tensors) == 2) {
			t.Errorf("%s: state %v", name, state.Tensors)
		}
	}
	if _, err := NewServerOptimizer(ServerOptimizer{Name: "sgdx"}); err == nil {
		t.Error("unknown optimizer accepted")
	}
	if _, err := NewServerOptimizer(ServerOptimizer{Name: "fedadam", Beta2: 1}); err == nil {
		t.Error("beta2 = 1 accepted")
	}
}
