package hf

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

func TestAdapterRoundTrip(t *testing.T) {
	cfg := small("llama", false, 8, 2)
	targets, err := Targets(cfg, []string{"q_proj", "v_proj", "down_proj"})
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 6 || targets[0] != "model.layers.0.self_attn.q_proj.weight" || targets[2] != "model.layers.0.mlp.down_proj.weight" {
		t.Fatalf("targets %v", targets)
	}
	base := random(cfg, 9)
	l := lora.Config{Rank: 4, Alpha: 8}
	ad, err := l.Init(lora.Static{Params: base, Targets: targets}, 3)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for k := range ad.Tensors { // non-zero B too
		for e := range ad.Tensors[k].Data {
			ad.Tensors[k].Data[e] = float32(r.NormFloat64())
		}
	}
	dir := t.TempDir()
	ac := AdapterConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"q_proj", "v_proj", "down_proj"}}
	if err := WriteAdapter(dir, cfg, ac, ad); err != nil {
		t.Fatal(err)
	}
	raw, _ := tensor.ReadFile(filepath.Join(dir, AdapterWeightsFile))
	if _, ok := raw.Get("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"); !ok {
		t.Errorf("PEFT names missing: %v", raw.Tensors[0].Name)
	}
	cfgJSON, _ := os.ReadFile(filepath.Join(dir, AdapterConfigFile))
	for _, want := range []string{`"peft_type": "LORA"`, `"r": 4`, `"lora_alpha": 8`, `"task_type": "CAUSAL_LM"`} {
		if !strings.Contains(string(cfgJSON), want) {
			t.Errorf("adapter_config.json lacks %s:\n%s", want, cfgJSON)
		}
	}
	gotAC, got, err := ReadAdapter(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if gotAC.R != 4 || gotAC.LoRA().Scale() != 2 {
		t.Errorf("config read back as %+v", gotAC)
	}
	if d, err := tensor.Diff(got, ad); err != nil || d.Norm() != 0 {
		t.Errorf("adapters changed: %v", err)
	}
	// The adapters apply to the base through lora.Merge.
	if _, err := l.Merge(lora.Static{Params: base, Targets: targets}, base, got); err != nil {
		t.Error(err)
	}
}

func TestAdapterRefuses(t *testing.T) {
	cfg := small("llama", false, 8, 2)
	for _, tc := range []struct {
		name string
		ac   AdapterConfig
		want string
	}{
		{"no such module", AdapterConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"c_attn"}}, `"c_attn" matches no 2-D weight`},
		{"rank too high", AdapterConfig{R: 65, LoraAlpha: 8, TargetModules: []string{"q_proj"}}, "would not be low-rank"},
		{"bias", AdapterConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"q_proj"}, Bias: "all"}, "without bias"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := WriteAdapter(t.TempDir(), cfg, tc.ac, tensor.Set{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	// Adapters of another rank than the config says.
	targets, _ := Targets(cfg, []string{"q_proj"})
	ad, _ := lora.Config{Rank: 2, Alpha: 4}.Layout(lora.Static{Params: random(cfg, 1), Targets: targets})
	if err := WriteAdapter(t.TempDir(), cfg, AdapterConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"q_proj"}}, ad); err == nil || !strings.Contains(err.Error(), "do not fit rank 4") {
		t.Errorf("rank-2 adapters written as rank 4: %v", err)
	}
}
