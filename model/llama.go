package model

import (
	"fmt"
	"math/rand/v2"
	"strings"

	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"

	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

// Llama is a Llama-family decoder of one configuration (Llama 2/3,
// SmolLM, TinyLlama, Mistral without a sliding window, Qwen2 with q/k/v
// biases), with transformers' tensor names and semantics: token
// embedding, per layer RMSNorm → attention (q/k/v projections, rotary
// embedding rotate-half with rope_theta, causal grouped-query attention,
// o projection) → residual → RMSNorm → SwiGLU MLP → residual, a final
// RMSNorm and the LM head (tied to the embedding or not). Its data are
// text examples (dataset.Examples with Tokens); its loss is the mean
// next-token cross-entropy.
type Llama struct {
	Config hf.Config
}

// DefaultLoRAModules are the modules a Llama LoRA job adapts unless it
// names others (PEFT's default for Llama).
var DefaultLoRAModules = []string{"q_proj", "v_proj"}

// Layout returns zero-valued parameters in transformers' names and shapes.
func (m Llama) Layout() tensor.Set {
	shapes := m.Config.Layout()
	ts := make([]tensor.Tensor, len(shapes))
	for i, s := range shapes {
		ts[i] = tensor.Tensor{Name: s.Name, Shape: s.Shape, Data: make([]float32, tensor.NumElements(s.Shape))}
	}
	return tensor.MustNew(ts...)
}

// Init returns parameters initialised as transformers initialises a Llama
// (normal with standard deviation 0.02 for matrices, ones for the norms,
// zero biases), drawn from seed.
func (m Llama) Init(seed uint64) tensor.Set {
	s := m.Layout()
	r := rand.New(rand.NewPCG(seed, 0x11a3a))
	for _, t := range s.Tensors {
		switch {
		case strings.HasSuffix(t.Name, "norm.weight"):
			for i := range t.Data {
				t.Data[i] = 1
			}
		case len(t.Shape) == 2:
			for i := range t.Data {
				t.Data[i] = float32(0.02 * r.NormFloat64())
			}
		}
	}
	return s
}

// LoRATargets names every projection of every layer (attention's q, k, v,
// o and the MLP's gate, up, down).
func (m Llama) LoRATargets() []string {
	var out []string
	for i := 0; i < m.Config.NumHiddenLayers; i++ {
		for _, p := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
			out = append(out, fmt.Sprintf("model.layers.%d.%s.weight", i, p))
		}
	}
	return out
}

// CheckData takes text examples of dim tokens over a vocabulary of
// classes tokens.
func (m Llama) CheckData(dim, classes int) error {
	if classes > m.Config.VocabSize {
		return fmt.Errorf("data use %d token ids, the model's vocabulary has %d", classes, m.Config.VocabSize)
	}
	if dim < 2 {
		return fmt.Errorf("sequences of %d tokens: a language model needs at least 2", dim)
	}
	if dim > m.Config.MaxPositionEmbeddings {
		return fmt.Errorf("sequences of %d tokens exceed the model's max_position_embeddings %d", dim, m.Config.MaxPositionEmbeddings)
	}
	return nil
}

// String describes the size.
func (m Llama) String() string {
	c := m.Config
	return fmt.Sprintf("%s[layers=%d hidden=%d heads=%d/%d ffn=%d vocab=%d]", c.ModelType, c.NumHiddenLayers, c.HiddenSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.IntermediateSize, c.VocabSize)
}

// Params counts the model's parameters.
func (m Llama) Params() int {
	n := 0
	for _, s := range m.Config.Layout() {
		n += tensor.NumElements(s.Shape)
	}
	return n
}

// llamaGraph is one compiled forward (and, when training, backward) pass
// over batch sequences of seq tokens.
type llamaGraph struct {
	batch, seq int
	g          *G.ExprGraph
	ids        []int32 // inputs, refilled per batch
	targets    []int32 // next tokens, -1 where none
	params     []*G.Node
	paramData  [][]float32
	adapters   []*G.Node // LoRA factors in adapter-layout order, if any
	logits     *G.Node
	loss       *G.Node
	vm         G.VM
}

// graphSpec says what a llamaGraph computes.
type graphSpec struct {
	batch, seq int
	train      bool         // differentiate (the adapters if lora is set, else every parameter)
	lora       *lora.Config // adapt lora.Targets with trainable factors
	targets    []string
}

func newLlamaGraph(m Llama, sp graphSpec) (*llamaGraph, error) {
	c := m.Config
	if err := c.Check(); err != nil {
		return nil, err
	}
	n := sp.batch * sp.seq
	gr := &llamaGraph{batch: sp.batch, seq: sp.seq, g: G.NewGraph(), ids: make([]int32, n), targets: make([]int32, n)}
	byName := map[string]*G.Node{}
	mk := func(name string, shape []int) *G.Node {
		return G.NewTensor(gr.g, gt.Float32, len(shape), G.WithShape(shape...), G.WithName(name),
			G.WithValue(gt.New(gt.WithShape(shape...), gt.Of(gt.Float32))))
	}
	for _, t := range m.Layout().Tensors {
		p := mk(t.Name, t.Shape)
		byName[t.Name] = p
		gr.params = append(gr.params, p)
		gr.paramData = append(gr.paramData, p.Value().Data().([]float32))
	}
	adapted := map[string][2]*G.Node{}
	var scale float32
	if sp.lora != nil {
		layout, err := sp.lora.Layout(lora.Static{Params: m.Layout(), Targets: sp.targets})
		if err != nil {
			return nil, err
		}
		for _, t := range layout.Tensors {
			a := mk(t.Name, t.Shape)
			byName[t.Name] = a
			gr.adapters = append(gr.adapters, a)
		}
		for _, w := range sp.targets {
			adapted[w] = [2]*G.Node{byName[lora.AName(w)], byName[lora.BName(w)]}
		}
		scale = sp.lora.Scale()
	}
	b := &llamaBuilder{byName: byName, adapted: adapted, scale: scale}
	logits, err := b.forward(m.Config, gr.ids, sp.seq)
	if err != nil {
		return nil, err
	}
	gr.logits = logits
	if gr.loss, err = crossEntropy(logits, gr.targets); err != nil {
		return nil, err
	}
	if !sp.train {
		gr.vm = G.NewTapeMachine(gr.g)
		return gr, nil
	}
	wrt := gr.params
	if sp.lora != nil {
		wrt = gr.adapters
	}
	if _, err := G.Grad(gr.loss, wrt...); err != nil {
		return nil, fmt.Errorf("llama: gradients: %w", err)
	}
	roots := G.Nodes{gr.loss}
	for _, p := range wrt {
		roots = append(roots, p.Deriv())
	}
	gr.vm = G.NewTapeMachine(gr.g.SubgraphRoots(roots...), G.BindDualValues(wrt...))
	return gr, nil
}

// llamaBuilder adds the decoder's operations to a graph.
type llamaBuilder struct {
	byName  map[string]*G.Node
	adapted map[string][2]*G.Node // LoRA factors A, B by target weight
	scale   float32
	err     error
}

// linear is x·Wᵀ (+ bias) (+ s·(x·Aᵀ)·Bᵀ for an adapted weight) for the
// module named prefix.
func (b *llamaBuilder) linear(x *G.Node, prefix string) *G.Node {
	return b.do(func() (*G.Node, error) {
		y, err := linear(x, b.byName[prefix+".weight"], b.byName[prefix+".bias"], 1)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", prefix, err)
		}
		f, ok := b.adapted[prefix+".weight"]
		if !ok {
			return y, nil
		}
		low, err := linear(x, f[0], nil, 1)
		if err != nil {
			return nil, fmt.Errorf("%s adapter: %w", prefix, err)
		}
		if low, err = linear(low, f[1], nil, b.scale); err != nil {
			return nil, fmt.Errorf("%s adapter: %w", prefix, err)
		}
		return G.Add(y, low)
	})
}

func (b *llamaBuilder) do(f func() (*G.Node, error)) *G.Node {
	if b.err != nil {
		return nil
	}
	n, err := f()
	if err != nil {
		b.err = fmt.Errorf("llama: %w", err)
	}
	return n
}

// forward builds the logits [len(ids), vocab] of sequences of seq tokens.
func (b *llamaBuilder) forward(c hf.Config, ids []int32, seq int) (*G.Node, error) {
	table := newRopeTable(seq, c.HeadSize(), c.RopeTheta)
	shape := attnShape{seq: seq, heads: c.NumAttentionHeads, kvHeads: c.NumKeyValueHeads, headDim: c.HeadSize()}
	x := b.do(func() (*G.Node, error) { return embed(b.byName["model.embed_tokens.weight"], ids) })
	for i := 0; i < c.NumHiddenLayers && b.err == nil; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		h := b.do(func() (*G.Node, error) { return rmsNorm(x, b.byName[p+"input_layernorm.weight"], c.RMSNormEps) })
		q, k, v := b.linear(h, p+"self_attn.q_proj"), b.linear(h, p+"self_attn.k_proj"), b.linear(h, p+"self_attn.v_proj")
		q = b.do(func() (*G.Node, error) { return rope(q, table, seq) })
		k = b.do(func() (*G.Node, error) { return rope(k, table, seq) })
		att := b.do(func() (*G.Node, error) { return attention(q, k, v, shape) })
		o := b.linear(att, p+"self_attn.o_proj")
		x = b.do(func() (*G.Node, error) { return G.Add(x, o) })
		h = b.do(func() (*G.Node, error) {
			return rmsNorm(x, b.byName[p+"post_attention_layernorm.weight"], c.RMSNormEps)
		})
		gate, up := b.linear(h, p+"mlp.gate_proj"), b.linear(h, p+"mlp.up_proj")
		act := b.do(func() (*G.Node, error) { return swiglu(gate, up) })
		down := b.linear(act, p+"mlp.down_proj")
		x = b.do(func() (*G.Node, error) { return G.Add(x, down) })
	}
	h := b.do(func() (*G.Node, error) { return rmsNorm(x, b.byName["model.norm.weight"], c.RMSNormEps) })
	head := "lm_head"
	if c.TieWordEmbeddings {
		head = "model.embed_tokens"
	}
	logits := b.linear(h, head)
	return logits, b.err
}

// setBatch fills the inputs and targets with sequences idx of data's
// tokens (each dim = seq tokens; the last position predicts nothing).
func (gr *llamaGraph) setBatch(tokens []int32, idx []int) {
	T := gr.seq
	for r, i := range idx {
		src := tokens[i*T : (i+1)*T]
		copy(gr.ids[r*T:(r+1)*T], src)
		copy(gr.targets[r*T:(r+1)*T-1], src[1:])
		gr.targets[(r+1)*T-1] = -1
	}
	for r := len(idx) * T; r < len(gr.ids); r++ {
		gr.ids[r], gr.targets[r] = 0, -1 // padding of a short last batch
	}
}

// load copies s (the model's layout) into the graph's parameters.
func (gr *llamaGraph) load(s tensor.Set) {
	for k, t := range s.Tensors {
		copy(gr.paramData[k], t.Data)
	}
}

func (gr *llamaGraph) run() error {
	gr.vm.Reset()
	return gr.vm.RunAll()
}

func (gr *llamaGraph) lossValue() float64 {
	return float64(gr.loss.Value().Data().(float32))
}

func (gr *llamaGraph) close() {
	if gr.vm != nil {
		gr.vm.Close()
	}
}
