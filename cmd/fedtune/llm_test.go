package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"codeberg.org/sbinet/npyio/npy"
)

// TestLanguageModelCommands makes a small Llama with model pretrain
// --model llama on a text file, then evaluates it on token ids and on
// text, fine-tunes it fully and with LoRA, evaluates the adapter and
// generates: what a practitioner does locally before a federated job.
func TestLanguageModelCommands(t *testing.T) {
	dir := t.TempDir()
	corpus := filepath.Join(dir, "corpus.txt")
	para := "Le petit chat dort sur le tapis rouge. Il rêve de souris grises et de lait chaud.\n\n"
	if err := os.WriteFile(corpus, []byte(strings.Repeat(para, 40)), 0o644); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base")
	out := run(t, "model", "pretrain", "--model", "llama", "--corpus", corpus, "--vocab-size", "300", "--layers", "2", "--hidden", "32",
		"--heads", "4", "--kv-heads", "2", "--ffn", "64", "--seq-len", "32", "--steps", "20", "--batch-size", "4", "-o", base)
	if !strings.Contains(out, "pretrained llama[layers=2 hidden=32") {
		t.Fatalf("pretrain said %q", out)
	}
	for _, f := range []string{"config.json", "model.safetensors", "tokenizer.json"} {
		if _, err := os.Stat(filepath.Join(base, f)); err != nil {
			t.Fatalf("pretrain wrote no %s: %v", f, err)
		}
	}
	lossOf := func(out string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^loss ([0-9.]+)$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no loss line in %q", out)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	text := lossOf(run(t, "model", "eval", base, "--text", corpus, "--seq-len", "32"))
	if !(text > 0 && text < 5.7) { // ln 300 = 5.70: pretraining learnt something
		t.Errorf("loss on the training text %v", text)
	}
	// the same tokens as a NumPy file give the same loss
	ids := strings.Fields(run(t, "tokenizer", "encode", "-t", filepath.Join(base, "tokenizer.json"), strings.Repeat(para, 40)))
	var row []int32
	for _, s := range ids {
		v, _ := strconv.Atoi(s)
		row = append(row, int32(v))
	}
	npyPath := filepath.Join(dir, "ids.npy")
	f, err := os.Create(npyPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := npy.Write(f, row); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := lossOf(run(t, "model", "eval", base, "--tokens", npyPath, "--seq-len", "32")); got != text {
		t.Errorf("loss on ids.npy %v, on the text %v", got, text)
	}

	tuned := filepath.Join(dir, "tuned")
	run(t, "model", "train", base, "--text", corpus, "--seq-len", "32", "--steps", "10", "--batch-size", "4", "--lr", "3e-3", "-o", tuned)
	if got := lossOf(run(t, "model", "eval", tuned, "--text", corpus, "--seq-len", "32")); got >= text {
		t.Errorf("full fine-tuning: loss %v, base %v", got, text)
	}
	adapter := filepath.Join(dir, "adapter")
	run(t, "model", "train", base, "--text", corpus, "--seq-len", "32", "--steps", "10", "--batch-size", "4", "--lr", "1e-2",
		"--lora-rank", "4", "--lora-targets", "q_proj,v_proj,down_proj", "-o", adapter)
	if _, err := os.Stat(filepath.Join(adapter, "adapter_config.json")); err != nil {
		t.Fatal(err)
	}
	if got := lossOf(run(t, "model", "eval", base, "--adapter", adapter, "--text", corpus, "--seq-len", "32")); got >= text {
		t.Errorf("LoRA: loss %v, base %v", got, text)
	}
	gen := run(t, "model", "generate", base, "--prompt", "Le petit", "--max-tokens", "8", "--temperature", "0")
	if !strings.HasPrefix(gen, "Le petit") || len(gen) <= len("Le petit\n") {
		t.Errorf("generate: %q", gen)
	}
	if got, err := exec("model", "eval", base, "--seq-len", "32"); err == nil || !strings.Contains(got, "give one of --tokens") {
		t.Errorf("eval without data: %v %q", err, got)
	}
}
