package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/tensor"
)

// TestAggregateCommand aggregates update files offline: Krum leaves out a
// far outlier, FedAvg honours --weights, and bad input is refused.
func TestAggregateCommand(t *testing.T) {
	dir := t.TempDir()
	arch := model.MLP{Sizes: []int{8, 4, 2}}
	var files []string
	for i := range 6 {
		s := arch.Init(uint64(100))
		for _, tt := range s.Tensors {
			for j := range tt.Data {
				tt.Data[j] += 0.01 * float32(i)
				if i == 5 {
					tt.Data[j] = 1000
				}
			}
		}
		f := filepath.Join(dir, fmt.Sprintf("u%d.safetensors", i))
		if err := tensor.WriteFile(f, s, tensor.F32); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	out := filepath.Join(dir, "krum.safetensors")
	res := run(t, append([]string{"aggregate", "--rule", "krum", "--f", "1", "-o", out}, files...)...)
	if !regexp.MustCompile(`u5\.safetensors\s+false`).MatchString(res) {
		t.Errorf("krum kept the outlier:\n%s", res)
	}
	agg, err := tensor.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if agg.Norm() > 100 || agg.Metadata["fedtune.rule"] != "krum" {
		t.Errorf("krum output norm %v, metadata %v", agg.Norm(), agg.Metadata)
	}
	// FedAvg with weights 1,0,0,0,0,0 returns the first file.
	out2 := filepath.Join(dir, "avg.safetensors")
	run(t, append([]string{"aggregate", "--weights", "1,0,0,0,0,0", "-o", out2}, files...)...)
	a, _ := tensor.ReadFile(out2)
	first, _ := tensor.ReadFile(files[0])
	a.Metadata = nil
	if a.Hash() != first.Hash() {
		t.Error("weighted FedAvg with all weight on one file did not return that file")
	}
	other := filepath.Join(dir, "other.safetensors")
	tensor.WriteFile(other, model.MLP{Sizes: []int{8, 3, 2}}.Init(1), tensor.F32)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"aggregate", "-o", out, files[0], other}, "does not match"},
		{[]string{"aggregate", "--rule", "bulyan", "--f", "2", "-o", out, files[0], files[1]}, "needs n"},
		{[]string{"aggregate", "--weights", "1,2", "-o", out, files[0]}, "--weights has 2 values"},
		{[]string{"aggregate", "--rule", "mean-ish", "-o", out, files[0]}, "unknown rule"},
	} {
		res, err := exec(c.args...)
		if err == nil || !strings.Contains(res, c.want) {
			t.Errorf("fedtune %s: %v %q, want an error mentioning %q", strings.Join(c.args, " "), err, res, c.want)
		}
	}
}

// TestAggregateLoRA aggregates PEFT-named adapter files exactly: the
// output's B·A is the average of the inputs' products when they share A.
func TestAggregateLoRA(t *testing.T) {
	dir := t.TempDir()
	a := []float32{1, 0, 2, 0, 1, 1} // [2, 3]
	var files []string
	for i, b := range [][]float32{{1, 0, 0, 1}, {3, 0, 0, 3}} { // [2, 2]
		s := tensor.MustNew(
			tensor.Tensor{Name: "l.lora_A.weight", Shape: []int{2, 3}, Data: append([]float32(nil), a...)},
			tensor.Tensor{Name: "l.lora_B.weight", Shape: []int{2, 2}, Data: b})
		f := filepath.Join(dir, fmt.Sprintf("a%d.safetensors", i))
		tensor.WriteFile(f, s, tensor.F32)
		files = append(files, f)
	}
	out := filepath.Join(dir, "lora.safetensors")
	run(t, append([]string{"aggregate", "--lora", "exact", "-o", out}, files...)...)
	got, err := tensor.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	ga, _ := got.Get("l.lora_A.weight")
	gb, _ := got.Get("l.lora_B.weight")
	// The average product is 2·A (mean B = 2I).
	for i := 0; i < 2; i++ {
		for j := 0; j < 3; j++ {
			p := gb.Data[i*2]*ga.Data[j] + gb.Data[i*2+1]*ga.Data[3+j]
			if want := 2 * a[i*3+j]; p-want > 1e-4 || want-p > 1e-4 {
				t.Fatalf("product[%d][%d] = %v, want %v", i, j, p, want)
			}
		}
	}
	if out, err := exec(append([]string{"aggregate", "--lora", "exact", "-o", out}, filepath.Join(dir, "a0.safetensors"), corruptFile(t))...); err == nil {
		t.Errorf("a corrupt adapter file was accepted: %s", out)
	}
}

func corruptFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "bad.safetensors")
	os.WriteFile(p, []byte("\x08\x00\x00\x00\x00\x00\x00\x00{}      x"), 0o644)
	return p
}

// TestAggregateNeverWritesNonFinite: ten files at the float32 limit
// averaged to +Inf in float32 (each weight 1/10 rounds up) and were written
// so, with +Inf and NaN scores; now the aggregate and the scores are
// finite (the command refuses to write a non-finite aggregate, should one
// ever come out of a rule).
func TestAggregateNeverWritesNonFinite(t *testing.T) {
	dir := t.TempDir()
	var files []string
	for i := range 10 {
		x := make([]float32, 40)
		for j := range x {
			x[j] = math.MaxFloat32
		}
		f := filepath.Join(dir, fmt.Sprintf("u%d.safetensors", i))
		if err := tensor.WriteFile(f, tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{40}, Data: x}), tensor.F32); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	out := filepath.Join(dir, "avg.safetensors")
	res := run(t, append([]string{"aggregate", "-o", out}, files...)...)
	if strings.Contains(res, "Inf") || strings.Contains(res, "NaN") {
		t.Errorf("non-finite scores:\n%s", res)
	}
	agg, err := tensor.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := agg.CheckFinite(); err != nil {
		t.Errorf("wrote a non-finite aggregate: %v", err)
	}
}
