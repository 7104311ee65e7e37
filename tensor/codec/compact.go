package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/x448/float16"

	"github.com/fedtune/fedtune/tensor"
)

// Compact is fedtune's compressed update format: values as fp32, fp16 or
// int8 with one float32 scale per block, optionally sparsified to the
// top-k fraction of coordinates by magnitude (per tensor). Its name is
// "<values>" or "topk=<fraction>+<values>", e.g. "int8", "topk=0.01+int8".
//
// Byte layout (all varints are unsigned LEB128):
//
//	[0, 4)   magic "FTC1"
//	4        value kind: 0 fp32, 1 fp16, 2 int8
//	5        1 if sparse (top-k), else 0
//	6..      varint tensor count, then per tensor:
//	           varint name length, name bytes
//	           varint rank, varint dims...
//	           sparse: varint k, then k varint index gaps (first index, then
//	                   each index minus the previous; gaps ≥ 1 after the first);
//	                   the encoder keeps all values of vectors (rank ≤ 1) of
//	                   at most DenseBelow elements (k = numel)
//	           values (numel if dense, k if sparse):
//	             fp32: 4 bytes LE each; fp16: 2 bytes LE each
//	             int8: per block of BlockSize values: float32 LE scale, then
//	                   the block's int8 values (value = int8 × scale / 127)
type Compact struct {
	Values   ValueKind
	TopK     float64 // fraction of coordinates kept per tensor; 0: dense
	nameText string
}

// ValueKind is how Compact stores values.
type ValueKind byte

// Value kinds. ONLY APPEND.
const (
	FP32 ValueKind = 0
	FP16 ValueKind = 1
	Int8 ValueKind = 2
)

// DenseBelow: a sparse payload keeps every value of a vector (a tensor of
// rank ≤ 1: biases, norm scales) of at most this many elements. They cost a few hundred bytes at most, and dropping
// most of a 10-value bias each round costs accuracy that error feedback
// recovers only slowly (measured on the demo job: top-1%+int8 with EF
// lost 1.04 pt against fp32 when biases were sparsified too).
const DenseBelow = 1024

// BlockSize is the number of int8 values sharing one scale.
const BlockSize = 256

// MaxElements bounds the elements a payload may declare in all (2^28 floats,
// 1 GiB): a decoder never allocates more for a sparse payload's dense output.
const MaxElements = 1 << 28

var magic = []byte("FTC1")

// ErrPayload is wrapped by every decoding error.
var ErrPayload = errors.New("invalid update payload")

func parseCompact(name string) (Compact, error) {
	c := Compact{nameText: name}
	parts := strings.Split(name, "+")
	for i, p := range parts {
		k, v, hasV := strings.Cut(p, "=")
		switch {
		case k == "topk" && hasV && i < len(parts)-1:
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 0 && f <= 1) {
				return Compact{}, fmt.Errorf("codec %q: top-k fraction %q, want (0, 1]", name, v)
			}
			c.TopK = f
		case !hasV && i == len(parts)-1 && (k == "fp32" || k == "fp16" || k == "int8"):
			c.Values = map[string]ValueKind{"fp32": FP32, "fp16": FP16, "int8": Int8}[k]
		default:
			return Compact{}, fmt.Errorf("codec %q: want fp32, fp16, int8, or topk=<fraction>+ one of them", name)
		}
	}
	return c, nil
}

// Name returns the codec's name.
func (c Compact) Name() string { return c.nameText }

// Encode returns delta's compressed form.
func (c Compact) Encode(delta tensor.Set) ([]byte, error) {
	p, _, err := c.encode(delta)
	return p, err
}

// EncodeResidual adds the residual to delta, encodes the sum, and returns
// as new residual what the encoding lost (error feedback). A zero-valued
// residual (no tensors) means none yet.
func (c Compact) EncodeResidual(delta, residual tensor.Set) ([]byte, tensor.Set, error) {
	corrected := delta.Clone()
	corrected.Metadata = nil
	if len(residual.Tensors) > 0 {
		if err := corrected.AddScaled(1, residual); err != nil {
			return nil, tensor.Set{}, fmt.Errorf("error feedback: residual does not fit the update: %w", err)
		}
	}
	payload, decoded, err := c.encode(corrected)
	if err != nil {
		return nil, tensor.Set{}, err
	}
	if err := corrected.AddScaled(-1, decoded); err != nil {
		return nil, tensor.Set{}, err
	}
	return payload, corrected, nil
}

// encode returns the payload and what a decoder will read from it.
func (c Compact) encode(delta tensor.Set) ([]byte, tensor.Set, error) {
	if err := delta.CheckFinite(); err != nil {
		return nil, tensor.Set{}, fmt.Errorf("codec %s: %w", c.Name(), err)
	}
	out := append([]byte(nil), magic...)
	sparse := byte(0)
	if c.TopK > 0 {
		sparse = 1
	}
	out = append(out, byte(c.Values), sparse)
	out = binary.AppendUvarint(out, uint64(len(delta.Tensors)))
	decoded := tensor.ZerosLike(delta)
	for ti, t := range delta.Tensors {
		out = binary.AppendUvarint(out, uint64(len(t.Name)))
		out = append(out, t.Name...)
		out = binary.AppendUvarint(out, uint64(len(t.Shape)))
		for _, d := range t.Shape {
			out = binary.AppendUvarint(out, uint64(d))
		}
		vals := t.Data
		var idx []int
		if sparse == 1 {
			k := max(1, int(math.Ceil(c.TopK*float64(len(t.Data)))))
			if len(t.Shape) <= 1 && len(t.Data) <= DenseBelow {
				k = len(t.Data) // biases and other small vectors are sent whole
			}
			idx = topK(t.Data, k)
			out = binary.AppendUvarint(out, uint64(len(idx)))
			prev := 0
			vals = make([]float32, len(idx))
			for i, j := range idx {
				out = binary.AppendUvarint(out, uint64(j-prev))
				prev = j
				vals[i] = t.Data[j]
			}
		}
		var got []float32
		out, got = appendValues(out, c.Values, vals)
		dst := decoded.Tensors[ti].Data
		if sparse == 1 {
			for i, j := range idx {
				dst[j] = got[i]
			}
		} else {
			copy(dst, got)
		}
	}
	return out, decoded, nil
}

// topK returns the indices of the k largest |v|, ascending; ties go to the
// lower index.
func topK(v []float32, k int) []int {
	k = min(k, len(v))
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return abs32(v[idx[a]]) > abs32(v[idx[b]]) })
	idx = idx[:k]
	sort.Ints(idx)
	return idx
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// appendValues encodes vals and returns the bytes and the values a decoder
// will read back.
func appendValues(out []byte, kind ValueKind, vals []float32) ([]byte, []float32) {
	got := make([]float32, len(vals))
	switch kind {
	case FP32:
		for i, v := range vals {
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(v))
			got[i] = v
		}
	case FP16:
		for i, v := range vals {
			h := float16.Fromfloat32(v)
			out = binary.LittleEndian.AppendUint16(out, h.Bits())
			got[i] = h.Float32()
		}
	case Int8:
		for lo := 0; lo < len(vals); lo += BlockSize {
			blk := vals[lo:min(lo+BlockSize, len(vals))]
			var m float32
			for _, v := range blk {
				m = max(m, abs32(v))
			}
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(m))
			for i, v := range blk {
				q := int8(0)
				if m > 0 {
					q = int8(math.Round(float64(v) / float64(m) * 127))
				}
				out = append(out, byte(q))
				got[lo+i] = float32(q) * m / 127
			}
		}
	}
	return out, got
}

// reader reads a payload, failing on any inconsistency.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrPayload, fmt.Sprintf(format, args...))
	}
}

func (r *reader) uvarint(what string, limit uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("%s: truncated or overlong varint", what)
		return 0
	}
	r.b = r.b[n:]
	if v > limit {
		r.fail("%s = %d exceeds %d", what, v, limit)
		return 0
	}
	return v
}

func (r *reader) bytes(what string, n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail("%s: needs %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

// Decode parses a payload of any Compact kind, validating sizes, index
// bounds and finite values before and while it allocates. A sparse
// payload may declare up to MaxElements elements, which Decode allocates;
// a receiver that knows the model uses DecodeLimit.
func (c Compact) Decode(payload []byte) (tensor.Set, error) {
	return c.DecodeLimit(payload, MaxElements)
}

// DecodeLimit is Decode refusing payloads that declare more than
// maxElements elements in all, before allocating for them (a coordinator
// passes its model's size).
func (c Compact) DecodeLimit(payload []byte, maxElements int) (tensor.Set, error) {
	ts, err := c.parse(payload, maxElements)
	if err != nil {
		return tensor.Set{}, err
	}
	out := make([]tensor.Tensor, len(ts))
	for i, t := range ts {
		data := make([]float32, t.numel)
		t.decode(0, t.numel, data)
		out[i] = tensor.Tensor{Name: t.name, Shape: t.shape, Data: data}
	}
	s, err := tensor.New(out...)
	if err != nil {
		return tensor.Set{}, fmt.Errorf("%w: %v", ErrPayload, err)
	}
	return s, nil
}

// compactTensor is one validated tensor of a payload, still encoded: its
// values (and, when sparse, its decoded indices) are decoded on demand.
type compactTensor struct {
	name   string
	shape  []int
	numel  int
	kind   ValueKind
	sparse bool
	idx    []int32 // sparse: kept indices, increasing
	raw    []byte  // the encoded values (numel or len(idx) of them)
}

// parse walks a payload, validating sizes, index bounds and finite values
// before and while it allocates; only sparse indices are allocated.
func (c Compact) parse(payload []byte, maxElements int) ([]compactTensor, error) {
	maxElements = min(maxElements, MaxElements)
	r := &reader{b: payload}
	if m := r.bytes("magic", 4); r.err == nil && string(m) != string(magic) {
		r.fail("bad magic %q", m)
	}
	hdr := r.bytes("header", 2)
	if r.err != nil {
		return nil, r.err
	}
	kind, sparse := ValueKind(hdr[0]), hdr[1]
	if kind > Int8 || sparse > 1 {
		return nil, fmt.Errorf("%w: unknown value kind %d or sparse flag %d", ErrPayload, kind, sparse)
	}
	if kind != c.Values || (sparse == 1) != (c.TopK > 0) {
		return nil, fmt.Errorf("%w: payload is kind %d sparse %d, codec %s expects otherwise", ErrPayload, kind, sparse, c.Name())
	}
	count := r.uvarint("tensor count", uint64(len(payload)))
	var ts []compactTensor
	total := 0
	for ti := uint64(0); ti < count && r.err == nil; ti++ {
		name := string(r.bytes("tensor name", int(r.uvarint("name length", 1<<12))))
		rank := r.uvarint("rank", 8)
		shape := make([]int, 0, rank)
		for range rank {
			shape = append(shape, int(r.uvarint("dimension", MaxElements)))
		}
		if r.err != nil {
			break
		}
		numel := tensor.NumElements(shape)
		if numel < 0 || total+numel > maxElements {
			r.fail("tensor %q: shape %v exceeds %d elements in all", name, shape, maxElements)
			break
		}
		total += numel
		t := compactTensor{name: name, shape: shape, numel: numel, kind: kind, sparse: sparse == 1}
		n := numel
		if t.sparse {
			k := int(r.uvarint("k", uint64(numel)))
			// Each index takes at least one byte: bound k by what is left.
			if r.err == nil && k > len(r.b) {
				r.fail("tensor %q: k = %d indexes but %d bytes left", name, k, len(r.b))
			}
			t.idx = make([]int32, 0, min(k, len(r.b)))
			prev := 0
			for i := 0; i < k && r.err == nil; i++ {
				gap := int(r.uvarint("index gap", uint64(numel)))
				if i > 0 && gap == 0 {
					r.fail("tensor %q: repeated index %d", name, prev)
				}
				prev += gap
				if prev >= numel {
					r.fail("tensor %q: index %d out of range [0, %d)", name, prev, numel)
				}
				t.idx = append(t.idx, int32(prev))
			}
			n = k
		}
		t.raw = r.values(name, kind, n)
		if r.err != nil {
			break
		}
		ts = append(ts, t)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d bytes after the last tensor", len(r.b))
	}
	if r.err != nil {
		return nil, r.err
	}
	for i := 1; i < len(ts); i++ {
		if ts[i].name <= ts[i-1].name {
			return nil, fmt.Errorf("%w: tensor %q out of name order or repeated", ErrPayload, ts[i].name)
		}
	}
	return ts, nil
}

// values takes the bytes of n values of kind and checks that every value
// they decode to is finite (without allocating).
func (r *reader) values(name string, kind ValueKind, n int) []byte {
	need := map[ValueKind]int{FP32: 4 * n, FP16: 2 * n, Int8: n + 4*((n+BlockSize-1)/BlockSize)}[kind]
	b := r.bytes("values of "+name, need)
	if r.err != nil {
		return nil
	}
	var chunk [BlockSize]float32
	for lo := 0; lo < n; lo += BlockSize {
		cnt := min(BlockSize, n-lo)
		if kind == Int8 {
			if m := scaleAt(b, lo); m-m != 0 || m < 0 {
				r.fail("tensor %q: block scale %v is not a finite non-negative number", name, m)
				return nil
			}
		}
		decodeDense(kind, b, lo, chunk[:cnt])
		for i, v := range chunk[:cnt] {
			if v-v != 0 {
				r.fail("tensor %q: value %d is %v", name, lo+i, v)
				return nil
			}
		}
	}
	return b
}

// scaleAt returns the int8 scale of the block holding value lo.
func scaleAt(b []byte, lo int) float32 {
	blk := lo / BlockSize
	return math.Float32frombits(binary.LittleEndian.Uint32(b[blk*(BlockSize+4):]))
}

// decodeDense decodes values [lo, lo+len(dst)) of a run of encoded values.
func decodeDense(kind ValueKind, b []byte, lo int, dst []float32) {
	switch kind {
	case FP32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*(lo+i):]))
		}
	case FP16:
		for i := range dst {
			dst[i] = float16.Frombits(binary.LittleEndian.Uint16(b[2*(lo+i):])).Float32()
		}
	case Int8:
		for i := 0; i < len(dst); {
			j := lo + i
			blk := j / BlockSize
			m := scaleAt(b, j)
			start := blk*(BlockSize+4) + 4
			for ; i < len(dst) && (lo+i)/BlockSize == blk; i++ {
				dst[i] = float32(int8(b[start+(lo+i)%BlockSize])) * m / 127
			}
		}
	}
}

// decode writes elements [lo, hi) of the tensor to dst.
func (t compactTensor) decode(lo, hi int, dst []float32) {
	if !t.sparse {
		decodeDense(t.kind, t.raw, lo, dst[:hi-lo])
		return
	}
	clear(dst[:hi-lo])
	a := sort.Search(len(t.idx), func(i int) bool { return int(t.idx[i]) >= lo })
	var one [1]float32
	for k := a; k < len(t.idx) && int(t.idx[k]) < hi; k++ {
		decodeDense(t.kind, t.raw, k, one[:])
		dst[int(t.idx[k])-lo] = one[0]
	}
}
