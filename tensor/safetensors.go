package tensor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"

	"github.com/x448/float16"
)

// Safetensors layout (https://huggingface.co/docs/safetensors), offset by offset:
//
//	[0, 8)        N, the header length, u64 little-endian
//	[8, 8+N)      JSON object, UTF-8, padded with spaces to a multiple of 8:
//	                "<name>": {"dtype": "F32", "shape": [d0, d1, ...],
//	                           "data_offsets": [begin, end]}
//	                "__metadata__": {"<key>": "<string>", ...}   (optional)
//	[8+N, EOF)    the byte buffer; each tensor occupies [begin, end) of it,
//	              row-major, little-endian. Tensors tile the buffer exactly:
//	              no overlaps, no gaps, nothing after the last one.
//
// Reading converts every supported dtype to float32 (F16 and BF16 exactly);
// writing emits F32, F16 or BF16.

// DType is a safetensors element type name.
type DType string

// Element types fedtune reads; it writes F32 and F16.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	F64  DType = "F64"
)

// size returns the byte width of d, or 0 when fedtune does not read d.
func (d DType) size() int {
	switch d {
	case F32:
		return 4
	case F16, BF16:
		return 2
	case F64:
		return 8
	}
	return 0
}

// MaxHeaderLen bounds the JSON header a reader accepts (100 MB, as the
// reference implementation does).
const MaxHeaderLen = 100 << 20

// ErrSafetensors is wrapped by every error about a malformed safetensors file.
var ErrSafetensors = errors.New("invalid safetensors")

type headerEntry struct {
	DType       DType    `json:"dtype"`
	Shape       []int    `json:"shape"`
	DataOffsets []uint64 `json:"data_offsets"`
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrSafetensors, fmt.Sprintf(format, args...))
}

// Unmarshal parses a safetensors file held in b. It validates the header
// completely before it allocates anything in proportion to the sizes the
// header claims, so a hostile file costs at most its own length in memory.
func Unmarshal(b []byte) (Set, error) {
	if len(b) < 8 {
		return Set{}, bad("file is %d bytes, shorter than the 8-byte header length", len(b))
	}
	n := binary.LittleEndian.Uint64(b[:8])
	if n > MaxHeaderLen {
		return Set{}, bad("header length %d exceeds the limit of %d bytes", n, MaxHeaderLen)
	}
	if n > uint64(len(b)-8) {
		return Set{}, bad("header length %d runs past the end of the %d-byte file", n, len(b))
	}
	buf := b[8+n:]
	entries, meta, err := parseHeader(b[8:8+n], uint64(len(buf)))
	if err != nil {
		return Set{}, err
	}
	// The header is valid and every byte range lies inside b: allocation is
	// now bounded by len(b).
	s := Set{Metadata: meta, Tensors: make([]Tensor, len(entries))}
	for i, e := range entries {
		s.Tensors[i] = Tensor{Name: e.name, Shape: e.shape, Data: decodeValues(e.dtype, buf[e.begin:e.end])}
	}
	return s, nil
}

// fileTensor is one validated header entry: where its bytes lie in the
// data buffer.
type fileTensor struct {
	name       string
	dtype      DType
	shape      []int
	begin, end uint64
}

// duplicateKey returns a key the top-level JSON object in header has more
// than once. header is known to decode as an object.
func duplicateKey(header []byte) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(header))
	if _, err := dec.Token(); err != nil { // {
		return "", false
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return "", false
		}
		key, _ := t.(string)
		if seen[key] {
			return key, true
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return "", false
		}
	}
	return "", false
}

// parseHeader validates a safetensors JSON header against a data buffer of
// bufLen bytes: supported dtypes, shapes matching byte ranges, ranges that
// tile the buffer exactly. It returns the tensors sorted by name.
func parseHeader(header []byte, bufLen uint64) ([]fileTensor, map[string]string, error) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(header))
	if err := dec.Decode(&raw); err != nil {
		return nil, nil, bad("header is not a JSON object: %v", err)
	}
	if raw == nil {
		return nil, nil, bad("header is JSON null, want an object")
	}
	if name, ok := duplicateKey(header); ok {
		// A JSON object decodes with its last duplicate winning; say so
		// rather than report the bytes the lost entry leaves unclaimed.
		return nil, nil, bad("tensor %q is named twice in the header", name)
	}
	var meta map[string]string
	out := make([]fileTensor, 0, len(raw))
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &meta); err != nil {
				return nil, nil, bad("__metadata__ must map strings to strings: %v", err)
			}
			continue
		}
		var e headerEntry
		d := json.NewDecoder(bytes.NewReader(msg))
		d.DisallowUnknownFields()
		if err := d.Decode(&e); err != nil {
			return nil, nil, bad("tensor %q: %v", name, err)
		}
		width := e.DType.size()
		if width == 0 {
			return nil, nil, bad("tensor %q: unsupported dtype %q (want F32, F16, BF16 or F64)", name, e.DType)
		}
		if len(e.DataOffsets) != 2 {
			return nil, nil, bad("tensor %q: data_offsets has %d values, want 2", name, len(e.DataOffsets))
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin > end {
			return nil, nil, bad("tensor %q: data_offsets [%d, %d] run backwards", name, begin, end)
		}
		if end > bufLen {
			return nil, nil, bad("tensor %q: data_offsets [%d, %d] run past the %d-byte data buffer", name, begin, end, bufLen)
		}
		elems := NumElements(e.Shape)
		if elems < 0 || elems > math.MaxInt/width {
			return nil, nil, bad("tensor %q: shape %v has a negative dimension or overflows", name, e.Shape)
		}
		if uint64(elems*width) != end-begin {
			return nil, nil, bad("tensor %q: shape %v of %s needs %d bytes, data_offsets give %d", name, e.Shape, e.DType, elems*width, end-begin)
		}
		out = append(out, fileTensor{name: name, dtype: e.DType, shape: append([]int{}, e.Shape...), begin: begin, end: end})
	}
	spans := slices.Clone(out)
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	var pos uint64
	for _, sp := range spans {
		if sp.begin < pos {
			return nil, nil, bad("tensor %q: data_offsets [%d, %d] overlap the previous tensor (ends at %d)", sp.name, sp.begin, sp.end, pos)
		}
		if sp.begin > pos {
			return nil, nil, bad("tensor %q: gap of %d bytes before its data", sp.name, sp.begin-pos)
		}
		pos = sp.end
	}
	if pos != bufLen {
		return nil, nil, bad("%d bytes after the last tensor's data", bufLen-pos)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, meta, nil
}

func decodeValues(d DType, b []byte) []float32 {
	out := make([]float32, len(b)/d.size())
	decodeInto(out, d, b)
	return out
}

// decodeInto decodes the little-endian values of b (len(dst) of dtype d)
// into dst.
func decodeInto(dst []float32, d DType, b []byte) {
	w := d.size()
	if d == F32 {
		getF32(dst, b)
		return
	}
	out := dst
	for i := range out {
		p := b[i*w:]
		switch d {
		case F32:
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(p))
		case F16:
			out[i] = float16.Frombits(binary.LittleEndian.Uint16(p)).Float32()
		case BF16:
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(p)) << 16)
		case F64:
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(p)))
		}
	}
}

// Marshal encodes s as safetensors with every tensor stored as dtype (F32,
// F16 or BF16, the 16-bit ones rounded to nearest even). The encoding is canonical: tensors in name order, JSON keys sorted,
// header padded with spaces to a multiple of 8.
func Marshal(s Set, dtype DType) ([]byte, error) {
	if dtype != F32 && dtype != F16 && dtype != BF16 {
		return nil, fmt.Errorf("safetensors: cannot write dtype %q (want F32, F16 or BF16)", dtype)
	}
	w := uint64(dtype.size())
	header := make(map[string]any, len(s.Tensors)+1)
	var off uint64
	for _, t := range s.Tensors {
		if t.Name == "__metadata__" {
			return nil, fmt.Errorf("safetensors: tensor name __metadata__ is reserved")
		}
		if NumElements(t.Shape) != len(t.Data) {
			return nil, fmt.Errorf("safetensors: tensor %q: shape %v does not match %d values", t.Name, t.Shape, len(t.Data))
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		size := uint64(len(t.Data)) * w
		header[t.Name] = headerEntry{DType: dtype, Shape: shape, DataOffsets: []uint64{off, off + size}}
		off += size
	}
	if len(s.Metadata) > 0 {
		header["__metadata__"] = s.Metadata
	}
	hj, err := json.Marshal(header)
	if err != nil {
		return nil, fmt.Errorf("safetensors: header: %w", err)
	}
	if pad := len(hj) % 8; pad != 0 {
		hj = append(hj, bytes.Repeat([]byte(" "), 8-pad)...)
	}
	out := make([]byte, 8+len(hj)+int(off))
	binary.LittleEndian.PutUint64(out, uint64(len(hj)))
	copy(out[8:], hj)
	p := out[8+len(hj):]
	for _, t := range s.Tensors {
		if dtype == F32 {
			putF32(p, t.Data)
			p = p[4*len(t.Data):]
			continue
		}
		for _, v := range t.Data {
			if dtype == BF16 {
				binary.LittleEndian.PutUint16(p, bfloat16(v))
			} else {
				binary.LittleEndian.PutUint16(p, float16.Fromfloat32(v).Bits())
			}
			p = p[2:]
		}
	}
	return out, nil
}

// bfloat16 rounds v to bfloat16 (nearest, ties to even; NaN stays NaN).
func bfloat16(v float32) uint16 {
	b := math.Float32bits(v)
	if v != v {
		return uint16(b>>16) | 0x40 // quiet NaN
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// ReadFile reads and validates a safetensors file.
func ReadFile(path string) (Set, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Set{}, err
	}
	s, err := Unmarshal(b)
	if err != nil {
		return Set{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// WriteFile writes s to path as safetensors with the given dtype, atomically
// (to a temporary file that is then renamed).
func WriteFile(path string, s Set, dtype DType) error {
	b, err := Marshal(s, dtype)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
