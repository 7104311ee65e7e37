package round

import (
	"math"
	"math/rand/v2"

	"github.com/fedtune/fedtune/aggregation"
	pb "github.com/fedtune/fedtune/protocol"
)

// Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021): each round
// counts the updates its clipping norm C left unclipped, noises the count
// (standard deviation σ_b) and moves C geometrically toward the norm that
// leaves the target fraction γ unclipped: C ← C·exp(−η(b̄ − γ)). The count
// is a second Gaussian mechanism on the same clients; the update's noise
// multiplier is raised to σ_Δ = (σ^−2 − (2σ_b)^−2)^−½ so that the two
// together cost exactly σ (their Theorem 1), and the accountant counts σ.

// Defaults of adaptive clipping.
const (
	DefaultTargetQuantile = 0.5
	DefaultClipLR         = 0.2
)

// normalizeAdaptive fills in and checks adaptive clipping's parameters.
func normalizeAdaptive(spec *pb.JobSpec) error {
	dp := spec.Dp
	if !dp.AdaptiveClip {
		return nil
	}
	if dp.Distributed {
		return fieldErr("dp.adaptive_clip", "with distributed noise is not supported (the workers would have to report whether they were clipped)")
	}
	if dp.TargetQuantile == 0 {
		dp.TargetQuantile = DefaultTargetQuantile
	}
	if dp.ClipLr == 0 {
		dp.ClipLr = DefaultClipLR
	}
	if dp.CountNoise == 0 {
		dp.CountNoise = math.Max(1, float64(spec.ClientsPerRound)) / 20
	}
	for _, err := range []error{
		checkFloat("dp.target_quantile", dp.TargetQuantile, 0.01, 0.99),
		checkFloat("dp.clip_lr", dp.ClipLr, 1e-6, 10),
		checkFloat("dp.count_noise", dp.CountNoise, math.SmallestNonzeroFloat64, 1e9),
	} {
		if err != nil {
			return err
		}
	}
	if !(2*dp.CountNoise > dp.NoiseMultiplier) {
		return fieldErr("dp.count_noise", "%v: the count's noise must exceed σ/2 = %v for the update's noise to make up the rest (raise it, or lower the noise multiplier)", dp.CountNoise, dp.NoiseMultiplier/2)
	}
	return nil
}

// updateSigma is the noise multiplier of the update's noise: σ, or with
// adaptive clipping σ_Δ = (σ^−2 − (2σ_b)^−2)^−½.
func updateSigma(dp *pb.DPSpec) float64 {
	if !dp.GetAdaptiveClip() {
		return dp.GetNoiseMultiplier()
	}
	s, b := dp.NoiseMultiplier, 2*dp.CountNoise
	return 1 / math.Sqrt(1/(s*s)-1/(b*b))
}

// DPClip is the clipping norm round number of j uses: dp.clip_norm, or
// with adaptive clipping the one the round before chose.
func DPClip(j *pb.Job, number uint32) float64 {
	dp := j.GetSpec().GetDp()
	if !dp.GetAdaptiveClip() || number <= 1 || int(number-1) > len(j.GetHistory()) {
		return dp.GetClipNorm()
	}
	if c, ok := j.History[number-2].Metrics["dp_clip_next"]; ok && c > 0 {
		return c
	}
	return dp.GetClipNorm()
}

// adaptClip is one round's step of the clipping norm from the updates'
// norms (the rule's scores report them before clipping): the noised
// fraction left unclipped, drawn from the job's seed and the round so
// verify recomputes it, and the next round's norm.
func adaptClip(dp *pb.DPSpec, seed uint64, number uint32, clip float64, scores []aggregation.Score) (frac, next float64) {
	var b float64
	for _, s := range scores {
		if s.Norm <= clip {
			b++
		}
	}
	r := rand.New(rand.NewPCG(seed, 0xc11<<32|uint64(number)))
	n := math.Max(1, float64(len(scores)))
	frac = (b + dp.CountNoise*r.NormFloat64()) / n
	return frac, clip * math.Exp(-dp.ClipLr*(frac-dp.TargetQuantile))
}

// NewRoundPipeline is NewPipeline for round number of job j: with adaptive
// clipping, the rule clips at the norm that round uses.
func NewRoundPipeline(j *pb.Job, number uint32) (Pipeline, error) {
	spec := j.GetSpec()
	p, err := NewPipeline(spec)
	if err != nil || !spec.GetDp().GetAdaptiveClip() {
		return p, err
	}
	return p.WithClip(spec.GetAggregator(), RuleParams(spec.GetAggregatorParams()), DPClip(j, number))
}

// WithClip is p with its rule clipping at clip (adaptive clipping's norm
// of the round).
func (p Pipeline) WithClip(rule string, params aggregation.Params, clip float64) (Pipeline, error) {
	params.ClipNorm = clip
	r, err := aggregation.NewRule(rule, params)
	if err != nil {
		return p, err
	}
	p.Rule, p.Clip = r, clip
	return p, nil
}
