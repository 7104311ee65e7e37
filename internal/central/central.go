// Package central is the coordinator's central evaluation as the binary
// builds it: it scores a job's model on the test split of the job's data
// set, which this binary carries, with the registered model families. The
// coordinator sees it only through its Evaluator seam, so that it imports
// neither model nor dataset.
package central

import (
	"context"
	"fmt"
	"sync"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

// Batch is how many test examples one forward pass takes.
const Batch = 1000

// Evaluator evaluates models on their data set's test split. It keeps idle
// model evaluators per architecture and takes one per call, so that
// evaluations of different jobs (or of one job on two nodes' behalf) run
// at once instead of waiting on one lock. Safe for concurrent use.
type Evaluator struct {
	mu   sync.Mutex
	idle map[string][]model.Evaluator // architecture -> evaluators not in use
}

// New returns an Evaluator.
func New() *Evaluator { return &Evaluator{idle: map[string][]model.Evaluator{}} }

// CheckDataset refuses a data set name this binary cannot load, without
// loading it.
func (e *Evaluator) CheckDataset(name string) error { return dataset.Check(name) }

// Evaluate scores params, a full model of architecture arch, on the test
// split of data set ds.
func (e *Evaluator) Evaluate(ctx context.Context, arch, ds string, params tensor.Set) (round.Eval, error) {
	if err := ctx.Err(); err != nil {
		return round.Eval{}, err
	}
	test, err := dataset.Load(ds, dataset.Test)
	if err != nil {
		return round.Eval{}, err
	}
	ev, err := e.take(arch)
	if err != nil {
		return round.Eval{}, err
	}
	res, err := ev.Evaluate(params, test)
	e.put(arch, ev)
	if err != nil {
		return round.Eval{}, fmt.Errorf("evaluate on %s: %w", ds, err)
	}
	return round.Eval{Loss: res.Loss, Accuracy: res.Accuracy, N: res.N}, nil
}

func (e *Evaluator) take(arch string) (model.Evaluator, error) {
	e.mu.Lock()
	if free := e.idle[arch]; len(free) > 0 {
		ev := free[len(free)-1]
		e.idle[arch] = free[:len(free)-1]
		e.mu.Unlock()
		return ev, nil
	}
	e.mu.Unlock()
	a, err := model.Lookup(arch)
	if err != nil {
		return nil, err
	}
	return a.NewEvaluator(Batch)
}

// maxIdle bounds the evaluators kept per architecture (each holds its
// graphs' buffers).
const maxIdle = 4

func (e *Evaluator) put(arch string, ev model.Evaluator) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.idle[arch]) >= maxIdle {
		ev.Close()
		return
	}
	e.idle[arch] = append(e.idle[arch], ev)
}

// Close releases the idle evaluators.
func (e *Evaluator) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, free := range e.idle {
		for _, ev := range free {
			ev.Close()
		}
	}
	e.idle = map[string][]model.Evaluator{}
}
