// Package codec encodes workers' updates for the wire. A Codec turns a delta
// into bytes and back; lossy codecs that keep an error-feedback residual on
// the worker also implement ResidualCodec.
//
// Decoders read bytes from the network: they validate everything and return
// errors, never panic.
package codec

import (
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
