package hf

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

// PEFT adapter directory files.
const (
	AdapterConfigFile  = "adapter_config.json"
	AdapterWeightsFile = "adapter_model.safetensors"
	// peftPrefix starts every tensor name in a PEFT adapter file of a
	// causal LM (PeftModelForCausalLM wraps the model twice).
	peftPrefix = "base_model.model."
)

// AdapterConfig is a PEFT LoRA adapter_config.json.
type AdapterConfig struct {
	PeftType      string   `json:"peft_type"`
	TaskType      string   `json:"task_type,omitempty"`
	R             int      `json:"r"`
	LoraAlpha     float64  `json:"lora_alpha"`
	LoraDropout   float64  `json:"lora_dropout"`
	TargetModules []string `json:"target_modules"`
	Bias          string   `json:"bias"`
	FanInFanOut   bool     `json:"fan_in_fan_out"`
	BaseModel     string   `json:"base_model_name_or_path,omitempty"`
}

// LoRA returns the adapters' rank and alpha.
func (a AdapterConfig) LoRA() lora.Config { return lora.Config{Rank: a.R, Alpha: a.LoraAlpha} }

// Targets returns the weights of a checkpoint of cfg that PEFT's
// target_modules select (a module matches when its name ends with
// ".<target>", as PEFT matches a list of names), in layout order.
func Targets(cfg Config, modules []string) ([]string, error) {
	var weights []string
	for _, s := range cfg.Layout() {
		name, ok := strings.CutSuffix(s.Name, ".weight")
		if ok && len(s.Shape) == 2 && !strings.HasSuffix(name, "embed_tokens") {
			weights = append(weights, s.Name)
		}
	}
	out, unmatched := lora.SelectTargets(weights, modules)
	if unmatched != "" {
		return nil, fmt.Errorf("target module %q matches no 2-D weight of a %s", unmatched, cfg.ModelType)
	}
	return out, nil
}

// WriteAdapter writes LoRA adapters (tensors named as package lora names
// them) as a PEFT adapter directory for a base of cfg.
func WriteAdapter(dir string, cfg Config, ac AdapterConfig, adapters tensor.Set) error {
	ac.PeftType = "LORA"
	if ac.TaskType == "" {
		ac.TaskType = "CAUSAL_LM"
	}
	if ac.Bias == "" {
		ac.Bias = "none"
	}
	if _, err := checkAdapter(cfg, ac, adapters.Tensors); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(ac, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, AdapterConfigFile), append(b, '\n'), 0o644); err != nil {
		return err
	}
	renamed := make([]tensor.Tensor, len(adapters.Tensors))
	for i, t := range adapters.Tensors {
		renamed[i] = tensor.Tensor{Name: peftPrefix + t.Name, Shape: t.Shape, Data: t.Data}
	}
	s, err := tensor.New(renamed...)
	if err != nil {
		return err
	}
	return tensor.WriteFile(filepath.Join(dir, AdapterWeightsFile), s, tensor.F32)
}

// ReadAdapter reads a PEFT LoRA adapter directory for a base of cfg and
// returns its configuration and the adapters, named as package lora names
// them, checked against the base's layout and the rank.
func ReadAdapter(dir string, cfg Config) (AdapterConfig, tensor.Set, error) {
	var ac AdapterConfig
	b, err := os.ReadFile(filepath.Join(dir, AdapterConfigFile))
	if err != nil {
		return ac, tensor.Set{}, fmt.Errorf("%s: %w", dir, err)
	}
	if err := json.Unmarshal(b, &ac); err != nil {
		return ac, tensor.Set{}, fmt.Errorf("%s: %s: %w", dir, AdapterConfigFile, err)
	}
	s, err := tensor.ReadFile(filepath.Join(dir, AdapterWeightsFile))
	if err != nil {
		return ac, tensor.Set{}, fmt.Errorf("%s: %w", dir, err)
	}
	ts := make([]tensor.Tensor, len(s.Tensors))
	for i, t := range s.Tensors {
		name, ok := strings.CutPrefix(t.Name, peftPrefix)
		if !ok {
			return ac, tensor.Set{}, fmt.Errorf("%s: tensor %q is not named %s<module>…", dir, t.Name, peftPrefix)
		}
		ts[i] = tensor.Tensor{Name: name, Shape: t.Shape, Data: t.Data}
	}
	set, err := checkAdapter(cfg, ac, ts)
	if err != nil {
		return ac, tensor.Set{}, fmt.Errorf("%s: %w", dir, err)
	}
	return ac, set, nil
}

// checkAdapter matches adapters against the layout LoRA gives cfg's
// targets at the configured rank.
func checkAdapter(cfg Config, ac AdapterConfig, ts []tensor.Tensor) (tensor.Set, error) {
	if ac.PeftType != "LORA" {
		return tensor.Set{}, fmt.Errorf("peft_type %q: only LORA adapters are supported", ac.PeftType)
	}
	if ac.Bias != "" && ac.Bias != "none" {
		return tensor.Set{}, fmt.Errorf("bias %q: only adapters without bias terms are supported", ac.Bias)
	}
	if ac.FanInFanOut {
		return tensor.Set{}, fmt.Errorf("fan_in_fan_out adapters (GPT-2's Conv1D) are not supported")
	}
	if !(ac.LoraAlpha > 0) {
		return tensor.Set{}, fmt.Errorf("lora_alpha %v, want a positive number", ac.LoraAlpha)
	}
	targets, err := Targets(cfg, ac.TargetModules)
	if err != nil {
		return tensor.Set{}, err
	}
	// The targets' shapes, as a set without values (lora reads shapes
	// only; a base's values are not needed to check its adapters).
	shapes := map[string][]int{}
	for _, s := range cfg.Layout() {
		shapes[s.Name] = s.Shape
	}
	var base tensor.Set
	for _, name := range slices.Sorted(slices.Values(targets)) {
		base.Tensors = append(base.Tensors, tensor.Tensor{Name: name, Shape: shapes[name]})
	}
	l := ac.LoRA()
	if err := l.Check(lora.Static{Params: base, Targets: targets}); err != nil {
		return tensor.Set{}, err
	}
	want, err := l.Layout(lora.Static{Params: base, Targets: targets})
	if err != nil {
		return tensor.Set{}, err
	}
	got, err := tensor.New(ts...)
	if err != nil {
		return tensor.Set{}, err
	}
	if err := tensor.SameLayout(got, want); err != nil {
		return tensor.Set{}, fmt.Errorf("adapters do not fit rank %d on %s: %w", ac.R, strings.Join(ac.TargetModules, ", "), err)
	}
	return got, nil
}
