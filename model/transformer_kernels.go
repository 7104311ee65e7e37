package model

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"

	"github.com/fedtune/fedtune/tensor/blas"
)

// The transformer's fused kernels. Each is a Gorgonia node whose gradient
// is another kernel node; rows of a [N, ·] activation are the N = B·T
// tokens of B packed sequences of T tokens, position n%T within its
// sequence.

// embed looks up the rows ids of table [V, h]: a [len(ids), h] node. ids
// is read at every run (the caller refills it in place).
func embed(table *G.Node, ids []int32) (*G.Node, error) {
	vocab, h := table.Shape()[0], table.Shape()[1]
	n := len(ids)
	k := &kernel{name: "embed", in: []int{2}, outDim: 2, wrt: []bool{true},
		shape: func([]gt.Shape) gt.Shape { return gt.Shape{n, h} },
		do: func(out []float32, in [][]float32) error {
			for r, id := range ids {
				copy(out[r*h:(r+1)*h], in[0][int(id)*h:(int(id)+1)*h])
			}
			return nil
		}}
	k.diff = func(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
		gk := &kernel{name: "embed-grad", in: []int{2}, outDim: 2,
			shape: func([]gt.Shape) gt.Shape { return gt.Shape{vocab, h} },
			do: func(out []float32, in [][]float32) error {
				clear(out)
				for r, id := range ids {
					row := out[int(id)*h : (int(id)+1)*h]
					for j, g := range in[0][r*h : (r+1)*h] {
						row[j] += g
					}
				}
				return nil
			}}
		g, err := gk.apply(grad)
		return G.Nodes{g}, err
	}
	return k.apply(table)
}

// rmsNorm is Llama's RMSNorm: y = w ⊙ x / sqrt(mean(x²) + eps), per row.
func rmsNorm(x, w *G.Node, eps float64) (*G.Node, error) {
	h := x.Shape()[1]
	k := &kernel{name: "rmsnorm", in: []int{2, 1}, outDim: 2, wrt: []bool{true, true},
		shape: func(s []gt.Shape) gt.Shape { return s[0].Clone() },
		do: func(out []float32, in [][]float32) error {
			x, w := in[0], in[1]
			for r := 0; r < len(x)/h; r++ {
				xr, or := x[r*h:(r+1)*h], out[r*h:(r+1)*h]
				inv := rmsInv(xr, eps)
				for j, v := range xr {
					or[j] = w[j] * (v * inv)
				}
			}
			return nil
		}}
	k.diff = func(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
		gx := &kernel{name: "rmsnorm-grad-x", in: []int{2, 1, 2}, outDim: 2,
			shape: func(s []gt.Shape) gt.Shape { return s[0].Clone() },
			do: func(out []float32, in [][]float32) error {
				x, w, g := in[0], in[1], in[2]
				for r := 0; r < len(x)/h; r++ {
					xr, gr, or := x[r*h:(r+1)*h], g[r*h:(r+1)*h], out[r*h:(r+1)*h]
					inv := rmsInv(xr, eps)
					var s float64
					for j, v := range xr {
						s += float64(gr[j] * w[j] * v)
					}
					c := float32(s) * inv * inv * inv / float32(h)
					for j, v := range xr {
						or[j] = inv*gr[j]*w[j] - v*c
					}
				}
				return nil
			}}
		gw := &kernel{name: "rmsnorm-grad-w", in: []int{2, 2}, outDim: 1,
			shape: func([]gt.Shape) gt.Shape { return gt.Shape{h} },
			do: func(out []float32, in [][]float32) error {
				x, g := in[0], in[1]
				clear(out)
				for r := 0; r < len(x)/h; r++ {
					xr, gr := x[r*h:(r+1)*h], g[r*h:(r+1)*h]
					inv := rmsInv(xr, eps)
					for j, v := range xr {
						out[j] += gr[j] * v * inv
					}
				}
				return nil
			}}
		dx, err := gx.apply(in[0], in[1], grad)
		if err != nil {
			return nil, err
		}
		dw, err := gw.apply(in[0], grad)
		return G.Nodes{dx, dw}, err
	}
	return k.apply(x, w)
}

// rmsInv is 1/sqrt(mean(x²)+eps), the mean accumulated in float64.
func rmsInv(x []float32, eps float64) float32 {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	return float32(1 / math.Sqrt(ss/float64(len(x))+eps))
}

// ropeTable holds cos and sin of the rotary angles, [T, hd/2], computed in
// float32 as transformers computes them: inv_freq = 1/θ^(2i/hd), angle =
// position·inv_freq.
type ropeTable struct {
	cos, sin []float32
	half     int
}

func newRopeTable(seq, headDim int, theta float64) ropeTable {
	half := headDim / 2
	t := ropeTable{cos: make([]float32, seq*half), sin: make([]float32, seq*half), half: half}
	for i := 0; i < half; i++ {
		exp := float32(2*i) / float32(headDim)
		inv := float32(1) / float32(math.Pow(theta, float64(exp)))
		for p := 0; p < seq; p++ {
			a := float64(float32(p) * inv)
			t.cos[p*half+i] = float32(math.Cos(a))
			t.sin[p*half+i] = float32(math.Sin(a))
		}
	}
	return t
}

// rotate applies the rotary embedding (sign 1) or its inverse (sign -1) to
// every head of every row of x [N, heads·hd], rows being positions n%seq:
// the rotate-half convention, y = x·cos + rotate_half(x)·sin.
func (t ropeTable) rotate(out, x []float32, width, seq int, sign float32) {
	hd := 2 * t.half
	for r := 0; r < len(x)/width; r++ {
		p := r % seq
		c, s := t.cos[p*t.half:(p+1)*t.half], t.sin[p*t.half:(p+1)*t.half]
		for o := r * width; o < (r+1)*width; o += hd {
			x1, x2 := x[o:o+t.half], x[o+t.half:o+hd]
			y1, y2 := out[o:o+t.half], out[o+t.half:o+hd]
			for i := range x1 {
				si := sign * s[i]
				a, b := x1[i], x2[i]
				y1[i] = a*c[i] - b*si
				y2[i] = b*c[i] + a*si
			}
		}
	}
}

// rope rotates the heads of x [N, heads·hd] by their positions.
func rope(x *G.Node, t ropeTable, seq int) (*G.Node, error) {
	width := x.Shape()[1]
	mk := func(name string, sign float32) *kernel {
		return &kernel{name: name, in: []int{2}, outDim: 2,
			shape: func(s []gt.Shape) gt.Shape { return s[0].Clone() },
			do: func(out []float32, in [][]float32) error {
				t.rotate(out, in[0], width, seq, sign)
				return nil
			}}
	}
	k := mk("rope", 1)
	k.wrt = []bool{true}
	k.diff = func(_ G.Nodes, _, grad *G.Node) (G.Nodes, error) {
		g, err := mk("rope-grad", -1).apply(grad)
		return G.Nodes{g}, err
	}
	return k.apply(x)
}

// attnShape is the geometry of causal grouped-query attention over packed
// sequences.
type attnShape struct {
	seq, heads, kvHeads, headDim int
}

// attention is causal grouped-query attention: q [N, heads·hd], k and v
// [N, kvHeads·hd] → [N, heads·hd], query head i reading key/value head
// i/(heads/kvHeads) (transformers' repeat_kv), scores scaled by 1/√hd,
// each position attending to itself and the positions before it in its
// sequence. The softmax weights are kept from the forward run for the
// backward one.
func attention(q, k, v *G.Node, a attnShape) (*G.Node, error) {
	n := q.Shape()[0]
	if n%a.seq != 0 {
		return nil, fmt.Errorf("attention: %d rows are not sequences of %d", n, a.seq)
	}
	batch := n / a.seq
	probs := make([]float32, batch*a.heads*a.seq*a.seq)
	scratch := make([]float32, a.seq*a.seq) // the backward run's dS, one head at a time
	qd, kd := a.heads*a.headDim, a.kvHeads*a.headDim
	fk := &kernel{name: "attention", in: []int{2, 2, 2}, outDim: 2, wrt: []bool{true, true, true},
		shape: func(s []gt.Shape) gt.Shape { return s[0].Clone() },
		do: func(out []float32, in [][]float32) error {
			a.forward(out, probs, in[0], in[1], in[2], batch)
			return nil
		}}
	fk.diff = func(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
		bk := &kernel{name: "attention-grad", in: []int{2, 2, 2, 2}, outDim: 2,
			shape: func([]gt.Shape) gt.Shape { return gt.Shape{n, qd + 2*kd} },
			do: func(out []float32, in [][]float32) error {
				a.backward(out, probs, scratch, in[0], in[1], in[2], in[3], batch)
				return nil
			}}
		packed, err := bk.apply(in[0], in[1], in[2], grad)
		if err != nil {
			return nil, err
		}
		dq, err := columns(packed, 0, qd)
		if err != nil {
			return nil, err
		}
		dk, err := columns(packed, qd, kd)
		if err != nil {
			return nil, err
		}
		dv, err := columns(packed, qd+kd, kd)
		return G.Nodes{dq, dk, dv}, err
	}
	return fk.apply(q, k, v)
}

func (a attnShape) forward(out, probs, q, k, v []float32, batch int) {
	T, hd := a.seq, a.headDim
	qd, kd := a.heads*hd, a.kvHeads*hd
	group := a.heads / a.kvHeads
	scale := float32(1 / math.Sqrt(float64(hd)))
	for b := 0; b < batch; b++ {
		for h := 0; h < a.heads; h++ {
			p := probs[(b*a.heads+h)*T*T : (b*a.heads+h+1)*T*T]
			qo, ko := b*T*qd+h*hd, b*T*kd+(h/group)*hd
			blas.Gemm(false, true, T, T, hd, scale, q[qo:], qd, k[ko:], kd, 0, p, T)
			for i := 0; i < T; i++ {
				softmaxCausal(p[i*T:(i+1)*T], i)
			}
			blas.Gemm(false, false, T, hd, T, 1, p, T, v[ko:], kd, 0, out[qo:], qd)
		}
	}
}

// softmaxCausal replaces row (scores of one query) by the softmax of its
// first last+1 entries, zero after.
func softmaxCausal(row []float32, last int) {
	m := row[0]
	for _, s := range row[1 : last+1] {
		m = max(m, s)
	}
	var sum float64
	for j := 0; j <= last; j++ {
		e := float32(math.Exp(float64(row[j] - m)))
		row[j] = e
		sum += float64(e)
	}
	inv := float32(1 / sum)
	for j := 0; j <= last; j++ {
		row[j] *= inv
	}
	clear(row[last+1:])
}

// backward writes [dq | dk | dv] per row into out, using ds (T×T) as
// scratch.
func (a attnShape) backward(out, probs, ds, q, k, v, dout []float32, batch int) {
	T, hd := a.seq, a.headDim
	qd, kd := a.heads*hd, a.kvHeads*hd
	ld := qd + 2*kd
	group := a.heads / a.kvHeads
	scale := float32(1 / math.Sqrt(float64(hd)))
	clear(out)
	for b := 0; b < batch; b++ {
		for h := 0; h < a.heads; h++ {
			p := probs[(b*a.heads+h)*T*T : (b*a.heads+h+1)*T*T]
			qo, ko := b*T*qd+h*hd, b*T*kd+(h/group)*hd
			ob := b * T * ld
			// dP = dO·Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP))
			blas.Gemm(false, true, T, T, hd, 1, dout[qo:], qd, v[ko:], kd, 0, ds, T)
			for i := 0; i < T; i++ {
				pr, dr := p[i*T:(i+1)*T], ds[i*T:(i+1)*T]
				var s float64
				for j := 0; j <= i; j++ {
					s += float64(pr[j] * dr[j])
				}
				for j := 0; j <= i; j++ {
					dr[j] = pr[j] * (dr[j] - float32(s))
				}
				clear(dr[i+1:])
			}
			kvo := (h / group) * hd
			blas.Gemm(false, false, T, hd, T, scale, ds, T, k[ko:], kd, 0, out[ob+h*hd:], ld)   // dQ = s·dS·K
			blas.Gemm(true, false, T, hd, T, scale, ds, T, q[qo:], qd, 1, out[ob+qd+kvo:], ld)  // dK += s·dSᵀ·Q
			blas.Gemm(true, false, T, hd, T, 1, p, T, dout[qo:], qd, 1, out[ob+qd+kd+kvo:], ld) // dV += Pᵀ·dO
		}
	}
}

// columns selects columns [off, off+width) of x [N, ·].
func columns(x *G.Node, off, width int) (*G.Node, error) {
	n, w := x.Shape()[0], x.Shape()[1]
	k := &kernel{name: fmt.Sprintf("columns[%d:%d]", off, off+width), in: []int{2}, outDim: 2,
		shape: func([]gt.Shape) gt.Shape { return gt.Shape{n, width} },
		do: func(out []float32, in [][]float32) error {
			for r := 0; r < n; r++ {
				copy(out[r*width:(r+1)*width], in[0][r*w+off:r*w+off+width])
			}
			return nil
		}}
	return k.apply(x)
}

// crossEntropy is the mean next-token cross-entropy of logits [N, V]
// against targets (a negative target is not counted): a scalar node.
// targets is read at every run. The forward run keeps the softmax for the
// backward one.
func crossEntropy(logits *G.Node, targets []int32) (*G.Node, error) {
	n, vocab := logits.Shape()[0], logits.Shape()[1]
	probs := make([]float32, n*vocab)
	k := &kernel{name: "cross-entropy", in: []int{2}, outDim: 0, wrt: []bool{true},
		shape: func([]gt.Shape) gt.Shape { return gt.ScalarShape() },
		do: func(out []float32, in [][]float32) error {
			var sum float64
			for r, t := range targets {
				if t < 0 {
					continue
				}
				row, p := in[0][r*vocab:(r+1)*vocab], probs[r*vocab:(r+1)*vocab]
				lse := softmax(p, row)
				sum += lse - float64(row[t])
			}
			out[0] = float32(sum / float64(max(countTargets(targets), 1)))
			return nil
		}}
	k.diff = func(in G.Nodes, _, grad *G.Node) (G.Nodes, error) {
		gk := &kernel{name: "cross-entropy-grad", in: []int{2, 0}, outDim: 2,
			shape: func(s []gt.Shape) gt.Shape { return s[0].Clone() },
			do: func(out []float32, in [][]float32) error {
				scale := in[1][0] / float32(max(countTargets(targets), 1))
				for r, t := range targets {
					o := out[r*vocab : (r+1)*vocab]
					if t < 0 {
						clear(o)
						continue
					}
					for j, p := range probs[r*vocab : (r+1)*vocab] {
						o[j] = p * scale
					}
					o[t] -= scale
				}
				return nil
			}}
		g, err := gk.apply(in[0], grad)
		return G.Nodes{g}, err
	}
	return k.apply(logits)
}

// countTargets is the number of positions with a target (≥ 0).
func countTargets(targets []int32) int {
	c := 0
	for _, t := range targets {
		if t >= 0 {
			c++
		}
	}
	return c
}

// softmax writes the softmax of row into p and returns log Σ exp(row),
// the sum accumulated in float64.
func softmax(p, row []float32) float64 {
	m := row[0]
	for _, z := range row[1:] {
		m = max(m, z)
	}
	var s float64
	for j, z := range row {
		e := float32(math.Exp(float64(z - m)))
		p[j] = e
		s += float64(e)
	}
	inv := float32(1 / s)
	for j := range p {
		p[j] *= inv
	}
	return float64(m) + math.Log(s)
}

// linear is alpha·x·Wᵀ (+ bias): x [N, in], W [out, in] as transformers
// stores it, bias [out] or nil. Its gradients are matrix products on W in
// place, with no transposed copy.
func linear(x, w, bias *G.Node, alpha float32) (*G.Node, error) {
	n, in := x.Shape()[0], x.Shape()[1]
	out := w.Shape()[0]
	if w.Shape()[1] != in {
		return nil, fmt.Errorf("linear: input of %d features, weight %v", in, w.Shape())
	}
	inputs := []*G.Node{x, w}
	dims := []int{2, 2}
	if bias != nil {
		inputs, dims = append(inputs, bias), append(dims, 1)
	}
	k := &kernel{name: "linear", in: dims, outDim: 2, wrt: []bool{true, true, true}[:len(dims)],
		shape: func([]gt.Shape) gt.Shape { return gt.Shape{n, out} },
		do: func(y []float32, v [][]float32) error {
			blas.Gemm(false, true, n, out, in, alpha, v[0], in, v[1], in, 0, y, out)
			if len(v) == 3 {
				for r := 0; r < n; r++ {
					row := y[r*out : (r+1)*out]
					for j, b := range v[2] {
						row[j] += b
					}
				}
			}
			return nil
		}}
	k.diff = func(v G.Nodes, _, grad *G.Node) (G.Nodes, error) {
		dx := &kernel{name: "linear-grad-x", in: []int{2, 2}, outDim: 2,
			shape: func([]gt.Shape) gt.Shape { return gt.Shape{n, in} },
			do: func(o []float32, v [][]float32) error { // α·g·W
				blas.Gemm(false, false, n, in, out, alpha, v[0], out, v[1], in, 0, o, in)
				return nil
			}}
		dw := &kernel{name: "linear-grad-w", in: []int{2, 2}, outDim: 2,
			shape: func([]gt.Shape) gt.Shape { return gt.Shape{out, in} },
			do: func(o []float32, v [][]float32) error { // α·gᵀ·x
				blas.Gemm(true, false, out, in, n, alpha, v[0], out, v[1], in, 0, o, in)
				return nil
			}}
		gx, err := dx.apply(grad, v[1])
		if err != nil {
			return nil, err
		}
		gw, err := dw.apply(grad, v[0])
		if err != nil {
			return nil, err
		}
		if len(v) == 2 {
			return G.Nodes{gx, gw}, nil
		}
		db := &kernel{name: "linear-grad-bias", in: []int{2}, outDim: 1,
			shape: func([]gt.Shape) gt.Shape { return gt.Shape{out} },
			do: func(o []float32, v [][]float32) error {
				clear(o)
				for r := 0; r < n; r++ {
					for j, g := range v[0][r*out : (r+1)*out] {
						o[j] += g
					}
				}
				return nil
			}}
		gb, err := db.apply(grad)
		return G.Nodes{gx, gw, gb}, err
	}
	return k.apply(inputs...)
}

// swiglu is Llama's MLP activation silu(gate) ⊙ up.
func swiglu(gate, up *G.Node) (*G.Node, error) {
	n, f := gate.Shape()[0], gate.Shape()[1]
	k := &kernel{name: "swiglu", in: []int{2, 2}, outDim: 2, wrt: []bool{true, true},
		shape: func(s []gt.Shape) gt.Shape { return s[0].Clone() },
		do: func(o []float32, v [][]float32) error {
			for i, g := range v[0] {
				o[i] = g * sigmoid(g) * v[1][i]
			}
			return nil
		}}
	k.diff = func(v G.Nodes, _, grad *G.Node) (G.Nodes, error) {
		bk := &kernel{name: "swiglu-grad", in: []int{2, 2, 2}, outDim: 2,
			shape: func([]gt.Shape) gt.Shape { return gt.Shape{n, 2 * f} },
			do: func(o []float32, v [][]float32) error { // [d gate | d up] per row
				gate, up, g := v[0], v[1], v[2]
				for r := 0; r < n; r++ {
					dg, du := o[r*2*f:r*2*f+f], o[r*2*f+f:(r+1)*2*f]
					for j := 0; j < f; j++ {
						i := r*f + j
						s := sigmoid(gate[i])
						du[j] = g[i] * gate[i] * s
						dg[j] = g[i] * up[i] * s * (1 + gate[i]*(1-s))
					}
				}
				return nil
			}}
		packed, err := bk.apply(v[0], v[1], grad)
		if err != nil {
			return nil, err
		}
		dg, err := columns(packed, 0, f)
		if err != nil {
			return nil, err
		}
		du, err := columns(packed, f, f)
		return G.Nodes{dg, du}, err
	}
	return k.apply(gate, up)
}

func sigmoid(x float32) float32 { return 1 / (1 + float32(math.Exp(float64(-x)))) }
