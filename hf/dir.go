package hf

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/fedtune/fedtune/tensor"
)

// Checkpoint file names of a Hugging Face model directory.
const (
	ConfigFile = "config.json"
	WeightFile = "model.safetensors"
	IndexFile  = "model.safetensors.index.json"
)

// index is model.safetensors.index.json.
type index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// ReadDir reads a model directory: config.json, then model.safetensors or
// the shards its index names (F32, F16, BF16 or F64 tensors, read as
// float32), checked against the configuration's layout.
func ReadDir(dir string) (Config, tensor.Set, error) {
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		return Config{}, tensor.Set{}, fmt.Errorf("%s: %w", dir, err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return cfg, tensor.Set{}, fmt.Errorf("%s: %w", dir, err)
	}
	files := []string{WeightFile}
	if b, err := os.ReadFile(filepath.Join(dir, IndexFile)); err == nil {
		var idx index
		if err := json.Unmarshal(b, &idx); err != nil {
			return cfg, tensor.Set{}, fmt.Errorf("%s: %s: %w", dir, IndexFile, err)
		}
		files = files[:0]
		for _, f := range idx.WeightMap {
			if f != filepath.Base(f) {
				return cfg, tensor.Set{}, fmt.Errorf("%s: %s names %q outside the directory", dir, IndexFile, f)
			}
			if !slices.Contains(files, f) {
				files = append(files, f)
			}
		}
		sort.Strings(files)
	} else if !errors.Is(err, os.ErrNotExist) {
		return cfg, tensor.Set{}, fmt.Errorf("%s: %w", dir, err)
	}
	var all []tensor.Tensor
	for _, f := range files {
		s, err := tensor.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return cfg, tensor.Set{}, fmt.Errorf("%s: %w", dir, err)
		}
		all = append(all, s.Tensors...)
	}
	set, err := Check(cfg, all)
	if err != nil {
		return cfg, tensor.Set{}, fmt.Errorf("%s: %w", dir, err)
	}
	return cfg, set, nil
}

// Check matches tensors against cfg's layout: every tensor present with
// its shape, none unknown (a tied model's redundant lm_head.weight and
// rotary inv_freq buffers of older checkpoints are dropped). It returns
// the tensors as a set.
func Check(cfg Config, ts []tensor.Tensor) (tensor.Set, error) {
	want := map[string][]int{}
	for _, s := range cfg.Layout() {
		want[s.Name] = s.Shape
	}
	var kept []tensor.Tensor
	var unknown []string
	seen := map[string]bool{}
	for _, t := range ts {
		shape, ok := want[t.Name]
		switch {
		case ok:
			if !slices.Equal(t.Shape, shape) {
				return tensor.Set{}, fmt.Errorf("tensor %s has shape %v, the configuration says %v", t.Name, t.Shape, shape)
			}
			seen[t.Name] = true
			kept = append(kept, t)
		case t.Name == "lm_head.weight" && cfg.TieWordEmbeddings, strings.HasSuffix(t.Name, ".rotary_emb.inv_freq"):
		default:
			unknown = append(unknown, t.Name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return tensor.Set{}, fmt.Errorf("%d tensors are not part of a %s of this configuration: %s", len(unknown), cfg.ModelType, strings.Join(first(unknown, 5), ", "))
	}
	var missing []string
	for _, s := range cfg.Layout() {
		if !seen[s.Name] {
			missing = append(missing, s.Name)
		}
	}
	if len(missing) > 0 {
		return tensor.Set{}, fmt.Errorf("%d tensors are missing: %s", len(missing), strings.Join(first(missing, 5), ", "))
	}
	return tensor.New(kept...)
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("… (%d more)", len(s)-n))
	}
	return s
}

// WriteDir writes cfg and set as a model directory: config.json (with
// torch_dtype), and model.safetensors, or, when the tensors take more
// than shardBytes (> 0), shards model-0000i-of-0000n.safetensors and their
// index. dtype is F32, F16 or BF16.
func WriteDir(dir string, cfg Config, set tensor.Set, dtype tensor.DType, shardBytes int64) error {
	if _, err := Check(cfg, set.Tensors); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cfg.TorchDtype = map[tensor.DType]string{tensor.F32: "float32", tensor.F16: "float16", tensor.BF16: "bfloat16"}[dtype]
	if cfg.TorchDtype == "" {
		return fmt.Errorf("hf: write %s tensors: want F32, F16 or BF16", dtype)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), append(b, '\n'), 0o644); err != nil {
		return err
	}
	size := int64(2)
	if dtype == tensor.F32 {
		size = 4
	}
	var shards [][]tensor.Tensor
	var cur []tensor.Tensor
	var curBytes, total int64
	for _, t := range set.Tensors {
		n := int64(len(t.Data)) * size
		if shardBytes > 0 && curBytes > 0 && curBytes+n > shardBytes {
			shards, cur, curBytes = append(shards, cur), nil, 0
		}
		cur, curBytes, total = append(cur, t), curBytes+n, total+n
	}
	shards = append(shards, cur)
	if len(shards) == 1 {
		return tensor.WriteFile(filepath.Join(dir, WeightFile), set, dtype)
	}
	idx := index{Metadata: map[string]any{"total_size": total}, WeightMap: map[string]string{}}
	for i, ts := range shards {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(shards))
		s, err := tensor.New(ts...)
		if err != nil {
			return err
		}
		if err := tensor.WriteFile(filepath.Join(dir, name), s, dtype); err != nil {
			return err
		}
		for _, t := range ts {
			idx.WeightMap[t.Name] = name
		}
	}
	b, err = json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, IndexFile), append(b, '\n'), 0o644)
}
