package model

import (
	"fmt"
	"hash"
	"hash/fnv"
	"sync/atomic"
	"unsafe"

	"github.com/chewxy/hm"
	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"
)

// kernel is a Gorgonia operation computed by Go code: the fused transformer
// kernels (embedding lookup, RMSNorm, rotary embedding, causal attention,
// cross-entropy) that Gorgonia has no operation for, or none that is fast.
// Its derivative with respect to each input is given by diff, which builds
// other kernel nodes, so Gorgonia's symbolic differentiation chains them
// with its own operations (matrix products, element-wise products,
// sigmoid, sums) exactly as it chains those.
type kernel struct {
	name   string
	in     []int // each input's number of dimensions (0: scalar)
	outDim int   // the output's number of dimensions (0: scalar)
	shape  func(in []gt.Shape) gt.Shape
	// do writes the output into out (preallocated; not zeroed) from the
	// inputs' values.
	do func(out []float32, in [][]float32) error
	// diff returns the gradient node of each input (nil where wrt is
	// false) given the output's gradient.
	diff func(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error)
	wrt  []bool
	id   uint64 // distinct kernels never share a graph node
	// out is the output buffer, allocated at the first run and reused:
	// Gorgonia's tape machine calls Do at every run, and fresh buffers of
	// activation size each step cost more in page faults and zeroing
	// than the arithmetic.
	out G.Value
}

var kernelIDs atomic.Uint64

// apply adds k to the graph with the given inputs.
func (k *kernel) apply(inputs ...*G.Node) (*G.Node, error) {
	k.id = kernelIDs.Add(1)
	if k.wrt == nil {
		k.wrt = make([]bool, len(k.in))
	}
	n, err := G.ApplyOp(k, inputs...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", k.name, err)
	}
	return n, nil
}

func (k *kernel) typeOf(dims int) hm.Type {
	if dims == 0 {
		return G.Float32
	}
	return G.TensorType{Dims: dims, Of: G.Float32}
}

// Arity is the number of inputs.
func (k *kernel) Arity() int { return len(k.in) }

// Type is the operation's function type.
func (k *kernel) Type() hm.Type {
	ts := make(hm.Types, 0, len(k.in)+1)
	for _, d := range k.in {
		ts = append(ts, k.typeOf(d))
	}
	return hm.NewFnType(append(ts, k.typeOf(k.outDim))...)
}

// InferShape returns the output's shape.
func (k *kernel) InferShape(ds ...G.DimSizer) (gt.Shape, error) {
	shapes := make([]gt.Shape, len(ds))
	for i, d := range ds {
		s, ok := d.(gt.Shape)
		if !ok {
			return nil, fmt.Errorf("%s: input %d has no shape", k.name, i)
		}
		shapes[i] = s
	}
	return k.shape(shapes), nil
}

// Do computes the output into the kernel's buffer.
func (k *kernel) Do(vals ...G.Value) (G.Value, error) {
	if k.out != nil {
		return k.UsePreallocDo(k.out, vals...)
	}
	shapes := make([]gt.Shape, len(vals))
	for i, v := range vals {
		shapes[i] = v.Shape()
	}
	var out G.Value
	if k.outDim == 0 {
		out = G.NewF32(0)
	} else {
		out = gt.New(gt.WithShape(k.shape(shapes)...), gt.Of(gt.Float32))
	}
	k.out = out
	return k.UsePreallocDo(out, vals...)
}

// UsePreallocDo computes the output into prealloc, which the tape machine
// keeps between runs.
func (k *kernel) UsePreallocDo(prealloc G.Value, vals ...G.Value) (G.Value, error) {
	if len(vals) != len(k.in) {
		return nil, fmt.Errorf("%s: %d inputs, want %d", k.name, len(vals), len(k.in))
	}
	in := make([][]float32, len(vals))
	for i, v := range vals {
		d, err := floats(v)
		if err != nil {
			return nil, fmt.Errorf("%s: input %d: %w", k.name, i, err)
		}
		in[i] = d
	}
	out, err := floats(prealloc)
	if err != nil {
		return nil, fmt.Errorf("%s: output: %w", k.name, err)
	}
	if err := k.do(out, in); err != nil {
		return nil, fmt.Errorf("%s: %w", k.name, err)
	}
	return prealloc, nil
}

// floats returns a value's float32 elements, aliasing its storage.
func floats(v G.Value) ([]float32, error) {
	switch v := v.(type) {
	case *G.F32:
		return unsafe.Slice((*float32)(v), 1), nil
	case *gt.Dense:
		if v.Dtype() != gt.Float32 {
			return nil, fmt.Errorf("value of type %v, want float32", v.Dtype())
		}
		return v.Float32s(), nil
	}
	return nil, fmt.Errorf("value %T, want float32 tensor or scalar", v)
}

// ReturnsPtr says the output is not a pointer into an input.
func (k *kernel) ReturnsPtr() bool { return false }

// CallsExtern says the kernel runs on the CPU.
func (k *kernel) CallsExtern() bool { return false }

// OverwritesInput says no input is overwritten.
func (k *kernel) OverwritesInput() int { return -1 }

// WriteHash writes the kernel's identity.
func (k *kernel) WriteHash(h hash.Hash) { fmt.Fprintf(h, "%s#%d", k.name, k.id) }

// Hashcode returns the kernel's hash.
func (k *kernel) Hashcode() uint32 {
	h := fnv.New32a()
	k.WriteHash(h)
	return h.Sum32()
}

func (k *kernel) String() string { return k.name }

// DiffWRT says which inputs have gradients.
func (k *kernel) DiffWRT(int) []bool { return k.wrt }

// SymDiff returns the inputs' gradient nodes.
func (k *kernel) SymDiff(inputs G.Nodes, output, grad *G.Node) (G.Nodes, error) {
	if k.diff == nil {
		return nil, fmt.Errorf("%s has no derivative", k.name)
	}
	return k.diff(inputs, output, grad)
}
