package tensor

import (
	"errors"
	"math"
	"testing"
)

// TestPlusAndDotSet: Plus reads v + alpha·x and DotSet the dot product of
// the flat vectors, across block and tensor boundaries (the second tensor
// starts inside DotSet's second block), without writing v's memory; a
// different layout is refused.
func TestPlusAndDotSet(t *testing.T) {
	mk := func(f func(i int) float32) Set {
		a, b := make([]float32, 70000), make([]float32, 3)
		for i := range a {
			a[i] = f(i)
		}
		for i := range b {
			b[i] = f(len(a) + i)
		}
		return MustNew(Tensor{Name: "a", Shape: []int{len(a)}, Data: a}, Tensor{Name: "b", Shape: []int{3}, Data: b})
	}
	v := mk(func(i int) float32 { return float32(i%7) - 3 })
	x := mk(func(i int) float32 { return float32(i%5) * 0.5 })
	var want float64
	for k := range v.Tensors {
		for i := range v.Tensors[k].Data {
			want += float64(v.Tensors[k].Data[i]) * float64(x.Tensors[k].Data[i])
		}
	}
	got, err := DotSet(SetVector(v), x)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(got-want) > 1e-6*math.Abs(want) {
		t.Errorf("DotSet = %v, want %v", got, want)
	}
	p, err := Plus(SetVector(v), -2, x)
	if err != nil {
		t.Fatal(err)
	}
	before := v.Clone()
	for _, r := range [][2]int{{0, 10}, {69990, 70003}, {65536, 70001}} { // within a tensor, across the two, to near the end
		b, err := p.Block(r[0], r[1], make([]float32, r[1]-r[0]))
		if err != nil {
			t.Fatal(err)
		}
		for i, got := range b {
			flat := r[0] + i
			vi, xi := flatAt(v, flat), flatAt(x, flat)
			if got != vi-2*xi {
				t.Fatalf("element %d = %v, want %v", flat, got, vi-2*xi)
			}
		}
	}
	if v.Hash() != before.Hash() {
		t.Error("Plus wrote v's memory")
	}
	other := MustNew(Tensor{Name: "a", Shape: []int{70003}, Data: make([]float32, 70003)})
	if _, err := Plus(SetVector(v), 1, other); !errors.Is(err, ErrShape) {
		t.Errorf("Plus of another layout: %v", err)
	}
	if _, err := DotSet(SetVector(v), other); !errors.Is(err, ErrShape) {
		t.Errorf("DotSet of another layout: %v", err)
	}
}

func flatAt(s Set, i int) float32 {
	for _, t := range s.Tensors {
		if i < len(t.Data) {
			return t.Data[i]
		}
		i -= len(t.Data)
	}
	panic("index out of range")
}
