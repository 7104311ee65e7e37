package model

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"codeberg.org/sbinet/npyio/npy"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

// torchPython returns Debian's python3 if it imports torch and numpy
// (make testdeps installs python3-torch), skipping the test otherwise.
func torchPython(t *testing.T) string {
	t.Helper()
	py := "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import torch, numpy").CombinedOutput(); err != nil {
		t.Skipf("PyTorch reference unavailable (install python3-torch with make testdeps): %v: %s", err, strings.TrimSpace(string(out)))
	}
	return py
}

// refConfigs are the checkpoints compared with the PyTorch reference:
// tied head with grouped-query attention, untied head with full
// multi-head attention, and Qwen2's q/k/v biases with explicit head_dim.
var refConfigs = []struct {
	name string
	cfg  hf.Config
}{
	{"tied-gqa", hf.Config{ModelType: "llama", VocabSize: 97, HiddenSize: 64, IntermediateSize: 96, NumHiddenLayers: 2, NumAttentionHeads: 4, NumKeyValueHeads: 2, MaxPositionEmbeddings: 128, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true}},
	{"untied-mha", hf.Config{ModelType: "llama", VocabSize: 101, HiddenSize: 64, IntermediateSize: 128, NumHiddenLayers: 3, NumAttentionHeads: 4, NumKeyValueHeads: 4, MaxPositionEmbeddings: 128, RMSNormEps: 1e-6, RopeTheta: 500000}},
	{"qwen2-bias", hf.Config{ModelType: "qwen2", VocabSize: 89, HiddenSize: 64, IntermediateSize: 80, NumHiddenLayers: 2, NumAttentionHeads: 8, NumKeyValueHeads: 2, HeadDim: 8, MaxPositionEmbeddings: 64, RMSNormEps: 1e-6, RopeTheta: 1000000, TieWordEmbeddings: true}},
}

// randomCheckpoint draws weights far from the initialisation's near-uniform
// predictions: matrices with standard deviation 0.15, norms around 1,
// biases around 0.
func randomCheckpoint(m Llama, seed uint64) tensor.Set {
	s := m.Layout()
	r := rand.New(rand.NewPCG(seed, 1))
	for _, t := range s.Tensors {
		for i := range t.Data {
			switch {
			case strings.HasSuffix(t.Name, "norm.weight"):
				t.Data[i] = float32(1 + 0.2*r.NormFloat64())
			case len(t.Shape) == 1:
				t.Data[i] = float32(0.1 * r.NormFloat64())
			default:
				t.Data[i] = float32(0.15 * r.NormFloat64())
			}
		}
	}
	return s
}

func randomTokens(vocab, batch, seq int, seed uint64) [][]int {
	r := rand.New(rand.NewPCG(seed, 2))
	out := make([][]int, batch)
	for b := range out {
		out[b] = make([]int, seq)
		for i := range out[b] {
			out[b][i] = r.IntN(vocab)
		}
	}
	return out
}

func writeTokens(t *testing.T, path string, seqs [][]int) {
	t.Helper()
	rows := make([][]int64, len(seqs))
	for i, s := range seqs {
		for _, id := range s {
			rows[i] = append(rows[i], int64(id))
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := npy.Write(f, rows); err != nil {
		t.Fatal(err)
	}
}

// runRef runs the reference script and returns its loss.
func runRef(t *testing.T, py string, args ...string) float64 {
	t.Helper()
	cmd := exec.Command(py, append([]string{"testdata/llama_ref.py"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("reference: %v\n%s", err, msg)
	}
	var res struct{ Loss float64 }
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("reference output %q: %v", out, err)
	}
	return res.Loss
}

func relErr(a, b float64) float64 { return math.Abs(a-b) / math.Max(math.Abs(b), 1e-12) }

func maxAbsDiff(t *testing.T, got, want tensor.Set) float64 {
	t.Helper()
	if err := tensor.SameLayout(got, want); err != nil {
		t.Fatal(err)
	}
	var d float64
	for k := range got.Tensors {
		for i, v := range got.Tensors[k].Data {
			d = math.Max(d, math.Abs(float64(v-want.Tensors[k].Data[i])))
		}
	}
	return d
}

// TestLlamaAgreesWithPyTorch compares the Gorgonia decoder with an
// independent PyTorch implementation of transformers' Llama semantics
// (testdata/llama_ref.py, float64) on random checkpoints: the loss within
// 1e-4 relative, the weights after one plain SGD step within 1e-5
// absolute, and a PEFT adapter's loss and SGD step both ways.
func TestLlamaAgreesWithPyTorch(t *testing.T) {
	py := torchPython(t)
	for i, rc := range refConfigs {
		t.Run(rc.name, func(t *testing.T) {
			dir := t.TempDir()
			m := Llama{Config: rc.cfg}
			params := randomCheckpoint(m, uint64(i+1))
			ckpt := filepath.Join(dir, "model")
			if err := hf.WriteDir(ckpt, rc.cfg, params, tensor.F32, 0); err != nil {
				t.Fatal(err)
			}
			seqs := randomTokens(rc.cfg.VocabSize, 3, 24, uint64(i+10))
			ids := filepath.Join(dir, "ids.npy")
			writeTokens(t, ids, seqs)
			data, err := dataset.TokenExamples(seqs, rc.cfg.VocabSize)
			if err != nil {
				t.Fatal(err)
			}

			// loss
			ev, err := m.NewEvaluator(2) // two batches, the second padded
			if err != nil {
				t.Fatal(err)
			}
			defer ev.Close()
			got, err := ev.Evaluate(params, data)
			if err != nil {
				t.Fatal(err)
			}
			want := runRef(t, py, "--dir", ckpt, "--tokens", ids)
			if got.N != 3*23 || relErr(got.Loss, want) > 1e-4 {
				t.Errorf("loss %.8f over %d tokens, reference %.8f over 69 (rel. error %.2g)", got.Loss, got.N, want, relErr(got.Loss, want))
			}

			// one plain SGD step on the whole batch
			const lr = 0.5
			tr, err := m.NewTrainer()
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			stepped, _, err := tr.Train(context.Background(), params, data, TrainConfig{Steps: 1, BatchSize: 3, LR: lr})
			if err != nil {
				t.Fatal(err)
			}
			refOut := filepath.Join(dir, "sgd.safetensors")
			runRef(t, py, "--dir", ckpt, "--tokens", ids, "--sgd-lr", "0.5", "--out", refOut)
			ref, err := tensor.ReadFile(refOut)
			if err != nil {
				t.Fatal(err)
			}
			stepDiff := maxAbsDiff(t, stepped, ref)
			if stepDiff > 1e-5 {
				t.Errorf("weights after one SGD step differ from the reference's by %.3g (> 1e-5)", stepDiff)
			}
			if d := maxAbsDiff(t, stepped, params); d < 1e-3 {
				t.Errorf("the SGD step moved no weight by more than %.3g", d)
			}

			// a PEFT adapter on q, v and down projections: loss both ways
			ac := hf.AdapterConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"q_proj", "v_proj", "down_proj"}}
			targets, err := hf.Targets(rc.cfg, ac.TargetModules)
			if err != nil {
				t.Fatal(err)
			}
			l := ac.LoRA()
			base := lora.Static{Params: m.Layout(), Targets: targets}
			adapter, err := l.Layout(base)
			if err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(uint64(i), 3))
			for _, at := range adapter.Tensors {
				for k := range at.Data {
					at.Data[k] = float32(0.2 * r.NormFloat64())
				}
			}
			adir := filepath.Join(dir, "adapter")
			if err := hf.WriteAdapter(adir, rc.cfg, ac, adapter); err != nil {
				t.Fatal(err)
			}
			_, readBack, err := hf.ReadAdapter(adir, rc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			merged, err := l.Merge(base, params, readBack)
			if err != nil {
				t.Fatal(err)
			}
			gotA, err := ev.Evaluate(merged, data)
			if err != nil {
				t.Fatal(err)
			}
			wantA := runRef(t, py, "--dir", ckpt, "--tokens", ids, "--adapter", adir)
			if relErr(gotA.Loss, wantA) > 1e-4 || relErr(gotA.Loss, got.Loss) < 1e-3 {
				t.Errorf("adapted loss %.8f, reference %.8f (base %.8f)", gotA.Loss, wantA, got.Loss)
			}
			// and one SGD step of the adapter alone
			trained, _, err := tr.TrainAdapter(context.Background(), l, params, readBack, data, TrainConfig{Steps: 1, BatchSize: 3, LR: lr})
			if err != nil {
				t.Fatal(err)
			}
			refA := filepath.Join(dir, "adapter-sgd.safetensors")
			runRef(t, py, "--dir", ckpt, "--tokens", ids, "--adapter", adir, "--sgd-lr", "0.5", "--out", refA)
			refSet, err := tensor.ReadFile(refA)
			if err != nil {
				t.Fatal(err)
			}
			for k := range refSet.Tensors {
				refSet.Tensors[k].Name = strings.TrimPrefix(refSet.Tensors[k].Name, "base_model.model.")
			}
			adapterDiff := maxAbsDiff(t, trained, refSet)
			if adapterDiff > 1e-5 {
				t.Errorf("adapters after one SGD step differ from the reference's by %.3g (> 1e-5)", adapterDiff)
			}
			t.Logf("loss %.7f (reference %.7f, rel. error %.1e), adapted %.7f (reference %.7f, %.1e); after one SGD step (lr 0.5) weights within %.1e, adapters within %.1e",
				got.Loss, want, relErr(got.Loss, want), gotA.Loss, wantA, relErr(gotA.Loss, wantA), stepDiff, adapterDiff)
		})
	}
}

// TestLlamaHalfPrecisionCheckpoints writes a checkpoint in BF16 and F16,
// reads it back as fedtune does, and checks the loss against the
// reference reading the same files.
func TestLlamaHalfPrecisionCheckpoints(t *testing.T) {
	py := torchPython(t)
	rc := refConfigs[0]
	m := Llama{Config: rc.cfg}
	params := randomCheckpoint(m, 7)
	seqs := randomTokens(rc.cfg.VocabSize, 2, 16, 8)
	data, err := dataset.TokenExamples(seqs, rc.cfg.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	ids := filepath.Join(t.TempDir(), "ids.npy")
	writeTokens(t, ids, seqs)
	ev, err := m.NewEvaluator(2)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	for _, c := range []struct {
		dtype tensor.DType
		torch string
		tol   float64 // largest rounding of a weight of magnitude < 1
	}{{tensor.BF16, "bfloat16", 1.0 / 256}, {tensor.F16, "float16", 1.0 / 2048}} {
		dir := filepath.Join(t.TempDir(), string(c.dtype))
		if err := hf.WriteDir(dir, rc.cfg, params, c.dtype, 20000); err != nil { // sharded
			t.Fatal(err)
		}
		cfg, loaded, err := hf.ReadDir(dir)
		if err != nil {
			t.Fatalf("%s: %v", c.dtype, err)
		}
		if cfg.TorchDtype != c.torch {
			t.Errorf("%s: torch_dtype %q, want %q", c.dtype, cfg.TorchDtype, c.torch)
		}
		if d := maxAbsDiff(t, loaded, params); d == 0 || d > c.tol {
			t.Errorf("%s: weights read back differ by %.3g from the F32 ones (want rounding, at most %.3g)", c.dtype, d, c.tol)
		}
		got, err := ev.Evaluate(loaded, data)
		if err != nil {
			t.Fatal(err)
		}
		want := runRef(t, py, "--dir", dir, "--tokens", ids)
		if relErr(got.Loss, want) > 1e-4 {
			t.Errorf("%s: loss %.8f, reference on the same file %.8f", c.dtype, got.Loss, want)
		}
	}
}
