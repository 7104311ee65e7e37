// Package lm does a practitioner's local work with a language model held
// in a Hugging Face directory: read it with its tokenizer, turn token
// files and text into sequences, evaluate (with or without a PEFT
// adapter), fine-tune (fully or with LoRA), generate, and pretrain a small
// base. The CLI's model commands call it; the federated path uses the same
// model package underneath.
package lm

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"codeberg.org/sbinet/npyio/npy"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tokenizer"
)

// TokenizerFile is the tokenizer's file in a model directory.
const TokenizerFile = "tokenizer.json"

// Checkpoint is a model directory read into memory.
type Checkpoint struct {
	Dir    string
	Model  model.Llama
	Params tensor.Set
	Tok    *tokenizer.Tokenizer // nil when the directory has no tokenizer.json
}

// Load reads a model directory: config.json, the weights (any of F32, F16,
// BF16; single or sharded) and tokenizer.json if present.
func Load(dir string) (*Checkpoint, error) {
	cfg, params, err := hf.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{Dir: dir, Model: model.Llama{Config: cfg}, Params: params}
	tok, err := tokenizer.Load(filepath.Join(dir, TokenizerFile))
	switch {
	case err == nil:
		if tok.VocabSize() > cfg.VocabSize {
			return nil, fmt.Errorf("%s: tokenizer.json has %d tokens, config.json's vocab_size is %d", dir, tok.VocabSize(), cfg.VocabSize)
		}
		c.Tok = tok
	case errors.Is(err, fs.ErrNotExist):
	default:
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return c, nil
}

// Save writes params (the checkpoint's layout) as a model directory with
// the checkpoint's configuration and tokenizer.
func (c *Checkpoint) Save(dir string, params tensor.Set, dtype tensor.DType) error {
	if err := hf.WriteDir(dir, c.Model.Config, params, dtype, 0); err != nil {
		return err
	}
	if c.Tok == nil {
		return nil
	}
	b, err := c.Tok.Marshal()
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, TokenizerFile), b, 0o644)
}

// WithAdapter returns the checkpoint's weights with the PEFT adapter in
// dir merged in, and the adapter's configuration.
func (c *Checkpoint) WithAdapter(dir string) (tensor.Set, hf.AdapterConfig, error) {
	ac, adapters, err := hf.ReadAdapter(dir, c.Model.Config)
	if err != nil {
		return tensor.Set{}, ac, err
	}
	targets, err := hf.Targets(c.Model.Config, ac.TargetModules)
	if err != nil {
		return tensor.Set{}, ac, err
	}
	merged, err := ac.LoRA().Merge(lora.Static{Params: c.Model.Layout(), Targets: targets}, c.Params, adapters)
	return merged, ac, err
}

// Encode tokenises text with the checkpoint's tokenizer.
func (c *Checkpoint) Encode(text string) ([]int, error) {
	if c.Tok == nil {
		return nil, fmt.Errorf("%s has no %s: give token ids instead", c.Dir, TokenizerFile)
	}
	return c.Tok.Encode(text), nil
}

// ReadTokens reads token ids from a NumPy file: int32 or int64 (or their
// unsigned kinds), shape [T] (one sequence) or [batch, T].
func ReadTokens(path string) ([][]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := npy.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	shape := r.Header.Descr.Shape
	if len(shape) != 1 && len(shape) != 2 {
		return nil, fmt.Errorf("%s: token ids of shape %v, want [T] or [batch, T]", path, shape)
	}
	var flat []int64
	switch typ := strings.Trim(r.Header.Descr.Type, "'\""); typ {
	case "<i8":
		err = r.Read(&flat)
	case "<i4":
		var v []int32
		err = r.Read(&v)
		for _, x := range v {
			flat = append(flat, int64(x))
		}
	default:
		return nil, fmt.Errorf("%s: token ids of type %s, want int32 or int64", path, typ)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rows, cols := 1, shape[0]
	if len(shape) == 2 {
		rows, cols = shape[0], shape[1]
	}
	out := make([][]int, rows)
	for i := range out {
		out[i] = make([]int, cols)
		for j := range out[i] {
			v := flat[i*cols+j]
			if v < 0 || v > 1<<31-1 {
				return nil, fmt.Errorf("%s: token id %d at [%d, %d] is not a vocabulary index", path, v, i, j)
			}
			out[i][j] = int(v)
		}
	}
	return out, nil
}

// Windows cuts every row into consecutive windows of at most seq tokens
// (the last of a row shorter; windows of one token, which predict
// nothing, are dropped).
func Windows(rows [][]int, seq int) [][]int {
	var out [][]int
	for _, r := range rows {
		for lo := 0; lo < len(r); lo += seq {
			if w := r[lo:min(lo+seq, len(r))]; len(w) >= 2 {
				out = append(out, w)
			}
		}
	}
	return out
}

// byLength groups sequences by length, longest first, as text data sets
// of one length each.
func byLength(seqs [][]int, vocab int) ([]*dataset.Examples, error) {
	groups := map[int][][]int{}
	for _, s := range seqs {
		groups[len(s)] = append(groups[len(s)], s)
	}
	lens := slices.Sorted(maps.Keys(groups))
	slices.Reverse(lens)
	out := make([]*dataset.Examples, 0, len(lens))
	for _, l := range lens {
		d, err := dataset.TokenExamples(groups[l], vocab)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}
