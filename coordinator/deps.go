package coordinator

import (
	"context"
	"errors"

	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

// Deps are what a coordinator is given instead of building it, as
// hashicorp/raft's NewRaft takes its stores and Consul's agent its Deps:
// the seams to the models and to evaluation, which the binary (or a test)
// chooses. They keep this package free of the model families and data sets.
type Deps struct {
	// Models answers for the model families jobs name (required; the
	// binary passes model.Catalog{}).
	Models round.Models
	// Evaluator scores a job's model centrally after every round; nil
	// means none, and jobs asking for evaluation are refused.
	Evaluator Evaluator
}

// Evaluator scores full models on test data the binary holds. The
// coordinator calls it from several goroutines at once (one per job).
type Evaluator interface {
	// CheckDataset refuses a data set name it cannot evaluate on,
	// cheaply (called for every job submitted).
	CheckDataset(name string) error
	// Evaluate scores params, a full model of the named architecture, on
	// the test split of the named data set.
	Evaluate(ctx context.Context, model, dataset string, params tensor.Set) (round.Eval, error)
}

// errNoEvaluator refuses a job that asks for evaluation on a coordinator
// given none.
var errNoEvaluator = errors.New("this coordinator has no evaluator: submit the job without evaluation")

func (d Deps) check() error {
	if d.Models == nil {
		return errors.New("coordinator: Deps.Models is required (the binary passes model.Catalog{})")
	}
	return nil
}
