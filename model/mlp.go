// Package model holds fedtune's trainable models, built on Gorgonia: their
// parameter layouts (as tensor.Sets with PyTorch-style names and shapes),
// initialisation, local training (gradients from Gorgonia's reverse-mode
// autodiff) and evaluation.
package model

import (
	"fmt"
	"math"
	"math/rand/v2"

	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"

	"github.com/fedtune/fedtune/tensor"
)

// MLP is a fully connected classifier with ReLU hidden layers and a softmax
// output. Sizes lists the layer widths, input first: {784, 256, 10} is the
// MNIST model of the demo.
//
// Parameters are named as PyTorch's nn.Linear names them: layer i (1-based)
// has "fc<i>.weight" of shape [out, in] and "fc<i>.bias" of shape [out], so a
// checkpoint loads into `nn.Sequential`-free PyTorch code with the same names.
type MLP struct {
	Sizes []int
}

// String returns the layer widths, "[784 256 10]".
func (m MLP) String() string { return fmt.Sprint(m.Sizes) }

// LoRATargets names every dense layer's weight: "fc1.weight", "fc2.weight", ...
func (m MLP) LoRATargets() []string {
	ts := make([]string, m.Layers())
	for i := range ts {
		ts[i] = fmt.Sprintf("fc%d.weight", i+1)
	}
	return ts
}

// CheckData refuses examples whose width or label count differ from the
// input and output layers.
func (m MLP) CheckData(dim, classes int) error {
	if err := m.validate(); err != nil {
		return err
	}
	if in, out := m.Sizes[0], m.Sizes[len(m.Sizes)-1]; dim != in || classes > out {
		return fmt.Errorf("model %v takes %d inputs to %d classes; the data has %d features and %d classes", m.Sizes, in, out, dim, classes)
	}
	return nil
}

// Layers returns the number of dense layers.
func (m MLP) Layers() int { return len(m.Sizes) - 1 }

func (m MLP) validate() error {
	if len(m.Sizes) < 2 {
		return fmt.Errorf("mlp: need at least input and output sizes, have %v", m.Sizes)
	}
	for _, s := range m.Sizes {
		if s <= 0 {
			return fmt.Errorf("mlp: layer size %d in %v", s, m.Sizes)
		}
	}
	return nil
}

// Layout returns a zero-valued parameter set with m's names and shapes.
func (m MLP) Layout() tensor.Set {
	var ts []tensor.Tensor
	for i := 0; i < m.Layers(); i++ {
		in, out := m.Sizes[i], m.Sizes[i+1]
		ts = append(ts,
			tensor.Tensor{Name: fmt.Sprintf("fc%d.weight", i+1), Shape: []int{out, in}, Data: make([]float32, out*in)},
			tensor.Tensor{Name: fmt.Sprintf("fc%d.bias", i+1), Shape: []int{out}, Data: make([]float32, out)},
		)
	}
	return tensor.MustNew(ts...)
}

// Init returns freshly initialised parameters drawn from seed: He-uniform
// weights (bound sqrt(6/fan_in), suited to ReLU layers) and zero biases.
func (m MLP) Init(seed uint64) tensor.Set {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	s := m.Layout()
	for i := 0; i < m.Layers(); i++ {
		w, _ := s.Get(fmt.Sprintf("fc%d.weight", i+1))
		bound := math.Sqrt(6 / float64(m.Sizes[i]))
		for j := range w.Data {
			w.Data[j] = float32((2*r.Float64() - 1) * bound)
		}
	}
	return s
}

// graph is a Gorgonia expression graph of the MLP for one batch size: the
// forward pass, the mean cross-entropy loss and, when built for training,
// the gradients of the loss with respect to every parameter.
type graph struct {
	g      *G.ExprGraph
	x, y   *G.Node   // input [batch, in], one-hot targets [batch, classes]
	w, b   []*G.Node // per layer: weight stored transposed [in, out], bias [out]
	anchor []*G.Node // FedProx anchors (the round's base), same order as params()
	logits *G.Node
	loss   *G.Node
	vm     G.VM
	batch  int
	// paramData[k] aliases the backing array of params()[k]'s value.
	paramData [][]float32
	// shapes[k] is params()[k]'s shape in the parameter set; a 2-D weight
	// is held transposed in the graph ([in, out]), so that the forward
	// pass multiplies by it without a Transpose op each step (load, store
	// and the anchors transpose once per task instead).
	shapes [][]int
	// anchorData[k] aliases the backing array of anchor[k]'s value.
	anchorData [][]float32
}

// params returns parameter nodes in tensor.Set order (sorted by name:
// fc1.bias, fc1.weight, fc2.bias, ...).
func (gr *graph) params() []*G.Node {
	var ps []*G.Node
	for i := range gr.w {
		ps = append(ps, gr.b[i], gr.w[i])
	}
	return ps
}

func newGraph(m MLP, batch int, train bool, proxMu float64) (*graph, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	gr := &graph{g: G.NewGraph(), batch: batch}
	classes := m.Sizes[len(m.Sizes)-1]
	gr.x = G.NewMatrix(gr.g, gt.Float32, G.WithShape(batch, m.Sizes[0]), G.WithName("x"), G.WithValue(gt.New(gt.WithShape(batch, m.Sizes[0]), gt.Of(gt.Float32))))
	gr.y = G.NewMatrix(gr.g, gt.Float32, G.WithShape(batch, classes), G.WithName("y"), G.WithValue(gt.New(gt.WithShape(batch, classes), gt.Of(gt.Float32))))
	h := gr.x
	for i := 0; i < m.Layers(); i++ {
		in, out := m.Sizes[i], m.Sizes[i+1]
		w := G.NewMatrix(gr.g, gt.Float32, G.WithShape(in, out), G.WithName(fmt.Sprintf("fc%d.weight", i+1)), G.WithValue(gt.New(gt.WithShape(in, out), gt.Of(gt.Float32))))
		b := G.NewVector(gr.g, gt.Float32, G.WithShape(out), G.WithName(fmt.Sprintf("fc%d.bias", i+1)), G.WithValue(gt.New(gt.WithShape(out), gt.Of(gt.Float32))))
		gr.w, gr.b = append(gr.w, w), append(gr.b, b)
		gr.shapes = append(gr.shapes, []int{out}, []int{out, in})
		z, err := G.Mul(h, w)
		if err != nil {
			return nil, fmt.Errorf("mlp: layer %d: %w", i+1, err)
		}
		if z, err = G.BroadcastAdd(z, b, nil, []byte{0}); err != nil {
			return nil, fmt.Errorf("mlp: layer %d bias: %w", i+1, err)
		}
		if i < m.Layers()-1 {
			if z, err = G.Rectify(z); err != nil {
				return nil, fmt.Errorf("mlp: layer %d relu: %w", i+1, err)
			}
		}
		h = z
	}
	gr.logits = h
	logp, err := G.LogSoftMax(h)
	if err != nil {
		return nil, fmt.Errorf("mlp: log-softmax: %w", err)
	}
	nll := G.Must(G.Neg(G.Must(G.Sum(G.Must(G.HadamardProd(logp, gr.y))))))
	gr.loss = G.Must(G.Div(nll, G.NewConstant(float32(batch))))
	for _, p := range gr.params() {
		gr.paramData = append(gr.paramData, p.Value().Data().([]float32))
	}
	if train {
		cost := gr.loss
		if proxMu > 0 {
			// FedProx: cost += mu/2 * ||w - w_base||^2, so the gradient
			// Gorgonia computes pulls local weights towards the base.
			var prox *G.Node
			for _, p := range gr.params() {
				a := G.NewTensor(gr.g, gt.Float32, p.Dims(), G.WithShape(p.Shape()...), G.WithName(p.Name()+".anchor"), G.WithValue(gt.New(gt.WithShape(p.Shape()...), gt.Of(gt.Float32))))
				gr.anchor = append(gr.anchor, a)
				gr.anchorData = append(gr.anchorData, a.Value().Data().([]float32))
				sq := G.Must(G.Sum(G.Must(G.Square(G.Must(G.Sub(p, a))))))
				if prox == nil {
					prox = sq
				} else {
					prox = G.Must(G.Add(prox, sq))
				}
			}
			cost = G.Must(G.Add(cost, G.Must(G.Mul(prox, G.NewConstant(float32(proxMu/2))))))
		}
		if _, err := G.Grad(cost, gr.params()...); err != nil {
			return nil, fmt.Errorf("mlp: gradients: %w", err)
		}
		// Compile only what the loss and the parameters' gradients need:
		// the whole graph also holds the gradient of the input batch
		// (the first layer's matmul differentiates both operands), a
		// product as large as the forward pass that nothing reads.
		roots := G.Nodes{gr.loss}
		for _, p := range gr.params() {
			roots = append(roots, p.Deriv())
		}
		gr.vm = G.NewTapeMachine(gr.g.SubgraphRoots(roots...), G.BindDualValues(gr.params()...))
	} else {
		gr.vm = G.NewTapeMachine(gr.g)
	}
	return gr, nil
}

// load copies parameter values from s into the graph. s must have the
// model's layout.
func (gr *graph) load(s tensor.Set) {
	for k, t := range s.Tensors {
		gr.put(gr.paramData[k], t.Data, k)
	}
}

// put copies parameter k from its set layout (src) into its graph layout (dst).
func (gr *graph) put(dst, src []float32, k int) {
	if sh := gr.shapes[k]; len(sh) == 2 {
		transpose(dst, src, sh[0], sh[1])
		return
	}
	copy(dst, src)
}

// get copies parameter k from its graph layout (src) into its set layout (dst).
func (gr *graph) get(dst, src []float32, k int) {
	if sh := gr.shapes[k]; len(sh) == 2 {
		transpose(dst, src, sh[1], sh[0])
		return
	}
	copy(dst, src)
}

// transpose writes the rows×cols row-major matrix src into dst as cols×rows.
func transpose(dst, src []float32, rows, cols int) {
	const blk = 32
	for i0 := 0; i0 < rows; i0 += blk {
		for j0 := 0; j0 < cols; j0 += blk {
			for i := i0; i < min(i0+blk, rows); i++ {
				row := src[i*cols : (i+1)*cols]
				for j := j0; j < min(j0+blk, cols); j++ {
					dst[j*rows+i] = row[j]
				}
			}
		}
	}
}

// setBatch fills x and y with examples idx of (X, Y).
func (gr *graph) setBatch(X []float32, Y []uint8, dim int, idx []int) {
	xd := gr.x.Value().Data().([]float32)
	yd := gr.y.Value().Data().([]float32)
	classes := len(yd) / gr.batch
	clear(yd)
	for r, i := range idx {
		copy(xd[r*dim:(r+1)*dim], X[i*dim:(i+1)*dim])
		yd[r*classes+int(Y[i])] = 1
	}
}

// run executes the graph once; values and gradients stay readable until
// the next run.
func (gr *graph) run() error {
	gr.vm.Reset()
	return gr.vm.RunAll()
}

func (gr *graph) lossValue() float64 {
	return float64(gr.loss.Value().Data().(float32))
}

func (gr *graph) close() {
	if gr.vm != nil {
		gr.vm.Close()
	}
}
