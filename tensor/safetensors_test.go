package tensor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nlpodyssey/safetensors"
)

type expectedTensor struct {
	DType  string    `json:"dtype"`
	Shape  []int     `json:"shape"`
	Values []float64 `json:"values"`
}

// TestReadValidFiles reads the independently written files exactly as
// expected.json describes them.
func TestReadValidFiles(t *testing.T) {
	raw, err := os.ReadFile("testdata/safetensors/expected.json")
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]map[string]json.RawMessage
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Fatal("expected.json lists no files")
	}
	for file, tensors := range want {
		t.Run(file, func(t *testing.T) {
			s, err := ReadFile(filepath.Join("testdata/safetensors", file))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for name, msg := range tensors {
				if name == "__metadata__" {
					var md map[string]string
					if err := json.Unmarshal(msg, &md); err != nil {
						t.Fatal(err)
					}
					for k, v := range md {
						if s.Metadata[k] != v {
							t.Errorf("metadata %q = %q, want %q", k, s.Metadata[k], v)
						}
					}
					continue
				}
				n++
				var e expectedTensor
				if err := json.Unmarshal(msg, &e); err != nil {
					t.Fatal(err)
				}
				got, ok := s.Get(name)
				if !ok {
					t.Fatalf("tensor %q missing", name)
				}
				if !equalShape(got.Shape, e.Shape) {
					t.Errorf("%s shape = %v, want %v", name, got.Shape, e.Shape)
				}
				if len(got.Data) != len(e.Values) {
					t.Fatalf("%s has %d values, want %d", name, len(got.Data), len(e.Values))
				}
				for i, v := range e.Values {
					if float64(got.Data[i]) != v {
						t.Errorf("%s[%d] = %v, want exactly %v", name, i, got.Data[i], v)
					}
				}
			}
			if len(s.Tensors) != n {
				t.Errorf("read %d tensors, want %d", len(s.Tensors), n)
			}
		})
	}
}

// TestRefuseBadFiles checks every hostile file is refused with an error that
// names the problem, and without a panic.
func TestRefuseBadFiles(t *testing.T) {
	want := map[string]string{
		"bad_offsets_overlap.safetensors": "overlap",
		"bad_json.safetensors":            "JSON",
		"bad_shape_overflow.safetensors":  "overflows",
		"bad_truncated.safetensors":       "run past",
		"bad_dtype.safetensors":           "dtype",
		"bad_header_len.safetensors":      "header length",
		"bad_shape_mismatch.safetensors":  "needs",
		"bad_offset_past_end.safetensors": "past the",
		"bad_duplicate_name.safetensors":  "named twice",
	}
	files, _ := filepath.Glob("testdata/safetensors/bad_*.safetensors")
	if len(files) != len(want) {
		t.Fatalf("found %d bad files, test knows %d", len(files), len(want))
	}
	for _, f := range files {
		base := filepath.Base(f)
		t.Run(base, func(t *testing.T) {
			_, err := ReadFile(f)
			if err == nil {
				t.Fatal("accepted a hostile file")
			}
			if !errors.Is(err, ErrSafetensors) {
				t.Errorf("error %v does not wrap ErrSafetensors", err)
			}
			if !strings.Contains(err.Error(), want[base]) {
				t.Errorf("error %q does not mention %q", err, want[base])
			}
		})
	}
}

func randomSet(r *rand.Rand) Set {
	var ts []Tensor
	for i, shape := range [][]int{{3, 5}, {7}, nil, {2, 0, 4}, {4, 3, 2}} {
		n := NumElements(shape)
		d := make([]float32, n)
		for j := range d {
			d[j] = float32(r.NormFloat64())
		}
		ts = append(ts, Tensor{Name: "layer" + string(rune('a'+i)) + ".weight", Shape: shape, Data: d})
	}
	s := MustNew(ts...)
	s.Metadata = map[string]string{"format": "pt", "fedtune.round": "3"}
	return s
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	s := randomSet(r)
	b, err := Marshal(s, F32)
	if err != nil {
		t.Fatal(err)
	}
	if hl := binary.LittleEndian.Uint64(b); hl%8 != 0 {
		t.Errorf("header length %d not a multiple of 8", hl)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := SameLayout(got, s); err != nil {
		t.Fatal(err)
	}
	for i := range s.Tensors {
		for j, v := range s.Tensors[i].Data {
			if got.Tensors[i].Data[j] != v {
				t.Fatalf("%s[%d] = %v, want %v", s.Tensors[i].Name, j, got.Tensors[i].Data[j], v)
			}
		}
	}
	if got.Metadata["fedtune.round"] != "3" {
		t.Errorf("metadata lost: %v", got.Metadata)
	}
	b2, _ := Marshal(got, F32)
	if !bytes.Equal(b, b2) {
		t.Error("encoding is not canonical: re-encoding differs")
	}
}

// TestIndependentReader checks what fedtune writes is read back identically
// by an independent implementation (nlpodyssey/safetensors), in F32 and F16.
func TestIndependentReader(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	s := randomSet(r)
	for _, dt := range []DType{F32, F16} {
		t.Run(string(dt), func(t *testing.T) {
			b, err := Marshal(s, dt)
			if err != nil {
				t.Fatal(err)
			}
			st, err := safetensors.Deserialize(b)
			if err != nil {
				t.Fatalf("independent reader refused our file: %v", err)
			}
			if st.Len() != len(s.Tensors) {
				t.Fatalf("independent reader sees %d tensors, want %d", st.Len(), len(s.Tensors))
			}
			ours, err := Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range ours.Tensors {
				tv, ok := st.Tensor(want.Name)
				if !ok {
					t.Fatalf("tensor %q missing", want.Name)
				}
				if tv.DType().String() != string(dt) {
					t.Errorf("%s dtype %s, want %s", want.Name, tv.DType(), dt)
				}
				if len(tv.Shape()) != len(want.Shape) {
					t.Fatalf("%s shape %v, want %v", want.Name, tv.Shape(), want.Shape)
				}
				for i, d := range tv.Shape() {
					if int(d) != want.Shape[i] {
						t.Fatalf("%s shape %v, want %v", want.Name, tv.Shape(), want.Shape)
					}
				}
				vals := decodeValues(dt, tv.Data())
				for i, v := range want.Data {
					if vals[i] != v {
						t.Fatalf("%s[%d]: independent %v, ours %v", want.Name, i, vals[i], v)
					}
				}
				if dt == F16 {
					orig, _ := s.Get(want.Name)
					for i, v := range orig.Data {
						if d := math.Abs(float64(v - want.Data[i])); d > 1e-3*math.Max(1, math.Abs(float64(v))) {
							t.Fatalf("%s[%d]: F16 round trip %v -> %v", want.Name, i, v, want.Data[i])
						}
					}
				}
			}
		})
	}
}

func TestMarshalRefusesBadSets(t *testing.T) {
	if _, err := Marshal(Set{Tensors: []Tensor{{Name: "x", Shape: []int{3}, Data: []float32{1}}}}, F32); err == nil {
		t.Error("marshalled a tensor whose data does not match its shape")
	}
	if _, err := Marshal(MustNew(), F64); err == nil {
		t.Error("marshalled to an unsupported dtype")
	}
}

// TestBF16RoundsToNearestEven checks BF16 writing against values whose
// rounding is known, and that reading it back gives them exactly.
func TestBF16RoundsToNearestEven(t *testing.T) {
	cases := []struct{ in, want float32 }{
		{1, 1},
		{math.Float32frombits(0x3f808000), 1}, // tie, even below
		{math.Float32frombits(0x3f818000), math.Float32frombits(0x3f820000)}, // tie, even above
		{math.Float32frombits(0x3f808001), math.Float32frombits(0x3f810000)}, // above the tie
		{-2.5, -2.5},
		{float32(math.Inf(1)), float32(math.Inf(1))},
	}
	for _, c := range cases {
		b, err := Marshal(MustNew(Tensor{Name: "x", Shape: []int{1}, Data: []float32{c.in}}), BF16)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Unmarshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Tensors[0].Data[0]; got != c.want {
			t.Errorf("bf16(%x) = %x, want %x", math.Float32bits(c.in), math.Float32bits(got), math.Float32bits(c.want))
		}
	}
}

// FuzzUnmarshal feeds arbitrary bytes to the reader: it must never panic, and
// what it accepts must re-encode and decode to the same values.
func FuzzUnmarshal(f *testing.F) {
	files, _ := filepath.Glob("testdata/safetensors/*.safetensors")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Unmarshal(b)
		v, verr := NewStreamVector(bytes.NewReader(b), int64(len(b)))
		if (err == nil) != (verr == nil) {
			t.Fatalf("Unmarshal error %v, NewStreamVector error %v", err, verr)
		}
		if err != nil {
			return
		}
		// Streaming gives the same values, and refuses exactly the files
		// holding a NaN or infinity.
		m, merr := Materialize(v)
		if (merr == nil) != (s.CheckFinite() == nil) {
			t.Fatalf("Materialize error %v, CheckFinite %v", merr, s.CheckFinite())
		}
		if merr == nil {
			for k := range s.Tensors {
				for i, x := range s.Tensors[k].Data {
					if math.Float32bits(x) != math.Float32bits(m.Tensors[k].Data[i]) {
						t.Fatalf("%s[%d]: streamed %v, unmarshalled %v", s.Tensors[k].Name, i, m.Tensors[k].Data[i], x)
					}
				}
			}
		}
		if s.Len()*2 > len(b) {
			t.Fatalf("decoded %d values from %d bytes", s.Len(), len(b))
		}
		enc, err := Marshal(s, F32)
		if err != nil {
			t.Fatalf("accepted set does not re-encode: %v", err)
		}
		back, err := Unmarshal(enc)
		if err != nil {
			t.Fatalf("re-encoded set refused: %v", err)
		}
		if err := SameLayout(back, s); err != nil {
			t.Fatal(err)
		}
	})
}
