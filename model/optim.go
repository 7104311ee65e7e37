package model

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

	G "gorgonia.org/gorgonia"

	"github.com/fedtune/fedtune/tensor"
)

// Local optimizers.
const (
	SGD   = "sgd"   // minibatch SGD with heavy-ball momentum and L2 weight decay
	AdamW = "adamw" // Adam with decoupled weight decay (Loshchilov & Hutter)
)

// optimizer updates weights from gradients as cfg says, with PyTorch's
// arithmetic: torch.optim.SGD (v = μv + g + λw; w −= ηv) and
// torch.optim.AdamW (w ← w(1−ηλ); bias-corrected moments; w −= η·m̂/(√v̂+ε)).
type optimizer struct {
	adamw      bool
	lr, mom    float32
	wd         float32
	b1, b2, ep float64
	t          int
	m, v       [][]float32
}

func newOptimizer(cfg TrainConfig, weights [][]float32) *optimizer {
	o := &optimizer{adamw: cfg.Optimizer == AdamW, lr: float32(cfg.LR), mom: float32(cfg.Momentum), wd: float32(cfg.WeightDecay), b1: 0.9, b2: 0.999, ep: 1e-8}
	if o.adamw || o.mom != 0 {
		o.m = make([][]float32, len(weights))
		for k, w := range weights {
			o.m[k] = make([]float32, len(w))
		}
	}
	if o.adamw {
		o.v = make([][]float32, len(weights))
		for k, w := range weights {
			o.v[k] = make([]float32, len(w))
		}
	}
	return o
}

// next starts an optimizer step (AdamW's bias correction counts them).
func (o *optimizer) next() { o.t++ }

// step applies one update of weights k from gradient g scaled by gscale
// (1/accumulated micro-batches, times the clipping factor).
func (o *optimizer) step(k int, w, g []float32, gscale float32) {
	if gscale != 1 {
		tensor.Scale(gscale, g)
	}
	if o.adamw {
		if o.wd != 0 {
			tensor.Scale(1-o.lr*o.wd, w)
		}
		m, v := o.m[k], o.v[k]
		b1, b2 := float32(o.b1), float32(o.b2)
		c1 := 1 - math.Pow(o.b1, float64(o.t))
		c2 := math.Sqrt(1 - math.Pow(o.b2, float64(o.t)))
		stepSize, ep := float32(float64(o.lr)/c1), float32(o.ep)
		for i, gi := range g {
			m[i] = b1*m[i] + (1-b1)*gi
			v[i] = b2*v[i] + (1-b2)*gi*gi
			w[i] -= stepSize * m[i] / (float32(math.Sqrt(float64(v[i])))/float32(c2) + ep)
		}
		return
	}
	if o.wd != 0 {
		tensor.Axpy(o.wd, w, g)
	}
	if o.mom != 0 {
		// v = mom*v + g; w -= lr*v
		v := o.m[k]
		tensor.Scale(o.mom, v)
		tensor.Axpy(1, g, v)
		tensor.Axpy(-o.lr, v, w)
		return
	}
	tensor.Axpy(-o.lr, g, w)
}

// localTrain runs cfg's optimizer over n examples: epochs of a seeded
// shuffle in steps of cfg.Accum micro-batches of cfg.BatchSize (the last
// partial step of an epoch dropped), capped at cfg.Steps, clipping the
// accumulated gradient's global norm to cfg.ClipNorm. run fills a
// micro-batch of the examples idx, runs the tape (which adds into params'
// bound gradients) and returns its mean loss. FedProx, when the graph does
// not do it, pulls weights towards anchors (cfg.ProxMu; anchors nil for
// none). It fills met's steps, examples seen and mean loss.
//
// However it returns, it leaves every bound gradient zero: the graph is
// reused by the next task, and Gorgonia adds into bound gradients, so one
// diverged step would otherwise carry NaN into every later task.
func localTrain(ctx context.Context, n int, cfg TrainConfig, params []*G.Node, weights, anchors [][]float32, run func(idx []int) (float64, error), met *TrainMetrics) error {
	defer zeroGrads(params)
	accum := max(cfg.Accum, 1)
	perEpoch := n / (cfg.BatchSize * accum)
	total := PlannedSteps(n, cfg)
	r := rand.New(rand.NewPCG(cfg.Seed, 0x7a11))
	opt := newOptimizer(cfg, weights)
	grads := make([][]float32, len(params))
	var lossSum float64
	var order []int
	for step := 0; step < total; step++ {
		if step%perEpoch == 0 {
			order = r.Perm(n)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("train: stopped after %d of %d steps: %w", step, total, err)
		}
		var loss float64
		for a := 0; a < accum; a++ {
			j := (step%perEpoch)*accum + a
			l, err := run(order[j*cfg.BatchSize : (j+1)*cfg.BatchSize])
			if err != nil {
				return fmt.Errorf("train: step %d: %w", step, err)
			}
			if math.IsNaN(l) || math.IsInf(l, 0) {
				return fmt.Errorf("train: loss %v at step %d; lower the learning rate: %w", l, step, ErrDiverged)
			}
			loss += l / float64(accum)
		}
		lossSum += loss
		for k, p := range params {
			gv, err := p.Grad()
			if err != nil {
				return fmt.Errorf("train: gradient of %s: %w", p.Name(), err)
			}
			grads[k] = gv.Data().([]float32)
			if cfg.ProxMu > 0 && anchors != nil {
				// FedProx: + mu·(w − w_base), per micro-batch's mean loss
				mu := float32(cfg.ProxMu) * float32(accum)
				tensor.Axpy(mu, weights[k], grads[k])
				tensor.Axpy(-mu, anchors[k], grads[k])
			}
		}
		opt.next()
		gscale := float32(1) / float32(accum)
		if cfg.ClipNorm > 0 {
			var ss float64
			for _, g := range grads {
				d := tensor.Norm(g)
				ss += d * d
			}
			if norm := math.Sqrt(ss) * float64(gscale); norm > cfg.ClipNorm {
				gscale *= float32(cfg.ClipNorm / (norm + 1e-6))
			}
		}
		for k := range params {
			opt.step(k, weights[k], grads[k], gscale)
			// Gorgonia accumulates into bound gradients: zero them for the
			// next step (as its own solvers do).
			clear(grads[k])
		}
		met.Steps++
		met.Seen += cfg.BatchSize * accum
		if cfg.Progress != nil {
			cfg.Progress(met.Steps, total, loss)
		}
	}
	met.Loss = lossSum / float64(max(met.Steps, 1))
	for k, w := range weights {
		if i := tensor.FirstNonFinite(w); i >= 0 {
			return fmt.Errorf("train: %s[%d] = %v after %d steps; lower the learning rate: %w", params[k].Name(), i, w[i], met.Steps, ErrDiverged)
		}
	}
	return nil
}
