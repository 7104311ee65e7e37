// Package codec encodes workers' updates for the wire. A Codec turns a delta
// into bytes and back; lossy codecs that keep an error-feedback residual on
// the worker also implement ResidualCodec.
//
// Decoders read bytes from the network: they validate everything and return
// errors, never panic.
package codec

import (
	"bytes"
	"fmt"

	"github.com/fedtune/fedtune/tensor"
)

// Codec encodes and decodes update deltas.
type Codec interface {
	// Name is the codec's name in job specs and on the wire.
	Name() string
	// Encode returns delta's wire form.
	Encode(delta tensor.Set) ([]byte, error)
	// Decode parses a payload. It does not check the layout against a model;
	// the caller does.
	Decode(payload []byte) (tensor.Set, error)
}

// ResidualCodec is a lossy Codec with error feedback: the part of delta the
// encoding dropped is returned as the new residual and added to the next
// round's delta.
type ResidualCodec interface {
	Codec
	EncodeResidual(delta, residual tensor.Set) (payload []byte, newResidual tensor.Set, err error)
}

// LimitedDecoder is a Codec whose decoder can refuse a payload declaring
// more elements than the receiver expects before allocating for it.
type LimitedDecoder interface {
	DecodeLimit(payload []byte, maxElements int) (tensor.Set, error)
}

// DecodeLimit decodes with c, bounded by maxElements when c supports it
// (safetensors payloads are bounded by their own length anyway).
func DecodeLimit(c Codec, payload []byte, maxElements int) (tensor.Set, error) {
	if l, ok := c.(LimitedDecoder); ok {
		return l.DecodeLimit(payload, maxElements)
	}
	return c.Decode(payload)
}

// New returns the codec named name: "fp32" or "fp16" (safetensors, ""
// means fp32), or a Compact codec: "int8", "topk=<fraction>+fp32|fp16|int8"
// (e.g. "topk=0.01+int8"), which are lossy and implement ResidualCodec.
func New(name string) (Codec, error) {
	switch name {
	case "", "fp32":
		return Safetensors{DType: tensor.F32}, nil
	case "fp16":
		return Safetensors{DType: tensor.F16}, nil
	}
	c, err := parseCompact(name)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Safetensors sends the delta as a safetensors file of the given dtype.
type Safetensors struct {
	DType tensor.DType
}

// Name returns "fp32" or "fp16".
func (c Safetensors) Name() string {
	if c.DType == tensor.F16 {
		return "fp16"
	}
	return "fp32"
}

// Encode writes delta as safetensors.
func (c Safetensors) Encode(delta tensor.Set) ([]byte, error) {
	return tensor.Marshal(delta, c.DType)
}

// Decode reads a safetensors payload.
func (c Safetensors) Decode(payload []byte) (tensor.Set, error) {
	s, err := tensor.Unmarshal(payload)
	if err != nil {
		return tensor.Set{}, fmt.Errorf("codec %s: %w", c.Name(), err)
	}
	return s, nil
}

// DecodeVector parses a payload into a tensor.Vector that decodes values
// block by block on demand, so a receiver combining many updates holds
// each only in its wire form (plus the sparse indices of a top-k payload)
// rather than as a dense model. Validation is the same as DecodeLimit's.
func DecodeVector(c Codec, payload []byte, maxElements int) (tensor.Vector, error) {
	switch c := c.(type) {
	case Safetensors:
		v, err := tensor.NewStreamVector(bytes.NewReader(payload), int64(len(payload)))
		if err != nil {
			return nil, fmt.Errorf("codec %s: %w", c.Name(), err)
		}
		if v.Len() > maxElements {
			return nil, fmt.Errorf("codec %s: %w: %d elements, more than the %d expected", c.Name(), ErrPayload, v.Len(), maxElements)
		}
		return v, nil
	case Compact:
		ts, err := c.parse(payload, maxElements)
		if err != nil {
			return nil, err
		}
		v := &compactVector{tensors: ts, offs: make([]int, len(ts)+1)}
		for i, t := range ts {
			v.offs[i+1] = v.offs[i] + t.numel
		}
		return v, nil
	}
	s, err := DecodeLimit(c, payload, maxElements)
	if err != nil {
		return nil, err
	}
	return tensor.SetVector(s), nil
}

// compactVector is a Compact payload read as a tensor.Vector.
type compactVector struct {
	tensors []compactTensor
	offs    []int
}

func (v *compactVector) Layout() tensor.Layout {
	l := make(tensor.Layout, len(v.tensors))
	for i, t := range v.tensors {
		l[i] = tensor.Spec{Name: t.name, Shape: t.shape}
	}
	return l
}

func (v *compactVector) Block(lo, hi int, buf []float32) ([]float32, error) {
	if n := v.offs[len(v.offs)-1]; lo < 0 || hi < lo || hi > n {
		return nil, fmt.Errorf("codec: block [%d, %d) outside a vector of %d elements", lo, hi, n)
	}
	out := buf[:hi-lo]
	i := 0
	for pos := lo; pos < hi; {
		for v.offs[i+1] <= pos {
			i++
		}
		end := min(hi, v.offs[i+1])
		v.tensors[i].decode(pos-v.offs[i], end-v.offs[i], out[pos-lo:end-lo])
		pos = end
	}
	return out, nil
}
