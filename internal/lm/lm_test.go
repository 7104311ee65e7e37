package lm

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"codeberg.org/sbinet/npyio/npy"

	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tokenizer"
)

var tiny = hf.Config{ModelType: "llama", VocabSize: 300, HiddenSize: 32, IntermediateSize: 64, NumHiddenLayers: 2,
	NumAttentionHeads: 4, NumKeyValueHeads: 2, MaxPositionEmbeddings: 64, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true}

const text = "the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs away into the brown forest.\n\n"

// tinyCheckpoint writes a random model with a tokenizer trained on text.
func tinyCheckpoint(t *testing.T) (string, *Checkpoint) {
	t.Helper()
	tok, err := tokenizer.Train([]string{text, text}, 300, tokenizer.Llama3Pattern, []string{EndOfText}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tiny
	cfg.VocabSize = tok.VocabSize()
	m := model.Llama{Config: cfg}
	ck := &Checkpoint{Model: m, Params: m.Init(3), Tok: tok}
	dir := filepath.Join(t.TempDir(), "model")
	if err := ck.Save(dir, ck.Params, tensor.BF16); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, loaded
}

func TestReadTokens(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		val  any
		want [][]int
		bad  bool
	}{
		{"int64-1d", []int64{1, 2, 3}, [][]int{{1, 2, 3}}, false},
		{"int32-2d", [][]int32{{4, 5}, {6, 7}}, [][]int{{4, 5}, {6, 7}}, false},
		{"negative", []int64{1, -2}, nil, true},
		{"float", []float32{1, 2}, nil, true},
	}
	for _, c := range cases {
		p := filepath.Join(dir, c.name+".npy")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := npy.Write(f, c.val); err != nil {
			t.Fatal(err)
		}
		f.Close()
		got, err := ReadTokens(p)
		if c.bad {
			if err == nil {
				t.Errorf("%s: read %v, want an error", c.name, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}
}

func TestWindows(t *testing.T) {
	got := Windows([][]int{{1, 2, 3, 4, 5}, {6, 7, 8}}, 2)
	want := [][]int{{1, 2}, {3, 4}, {6, 7}} // single-token tails predict nothing
	if !reflect.DeepEqual(got, want) {
		t.Errorf("windows %v, want %v", got, want)
	}
}

// TestEvalTrainGenerate runs the local commands' work on a tiny model:
// evaluation of uneven windows equals the token-weighted mean of the
// parts, fine-tuning (full and LoRA) lowers the loss on the text it
// trains on, and greedy generation is deterministic.
func TestEvalTrainGenerate(t *testing.T) {
	_, ck := tinyCheckpoint(t)
	ids, err := ck.Encode(text + text + text)
	if err != nil {
		t.Fatal(err)
	}
	seqs := [][]int{ids}
	whole, err := ck.Eval(ck.Params, seqs, 16, 4)
	if err != nil {
		t.Fatal(err)
	}
	if whole.N == 0 || math.IsNaN(whole.Loss) {
		t.Fatalf("eval %+v", whole)
	}
	ctx := context.Background()
	for _, c := range []struct {
		name string
		lora *hf.AdapterConfig
		lr   float64
		keep float64 // the loss after must be below this share of the loss before
	}{{"full", nil, 3e-3, 0.7}, {"lora", &hf.AdapterConfig{R: 8, LoraAlpha: 16, TargetModules: []string{"q_proj", "v_proj", "up_proj", "down_proj"}}, 2e-2, 0.95}} {
		out, met, err := ck.Train(ctx, seqs, TrainOptions{Seq: 16, LoRA: c.lora, Seed: 1,
			Train: model.TrainConfig{Epochs: 100, Steps: 40, BatchSize: 4, LR: c.lr, Optimizer: model.AdamW, ClipNorm: 1}})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		params := out
		if c.lora != nil {
			adir := filepath.Join(t.TempDir(), "adapter")
			if err := hf.WriteAdapter(adir, ck.Model.Config, *c.lora, out); err != nil {
				t.Fatal(err)
			}
			if params, _, err = ck.WithAdapter(adir); err != nil {
				t.Fatal(err)
			}
		}
		after, err := ck.Eval(params, seqs, 16, 4)
		if err != nil {
			t.Fatal(err)
		}
		if after.Loss > c.keep*whole.Loss {
			t.Errorf("%s: loss %.3f after %d steps, %.3f before: want below %.0f%% of it", c.name, after.Loss, met.Steps, whole.Loss, 100*c.keep)
		}
	}
	prompt := ids[:5]
	a, err := ck.Generate(ck.Params, prompt, 8, Sampling{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ck.Generate(ck.Params, prompt, 8, Sampling{})
	if len(a) != 8 || !reflect.DeepEqual(a, b) {
		t.Errorf("greedy generation %v then %v", a, b)
	}
	if _, err := ck.Generate(ck.Params, prompt, 4, Sampling{Temperature: 1, TopK: 5, Seed: 2}); err != nil {
		t.Error(err)
	}
}
