package aggregation

import (
	"fmt"
	"math"

	"github.com/fedtune/fedtune/tensor"
)

// ServerOptimizer applies an aggregated delta to the global model (Reddi et
// al., "Adaptive Federated Optimization", 2021): plain (x += lr·Δ),
// fedavgm (server momentum), fedadam and fedyogi. Its state (first and
// second moments) is a tensor.Set the coordinator stores in the blob store
// and names in the log, so it survives failover and rounds can be verified.
type ServerOptimizer struct {
	Name  string  // plain, fedavgm, fedadam, fedyogi
	LR    float64 // server learning rate (default 1 for plain/fedavgm, 0.01 for fedadam/fedyogi)
	Beta1 float64 // momentum / first moment decay (default 0.9)
	Beta2 float64 // second moment decay (default 0.99)
	Eps   float64 // adaptivity τ (default 1e-3)
}

// Optimizers lists the server optimizers.
var Optimizers = []string{"plain", "fedavgm", "fedadam", "fedyogi"}

// NewServerOptimizer fills defaults and checks the parameters.
func NewServerOptimizer(o ServerOptimizer) (ServerOptimizer, error) {
	adaptive := o.Name == "fedadam" || o.Name == "fedyogi"
	switch o.Name {
	case "":
		o.Name = "plain"
	case "plain", "fedavgm", "fedadam", "fedyogi":
	default:
		return o, fmt.Errorf("server optimizer %q: want one of %v", o.Name, Optimizers)
	}
	if o.LR == 0 {
		o.LR = 1
		if adaptive {
			o.LR = 0.01
		}
	}
	if o.Beta1 == 0 {
		o.Beta1 = 0.9
	}
	if o.Beta2 == 0 {
		o.Beta2 = 0.99
	}
	if o.Eps == 0 {
		o.Eps = 1e-3
	}
	if !(o.LR > 0) || o.Beta1 < 0 || o.Beta1 >= 1 || o.Beta2 < 0 || o.Beta2 >= 1 || !(o.Eps > 0) {
		return o, fmt.Errorf("server optimizer %s: lr %v, beta1 %v, beta2 %v, eps %v out of range", o.Name, o.LR, o.Beta1, o.Beta2, o.Eps)
	}
	return o, nil
}

// Stateful reports whether the optimizer keeps state between rounds.
func (o ServerOptimizer) Stateful() bool { return o.Name != "plain" }

// Step returns model + update(delta) and the new state. state may be empty
// (the first round); model and state are not modified.
func (o ServerOptimizer) Step(model, delta, state tensor.Set) (tensor.Set, tensor.Set, error) {
	if err := tensor.SameLayout(model, delta); err != nil {
		return tensor.Set{}, tensor.Set{}, fmt.Errorf("server optimizer: %w", err)
	}
	out := model.Clone()
	out.Metadata = nil
	if !o.Stateful() {
		if err := out.AddScaled(float32(o.LR), delta); err != nil {
			return tensor.Set{}, tensor.Set{}, err
		}
		return out, tensor.Set{}, nil
	}
	m, v := moments(delta, state)
	b1, b2, lr, eps := float32(o.Beta1), float32(o.Beta2), float32(o.LR), o.Eps
	for k, t := range out.Tensors {
		d, mk, vk := delta.Tensors[k].Data, m.Tensors[k].Data, v.Tensors[k].Data
		for i := range t.Data {
			switch o.Name {
			case "fedavgm":
				mk[i] = b1*mk[i] + d[i]
				t.Data[i] += lr * mk[i]
				continue
			case "fedadam":
				mk[i] = b1*mk[i] + (1-b1)*d[i]
				vk[i] = b2*vk[i] + (1-b2)*d[i]*d[i]
			case "fedyogi":
				mk[i] = b1*mk[i] + (1-b1)*d[i]
				d2 := d[i] * d[i]
				vk[i] -= (1 - b2) * d2 * sign(vk[i]-d2)
			}
			t.Data[i] += lr * mk[i] / float32(math.Sqrt(float64(vk[i]))+eps)
		}
	}
	st, err := tensor.New(append(prefixed("m/", m), prefixed("v/", v)...)...)
	return out, st, err
}

func sign(x float32) float32 {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

// moments splits a state into fresh copies of m and v (zeros when absent or
// of another layout).
func moments(like, state tensor.Set) (tensor.Set, tensor.Set) {
	m, v := tensor.ZerosLike(like), tensor.ZerosLike(like)
	for _, pair := range []struct {
		prefix string
		dst    tensor.Set
	}{{"m/", m}, {"v/", v}} {
		for _, t := range pair.dst.Tensors {
			if s, ok := state.Get(pair.prefix + t.Name); ok && len(s.Data) == len(t.Data) {
				copy(t.Data, s.Data)
			}
		}
	}
	return m, v
}

func prefixed(p string, s tensor.Set) []tensor.Tensor {
	out := make([]tensor.Tensor, len(s.Tensors))
	for i, t := range s.Tensors {
		out[i] = tensor.Tensor{Name: p + t.Name, Shape: t.Shape, Data: t.Data}
	}
	return out
}
