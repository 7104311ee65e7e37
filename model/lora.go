package model

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/tensor"
)

// LoRA adapts an MLP with low-rank adapters (Hu et al. 2021): every dense
// layer's weight W [out, in] is used as W + (Alpha/Rank)·B·A with A
// [Rank, in] and B [out, Rank] trained and W, b frozen, so only the
// adapters — a small fraction of the model — are trained and sent.
// Adapter tensors are named as Hugging Face PEFT names them:
// "fc<i>.lora_A.weight" and "fc<i>.lora_B.weight".
type LoRA struct {
	Rank  int
	Alpha float64
}

func (l LoRA) scale() float32 { return float32(l.Alpha / float64(l.Rank)) }

// AdapterLayout returns zero adapters for m.
func (l LoRA) AdapterLayout(m MLP) tensor.Set {
	var ts []tensor.Tensor
	for i := 0; i < m.Layers(); i++ {
		in, out := m.Sizes[i], m.Sizes[i+1]
		ts = append(ts,
			tensor.Tensor{Name: fmt.Sprintf("fc%d.lora_A.weight", i+1), Shape: []int{l.Rank, in}, Data: make([]float32, l.Rank*in)},
			tensor.Tensor{Name: fmt.Sprintf("fc%d.lora_B.weight", i+1), Shape: []int{out, l.Rank}, Data: make([]float32, out*l.Rank)})
	}
	return tensor.MustNew(ts...)
}

// InitAdapter returns fresh adapters: A uniform in ±1/sqrt(in), B zero, so
// that the adapted model starts exactly as the base (PEFT's default).
func (l LoRA) InitAdapter(m MLP, seed uint64) tensor.Set {
	s := l.AdapterLayout(m)
	r := rand.New(rand.NewPCG(seed, 0x10ca))
	for i := 0; i < m.Layers(); i++ {
		a, _ := s.Get(fmt.Sprintf("fc%d.lora_A.weight", i+1))
		bound := 1 / math.Sqrt(float64(m.Sizes[i]))
		for k := range a.Data {
			a.Data[k] = float32((2*r.Float64() - 1) * bound)
		}
	}
	return s
}

// Merge returns base with the adapters folded in: W + (Alpha/Rank)·B·A.
func (l LoRA) Merge(m MLP, base, adapter tensor.Set) (tensor.Set, error) {
	if err := tensor.SameLayout(adapter, l.AdapterLayout(m)); err != nil {
		return tensor.Set{}, fmt.Errorf("lora: adapter does not fit %v rank %d: %w", m.Sizes, l.Rank, err)
	}
	out := base.Clone()
	out.Metadata = nil
	s := l.scale()
	for i := 0; i < m.Layers(); i++ {
		in, o := m.Sizes[i], m.Sizes[i+1]
		w, ok := out.Get(fmt.Sprintf("fc%d.weight", i+1))
		if !ok {
			return tensor.Set{}, fmt.Errorf("lora: base has no fc%d.weight", i+1)
		}
		a, _ := adapter.Get(fmt.Sprintf("fc%d.lora_A.weight", i+1))
		b, _ := adapter.Get(fmt.Sprintf("fc%d.lora_B.weight", i+1))
		for row := 0; row < o; row++ {
			for k := 0; k < l.Rank; k++ {
				if bv := s * b.Data[row*l.Rank+k]; bv != 0 {
					tensor.Axpy(bv, a.Data[k*in:(k+1)*in], w.Data[row*in:(row+1)*in])
				}
			}
		}
	}
	return out, nil
}

// TrainAdapter runs local SGD on the adapters only, starting from adapter,
// with the base model frozen, and returns the trained adapters.
func (l LoRA) TrainAdapter(ctx context.Context, m MLP, base, adapter tensor.Set, data *dataset.Examples, cfg TrainConfig) (tensor.Set, TrainMetrics, error) {
	var met TrainMetrics
	if l.Rank <= 0 || !(l.Alpha > 0) {
		return tensor.Set{}, met, fmt.Errorf("lora: rank %d and alpha %v must be positive", l.Rank, l.Alpha)
	}
	if err := tensor.SameLayout(base, m.Layout()); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: base does not fit %v: %w", m.Sizes, err)
	}
	if err := tensor.SameLayout(adapter, l.AdapterLayout(m)); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: adapter does not fit %v rank %d: %w", m.Sizes, l.Rank, err)
	}
	if cfg.BatchSize <= 0 || !(cfg.LR > 0) || data.Len() < cfg.BatchSize {
		return tensor.Set{}, met, fmt.Errorf("lora: batch %d, lr %v, %d examples", cfg.BatchSize, cfg.LR, data.Len())
	}
	gr, params, err := l.graph(m, cfg.BatchSize)
	if err != nil {
		return tensor.Set{}, met, err
	}
	defer gr.close()
	gr.load(base)
	for k, p := range params {
		copy(p.Value().Data().([]float32), adapter.Tensors[k].Data)
	}
	weights := make([][]float32, len(params))
	vel := make([][]float32, len(params))
	for k, p := range params {
		weights[k] = p.Value().Data().([]float32)
		vel[k] = make([]float32, len(weights[k]))
	}
	if err := sgd(ctx, gr, params, weights, vel, data, cfg, &met); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: %w", err)
	}
	out := adapter.Clone()
	out.Metadata = nil
	for k, p := range params {
		copy(out.Tensors[k].Data, p.Value().Data().([]float32))
	}
	met.Samples = data.Len()
	return out, met, nil
}

// graph builds the adapted MLP: z = h·Wᵀ + s·(h·Aᵀ)·Bᵀ + b per layer,
// differentiating the adapters only. It returns them in adapter-layout
// order (fc1.lora_A, fc1.lora_B, fc2.lora_A, ...).
func (l LoRA) graph(m MLP, batch int) (*graph, []*G.Node, error) {
	gr := &graph{g: G.NewGraph(), batch: batch}
	classes := m.Sizes[len(m.Sizes)-1]
	gr.x = G.NewMatrix(gr.g, gt.Float32, G.WithShape(batch, m.Sizes[0]), G.WithName("x"), G.WithValue(gt.New(gt.WithShape(batch, m.Sizes[0]), gt.Of(gt.Float32))))
	gr.y = G.NewMatrix(gr.g, gt.Float32, G.WithShape(batch, classes), G.WithName("y"), G.WithValue(gt.New(gt.WithShape(batch, classes), gt.Of(gt.Float32))))
	scale := G.NewConstant(l.scale())
	var adapters []*G.Node
	h := gr.x
	for i := 0; i < m.Layers(); i++ {
		in, out := m.Sizes[i], m.Sizes[i+1]
		mk := func(name string, shape ...int) *G.Node {
			return G.NewMatrix(gr.g, gt.Float32, G.WithShape(shape...), G.WithName(name), G.WithValue(gt.New(gt.WithShape(shape...), gt.Of(gt.Float32))))
		}
		w := mk(fmt.Sprintf("fc%d.weight", i+1), out, in)
		b := G.NewVector(gr.g, gt.Float32, G.WithShape(out), G.WithName(fmt.Sprintf("fc%d.bias", i+1)), G.WithValue(gt.New(gt.WithShape(out), gt.Of(gt.Float32))))
		a := mk(fmt.Sprintf("fc%d.lora_A.weight", i+1), l.Rank, in)
		bb := mk(fmt.Sprintf("fc%d.lora_B.weight", i+1), out, l.Rank)
		gr.w, gr.b = append(gr.w, w), append(gr.b, b)
		adapters = append(adapters, a, bb)
		z := G.Must(G.Mul(h, G.Must(G.Transpose(w))))
		low := G.Must(G.Mul(G.Must(G.Mul(h, G.Must(G.Transpose(a)))), G.Must(G.Transpose(bb))))
		z = G.Must(G.Add(z, G.Must(G.HadamardProd(low, scale))))
		z = G.Must(G.BroadcastAdd(z, b, nil, []byte{0}))
		if i < m.Layers()-1 {
			z = G.Must(G.Rectify(z))
		}
		h = z
	}
	gr.logits = h
	logp := G.Must(G.LogSoftMax(h))
	nll := G.Must(G.Neg(G.Must(G.Sum(G.Must(G.HadamardProd(logp, gr.y))))))
	gr.loss = G.Must(G.Div(nll, G.NewConstant(float32(batch))))
	for _, p := range gr.params() {
		gr.paramData = append(gr.paramData, p.Value().Data().([]float32))
	}
	if _, err := G.Grad(gr.loss, adapters...); err != nil {
		return nil, nil, fmt.Errorf("lora: gradients: %w", err)
	}
	gr.vm = G.NewTapeMachine(gr.g, G.BindDualValues(adapters...))
	return gr, adapters, nil
}
