package model

import (
	"context"
	"fmt"

	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

// TrainAdapter runs local SGD on the adapters only, starting from adapter,
// with the base model frozen, and returns the trained adapters. Every
// dense layer is adapted: z = h·Wᵀ + (Alpha/Rank)·(h·Aᵀ)·Bᵀ + b.
func (t *mlpTrainer) TrainAdapter(ctx context.Context, l lora.Config, base, adapter tensor.Set, data *dataset.Examples, cfg TrainConfig) (tensor.Set, TrainMetrics, error) {
	var met TrainMetrics
	m := t.m
	if l.Rank <= 0 || !(l.Alpha > 0) {
		return tensor.Set{}, met, fmt.Errorf("lora: rank %d and alpha %v must be positive", l.Rank, l.Alpha)
	}
	if err := tensor.SameLayout(base, m.Layout()); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: base does not fit %v: %w", m.Sizes, err)
	}
	want, err := l.Layout(m)
	if err != nil {
		return tensor.Set{}, met, err
	}
	if err := tensor.SameLayout(adapter, want); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: adapter does not fit %v rank %d: %w", m.Sizes, l.Rank, err)
	}
	if err := cfg.check(); err != nil {
		return tensor.Set{}, met, fmt.Errorf("lora: %w", err)
	}
	if data.Len() < cfg.BatchSize*max(cfg.Accum, 1) {
		return tensor.Set{}, met, fmt.Errorf("lora: %d local examples, fewer than one step of %d×%d", data.Len(), max(cfg.Accum, 1), cfg.BatchSize)
	}
	gr, params, err := loraGraph(l, m, cfg.BatchSize)
	if err != nil {
		return tensor.Set{}, met, err
	}
	defer gr.close()
	gr.load(base)
	for k, p := range params {
		copy(p.Value().Data().([]float32), adapter.Tensors[k].Data)
	}
	weights := make([][]float32, len(params))
	for k, p := range params {
		weights[k] = p.Value().Data().([]float32)
	}
	if err := sgd(ctx, gr, params, weights, data, cfg, &met); err != nil {
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

// loraGraph builds the adapted MLP: z = h·Wᵀ + s·(h·Aᵀ)·Bᵀ + b per layer,
// differentiating the adapters only. It returns them in adapter-layout
// order (fc1.lora_A, fc1.lora_B, fc2.lora_A, ...).
func loraGraph(l lora.Config, m MLP, batch int) (*graph, []*G.Node, error) {
	gr := &graph{g: G.NewGraph(), batch: batch}
	classes := m.Sizes[len(m.Sizes)-1]
	gr.x = G.NewMatrix(gr.g, gt.Float32, G.WithShape(batch, m.Sizes[0]), G.WithName("x"), G.WithValue(gt.New(gt.WithShape(batch, m.Sizes[0]), gt.Of(gt.Float32))))
	gr.y = G.NewMatrix(gr.g, gt.Float32, G.WithShape(batch, classes), G.WithName("y"), G.WithValue(gt.New(gt.WithShape(batch, classes), gt.Of(gt.Float32))))
	scale := G.NewConstant(l.Scale())
	var adapters []*G.Node
	h := gr.x
	for i := 0; i < m.Layers(); i++ {
		in, out := m.Sizes[i], m.Sizes[i+1]
		mk := func(name string, shape ...int) *G.Node {
			return G.NewMatrix(gr.g, gt.Float32, G.WithShape(shape...), G.WithName(name), G.WithValue(gt.New(gt.WithShape(shape...), gt.Of(gt.Float32))))
		}
		w := mk(fmt.Sprintf("fc%d.weight", i+1), in, out) // transposed, as in newGraph
		b := G.NewVector(gr.g, gt.Float32, G.WithShape(out), G.WithName(fmt.Sprintf("fc%d.bias", i+1)), G.WithValue(gt.New(gt.WithShape(out), gt.Of(gt.Float32))))
		a := mk(fmt.Sprintf("fc%d.lora_A.weight", i+1), l.Rank, in)
		bb := mk(fmt.Sprintf("fc%d.lora_B.weight", i+1), out, l.Rank)
		gr.w, gr.b = append(gr.w, w), append(gr.b, b)
		gr.shapes = append(gr.shapes, []int{out}, []int{out, in})
		adapters = append(adapters, a, bb)
		z := G.Must(G.Mul(h, w))
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
