package worker

import (
	"math"
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

// TestPrivatize: an update is clipped to the norm, then noised with the
// given standard deviation; a short update is not scaled up.
func TestPrivatize(t *testing.T) {
	const n = 40000
	long := make([]float32, n)
	for i := range long {
		long[i] = 0.01
	}
	d := tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{n}, Data: long})
	if err := privatize(d, 0.5, 0); err != nil {
		t.Fatal(err)
	}
	if got := d.Norm(); math.Abs(got-0.5) > 1e-4 {
		t.Errorf("clipped norm %v, want 0.5", got)
	}
	zero := tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{n}, Data: make([]float32, n)})
	if err := privatize(zero, 0.5, 0.2); err != nil {
		t.Fatal(err)
	}
	var ss float64
	for _, v := range zero.Tensors[0].Data {
		ss += float64(v) * float64(v)
	}
	if std := math.Sqrt(ss / n); math.Abs(std-0.2) > 0.005 {
		t.Errorf("noise std %v, want 0.2", std)
	}
	if err := privatize(zero, 0, 1); err == nil {
		t.Error("a zero clip accepted")
	}
}
