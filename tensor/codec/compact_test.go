package codec

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

func randDelta(r *rand.Rand) tensor.Set {
	mk := func(name string, shape ...int) tensor.Tensor {
		d := make([]float32, tensor.NumElements(shape))
		for i := range d {
			d[i] = float32(r.NormFloat64() * 0.01)
		}
		return tensor.Tensor{Name: name, Shape: shape, Data: d}
	}
	return tensor.MustNew(mk("fc1.weight", 64, 300), mk("fc1.bias", 64), mk("fc2.weight", 10, 64), mk("scalar"))
}

func TestCompactRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	d := randDelta(r)
	raw, _ := New("fp32")
	rawBytes, _ := raw.Encode(d)
	for _, name := range []string{"int8", "topk=0.1+fp32", "topk=0.01+int8", "topk=1+fp16"} {
		c, err := New(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Encode(d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := tensor.SameLayout(got, d); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cc := c.(Compact)
		for k, tt := range d.Tensors {
			g := got.Tensors[k].Data
			var maxAbs float32
			for _, v := range tt.Data {
				maxAbs = max(maxAbs, abs32(v))
			}
			kept := 0
			for i, v := range tt.Data {
				if g[i] != 0 {
					kept++
				}
				if cc.TopK == 0 || g[i] != 0 {
					tol := 1e-7
					if cc.Values == Int8 {
						tol = float64(maxAbs)/127/2 + 1e-7
					} else if cc.Values == FP16 {
						tol = 1e-3*math.Abs(float64(v)) + 6e-8
					}
					if math.Abs(float64(g[i]-v)) > tol {
						t.Fatalf("%s %s[%d]: %v decoded as %v (tolerance %v)", name, tt.Name, i, v, g[i], tol)
					}
				}
			}
			want := int(math.Ceil(cc.TopK * float64(len(tt.Data))))
			if len(tt.Shape) <= 1 && len(tt.Data) <= DenseBelow {
				want = len(tt.Data) // small vectors are sent whole
			}
			if cc.TopK > 0 && kept > want {
				t.Errorf("%s %s: kept %d of %d", name, tt.Name, kept, len(tt.Data))
			}
		}
		t.Logf("%-16s %6d bytes = %.1fx smaller than fp32 safetensors", name, len(b), float64(len(rawBytes))/float64(len(b)))
	}
	c, _ := New("topk=0.01+int8")
	b, _ := c.Encode(d)
	if ratio := float64(len(rawBytes)) / float64(len(b)); ratio < 50 {
		t.Errorf("top-1%% + int8 only %.1fx smaller than fp32", ratio)
	}
}

// TestErrorFeedback: with error feedback, what was sent over many rounds
// adds up to what was meant to be sent, up to one residual.
func TestErrorFeedback(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	c, _ := New("topk=0.05+int8")
	rc := c.(ResidualCodec)
	var residual tensor.Set
	sumDelta := tensor.ZerosLike(randDelta(r))
	sumSent := tensor.ZerosLike(sumDelta)
	for round := 0; round < 50; round++ {
		d := randDelta(r)
		payload, res, err := rc.EncodeResidual(d, residual)
		if err != nil {
			t.Fatal(err)
		}
		residual = res
		sent, err := c.Decode(payload)
		if err != nil {
			t.Fatal(err)
		}
		sumDelta.AddScaled(1, d)
		sumSent.AddScaled(1, sent)
	}
	diff, _ := tensor.Diff(sumDelta, sumSent)
	diff.AddScaled(-1, residual)
	if diff.Norm() > 1e-4*sumDelta.Norm() {
		t.Errorf("sent + residual differs from the sum of deltas by %v", diff.Norm())
	}
	if residual.Norm() > sumDelta.Norm() {
		t.Errorf("residual %v grew beyond the deltas' sum %v", residual.Norm(), sumDelta.Norm())
	}
}

func TestCompactRefusesBadInput(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	c, _ := New("topk=0.1+int8")
	good, _ := c.Encode(randDelta(r))
	cases := map[string][]byte{
		"empty":          nil,
		"bad magic":      append([]byte("XXXX"), good[4:]...),
		"wrong kind":     append(append([]byte(nil), good[:4]...), append([]byte{0, 1}, good[6:]...)...),
		"unknown kind":   append(append([]byte(nil), good[:4]...), append([]byte{9, 1}, good[6:]...)...),
		"truncated":      good[:len(good)-3],
		"trailing bytes": append(append([]byte(nil), good...), 0),
		"huge tensor":    append([]byte("FTC1\x02\x01\x01\x01a\x02"), []byte{0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f}...),
		"huge k":         []byte("FTC1\x02\x01\x01\x01a\x01\x04\xff\xff\x03"),
		"index past end": []byte("FTC1\x02\x01\x01\x01a\x01\x04\x01\x09\x00\x00\x00\x00\x00"),
	}
	for name, b := range cases {
		if _, err := c.Decode(b); !errors.Is(err, ErrPayload) {
			t.Errorf("%s: err %v, want ErrPayload", name, err)
		}
	}
	// A tiny payload declaring a big sparse tensor is refused before any
	// allocation when the receiver knows the model's size.
	big := []byte("FTC1\x02\x01\x01\x01a\x01\x80\x80\x80\x40\x00")
	if _, err := c.(Compact).DecodeLimit(big, 1000); !errors.Is(err, ErrPayload) || !strings.Contains(err.Error(), "exceeds 1000") {
		t.Errorf("oversized sparse tensor: %v", err)
	}
	nanScale := bytes.Clone([]byte("FTC1\x02\x00\x01\x01a\x01\x02\x00\x00\xc0\x7f\x01\x02"))
	ci, _ := New("int8")
	if _, err := ci.Decode(nanScale); !errors.Is(err, ErrPayload) {
		t.Errorf("NaN scale: %v", err)
	}
	for _, bad := range []string{"topk=2+int8", "topk=0.1", "int4", "topk=x+fp32", "int8+topk=0.1"} {
		if _, err := New(bad); err == nil {
			t.Errorf("codec %q accepted", bad)
		}
	}
	nan := randDelta(r)
	nan.Tensors[0].Data[0] = float32(math.NaN())
	if _, err := c.Encode(nan); err == nil {
		t.Error("encoded a NaN update")
	}
}

// FuzzCompactDecode: arbitrary bytes never crash a decoder, and what one
// accepts re-encodes.
func FuzzCompactDecode(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	// Seeds of a few hundred bytes: with the 138 KB encodings of randDelta
	// the fuzzer spent short runs minimising one input (0 execs/s).
	small := func() tensor.Set {
		mk := func(name string, shape ...int) tensor.Tensor {
			d := make([]float32, tensor.NumElements(shape))
			for i := range d {
				d[i] = float32(r.NormFloat64() * 0.01)
			}
			return tensor.Tensor{Name: name, Shape: shape, Data: d}
		}
		return tensor.MustNew(mk("a.weight", 4, 6), mk("a.bias", 4), mk("s"))
	}
	for _, name := range []string{"int8", "topk=0.1+int8", "topk=0.5+fp32", "topk=0.2+fp16"} {
		c, _ := New(name)
		b, _ := c.Encode(small())
		f.Add(name, b)
	}
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		c, err := New(name)
		if err != nil {
			return
		}
		// A small element budget keeps every input cheap (the limit path
		// is what a coordinator uses).
		s, err := DecodeLimit(c, b, 1<<16)
		v, verr := DecodeVector(c, b, 1<<16)
		if (err == nil) != (verr == nil) {
			t.Fatalf("DecodeLimit error %v, DecodeVector error %v", err, verr)
		}
		if err != nil {
			return
		}
		// Decoding block by block gives what decoding at once does.
		flat := make([]float32, 0, s.Len())
		for _, tt := range s.Tensors {
			flat = append(flat, tt.Data...)
		}
		buf := make([]float32, 97)
		for lo := 0; lo < len(flat); lo += len(buf) {
			hi := min(lo+len(buf), len(flat))
			blk, err := v.Block(lo, hi, buf)
			if err != nil {
				t.Fatalf("block [%d, %d): %v", lo, hi, err)
			}
			for i, x := range blk {
				if math.Float32bits(x) != math.Float32bits(flat[lo+i]) {
					t.Fatalf("element %d: %v by block, %v at once", lo+i, x, flat[lo+i])
				}
			}
		}
		if err := s.CheckFinite(); err != nil {
			t.Fatalf("decoded non-finite values: %v", err)
		}
		if _, err := c.Encode(s); err != nil {
			t.Fatalf("accepted payload does not re-encode: %v", err)
		}
	})
}
