package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTokenizerCommands trains a tokenizer from the CLI on a small text,
// then encodes and decodes with the tokenizer.json it wrote.
func TestTokenizerCommands(t *testing.T) {
	dir := t.TempDir()
	corpus := filepath.Join(dir, "corpus.txt")
	text := strings.Repeat("Les sanglots longs des violons de l'automne blessent mon cœur d'une langueur monotone.\n", 50)
	if err := os.WriteFile(corpus, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "tokenizer.json")
	if got := run(t, "tokenizer", "train", "--vocab-size", "300", "-o", out, corpus); !strings.Contains(got, "300 tokens") {
		t.Errorf("train said %q", got)
	}
	ids := strings.TrimSpace(run(t, "tokenizer", "encode", "-t", out, "l'automne blessent mon cœur"))
	if n := len(strings.Fields(ids)); n == 0 || n > 20 {
		t.Errorf("encode: %q", ids)
	}
	if got := strings.TrimSpace(run(t, "tokenizer", "decode", "-t", out, ids)); got != "l'automne blessent mon cœur" {
		t.Errorf("decode(encode(x)) = %q", got)
	}
	if got, err := exec("tokenizer", "decode", "-t", out, "999999"); err == nil || !strings.Contains(got, "not in the vocabulary") {
		t.Errorf("an unknown id: %v, %q", err, got)
	}
}
