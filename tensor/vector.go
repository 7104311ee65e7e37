package tensor

import (
	"fmt"
	"sort"
)

// Spec is one tensor's name and shape.
type Spec struct {
	Name  string
	Shape []int
}

// Layout is the names and shapes of a Set's tensors, in name order: what
// two updates must share to be combined.
type Layout []Spec

// Layout returns the names and shapes of s.
func (s Set) Layout() Layout {
	l := make(Layout, len(s.Tensors))
	for i, t := range s.Tensors {
		l[i] = Spec{Name: t.Name, Shape: t.Shape}
	}
	return l
}

// Len returns the number of elements in all tensors.
func (l Layout) Len() int {
	n := 0
	for _, sp := range l {
		n += NumElements(sp.Shape)
	}
	return n
}

// Zeros returns a Set of this layout, all zero, whose tensors share one
// contiguous backing array, returned as flat (the Set's vector).
func (l Layout) Zeros() (s Set, flat []float32) {
	flat = make([]float32, l.Len())
	s.Tensors = make([]Tensor, len(l))
	off := 0
	for i, sp := range l {
		n := NumElements(sp.Shape)
		s.Tensors[i] = Tensor{Name: sp.Name, Shape: append([]int(nil), sp.Shape...), Data: flat[off : off+n : off+n]}
		off += n
	}
	return s, flat
}

// Check returns nil when l and want have the same names and shapes,
// otherwise an error wrapping ErrShape that names the first difference.
func (l Layout) Check(want Layout) error {
	if len(l) != len(want) {
		return fmt.Errorf("%d tensors, want %d: %w", len(l), len(want), ErrShape)
	}
	for i := range l {
		if l[i].Name != want[i].Name {
			return fmt.Errorf("tensor %q, want %q: %w", l[i].Name, want[i].Name, ErrShape)
		}
		if !equalShape(l[i].Shape, want[i].Shape) {
			return fmt.Errorf("tensor %q has shape %v, want %v: %w", l[i].Name, l[i].Shape, want[i].Shape, ErrShape)
		}
	}
	return nil
}

// Vector is a Set read as one flat float32 vector — its tensors
// concatenated in name order — block by block, so that a consumer never
// needs the whole Set in memory. Implementations are safe for concurrent
// Block calls.
type Vector interface {
	// Layout returns the names and shapes of the tensors.
	Layout() Layout
	// Block returns elements [lo, hi) of the flat vector: a view of memory
	// the vector already holds, or buf[:hi-lo] filled from storage (buf
	// must hold hi-lo elements). Callers must not write to the result.
	Block(lo, hi int, buf []float32) ([]float32, error)
}

// SetVector returns s as a Vector whose blocks are views of s's memory
// (copied into buf only for a block that spans two tensors).
func SetVector(s Set) Vector {
	v := &setVector{s: s, offs: make([]int, len(s.Tensors)+1)}
	for i, t := range s.Tensors {
		v.offs[i+1] = v.offs[i] + len(t.Data)
	}
	return v
}

type setVector struct {
	s    Set
	offs []int // offs[i] is tensor i's first flat index; offs[len] the length
}

func (v *setVector) Layout() Layout { return v.s.Layout() }

// View returns elements [lo, hi) as a view of the Set's memory, if they lie
// in one tensor.
func (v *setVector) View(lo, hi int) ([]float32, bool) {
	if lo < 0 || hi <= lo || hi > v.offs[len(v.offs)-1] {
		return nil, false
	}
	i := sort.SearchInts(v.offs, lo+1) - 1 // tensor holding lo
	if hi <= v.offs[i+1] {
		return v.s.Tensors[i].Data[lo-v.offs[i] : hi-v.offs[i]], true
	}
	return nil, false
}

func (v *setVector) Block(lo, hi int, buf []float32) ([]float32, error) {
	if lo < 0 || hi < lo || hi > v.offs[len(v.offs)-1] {
		return nil, fmt.Errorf("tensor: block [%d, %d) outside a vector of %d elements", lo, hi, v.offs[len(v.offs)-1])
	}
	if b, ok := v.View(lo, hi); ok {
		return b, nil
	}
	out := buf[:hi-lo]
	i := sort.SearchInts(v.offs, lo+1) - 1
	for pos := lo; pos < hi; {
		for v.offs[i+1] <= pos {
			i++
		}
		t := v.s.Tensors[i].Data
		end := min(hi, v.offs[i+1])
		copy(out[pos-lo:end-lo], t[pos-v.offs[i]:end-v.offs[i]])
		pos = end
	}
	return out, nil
}

// readStep is how many elements the whole-vector readers here (Materialize,
// DotSet) ask of a vector per Block call.
const readStep = 1 << 16

// Materialize reads all of v into a new Set (one model in memory).
func Materialize(v Vector) (Set, error) {
	s, flat := v.Layout().Zeros()
	for lo := 0; lo < len(flat); lo += readStep {
		hi := min(lo+readStep, len(flat))
		b, err := v.Block(lo, hi, flat[lo:hi])
		if err != nil {
			return Set{}, err
		}
		copy(flat[lo:hi], b)
	}
	return s, nil
}

// Scaled returns v with every element multiplied by f, read block by block
// like v (a block is copied into the caller's buffer before it is scaled,
// so v's own memory is never written).
func Scaled(v Vector, f float32) Vector {
	if f == 1 {
		return v
	}
	return scaledVector{v, f}
}

type scaledVector struct {
	v Vector
	f float32
}

func (s scaledVector) Layout() Layout { return s.v.Layout() }

func (s scaledVector) Block(lo, hi int, buf []float32) ([]float32, error) {
	out, err := blockInto(s.v, lo, hi, buf)
	if err != nil {
		return nil, err
	}
	Scale(s.f, out)
	return out, nil
}

// blockInto reads elements [lo, hi) of v into buf (a copy when v returned a
// view of its own memory), for a vector that computes on the block.
func blockInto(v Vector, lo, hi int, buf []float32) ([]float32, error) {
	b, err := v.Block(lo, hi, buf)
	if err != nil {
		return nil, err
	}
	out := buf[:hi-lo]
	if len(b) > 0 && &b[0] != &out[0] {
		copy(out, b)
	}
	return out, nil
}

// Plus returns v + alpha·x, read block by block like v (x is a Set of v's
// layout, held in memory); v's own memory is never written.
func Plus(v Vector, alpha float32, x Set) (Vector, error) {
	if err := v.Layout().Check(x.Layout()); err != nil {
		return nil, err
	}
	return plusVector{v: v, x: SetVector(x).(*setVector), alpha: alpha}, nil
}

type plusVector struct {
	v     Vector
	x     *setVector
	alpha float32
}

func (p plusVector) Layout() Layout { return p.v.Layout() }

func (p plusVector) Block(lo, hi int, buf []float32) ([]float32, error) {
	out, err := blockInto(p.v, lo, hi, buf)
	if err != nil {
		return nil, err
	}
	xb, ok := p.x.View(lo, hi)
	if !ok && hi > lo {
		if xb, err = p.x.Block(lo, hi, make([]float32, hi-lo)); err != nil {
			return nil, err
		}
	}
	Axpy(p.alpha, xb, out)
	return out, nil
}

// DotSet returns the dot product of v and x (of v's layout) as flat
// vectors, reading v block by block.
func DotSet(v Vector, x Set) (float64, error) {
	if err := v.Layout().Check(x.Layout()); err != nil {
		return 0, err
	}
	xv := SetVector(x).(*setVector)
	n := v.Layout().Len()
	buf, xbuf := make([]float32, min(readStep, n)), make([]float32, min(readStep, n))
	var sum float64
	for lo := 0; lo < n; lo += readStep {
		hi := min(lo+readStep, n)
		b, err := v.Block(lo, hi, buf[:hi-lo])
		if err != nil {
			return 0, err
		}
		xb, err := xv.Block(lo, hi, xbuf[:hi-lo])
		if err != nil {
			return 0, err
		}
		sum += Dot(b, xb)
	}
	return sum, nil
}
