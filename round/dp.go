package round

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/fedtune/fedtune/privacy"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// DefaultDPDelta is δ when a DP job names none.
const DefaultDPDelta = 1e-5

// NormalizeDP checks a DP-FedAvg job: a noise multiplier and a clipping
// norm, δ in (0, 1), a non-negative budget; FedAvg of plain updates (a
// robust rule reads individual updates, which DP's analysis does not
// cover; exact LoRA aggregation is not a mean), synchronous rounds. The
// rule's clipping is the DP clipping norm.
func NormalizeDP(spec *pb.JobSpec) error {
	dp := spec.Dp
	if dp == nil {
		return nil
	}
	for _, err := range []error{
		checkFloat("dp.noise_multiplier", dp.NoiseMultiplier, math.SmallestNonzeroFloat64, 1e3),
		checkFloat("dp.clip_norm", dp.ClipNorm, math.SmallestNonzeroFloat64, math.MaxFloat64),
		checkFloat("dp.epsilon", dp.Epsilon, 0, 1e6),
	} {
		if err != nil {
			return err
		}
	}
	if dp.Delta == 0 {
		dp.Delta = DefaultDPDelta
	}
	if !(dp.Delta > 0 && dp.Delta < 1) {
		return fieldErr("dp.delta", "%v: want a number in (0, 1)", dp.Delta)
	}
	switch {
	case spec.Aggregator != "fedavg":
		return fieldErr("aggregator", "%q with dp: DP-FedAvg averages clipped updates with equal weights; robust rules are not covered by its analysis", spec.Aggregator)
	case IsAsync(spec):
		return fieldErr("mode", "async with dp is not supported (rounds are the unit of accounting)")
	case spec.GetLora().GetAggregation() == LoRAExact:
		return fieldErr("lora.aggregation", "exact with dp is not supported (its aggregate is not a mean)")
	}
	if err := normalizeAdaptive(spec); err != nil {
		return err
	}
	if dp.Distributed {
		// The workers clip; the noised updates are far longer than the
		// clipping norm, and clipping them again would scale the noise
		// away.
		if spec.AggregatorParams.GetClipNorm() != 0 {
			return fieldErr("aggregator_params.clip_norm", "%v with distributed DP: the workers clip, the coordinators must not clip the noised updates", spec.AggregatorParams.GetClipNorm())
		}
		return nil
	}
	if c := spec.AggregatorParams.GetClipNorm(); c != 0 && c != dp.ClipNorm {
		return fieldErr("aggregator_params.clip_norm", "%v differs from dp.clip_norm %v", c, dp.ClipNorm)
	}
	if spec.AggregatorParams == nil {
		spec.AggregatorParams = &pb.AggregatorParams{}
	}
	spec.AggregatorParams.ClipNorm = dp.ClipNorm
	return nil
}

// WorkerNoiseStd is the noise each worker adds in distributed DP when n
// are selected: σ·C/√n, so that the mean of n updates carries σ·C/n, as
// central noise does.
func WorkerNoiseStd(dp *pb.DPSpec, n int) float64 {
	return dp.GetNoiseMultiplier() * dp.GetClipNorm() / math.Sqrt(float64(max(n, 1)))
}

// roundSigma is the noise multiplier a committed round achieved: σ with
// central noise; with distributed noise σ·√(m/n) when only m of the n
// selected workers' updates (each carrying its share) were aggregated.
func roundSigma(dp *pb.DPSpec, r *pb.RoundRecord) float64 {
	if !dp.GetDistributed() || r.Selected == 0 || r.Updates >= r.Selected {
		return dp.GetNoiseMultiplier()
	}
	return dp.GetNoiseMultiplier() * math.Sqrt(float64(r.Updates)/float64(r.Selected))
}

// addDPNoise adds to the mean delta Gaussian noise of standard deviation
// σ·C/n per coordinate (C the round's clip; σ_Δ with adaptive clipping), drawn from the job's seed and the round number so
// that every node (and fedtune verify) draws the same.
func addDPNoise(dp *pb.DPSpec, seed uint64, number uint32, n int, clip float64, delta tensor.Set) float64 {
	if clip == 0 {
		clip = dp.ClipNorm
	}
	std := updateSigma(dp) * clip / float64(max(n, 1))
	r := rand.New(rand.NewPCG(seed, 0xd9<<32|uint64(number)))
	for _, t := range delta.Tensors {
		for i := range t.Data {
			t.Data[i] += float32(std * r.NormFloat64())
		}
	}
	return std
}

// DPEpsilon is the ε a DP job has spent over its committed rounds (each
// at its own sampling rate, selected/eligible), at its δ.
func DPEpsilon(j *pb.Job) (float64, error) {
	return dpEpsilon(j, 0, 0)
}

// DPWouldExceed says whether one more round selecting k of eligible
// workers would take a DP job past its budget, and the ε it would reach.
func DPWouldExceed(j *pb.Job, k, eligible int) (bool, float64, error) {
	dp := j.Spec.GetDp()
	if dp == nil || dp.Epsilon == 0 {
		return false, 0, nil
	}
	eps, err := dpEpsilon(j, k, eligible)
	return eps > dp.Epsilon, eps, err
}

// dpEpsilon composes the committed rounds and, if k > 0, one more round
// selecting k of eligible.
func dpEpsilon(j *pb.Job, k, eligible int) (float64, error) {
	dp := j.Spec.GetDp()
	if dp == nil {
		return 0, fmt.Errorf("job %q has no DP", j.Spec.GetName())
	}
	a := privacy.NewAccountant()
	compose := func(sel, elig uint32, sigma float64) error {
		q := 1.0
		if elig > 0 {
			q = math.Min(1, float64(sel)/float64(elig))
		}
		return a.Compose(q, sigma, 1)
	}
	for _, r := range j.History {
		if err := compose(r.Selected, r.Eligible, roundSigma(dp, r)); err != nil {
			return 0, err
		}
	}
	if k > 0 {
		if err := compose(uint32(k), uint32(eligible), dp.NoiseMultiplier); err != nil {
			return 0, err
		}
	}
	eps, _, err := a.Epsilon(dp.Delta)
	return eps, err
}

// Privatize is a worker's part in distributed DP: delta scaled to L2 norm
// at most clip, then Gaussian noise of standard deviation std added to
// every value, drawn from r (a worker seeds it from crypto/rand, so that
// nobody can reproduce and subtract the noise; the simulator from its
// seed, for reproducible runs).
func Privatize(delta tensor.Set, clip, std float64, r *rand.Rand) error {
	if !(clip > 0) || !(std >= 0) || math.IsInf(std, 0) || math.IsInf(clip, 0) {
		return fmt.Errorf("distributed DP: clip %v and noise %v: want a positive clip and a finite noise", clip, std)
	}
	if n := delta.Norm(); n > clip {
		s := float32(clip / n)
		for _, t := range delta.Tensors {
			tensor.Scale(s, t.Data)
		}
	}
	for _, t := range delta.Tensors {
		for i := range t.Data {
			t.Data[i] += float32(std * r.NormFloat64())
		}
	}
	return nil
}
