package tensor

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"unsafe"
)

// StreamVector reads a safetensors file as a Vector without loading its
// data: the header is parsed and validated up front (as Unmarshal does),
// and each Block is read from the file with one positioned read per tensor
// it touches. Every value read is checked to be finite. Safe for
// concurrent use (reads are positioned, io.ReaderAt).
type StreamVector struct {
	r       io.ReaderAt
	closer  io.Closer
	base    int64 // file offset of the data buffer
	tensors []fileTensor
	offs    []int // flat index of each tensor's first element; offs[len] = length
	meta    map[string]string
}

// OpenVector opens the safetensors file at path as a StreamVector; Close
// releases the file.
func OpenVector(path string) (*StreamVector, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	v, err := NewStreamVector(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	v.closer = f
	return v, nil
}

// NewStreamVector reads the safetensors header of the size bytes in r.
func NewStreamVector(r io.ReaderAt, size int64) (*StreamVector, error) {
	if size < 8 {
		return nil, bad("file is %d bytes, shorter than the 8-byte header length", size)
	}
	var lb [8]byte
	if _, err := r.ReadAt(lb[:], 0); err != nil {
		return nil, fmt.Errorf("safetensors: read header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(lb[:])
	if n > MaxHeaderLen {
		return nil, bad("header length %d exceeds the limit of %d bytes", n, MaxHeaderLen)
	}
	if n > uint64(size-8) {
		return nil, bad("header length %d runs past the end of the %d-byte file", n, size)
	}
	header := make([]byte, n)
	if _, err := r.ReadAt(header, 8); err != nil {
		return nil, fmt.Errorf("safetensors: read header: %w", err)
	}
	ts, meta, err := parseHeader(header, uint64(size-8)-n)
	if err != nil {
		return nil, err
	}
	v := &StreamVector{r: r, base: int64(8 + n), tensors: ts, offs: make([]int, len(ts)+1), meta: meta}
	for i, t := range ts {
		v.offs[i+1] = v.offs[i] + NumElements(t.shape)
	}
	return v, nil
}

// Close closes the file OpenVector opened.
func (v *StreamVector) Close() error {
	if v.closer == nil {
		return nil
	}
	return v.closer.Close()
}

// Metadata returns the file's __metadata__.
func (v *StreamVector) Metadata() map[string]string { return v.meta }

// Len returns the number of elements.
func (v *StreamVector) Len() int { return v.offs[len(v.offs)-1] }

// Layout returns the tensors' names and shapes.
func (v *StreamVector) Layout() Layout {
	l := make(Layout, len(v.tensors))
	for i, t := range v.tensors {
		l[i] = Spec{Name: t.name, Shape: t.shape}
	}
	return l
}

// Block reads elements [lo, hi) into buf.
func (v *StreamVector) Block(lo, hi int, buf []float32) ([]float32, error) {
	if lo < 0 || hi < lo || hi > v.Len() {
		return nil, fmt.Errorf("tensor: block [%d, %d) outside a vector of %d elements", lo, hi, v.Len())
	}
	out := buf[:hi-lo]
	i := 0
	for pos := lo; pos < hi; {
		for v.offs[i+1] <= pos {
			i++
		}
		t := v.tensors[i]
		end := min(hi, v.offs[i+1])
		if err := v.read(t, pos-v.offs[i], out[pos-lo:end-lo]); err != nil {
			return nil, err
		}
		pos = end
	}
	if j := FirstNonFinite(out); j >= 0 {
		return nil, fmt.Errorf("element %d is %v: %w", lo+j, out[j], ErrNotFinite)
	}
	return out, nil
}

// read fills dst with t's elements from index first.
func (v *StreamVector) read(t fileTensor, first int, dst []float32) error {
	w := t.dtype.size()
	off := v.base + int64(t.begin) + int64(first*w)
	if t.dtype == F32 && littleEndian && len(dst) > 0 {
		b := unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), 4*len(dst))
		if _, err := v.r.ReadAt(b, off); err != nil {
			return fmt.Errorf("safetensors: read %s: %w", t.name, err)
		}
		return nil
	}
	raw := make([]byte, len(dst)*w)
	if _, err := v.r.ReadAt(raw, off); err != nil {
		return fmt.Errorf("safetensors: read %s: %w", t.name, err)
	}
	decodeInto(dst, t.dtype, raw)
	return nil
}
