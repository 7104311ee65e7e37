package coordinator

import (
	"context"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

// evaluate scores a job's model version (a LoRA job's adapters are merged
// into its frozen base first) with the evaluator the coordinator was
// given. It is the one evaluation path: of the base at submit and of every
// committed round.
func (c *Coordinator) evaluate(ctx context.Context, spec *pb.JobSpec, params tensor.Set) (round.Eval, error) {
	if c.deps.Evaluator == nil {
		return round.Eval{}, errNoEvaluator
	}
	full, err := c.usable(ctx, spec, params)
	if err != nil {
		return round.Eval{}, err
	}
	return c.deps.Evaluator.Evaluate(ctx, spec.Model, spec.Dataset, full)
}
