package hf

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

func small(modelType string, tied bool, heads, kvHeads int) Config {
	return Config{ModelType: modelType, Architectures: []string{"LlamaForCausalLM"}, VocabSize: 97, HiddenSize: 64, IntermediateSize: 96,
		NumHiddenLayers: 2, NumAttentionHeads: heads, NumKeyValueHeads: kvHeads, MaxPositionEmbeddings: 128, RMSNormEps: 1e-5, RopeTheta: 10000,
		TieWordEmbeddings: tied}
}

func random(cfg Config, seed uint64) tensor.Set {
	r := rand.New(rand.NewPCG(seed, 1))
	var ts []tensor.Tensor
	for _, s := range cfg.Layout() {
		n := 1
		for _, d := range s.Shape {
			n *= d
		}
		data := make([]float32, n)
		for i := range data {
			data[i] = float32(r.NormFloat64())
		}
		ts = append(ts, tensor.Tensor{Name: s.Name, Shape: s.Shape, Data: data})
	}
	return tensor.MustNew(ts...)
}

func TestWriteReadDir(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		dtype tensor.DType
		shard int64
	}{
		{"llama untied GQA F32", small("llama", false, 8, 2), tensor.F32, 0},
		{"llama tied MHA F16 sharded", small("llama", true, 4, 4), tensor.F16, 100_000},
		{"qwen2 biases sharded", small("qwen2", false, 4, 2), tensor.F32, 60_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			want := random(tc.cfg, 3)
			if err := WriteDir(dir, tc.cfg, want, tc.dtype, tc.shard); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, IndexFile)); (err == nil) != (tc.shard > 0) {
				t.Errorf("index present: %v, sharded: %v", err == nil, tc.shard > 0)
			}
			cfg, got, err := ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.NumKeyValueHeads != tc.cfg.NumKeyValueHeads || cfg.TieWordEmbeddings != tc.cfg.TieWordEmbeddings {
				t.Errorf("config read back as %+v", cfg)
			}
			tol := 0.0
			if tc.dtype == tensor.F16 {
				tol = 2e-3
			}
			for i, w := range want.Tensors {
				g := got.Tensors[i]
				if g.Name != w.Name {
					t.Fatalf("tensor %d: %s, want %s", i, g.Name, w.Name)
				}
				for k := range w.Data {
					if d := math.Abs(float64(g.Data[k] - w.Data[k])); d > tol*math.Max(1, math.Abs(float64(w.Data[k]))) {
						t.Fatalf("%s[%d] = %v, wrote %v", w.Name, k, g.Data[k], w.Data[k])
					}
				}
			}
		})
	}
}

// writeBF16 writes set as a BF16 safetensors file (the dtype most Hugging
// Face checkpoints ship in), truncating each float32 to its high half.
func writeBF16(t *testing.T, path string, set tensor.Set) {
	header := map[string]any{}
	var data []byte
	for _, ts := range set.Tensors {
		start := len(data)
		for _, v := range ts.Data {
			data = binary.LittleEndian.AppendUint16(data, uint16(math.Float32bits(v)>>16))
		}
		header[ts.Name] = map[string]any{"dtype": "BF16", "shape": ts.Shape, "data_offsets": []int{start, len(data)}}
	}
	h, _ := json.Marshal(header)
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(append(out, h...), data...)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadBF16(t *testing.T) {
	cfg := small("llama", true, 4, 2)
	dir := t.TempDir()
	want := random(cfg, 5)
	b, _ := json.Marshal(cfg)
	os.WriteFile(filepath.Join(dir, ConfigFile), b, 0o644)
	writeBF16(t, filepath.Join(dir, WeightFile), want)
	_, got, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	w, g := want.Tensors[0].Data[7], got.Tensors[0].Data[7]
	if math.Float32bits(g) != math.Float32bits(w)&0xffff0000 {
		t.Errorf("BF16 %v read as %v", w, g)
	}
}

func TestRefuses(t *testing.T) {
	good := small("llama", false, 8, 2)
	for _, tc := range []struct {
		name string
		cfg  func(c *Config)
		set  func(s *tensor.Set)
		want string
	}{
		{"gpt2", func(c *Config) { c.ModelType = "gpt2" }, nil, `model_type "gpt2" is not supported`},
		{"sliding window", func(c *Config) { c.ModelType = "mistral"; w := 64; c.SlidingWindow = &w }, nil, "sliding_window 64"},
		{"kv heads", func(c *Config) { c.NumKeyValueHeads = 3 }, nil, "not a multiple of num_key_value_heads 3"},
		{"missing tensor", nil, func(s *tensor.Set) { s.Tensors = s.Tensors[1:] }, "missing"},
		{"mis-shaped", nil, func(s *tensor.Set) { s.Tensors[0].Shape = []int{s.Tensors[0].Shape[0] * 2, s.Tensors[0].Shape[1] / 2} }, "the configuration says"},
		{"config disagrees", func(c *Config) { c.IntermediateSize = 128 }, nil, "mlp.down_proj.weight has shape [64 96], the configuration says [64 128]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			set := random(good, 1)
			if tc.set != nil {
				tc.set(&set)
			}
			if err := tensor.WriteFile(filepath.Join(dir, WeightFile), set, tensor.F32); err != nil {
				t.Fatal(err)
			}
			cfg := good
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			b, _ := json.Marshal(cfg)
			os.WriteFile(filepath.Join(dir, ConfigFile), b, 0o644)
			if _, _, err := ReadDir(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestConfigKeepsUnknownKeys(t *testing.T) {
	doc := `{"model_type":"llama","vocab_size":97,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,"num_attention_heads":8,
"max_position_embeddings":128,"rms_norm_eps":1e-5,"bos_token_id":1,"rope_scaling":{"type":"linear","factor":2}}`
	c, err := ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if c.NumKeyValueHeads != 8 || c.RopeTheta != 10000 {
		t.Errorf("defaults: kv heads %d, rope_theta %v", c.NumKeyValueHeads, c.RopeTheta)
	}
	b, _ := json.Marshal(c)
	if !strings.Contains(string(b), `"bos_token_id":1`) || !strings.Contains(string(b), `"factor":2`) {
		t.Errorf("unknown keys lost: %s", b)
	}
}
