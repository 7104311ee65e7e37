// Package tensor holds named float32 parameter sets (a model's weights, or
// an update to them), reads and writes them in the safetensors format, and
// provides the flat vector kernels the aggregators are built on.
//
// A Set is the unit that travels: a model checkpoint, a worker's delta, an
// aggregate. Its tensors are kept sorted by name so that every iteration over
// a Set, every hash and every summation happens in one fixed order.
package tensor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"sort"
)

// Tensor is a named dense float32 array in row-major order.
// len(Data) always equals the product of Shape (1 for a scalar, Shape == nil).
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
}

// Set is a collection of named tensors, sorted by name, plus optional
// string metadata (safetensors' __metadata__).
type Set struct {
	Tensors  []Tensor
	Metadata map[string]string
}

// Errors returned when a Set does not match what a caller expects.
var (
	// ErrShape means two sets or tensors differ in names or shapes.
	ErrShape = errors.New("tensor: shape mismatch")
	// ErrNotFinite means a tensor holds a NaN or an infinity.
	ErrNotFinite = errors.New("tensor: value is not finite")
)

// NumElements returns the product of shape; 1 for a scalar (empty shape).
// It returns -1 when a dimension is negative or the product overflows int.
func NumElements(shape []int) int {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return -1
		}
		if d != 0 && n > math.MaxInt/d {
			return -1
		}
		n *= d
	}
	return n
}

// New returns a Set holding the given tensors, sorted by name. It checks
// that names are unique and that each tensor's data matches its shape.
func New(tensors ...Tensor) (Set, error) {
	s := Set{Tensors: append([]Tensor(nil), tensors...)}
	sort.Slice(s.Tensors, func(i, j int) bool { return s.Tensors[i].Name < s.Tensors[j].Name })
	for i, t := range s.Tensors {
		if t.Name == "" {
			return Set{}, fmt.Errorf("tensor %d: empty name", i)
		}
		if i > 0 && s.Tensors[i-1].Name == t.Name {
			return Set{}, fmt.Errorf("tensor %q: duplicate name", t.Name)
		}
		if n := NumElements(t.Shape); n != len(t.Data) {
			return Set{}, fmt.Errorf("tensor %q: shape %v needs %d values, has %d: %w", t.Name, t.Shape, n, len(t.Data), ErrShape)
		}
	}
	return s, nil
}

// MustNew is New that panics on error; for literals in tests and code that
// builds sets from shapes it already checked.
func MustNew(tensors ...Tensor) Set {
	s, err := New(tensors...)
	if err != nil {
		panic(err)
	}
	return s
}

// Get returns the tensor named name, or false.
func (s Set) Get(name string) (Tensor, bool) {
	i := sort.Search(len(s.Tensors), func(i int) bool { return s.Tensors[i].Name >= name })
	if i < len(s.Tensors) && s.Tensors[i].Name == name {
		return s.Tensors[i], true
	}
	return Tensor{}, false
}

// Len returns the total number of float32 values across all tensors.
func (s Set) Len() int {
	n := 0
	for _, t := range s.Tensors {
		n += len(t.Data)
	}
	return n
}

// Clone returns a deep copy of s.
func (s Set) Clone() Set {
	c := Set{Tensors: make([]Tensor, len(s.Tensors))}
	for i, t := range s.Tensors {
		c.Tensors[i] = Tensor{Name: t.Name, Shape: append([]int(nil), t.Shape...), Data: append([]float32(nil), t.Data...)}
	}
	if s.Metadata != nil {
		c.Metadata = make(map[string]string, len(s.Metadata))
		for k, v := range s.Metadata {
			c.Metadata[k] = v
		}
	}
	return c
}

// ZerosLike returns a Set with the names and shapes of s and all values zero.
func ZerosLike(s Set) Set {
	c := Set{Tensors: make([]Tensor, len(s.Tensors))}
	for i, t := range s.Tensors {
		c.Tensors[i] = Tensor{Name: t.Name, Shape: append([]int(nil), t.Shape...), Data: make([]float32, len(t.Data))}
	}
	return c
}

// SameLayout returns nil when a and b have the same tensor names and shapes,
// otherwise an error wrapping ErrShape that names the first difference.
func SameLayout(a, b Set) error {
	if len(a.Tensors) != len(b.Tensors) {
		return fmt.Errorf("%d tensors, want %d: %w", len(a.Tensors), len(b.Tensors), ErrShape)
	}
	for i := range a.Tensors {
		ta, tb := a.Tensors[i], b.Tensors[i]
		if ta.Name != tb.Name {
			return fmt.Errorf("tensor %q, want %q: %w", ta.Name, tb.Name, ErrShape)
		}
		if !equalShape(ta.Shape, tb.Shape) {
			return fmt.Errorf("tensor %q has shape %v, want %v: %w", ta.Name, ta.Shape, tb.Shape, ErrShape)
		}
	}
	return nil
}

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// CheckFinite returns an error wrapping ErrNotFinite naming the first tensor
// and index holding a NaN or infinity.
func (s Set) CheckFinite() error {
	for _, t := range s.Tensors {
		if i := FirstNonFinite(t.Data); i >= 0 {
			return fmt.Errorf("tensor %q index %d = %v: %w", t.Name, i, t.Data[i], ErrNotFinite)
		}
	}
	return nil
}

// FirstNonFinite returns the index of the first NaN or infinity in x, or -1.
func FirstNonFinite(x []float32) int {
	for i, v := range x {
		// v-v is NaN for both NaN and ±Inf, and 0 otherwise.
		if v-v != 0 {
			return i
		}
	}
	return -1
}

// Diff returns a - b for sets of the same layout.
func Diff(a, b Set) (Set, error) {
	if err := SameLayout(a, b); err != nil {
		return Set{}, fmt.Errorf("diff: %w", err)
	}
	d := a.Clone()
	d.Metadata = nil
	for i := range d.Tensors {
		Axpy(-1, b.Tensors[i].Data, d.Tensors[i].Data)
	}
	return d, nil
}

// AddScaled adds alpha*x to s in place (s is the destination).
func (s Set) AddScaled(alpha float32, x Set) error {
	if err := SameLayout(s, x); err != nil {
		return fmt.Errorf("add: %w", err)
	}
	for i := range s.Tensors {
		Axpy(alpha, x.Tensors[i].Data, s.Tensors[i].Data)
	}
	return nil
}

// Norm returns the L2 norm of all values of s taken as one vector.
func (s Set) Norm() float64 {
	var sum float64
	for _, t := range s.Tensors {
		n := Norm(t.Data)
		sum += n * n
	}
	return math.Sqrt(sum)
}

// Hash returns the hex SHA-256 of s's canonical safetensors (F32) encoding;
// it is the name under which s is stored in a blob store.
func (s Set) Hash() string {
	b, err := Marshal(s, F32)
	if err != nil {
		panic("tensor: hash of unencodable set: " + err.Error())
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}
