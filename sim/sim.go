// Package sim runs federated training with many virtual workers in one
// process: the real models, aggregation rules, server optimizers and
// attacks, without a cluster, for experiments. Virtual workers are cheap:
// they share one copy of the data set (each holds index lists), and a pool
// of trainers sized to the cores does the training.
package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"

	"gonum.org/v1/gonum/stat/distuv"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/tensor"
)

// Attacks lists the Byzantine behaviours Run simulates.
var Attacks = []string{"none", "sign-flip", "gaussian", "alie", "ipm", "label-flip"}

// Config is one simulated federated run.
type Config struct {
	Model     string            // architecture, e.g. "mnist-mlp-small"
	Workers   int               // virtual workers (all take part in every round)
	Rounds    int               // rounds
	Partition dataset.Partition // how the training set is split among workers
	Train     model.TrainConfig // local training (Seed is set per worker and round)
	Rule      string            // aggregation rule
	Params    aggregation.Params
	Server    aggregation.ServerOptimizer
	// Attack is one of Attacks; the first ⌊Byzantine × Workers⌋ workers
	// carry it out.
	Attack    string
	Byzantine float64
	Seed      uint64
	Base      tensor.Set // starting model; default: a fresh initialisation
	// EvalEvery evaluates every this many rounds (and always the last); 0: every round.
	EvalEvery int
	// WorkerMomentum β > 0: every worker sends m ← β·m + (1−β)·delta, its
	// momentum over rounds, instead of its delta (Karimireddy et al. 2021:
	// momentum shrinks the honest updates' spread, which is what lets
	// centered clipping tell attackers from honest workers). Each worker
	// keeps one model-sized vector for it.
	WorkerMomentum float64
}

// RoundResult is the model after one round.
type RoundResult struct {
	Round    int
	Accuracy float64
	Loss     float64
	Seconds  float64
}

// Run simulates cfg on train and evaluates every round on test. progress,
// if set, is called after each round. Results are a function of cfg alone:
// the same config gives the same numbers, whatever the scheduling.
func Run(ctx context.Context, cfg Config, train, test *dataset.Examples, progress func(RoundResult)) ([]RoundResult, error) {
	arch, err := model.Lookup(cfg.Model)
	if err != nil {
		return nil, err
	}
	rule, err := aggregation.NewRule(cfg.Rule, cfg.Params)
	if err != nil {
		return nil, err
	}
	opt, err := aggregation.NewServerOptimizer(cfg.Server)
	if err != nil {
		return nil, err
	}
	if !contains(Attacks, cfg.Attack) && cfg.Attack != "" {
		return nil, fmt.Errorf("sim: unknown attack %q (known: %v)", cfg.Attack, Attacks)
	}
	if cfg.Workers < 1 || cfg.Rounds < 1 {
		return nil, fmt.Errorf("sim: %d workers and %d rounds: want at least 1 each", cfg.Workers, cfg.Rounds)
	}
	parts, err := cfg.Partition.Split(train.Y, train.Classes, cfg.Workers)
	if err != nil {
		return nil, err
	}
	byz := 0
	if cfg.Attack != "" && cfg.Attack != "none" {
		byz = int(cfg.Byzantine * float64(cfg.Workers))
	}
	// Each worker's share is copied out once (the shares are disjoint, so
	// all of them together are one copy of the data set), not every round.
	local := make([]*dataset.Examples, cfg.Workers)
	flipped := train
	if cfg.Attack == "label-flip" {
		flipped = flipLabels(train)
	}
	for w := range local {
		src := train
		if w < byz {
			src = flipped
		}
		local[w] = src.Subset(parts[w])
	}
	global := cfg.Base
	if len(global.Tensors) == 0 {
		global = arch.Init(cfg.Seed)
	}
	ev, err := model.NewEvaluator(arch, 1000)
	if err != nil {
		return nil, err
	}
	defer ev.Close()
	pool := newTrainerPool(arch)
	defer pool.close()
	if cfg.WorkerMomentum < 0 || cfg.WorkerMomentum >= 1 {
		return nil, fmt.Errorf("sim: worker momentum %v, want [0, 1)", cfg.WorkerMomentum)
	}
	var momentum []tensor.Set
	if cfg.WorkerMomentum > 0 {
		momentum = make([]tensor.Set, cfg.Workers)
	}
	var state tensor.Set
	var results []RoundResult
	for round := 1; round <= cfg.Rounds; round++ {
		start := time.Now()
		deltas := make([]tensor.Set, cfg.Workers)
		err := pool.run(ctx, cfg.Workers, func(tr *model.Trainer, w int) error {
			tc := cfg.Train
			tc.Seed = cfg.Seed ^ uint64(round)<<32 ^ uint64(w)<<8
			trained, _, err := tr.Train(ctx, global, local[w], tc)
			if err != nil {
				return fmt.Errorf("worker %d round %d: %w", w, round, err)
			}
			deltas[w], err = tensor.Diff(trained, global)
			return err
		})
		if errors.Is(err, model.ErrDiverged) {
			// The global model is broken (an attack got through): record
			// it at chance accuracy and stop.
			results = append(results, RoundResult{Round: round, Accuracy: 0.1, Loss: math.Inf(1), Seconds: time.Since(start).Seconds()})
			break
		}
		if err != nil {
			return results, err
		}
		if momentum != nil {
			b := float32(cfg.WorkerMomentum)
			for w, d := range deltas {
				if momentum[w].Tensors == nil {
					momentum[w] = tensor.ZerosLike(d)
				}
				for k, t := range momentum[w].Tensors {
					tensor.Scale(b, t.Data)
					tensor.Axpy(1-b, d.Tensors[k].Data, t.Data)
				}
				deltas[w] = momentum[w].Clone()
			}
		}
		attack(cfg.Attack, deltas, byz, cfg.Seed^uint64(round))
		ups := make([]aggregation.Update, cfg.Workers)
		for w := range ups {
			ups[w] = aggregation.Update{Worker: fmt.Sprintf("w%04d", w), Delta: deltas[w], Samples: uint64(len(parts[w]))}
		}
		agg, _, err := rule.Aggregate(ups)
		if err != nil {
			return results, fmt.Errorf("round %d: %w", round, err)
		}
		if global, state, err = opt.Step(global, agg, state); err != nil {
			return results, err
		}
		acc, loss := math.NaN(), math.NaN()
		if cfg.EvalEvery <= 1 || round%cfg.EvalEvery == 0 || round == cfg.Rounds || global.CheckFinite() != nil {
			e, err := ev.Evaluate(global, test)
			if err != nil {
				return results, err
			}
			acc, loss = e.Accuracy, e.Loss
		}
		if global.CheckFinite() != nil {
			acc, loss = 0.1, math.Inf(1) // diverged: chance accuracy
		}
		res := RoundResult{Round: round, Accuracy: acc, Loss: loss, Seconds: time.Since(start).Seconds()}
		results = append(results, res)
		if progress != nil {
			progress(res)
		}
		if global.CheckFinite() != nil {
			break // nothing more to learn from a diverged model
		}
	}
	return results, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// flipLabels returns train with every label y replaced by 9 − y (classes − 1 − y).
func flipLabels(train *dataset.Examples) *dataset.Examples {
	f := *train
	f.Y = make([]uint8, len(train.Y))
	for i, y := range train.Y {
		f.Y[i] = uint8(train.Classes-1) - y
	}
	return &f
}

// attack replaces the first byz deltas by the attack's updates. ALIE and
// IPM are omniscient: they use this round's honest updates.
func attack(kind string, deltas []tensor.Set, byz int, seed uint64) {
	if byz == 0 {
		return
	}
	honest := deltas[byz:]
	mean := tensor.ZerosLike(deltas[0])
	for _, d := range honest {
		mean.AddScaled(1/float32(len(honest)), d)
	}
	switch kind {
	case "sign-flip":
		for w := 0; w < byz; w++ {
			for _, t := range deltas[w].Tensors {
				tensor.Scale(-1, t.Data)
			}
		}
	case "gaussian":
		g := distuv.Normal{Mu: 0, Sigma: 1, Src: newSource(seed)}
		for w := 0; w < byz; w++ {
			for _, t := range deltas[w].Tensors {
				for i := range t.Data {
					t.Data[i] = float32(g.Rand())
				}
			}
		}
	case "alie":
		// Baruch et al. 2019: μ − z·σ per coordinate, z from the number of
		// workers the attacker needs on its side.
		n := len(deltas)
		s := n/2 + 1 - byz
		z := distuv.UnitNormal.Quantile(float64(n-s) / float64(n))
		for k, t := range mean.Tensors {
			for i, mu := range t.Data {
				var v float64
				for _, d := range honest {
					x := float64(d.Tensors[k].Data[i]) - float64(mu)
					v += x * x
				}
				val := float32(float64(mu) - z*math.Sqrt(v/float64(len(honest))))
				for w := 0; w < byz; w++ {
					deltas[w].Tensors[k].Data[i] = val
				}
			}
		}
	case "ipm":
		// Xie et al. 2020: −ε × the honest mean, ε large enough to flip FedAvg.
		const eps = 10
		for w := 0; w < byz; w++ {
			deltas[w] = mean.Clone()
			for _, t := range deltas[w].Tensors {
				tensor.Scale(-eps, t.Data)
			}
		}
	}
}

// trainerPool runs per-worker work on one model.Trainer per core.
type trainerPool struct {
	trainers []*model.Trainer
}

func newTrainerPool(arch model.MLP) *trainerPool {
	p := &trainerPool{}
	for range runtime.GOMAXPROCS(0) {
		tr, _ := model.NewTrainer(arch)
		p.trainers = append(p.trainers, tr)
	}
	return p
}

func (p *trainerPool) run(ctx context.Context, n int, f func(tr *model.Trainer, w int) error) error {
	next := make(chan int, n)
	for w := 0; w < n; w++ {
		next <- w
	}
	close(next)
	errs := make(chan error, len(p.trainers))
	var wg sync.WaitGroup
	for _, tr := range p.trainers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range next {
				if err := ctx.Err(); err != nil {
					errs <- err
					return
				}
				if err := f(tr, w); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (p *trainerPool) close() {
	for _, t := range p.trainers {
		t.Close()
	}
}

func newSource(seed uint64) rand.Source { return rand.NewPCG(seed, 0xa77ac4) }
