package round

import (
	"fmt"
	"slices"
	"strings"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/secagg"
)

// SecAgg phases of an open round.
const (
	PhaseKeys      = 1 // workers train, then send their public keys
	PhaseShares    = 2 // workers send encrypted shares to their neighbours
	PhaseMasked    = 3 // workers send masked updates (SubmitUpdate, codec secagg)
	PhaseUnmask    = 4 // surviving workers reveal shares; then the sum is unmasked
	CodecSecAgg    = "secagg"
	maxShareSize   = 256     // bytes of one sealed share (nonce, 64 bytes of shares, tag: 92)
	maxCertificate = 8 << 10 // bytes of a worker's certificate signing its keys
)

// Defaults of a SecAggSpec.
const (
	DefaultSecAggThreshold    = 0.5
	DefaultSecAggClipRange    = 1.0
	DefaultSecAggPhaseTimeout = 30
)

// normalizeSecAgg checks a secure-aggregation job and fills in defaults.
// The coordinators see only the masked updates' sum, so: FedAvg with
// equal weights (a robust rule needs each update, which is exactly what
// SecAgg hides), synchronous rounds, no exact LoRA aggregation (a product
// of factors, not a sum), no lossy codec (the masked vector is the wire
// format) and no central DP (clipping an update needs to see it; with
// distributed DP the workers clip and noise).
func normalizeSecAgg(spec *pb.JobSpec) error {
	sa := spec.Secagg
	if sa == nil {
		return nil
	}
	switch {
	case spec.Aggregator != "fedavg":
		return fieldErr("aggregator", "%q with secagg: robust rules read every update, and secure aggregation shows the coordinators only their sum; use fedavg, or drop secagg to defend against Byzantine workers", spec.Aggregator)
	case IsAsync(spec):
		return fieldErr("mode", "async with secagg is not supported (masks cancel within one round's set of workers)")
	case spec.GetLora().GetAggregation() == LoRAExact:
		return fieldErr("lora.aggregation", "exact with secagg is not supported (its aggregate is not a sum)")
	case spec.Codec != "" && spec.Codec != "fp32":
		return fieldErr("codec", "%q with secagg: updates travel as masked 32-bit fixed point", spec.Codec)
	case spec.Dp != nil && !spec.Dp.Distributed:
		return fieldErr("dp", "central DP with secagg: the leader cannot clip updates it cannot see; use distributed DP (workers clip and add their share of the noise)")
	}
	if sa.Neighbors > secagg.MaxNeighbors {
		return fieldErr("secagg.neighbors", "%d, at most %d", sa.Neighbors, secagg.MaxNeighbors)
	}
	if err := checkFloat("secagg.threshold", sa.Threshold, 0, 0.99); err != nil {
		return err
	}
	if err := checkFloat("secagg.clip_range", sa.ClipRange, 0, 1e6); err != nil {
		return err
	}
	if sa.Threshold == 0 {
		sa.Threshold = DefaultSecAggThreshold
	}
	if sa.ClipRange == 0 {
		sa.ClipRange = DefaultSecAggClipRange
	}
	if sa.PhaseTimeoutSeconds == 0 {
		sa.PhaseTimeoutSeconds = DefaultSecAggPhaseTimeout
	}
	if sa.PhaseTimeoutSeconds > 3600 {
		return fieldErr("secagg.phase_timeout_seconds", "%d, at most 3600", sa.PhaseTimeoutSeconds)
	}
	if spec.ClientsPerRound > 0 && spec.ClientsPerRound < 3 {
		return fieldErr("clients_per_round", "%d with secagg: the sum of fewer than 3 updates tells each worker the other's", spec.ClientsPerRound)
	}
	return nil
}

// IsSecAgg says whether a job aggregates securely.
func IsSecAgg(spec *pb.JobSpec) bool { return spec.GetSecagg() != nil }

// SecAggParams are the protocol parameters of round r of job spec.
func SecAggParams(spec *pb.JobSpec, r *pb.Round) secagg.Params {
	sa := spec.GetSecagg()
	return secagg.Params{Job: spec.GetName(), Round: r.GetNumber(), Attempt: r.GetAttempt(), Seed: spec.GetSeed(),
		Neighbors: int(sa.GetNeighbors()), Threshold: sa.GetThreshold(), FracBits: r.GetSecagg().GetFracBits(), ClipRange: sa.GetClipRange()}
}

// startSecAgg gives a new round of a SecAgg job its protocol state.
func startSecAgg(spec *pb.JobSpec, r *pb.Round) {
	if !IsSecAgg(spec) || r.Secagg != nil {
		return
	}
	r.Secagg = &pb.SecAggRound{Phase: PhaseKeys, PhaseDeadlineUnixNano: r.DeadlineUnixNano, FracBits: secagg.FracBits(len(r.Selected), spec.Secagg.ClipRange), Attempt: r.Attempt}
}

// SecAggMessage records a worker's keys (phase 1), shares (phase 2) or
// reveals (phase 4) in the open round, once per worker and phase.
func (j Job) SecAggMessage(m *pb.SecAggMessage) error {
	r, err := j.Open(m.GetRound())
	if err != nil {
		return err
	}
	sa := r.GetSecagg()
	switch {
	case sa == nil:
		return fmt.Errorf("job %q round %d has no secure aggregation: %w", j.Spec.GetName(), r.Number, ErrStaleRound)
	case m.GetAttempt() != r.Attempt:
		return fmt.Errorf("secagg message for attempt %d, round %d is at attempt %d: %w", m.GetAttempt(), r.Number, r.Attempt, ErrStaleRound)
	case m.GetPhase() != sa.Phase:
		return fmt.Errorf("secagg phase %d message, round %d is in phase %d: %w", m.GetPhase(), r.Number, sa.Phase, ErrStaleRound)
	}
	w := m.GetWorker()
	switch m.GetPhase() {
	case PhaseKeys:
		if _, ok := slices.BinarySearch(r.Selected, w); !ok || m.GetKeys().GetWorker() != w {
			return fmt.Errorf("keys of %q: %w", w, ErrNotSelected)
		}
		i, found := slices.BinarySearchFunc(sa.Keys, w, func(k *pb.SecAggKeys, w string) int { return strings.Compare(k.Worker, w) })
		if found {
			return fmt.Errorf("keys of %q: %w", w, ErrDuplicate)
		}
		sa.Keys = slices.Insert(sa.Keys, i, m.Keys)
	case PhaseShares:
		if !slices.ContainsFunc(sa.Keys, func(k *pb.SecAggKeys) bool { return k.Worker == w }) {
			return fmt.Errorf("shares of %q, which sent no keys: %w", w, ErrNotSelected)
		}
		if slices.ContainsFunc(sa.Shares, func(s *pb.SecAggShare) bool { return s.From == w }) {
			return fmt.Errorf("shares of %q: %w", w, ErrDuplicate)
		}
		sa.Shares = append(sa.Shares, m.Shares...)
	case PhaseUnmask:
		if _, ok := slices.BinarySearch(sa.Revealed, w); ok {
			return fmt.Errorf("reveals of %q: %w", w, ErrDuplicate)
		}
		if !slices.ContainsFunc(r.Updates, func(u *pb.AcceptedUpdate) bool { return u.Worker == w }) {
			return fmt.Errorf("reveals of %q, whose masked update did not arrive: %w", w, ErrNotSelected)
		}
		sa.Reveals = append(sa.Reveals, m.Reveals...)
		i, _ := slices.BinarySearch(sa.Revealed, w)
		sa.Revealed = slices.Insert(sa.Revealed, i, w)
	default:
		return fmt.Errorf("secagg message of phase %d: no such phase", m.GetPhase())
	}
	return nil
}

// SecAggPhase moves the open round to its next phase.
func (j Job) SecAggPhase(m *pb.SecAggPhase) error {
	r, err := j.Open(m.GetRound())
	if err != nil {
		return err
	}
	sa := r.GetSecagg()
	if sa == nil || m.GetAttempt() != r.Attempt || m.GetPhase() != sa.Phase+1 || m.GetPhase() > PhaseUnmask {
		return fmt.Errorf("secagg phase %d of round %d attempt %d: %w", m.GetPhase(), m.GetRound(), m.GetAttempt(), ErrStaleRound)
	}
	sa.Phase, sa.PhaseDeadlineUnixNano = m.GetPhase(), m.GetDeadlineUnixNano()
	if sa.Phase == PhaseMasked {
		sa.Shared = nil
		for _, s := range sa.Shares {
			sa.Shared = append(sa.Shared, s.From)
		}
		slices.Sort(sa.Shared)
		sa.Shared = slices.Compact(sa.Shared)
	}
	return nil
}

// SecAggDecision is what the leader does with an open SecAgg round.
type SecAggDecision struct {
	Action RoundDecision // Wait, Commit (phase 4 done) or Abort
	Next   uint32        // with Wait: a phase to move to now (0: none)
	Reason string        // with Abort
}

// DecideSecAgg steps a SecAgg round: each phase ends when every worker
// expected in it has answered, or at its deadline with enough of them; a
// phase without enough is aborted, and the round planned again.
func DecideSecAgg(spec *pb.JobSpec, r *pb.Round, alive map[string]bool, now time.Time) SecAggDecision {
	sa := r.Secagg
	if sa.Phase < PhaseKeys || sa.Phase > PhaseUnmask {
		return SecAggDecision{Action: Wait}
	}
	expected, answered, got := secaggProgress(r)
	pending := waiting(expected, answered, alive)
	late := now.UnixNano() >= sa.PhaseDeadlineUnixNano
	done := got == len(expected)
	if sa.Phase == PhaseUnmask {
		if done || late || pending == 0 {
			return SecAggDecision{Action: Commit}
		}
		return SecAggDecision{Action: Wait}
	}
	need := max(int(spec.GetMinUpdates()), 3)
	if sa.Phase == PhaseMasked {
		need = max(need, secagg.ThresholdOf(secagg.Degree(len(sa.Keys), int(spec.GetSecagg().GetNeighbors())), spec.GetSecagg().GetThreshold()))
	}
	switch {
	case done || ((late || pending == 0) && got >= need):
		return SecAggDecision{Action: Wait, Next: sa.Phase + 1}
	case late || pending == 0:
		return SecAggDecision{Action: Abort, Reason: fmt.Sprintf(abortReasons[sa.Phase], got, len(expected), need)}
	}
	return SecAggDecision{Action: Wait}
}

// abortReasons say why a phase ended without enough answers: got of
// expected, need needed.
var abortReasons = map[uint32]string{
	PhaseKeys:   "secagg: %d of %d workers sent keys, %d needed",
	PhaseShares: "secagg: %d of %d workers sent shares, %d needed",
	PhaseMasked: "secagg: too few survivors to unmask: %d of %d masked updates arrived, %d needed",
}

// secaggProgress is an open SecAgg round's phase in numbers: the workers
// it expects a message from (the selected for keys, the key holders for
// shares, the sharers for masked updates, the survivors for reveals),
// those that answered (a worker whose training failed answers the key
// phase: no keys are coming), and how many messages arrived.
func secaggProgress(r *pb.Round) (expected []string, answered map[string]bool, got int) {
	sa := r.Secagg
	answered = map[string]bool{}
	switch sa.Phase {
	case PhaseKeys:
		expected, got = r.Selected, len(sa.Keys)
		for _, k := range sa.Keys {
			answered[k.Worker] = true
		}
		for _, f := range r.Failures {
			answered[f.Worker] = true
		}
		return expected, answered, got
	case PhaseShares:
		expected = keysOf(sa)
		for _, s := range sa.Shares {
			answered[s.From] = true
		}
	case PhaseMasked:
		expected = sa.Shared
		for _, u := range r.Updates {
			answered[u.Worker] = true
		}
	case PhaseUnmask:
		for _, u := range r.Updates {
			expected = append(expected, u.Worker)
		}
		for _, w := range sa.Revealed {
			answered[w] = true
		}
	}
	return expected, answered, len(answered)
}

func keysOf(sa *pb.SecAggRound) []string {
	out := make([]string, len(sa.Keys))
	for i, k := range sa.Keys {
		out[i] = k.Worker
	}
	return out
}

// waiting counts the workers of ids still alive that have not answered.
func waiting(ids []string, answered, alive map[string]bool) int {
	n := 0
	for _, w := range ids {
		if !answered[w] && alive[w] {
			n++
		}
	}
	return n
}

// CheckSecAggMessage checks a worker's message before it is committed:
// keys well formed, one share per neighbour of bounded size, reveals from
// the sender within bounds.
func CheckSecAggMessage(spec *pb.JobSpec, r *pb.Round, m *pb.SecAggMessage) error {
	sa := r.GetSecagg()
	if sa == nil {
		return fmt.Errorf("round %d has no secure aggregation: %w", r.GetNumber(), ErrStaleRound)
	}
	p := SecAggParams(spec, r)
	switch m.Phase {
	case PhaseKeys:
		k := m.GetKeys()
		if k == nil || k.Worker != m.Worker || len(k.CipherPub) != 32 || len(k.MaskPub) != 32 || len(k.SeedCommit) != 32 || len(m.Shares)+len(m.Reveals) > 0 ||
			len(k.Certificate) > maxCertificate || len(k.Signature) > 512 {
			return fmt.Errorf("secagg keys of %s malformed", m.Worker)
		}
	case PhaseShares:
		g, err := secagg.NewGraph(keysOf(sa), p)
		if err != nil {
			return err
		}
		nb := g.Neighbors(m.Worker)
		if len(m.Shares) != len(nb) || m.Keys != nil || len(m.Reveals) > 0 {
			return fmt.Errorf("secagg shares of %s: %d, want one for each of %d neighbours", m.Worker, len(m.Shares), len(nb))
		}
		for i, s := range m.Shares {
			if s.From != m.Worker || s.To != nb[i] || len(s.Ciphertext) > maxShareSize {
				return fmt.Errorf("secagg share %d of %s malformed (to %q, %d bytes)", i, m.Worker, s.To, len(s.Ciphertext))
			}
		}
	case PhaseUnmask:
		if m.Keys != nil || len(m.Shares) > 0 || len(m.Reveals) > 2*secagg.MaxNeighbors {
			return fmt.Errorf("secagg reveals of %s malformed", m.Worker)
		}
		for _, rv := range m.Reveals {
			if rv.From != m.Worker || len(rv.Share) != 32 || rv.X == 0 || rv.X > 255 {
				return fmt.Errorf("secagg reveal of %s by %s malformed", rv.Of, m.Worker)
			}
		}
	default:
		return fmt.Errorf("secagg: no phase %d message", m.Phase)
	}
	return nil
}

// SecAggMean is the mean update of a SecAgg round from its unmasked
// fixed-point sum over n survivors.
func SecAggMean(sum []uint32, fracBits uint32, n int) []float32 {
	out := secagg.Decode(sum, fracBits)
	inv := 1 / float64(max(n, 1))
	for i, v := range out {
		out[i] = float32(float64(v) * inv)
	}
	return out
}

// SecAggPhaseNames names the phases.
var SecAggPhaseNames = map[uint32]string{PhaseKeys: "keys", PhaseShares: "shares", PhaseMasked: "masked updates", PhaseUnmask: "unmasking"}

// SecAggWaiting lists the workers an open SecAgg round's phase still
// expects a message from (see secaggProgress), sorted.
func SecAggWaiting(r *pb.Round) []string {
	if r.GetSecagg() == nil {
		return nil
	}
	expected, answered, _ := secaggProgress(r)
	var out []string
	for _, w := range expected {
		if !answered[w] {
			out = append(out, w)
		}
	}
	return out
}
