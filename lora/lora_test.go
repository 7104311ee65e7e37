package lora

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

// mlp is a two-layer base: fc1 [3, 5], fc2 [2, 3], and a bias that is not a target.
func mlp(targets ...string) Static {
	return Static{Params: tensor.MustNew(
		tensor.Tensor{Name: "fc1.weight", Shape: []int{3, 5}, Data: make([]float32, 15)},
		tensor.Tensor{Name: "fc1.bias", Shape: []int{3}, Data: make([]float32, 3)},
		tensor.Tensor{Name: "fc2.weight", Shape: []int{2, 3}, Data: make([]float32, 6)},
	), Targets: targets}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		base Static
		want string // "" = accepted
	}{
		{"fits", Config{Rank: 2}, mlp("fc1.weight", "fc2.weight"), ""},
		{"rank 0", Config{Rank: 0}, mlp("fc1.weight"), "at least 1"},
		{"rank above the smaller side", Config{Rank: 3}, mlp("fc1.weight", "fc2.weight"), "exceeds fc2's 2×3"},
		{"no targets", Config{Rank: 1}, mlp(), "no weights"},
		{"missing target", Config{Rank: 1}, mlp("fc9.weight"), `no weight "fc9.weight"`},
		{"1-D target", Config{Rank: 1}, mlp("fc1.bias"), "2-D"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Check(tc.base)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Check = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLayoutNamesAndShapes(t *testing.T) {
	s, err := Config{Rank: 2}.Layout(mlp("fc1.weight", "fc2.weight"))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name  string
		shape [2]int
	}{{"fc1.lora_A.weight", [2]int{2, 5}}, {"fc1.lora_B.weight", [2]int{3, 2}}, {"fc2.lora_A.weight", [2]int{2, 3}}, {"fc2.lora_B.weight", [2]int{2, 2}}}
	if len(s.Tensors) != len(want) {
		t.Fatalf("%d tensors, want %d", len(s.Tensors), len(want))
	}
	for i, w := range want {
		got := s.Tensors[i]
		if got.Name != w.name || got.Shape[0] != w.shape[0] || got.Shape[1] != w.shape[1] {
			t.Errorf("tensor %d: %s %v, want %s %v", i, got.Name, got.Shape, w.name, w.shape)
		}
	}
}

// TestMergeIsWPlusScaledBA checks Merge against the product written out.
func TestMergeIsWPlusScaledBA(t *testing.T) {
	base := mlp("fc1.weight", "fc2.weight")
	params := base.Params.Clone()
	for k := range params.Tensors {
		for e := range params.Tensors[k].Data {
			params.Tensors[k].Data[e] = float32(k+1) * float32(e%4-1)
		}
	}
	cfg := Config{Rank: 2, Alpha: 3}
	ad, err := cfg.Init(base, 7)
	if err != nil {
		t.Fatal(err)
	}
	same, err := cfg.Merge(base, params, ad)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := tensor.Diff(same, params); d.Norm() != 0 {
		t.Fatalf("fresh adapters (B = 0) changed the model by %g", d.Norm())
	}
	for k := range ad.Tensors {
		if strings.HasSuffix(ad.Tensors[k].Name, "lora_B.weight") {
			for e := range ad.Tensors[k].Data {
				ad.Tensors[k].Data[e] = float32(e%3) - 0.5
			}
		}
	}
	merged, err := cfg.Merge(base, params, ad)
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range base.Targets {
		w, _ := params.Get(target)
		m, _ := merged.Get(target)
		a, _ := ad.Get(AName(target))
		b, _ := ad.Get(BName(target))
		out, in := w.Shape[0], w.Shape[1]
		for i := 0; i < out; i++ {
			for j := 0; j < in; j++ {
				var ba float64
				for k := 0; k < cfg.Rank; k++ {
					ba += float64(b.Data[i*cfg.Rank+k]) * float64(a.Data[k*in+j])
				}
				want := float64(w.Data[i*in+j]) + 1.5*ba
				if got := float64(m.Data[i*in+j]); math.Abs(got-want) > 1e-5 {
					t.Fatalf("%s[%d,%d] = %g, want %g", target, i, j, got, want)
				}
			}
		}
	}
	if b, _ := merged.Get("fc1.bias"); b.Data[0] != mustGet(params, "fc1.bias").Data[0] {
		t.Error("a tensor that is not a target changed")
	}
	other, _ := Config{Rank: 1}.Layout(base)
	if _, err := cfg.Merge(base, params, other); err == nil {
		t.Error("adapters of another rank were merged")
	}
}

func TestInitIsSeededAndBounded(t *testing.T) {
	base := mlp("fc1.weight")
	a1, _ := Config{Rank: 2, Alpha: 4}.Init(base, 1)
	a2, _ := Config{Rank: 2, Alpha: 4}.Init(base, 1)
	a3, _ := Config{Rank: 2, Alpha: 4}.Init(base, 2)
	if d, _ := tensor.Diff(a1, a2); d.Norm() != 0 {
		t.Error("the same seed gave different adapters")
	}
	if d, _ := tensor.Diff(a1, a3); d.Norm() == 0 {
		t.Error("different seeds gave the same adapters")
	}
	a, _ := a1.Get("fc1.lora_A.weight")
	for _, v := range a.Data {
		if math.Abs(float64(v)) > 1/math.Sqrt(5) {
			t.Errorf("A entry %g outside ±1/sqrt(in)", v)
		}
	}
}

func mustGet(s tensor.Set, name string) tensor.Tensor {
	t, ok := s.Get(name)
	if !ok {
		panic("no tensor " + name)
	}
	return t
}

func TestSelectTargets(t *testing.T) {
	weights := []string{"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight", "model.layers.0.mlp.down_proj.weight", "fc1.weight"}
	cases := []struct {
		modules   []string
		want      []string
		unmatched string
	}{
		{[]string{"q_proj", "down_proj"}, []string{weights[0], weights[2]}, ""},
		{[]string{"fc1"}, []string{weights[3]}, ""},
		{[]string{"proj"}, nil, "proj"}, // a module name matches whole components only
		{[]string{"v_proj", "gate_proj"}, []string{weights[1]}, "gate_proj"},
	}
	for _, c := range cases {
		got, unmatched := SelectTargets(weights, c.modules)
		if !slices.Equal(got, c.want) || unmatched != c.unmatched {
			t.Errorf("%v: %v, unmatched %q; want %v, %q", c.modules, got, unmatched, c.want, c.unmatched)
		}
	}
}
