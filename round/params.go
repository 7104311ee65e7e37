package round

import (
	"github.com/fedtune/fedtune/aggregation"
	pb "github.com/fedtune/fedtune/protocol"
)

// NewOptimizer returns the server optimizer a job spec names.
func NewOptimizer(p *pb.ServerOptimizer) (aggregation.ServerOptimizer, error) {
	return aggregation.NewServerOptimizer(aggregation.ServerOptimizer{Name: p.GetName(), LR: p.GetLr(), Beta1: p.GetBeta1(), Beta2: p.GetBeta2(), Eps: p.GetEpsilon()})
}

// RuleParams converts a job's aggregator parameters.
func RuleParams(p *pb.AggregatorParams) aggregation.Params {
	return aggregation.Params{TrimFraction: p.GetTrimFraction(), F: int(p.GetF()), M: int(p.GetM()), ClipNorm: p.GetClipNorm(),
		Tau: p.GetTau(), Iterations: int(p.GetIterations()), Smoothing: p.GetSmoothing()}
}

// LoRA aggregation modes.
const (
	LoRANaive = "naive" // the job's rule on the A and B tensors apart
	LoRAExact = "exact" // rank-r SVD of the weighted mean of the workers' B·A
)

// InitialModel returns the hash a job's first round starts from: the base
// model, or a LoRA job's initial adapters.
func InitialModel(spec *pb.JobSpec) string {
	if l := spec.GetLora(); l != nil {
		return l.Adapter
	}
	return spec.GetBaseModel()
}

// Eval is a model's quality on a test set, as a round's metrics record it.
type Eval struct {
	Loss     float64 // mean loss per example
	Accuracy float64 // fraction classified correctly
	N        int     // examples scored
}
