// Package lora holds low-rank adapters (Hu et al. 2021) on named 2-D
// weights, independent of any model family: an adapted weight W [out, in]
// is used as W + (Alpha/Rank)·B·A with A [Rank, in] and B [out, Rank]
// trained and W frozen. Adapter tensors are named as Hugging Face PEFT
// names them: weight "fc1.weight" gets "fc1.lora_A.weight" and
// "fc1.lora_B.weight".
//
// The package only does the arithmetic on tensor.Sets (layout, init,
// merge); training adapters is a model family's job (model.Trainer). The
// coordinator uses it without knowing any model.
package lora

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/fedtune/fedtune/tensor"
)

// Base is what adapters are built for: a model's parameter layout and the
// names of the 2-D weights LoRA may adapt, in the order the adapters are
// laid out. Every model.Architecture is one.
type Base interface {
	Layout() tensor.Set
	LoRATargets() []string
}

// Config is a LoRA setting: the adapters' rank and the scale numerator.
type Config struct {
	Rank  int
	Alpha float64
}

// Scale is the factor Alpha/Rank the product B·A is multiplied by.
func (c Config) Scale() float32 { return float32(c.Alpha / float64(c.Rank)) }

// AName and BName are the adapter tensors' names for a target weight.
func AName(target string) string { return module(target) + ".lora_A.weight" }

// BName is the name of the B factor of target's adapter.
func BName(target string) string { return module(target) + ".lora_B.weight" }

func module(target string) string { return strings.TrimSuffix(target, ".weight") }

// SelectTargets returns the weights among candidates that PEFT-style
// target_modules select — a weight matches when its module's name is a
// module or ends with ".<module>", as PEFT matches a list of names — in
// the candidates' order, and the first module that matched none ("" when
// every one matched).
func SelectTargets(candidates, modules []string) (targets []string, unmatched string) {
	used := map[string]bool{}
	for _, w := range candidates {
		mod := module(w)
		for _, m := range modules {
			if mod == m || strings.HasSuffix(mod, "."+m) {
				targets, used[m] = append(targets, w), true
				break
			}
		}
	}
	for _, m := range modules {
		if !used[m] {
			return targets, m
		}
	}
	return targets, ""
}

// Static is a Base given by value: a layout and its targets (the
// coordinator builds one from what its Models seam tells it).
type Static struct {
	Params  tensor.Set
	Targets []string
}

// Layout returns the layout.
func (s Static) Layout() tensor.Set { return s.Params }

// LoRATargets returns the targets.
func (s Static) LoRATargets() []string { return s.Targets }

// shapes returns [out, in] of every target of b, checking each is a 2-D
// weight of b's layout.
func shapes(b Base) ([]string, [][2]int, error) {
	layout := b.Layout()
	targets := b.LoRATargets()
	if len(targets) == 0 {
		return nil, nil, fmt.Errorf("lora: the model names no weights LoRA may adapt")
	}
	dims := make([][2]int, len(targets))
	for i, name := range targets {
		t, ok := layout.Get(name)
		if !ok {
			return nil, nil, fmt.Errorf("lora: the model has no weight %q", name)
		}
		if len(t.Shape) != 2 {
			return nil, nil, fmt.Errorf("lora: weight %q has shape %v; LoRA adapts 2-D weights", name, t.Shape)
		}
		dims[i] = [2]int{t.Shape[0], t.Shape[1]}
	}
	return targets, dims, nil
}

// Check refuses a rank below 1 or above any target's smaller side (the
// adapter would not be low-rank).
func (c Config) Check(b Base) error {
	if c.Rank < 1 {
		return fmt.Errorf("lora: rank must be at least 1")
	}
	targets, dims, err := shapes(b)
	if err != nil {
		return err
	}
	for i, name := range targets {
		if out, in := dims[i][0], dims[i][1]; c.Rank > min(out, in) {
			return fmt.Errorf("lora: rank %d exceeds %s's %d×%d: the adapter would not be low-rank", c.Rank, module(name), out, in)
		}
	}
	return nil
}

// Layout returns zero adapters for b: A then B for each target, in order.
func (c Config) Layout(b Base) (tensor.Set, error) {
	if c.Rank < 1 {
		return tensor.Set{}, fmt.Errorf("lora: rank must be at least 1")
	}
	targets, dims, err := shapes(b)
	if err != nil {
		return tensor.Set{}, err
	}
	ts := make([]tensor.Tensor, 0, 2*len(targets))
	for i, name := range targets {
		out, in := dims[i][0], dims[i][1]
		ts = append(ts,
			tensor.Tensor{Name: AName(name), Shape: []int{c.Rank, in}, Data: make([]float32, c.Rank*in)},
			tensor.Tensor{Name: BName(name), Shape: []int{out, c.Rank}, Data: make([]float32, out*c.Rank)})
	}
	return tensor.New(ts...)
}

// Init returns fresh adapters: A uniform in ±1/sqrt(in) drawn from seed,
// B zero, so that the adapted model starts exactly as the base (PEFT's
// default).
func (c Config) Init(b Base, seed uint64) (tensor.Set, error) {
	s, err := c.Layout(b)
	if err != nil {
		return tensor.Set{}, err
	}
	r := rand.New(rand.NewPCG(seed, 0x10ca))
	for _, name := range b.LoRATargets() {
		a, _ := s.Get(AName(name))
		bound := 1 / math.Sqrt(float64(a.Shape[1]))
		for k := range a.Data {
			a.Data[k] = float32((2*r.Float64() - 1) * bound)
		}
	}
	return s, nil
}

// Merge returns params (a full model of b's layout) with the adapters
// folded in: W + (Alpha/Rank)·B·A for every target.
func (c Config) Merge(b Base, params, adapter tensor.Set) (tensor.Set, error) {
	want, err := c.Layout(b)
	if err != nil {
		return tensor.Set{}, err
	}
	if err := tensor.SameLayout(adapter, want); err != nil {
		return tensor.Set{}, fmt.Errorf("lora: adapter does not fit rank %d: %w", c.Rank, err)
	}
	out := params.Clone()
	out.Metadata = nil
	s := c.Scale()
	for _, name := range b.LoRATargets() {
		w, ok := out.Get(name)
		if !ok || len(w.Shape) != 2 {
			return tensor.Set{}, fmt.Errorf("lora: base has no 2-D weight %s", name)
		}
		o, in := w.Shape[0], w.Shape[1]
		a, _ := adapter.Get(AName(name))
		bf, _ := adapter.Get(BName(name))
		if a.Shape[1] != in || bf.Shape[0] != o {
			return tensor.Set{}, fmt.Errorf("lora: %s is %d×%d, its adapters are for %d×%d", name, o, in, bf.Shape[0], a.Shape[1])
		}
		for row := 0; row < o; row++ {
			for k := 0; k < c.Rank; k++ {
				if bv := s * bf.Data[row*c.Rank+k]; bv != 0 {
					tensor.Axpy(bv, a.Data[k*in:(k+1)*in], w.Data[row*in:(row+1)*in])
				}
			}
		}
	}
	return out, nil
}
