package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

func axpyRef(alpha float32, x, y []float32) {
	for i := range x {
		y[i] += alpha * x[i]
	}
}

func dotRef(x, y []float32) float64 {
	var s float64
	for i := range x {
		s += float64(x[i]) * float64(y[i])
	}
	return s
}

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// TestKernelsAgainstReference compares the unrolled kernels with the naive
// loops on many random lengths, including the tails.
func TestKernelsAgainstReference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for c := 0; c < 2000; c++ {
		n := r.IntN(67)
		x, y := randVec(r, n), randVec(r, n)
		alpha := float32(r.NormFloat64())
		y1, y2 := append([]float32(nil), y...), append([]float32(nil), y...)
		Axpy(alpha, x, y1)
		axpyRef(alpha, x, y2)
		for i := range y1 {
			if y1[i] != y2[i] {
				t.Fatalf("n=%d Axpy[%d] = %v, ref %v", n, i, y1[i], y2[i])
			}
		}
		s1 := append([]float32(nil), x...)
		Scale(alpha, s1)
		for i := range s1 {
			if s1[i] != alpha*x[i] {
				t.Fatalf("n=%d Scale[%d] = %v, want %v", n, i, s1[i], alpha*x[i])
			}
		}
		d, dr := Dot(x, y), dotRef(x, y)
		if math.Abs(d-dr) > 1e-9*(1+math.Abs(dr)) {
			t.Fatalf("n=%d Dot = %v, ref %v", n, d, dr)
		}
		if nr := Norm(x); math.Abs(nr-math.Sqrt(dotRef(x, x))) > 1e-9*(1+nr) {
			t.Fatalf("n=%d Norm = %v", n, nr)
		}
	}
}

func TestSetOps(t *testing.T) {
	a := MustNew(Tensor{Name: "w", Shape: []int{2}, Data: []float32{3, 4}}, Tensor{Name: "b", Data: []float32{1}})
	b := MustNew(Tensor{Name: "w", Shape: []int{2}, Data: []float32{1, 1}}, Tensor{Name: "b", Data: []float32{1}})
	d, err := Diff(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if w, _ := d.Get("w"); w.Data[0] != 2 || w.Data[1] != 3 {
		t.Errorf("diff w = %v", w.Data)
	}
	if got := d.Norm(); math.Abs(got-math.Sqrt(13)) > 1e-9 {
		t.Errorf("norm = %v", got)
	}
	c := MustNew(Tensor{Name: "w", Shape: []int{1, 2}, Data: []float32{1, 1}}, Tensor{Name: "b", Data: []float32{1}})
	if _, err := Diff(a, c); err == nil {
		t.Error("diff of different shapes succeeded")
	}
	bad := a.Clone()
	bad.Tensors[1].Data[1] = float32(math.NaN())
	if err := bad.CheckFinite(); err == nil {
		t.Error("NaN not detected")
	}
	if _, err := New(Tensor{Name: "x", Shape: []int{2}, Data: []float32{1}}); err == nil {
		t.Error("New accepted data not matching shape")
	}
	if a.Hash() == b.Hash() || a.Hash() != a.Clone().Hash() {
		t.Error("hash does not identify content")
	}
}

// TestKernelsMatchPureGo checks the kernels in use (SIMD when built with
// GOEXPERIMENT=simd) give bit-for-bit the pure-Go results.
func TestKernelsMatchPureGo(t *testing.T) {
	t.Logf("SIMD kernels: %v", SIMD())
	r := rand.New(rand.NewPCG(11, 12))
	for c := 0; c < 5000; c++ {
		n := r.IntN(200)
		x, y := randVec(r, n), randVec(r, n)
		alpha := float32(r.NormFloat64())
		y1, y2 := append([]float32(nil), y...), append([]float32(nil), y...)
		Axpy(alpha, x, y1)
		axpyGo(alpha, x, y2)
		s1, s2 := append([]float32(nil), x...), append([]float32(nil), x...)
		Scale(alpha, s1)
		scaleGo(alpha, s2)
		for i := range y1 {
			if y1[i] != y2[i] || s1[i] != s2[i] {
				t.Fatalf("n=%d index %d: Axpy %v vs %v, Scale %v vs %v", n, i, y1[i], y2[i], s1[i], s2[i])
			}
		}
		if d1, d2 := Dot(x, y), dotGo(x, y); d1 != d2 {
			t.Fatalf("n=%d: Dot %v, pure Go %v", n, d1, d2)
		}
	}
}
