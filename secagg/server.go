package secagg

import (
	"crypto/ecdh"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	pb "github.com/fedtune/fedtune/protocol"
)

// Errors the coordinator tells apart: a round that cannot be unmasked is
// planned again, never committed with a wrong sum.
var (
	ErrTooFewSurvivors = errors.New("secagg: too few survivors to unmask")
	ErrTooFewShares    = errors.New("secagg: too few shares revealed")
	ErrBadShares       = errors.New("secagg: revealed shares do not recover the committed secret")
)

// maxSubsets bounds the search for a consistent subset of shares when the
// shares together do not recover a secret (some are wrong).
const maxSubsets = 4096

// Unmask is the coordinator's side: the sum (mod 2^32) of the masked
// inputs of the survivors (inputs, by worker), given every worker's keys
// (U1, sorted), the workers that shared (U2, sorted) and the survivors'
// revealed shares. Every recovered secret is checked against its
// commitment (a seed) or its public key (a mask key), so a wrong share
// gives an error, never a wrong sum.
func Unmask(p Params, keys []*pb.SecAggKeys, shared []string, inputs map[string][]uint32, reveals []*pb.SecAggReveal) ([]uint32, error) {
	byID, g, err := checkKeys(p, keys)
	if err != nil {
		return nil, err
	}
	if !slices.IsSorted(shared) {
		return nil, fmt.Errorf("secagg: workers that shared not sorted")
	}
	for _, u := range shared {
		if !g.Has(u) {
			return nil, fmt.Errorf("secagg: %s shared without keys", u)
		}
	}
	t := ThresholdOf(g.K(), p.Threshold)
	if len(inputs) < t {
		return nil, fmt.Errorf("%w: %d masked inputs, threshold %d", ErrTooFewSurvivors, len(inputs), t)
	}
	var survivors []string
	dim := -1
	for u, y := range inputs {
		if !slices.Contains(shared, u) {
			return nil, fmt.Errorf("secagg: masked input from %s, which did not share", u)
		}
		if dim >= 0 && len(y) != dim {
			return nil, fmt.Errorf("secagg: masked inputs of %d and %d values", dim, len(y))
		}
		dim = len(y)
		survivors = append(survivors, u)
	}
	slices.Sort(survivors)
	// The revealed shares, by the worker whose secret they are.
	got := map[string][]Share{}
	seen := map[[2]string]bool{}
	for _, r := range reveals {
		if !slices.Contains(survivors, r.From) {
			return nil, fmt.Errorf("secagg: shares revealed by %s, whose input did not arrive", r.From)
		}
		if !slices.Contains(shared, r.Of) {
			return nil, fmt.Errorf("secagg: %s revealed a share of %s, which did not share", r.From, r.Of)
		}
		_, alive := inputs[r.Of]
		if r.MaskKey == alive {
			return nil, fmt.Errorf("secagg: %s revealed the wrong secret of %s (mask key %v, input arrived %v)", r.From, r.Of, r.MaskKey, alive)
		}
		if x := g.Point(r.Of, r.From); x == 0 || uint32(x) != r.X {
			return nil, fmt.Errorf("secagg: %s holds no share of %s at point %d", r.From, r.Of, r.X)
		}
		if len(r.Share) != secretLen {
			return nil, fmt.Errorf("secagg: share of %s from %s: %d bytes, want %d", r.Of, r.From, len(r.Share), secretLen)
		}
		if k := [2]string{r.From, r.Of}; seen[k] {
			return nil, fmt.Errorf("secagg: two shares of %s from %s", r.Of, r.From)
		} else {
			seen[k] = true
		}
		got[r.Of] = append(got[r.Of], Share{X: byte(r.X), Data: r.Share})
	}
	sum := make([]uint32, dim)
	for _, u := range survivors {
		for i, v := range inputs[u] {
			sum[i] += v
		}
	}
	for _, u := range survivors {
		seed, err := recoverSecret(got[u], t, func(s []byte) bool { return slices.Equal(commit(p, u, s), byID[u].SeedCommit) })
		if err != nil {
			return nil, fmt.Errorf("seed of %s: %w", u, err)
		}
		addMask(sum, seed, true)
	}
	for _, v := range shared {
		if _, alive := inputs[v]; alive || !slices.ContainsFunc(g.Neighbors(v), func(u string) bool { _, ok := inputs[u]; return ok }) {
			continue // a survivor, or no survivor masked with it
		}
		var priv *ecdh.PrivateKey
		raw, err := recoverSecret(got[v], t, func(s []byte) bool {
			k, err := ecdh.X25519().NewPrivateKey(s)
			if err == nil && slices.Equal(k.PublicKey().Bytes(), byID[v].MaskPub) {
				priv = k
				return true
			}
			return false
		})
		if err != nil || raw == nil {
			return nil, fmt.Errorf("mask key of dropped %s: %w", v, err)
		}
		for _, u := range g.Neighbors(v) {
			if _, alive := inputs[u]; !alive {
				continue
			}
			seed, err := agree(p, "mask", priv, byID[u].MaskPub)
			if err != nil {
				return nil, fmt.Errorf("secagg: mask of %s with %s: %w", u, v, err)
			}
			// u added +mask when before v: take it off.
			addMask(sum, seed, g.before(u, v))
		}
	}
	return sum, nil
}

// recoverSecret combines shares and checks the secret; when the check
// fails and there are more shares than t, it looks for t of them that
// pass (a wrong share among right ones), trying at most maxSubsets.
func recoverSecret(shares []Share, t int, ok func([]byte) bool) ([]byte, error) {
	if len(shares) < t {
		return nil, fmt.Errorf("%w: %d of threshold %d", ErrTooFewShares, len(shares), t)
	}
	if s, err := Combine(shares); err == nil && ok(s) {
		return s, nil
	}
	idx := make([]int, t)
	for i := range idx {
		idx[i] = i
	}
	sub := make([]Share, t)
	for tries := 0; tries < maxSubsets; tries++ {
		for i, j := range idx {
			sub[i] = shares[j]
		}
		if s, err := Combine(sub); err == nil && ok(s) {
			return s, nil
		}
		// next combination of t of len(shares)
		i := t - 1
		for i >= 0 && idx[i] == len(shares)-t+i {
			i--
		}
		if i < 0 {
			break
		}
		idx[i]++
		for j := i + 1; j < t; j++ {
			idx[j] = idx[j-1] + 1
		}
	}
	return nil, fmt.Errorf("%w (%d shares, threshold %d)", ErrBadShares, len(shares), t)
}

// FracBits is the fixed-point fraction bits for n inputs clamped to
// ±clip: the most with n·clip·2^bits < 2^31, so the sum cannot wrap.
func FracBits(n int, clip float64) uint32 {
	if clip <= 0 {
		clip = 1
	}
	b := math.Floor(math.Log2((math.MaxInt32 - 1) / (float64(max(n, 1)) * clip)))
	return uint32(max(0, min(b, 30)))
}

// Encode clamps x to ±clip and encodes it in fixed point with bits
// fraction bits, two's complement in 32 bits.
func Encode(x []float32, bits uint32, clip float64) []uint32 {
	out := make([]uint32, len(x))
	scale := math.Ldexp(1, int(bits))
	for i, v := range x {
		f := float64(v)
		if math.IsNaN(f) {
			f = 0
		}
		f = max(-clip, min(clip, f))
		out[i] = uint32(int32(math.Round(f * scale)))
	}
	return out
}

// Decode reads a fixed-point sum back (two's complement in 32 bits).
func Decode(sum []uint32, bits uint32) []float32 {
	out := make([]float32, len(sum))
	scale := math.Ldexp(1, -int(bits))
	for i, v := range sum {
		out[i] = float32(float64(int32(v)) * scale)
	}
	return out
}

// EncodeMasked is a masked update's wire form: its values little-endian.
func EncodeMasked(v []uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

// DecodeMasked reads a masked update of n values.
func DecodeMasked(b []byte, n int) ([]uint32, error) {
	if len(b) != 4*n {
		return nil, fmt.Errorf("masked update of %d bytes, the model needs %d", len(b), 4*n)
	}
	v := make([]uint32, n)
	for i := range v {
		v[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return v, nil
}
