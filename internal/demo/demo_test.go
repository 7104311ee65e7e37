package demo

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/tensor"
)

// TestDemoSmall runs the demo end to end at a small size (2 workers, 3
// rounds, the small model) and checks what it prints and writes.
func TestDemoSmall(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{OutDir: dir, Workers: 2, Rounds: 3, Model: "mnist-mlp-small", Seed: 2, Out: &out})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	t.Log(out.String())
	if res.BaseAccuracy > 0.6 {
		t.Errorf("base accuracy %.3f: a model trained on digits 0-4 should score at most ~50%%", res.BaseAccuracy)
	}
	if res.FinalAccuracy < 0.9 || res.Rounds != 3 {
		t.Errorf("final accuracy %.3f after %d rounds, want >= 0.90 after 3", res.FinalAccuracy, res.Rounds)
	}
	for _, want := range []string{"base accuracy", "final accuracy", "final model", "    3  [############] 100%"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	final, err := tensor.ReadFile(filepath.Join(dir, "final.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if final.Metadata["fedtune.round"] != "3" {
		t.Errorf("final model metadata %v", final.Metadata)
	}
}
