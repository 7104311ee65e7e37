package secagg

import (
	"crypto/ecdh"
	"fmt"
	"io"
	"slices"

	pb "github.com/fedtune/fedtune/protocol"
)

// secretLen is the length of a worker's seed and of its mask key.
const secretLen = 32

// Client is one worker's side of one round. Its methods are called in
// phase order, each once: Shares, Mask, Reveal.
type Client struct {
	p            Params
	id           string
	rng          io.Reader
	cKey, sKey   *ecdh.PrivateKey
	seed         []byte
	keys         map[string]*pb.SecAggKeys
	graph        *Graph
	held         map[string][]byte // neighbour -> its shares to us (seed share ‖ mask-key share)
	shared       []string          // U2, once masked
	revealedOnce bool
	auth         KeyAuth // nil: keys are not authenticated (insecure mode)
}

// NewClient makes a worker's keys and seed for a round; the keys are its
// phase-1 message. rng is crypto/rand's Reader in production. With auth
// (secure mode) the keys are signed, and Shares accepts only signed keys.
func NewClient(p Params, id string, rng io.Reader, auth KeyAuth) (*Client, *pb.SecAggKeys, error) {
	c := &Client{p: p, id: id, rng: rng, seed: make([]byte, secretLen), auth: auth}
	var err error
	if c.cKey, err = ecdh.X25519().GenerateKey(rng); err != nil {
		return nil, nil, fmt.Errorf("secagg: key: %w", err)
	}
	if c.sKey, err = ecdh.X25519().GenerateKey(rng); err != nil {
		return nil, nil, fmt.Errorf("secagg: key: %w", err)
	}
	if _, err := io.ReadFull(rng, c.seed); err != nil {
		return nil, nil, fmt.Errorf("secagg: seed: %w", err)
	}
	keys := &pb.SecAggKeys{Worker: id, CipherPub: c.cKey.PublicKey().Bytes(), MaskPub: c.sKey.PublicKey().Bytes(), SeedCommit: commit(p, id, c.seed)}
	if auth != nil {
		if err := auth.Sign(keys, SignedBytes(p, keys)); err != nil {
			return nil, nil, fmt.Errorf("secagg: sign keys: %w", err)
		}
	}
	return c, keys, nil
}

// checkKeys validates phase 1's key list (sorted by worker, distinct,
// well-formed keys) and returns it by worker with its graph.
func checkKeys(p Params, keys []*pb.SecAggKeys) (map[string]*pb.SecAggKeys, *Graph, error) {
	ids := make([]string, len(keys))
	byID := make(map[string]*pb.SecAggKeys, len(keys))
	for i, k := range keys {
		if len(k.CipherPub) != 32 || len(k.MaskPub) != 32 || len(k.SeedCommit) != 32 {
			return nil, nil, fmt.Errorf("secagg: keys of %s malformed", k.Worker)
		}
		ids[i] = k.Worker
		byID[k.Worker] = k
	}
	g, err := NewGraph(ids, p)
	return byID, g, err
}

// Shares is phase 2: given every worker's keys (U1, sorted by worker), the
// encrypted Shamir shares of this worker's seed and mask key, one for each
// neighbour.
func (c *Client) Shares(keys []*pb.SecAggKeys) ([]*pb.SecAggShare, error) {
	if c.graph != nil {
		return nil, fmt.Errorf("secagg: shares already made for round %d", c.p.Round)
	}
	byID, g, err := checkKeys(c.p, keys)
	if err != nil {
		return nil, err
	}
	if c.auth != nil {
		for _, k := range keys {
			if err := c.auth.Verify(k, SignedBytes(c.p, k)); err != nil {
				return nil, fmt.Errorf("secagg: keys of %s are not that worker's, refusing to share (a coordinator may have replaced them): %w", k.Worker, err)
			}
		}
	}
	mine, ok := byID[c.id]
	if !ok || !slices.Equal(mine.MaskPub, c.sKey.PublicKey().Bytes()) || !slices.Equal(mine.CipherPub, c.cKey.PublicKey().Bytes()) {
		return nil, fmt.Errorf("secagg: the round's keys do not hold this worker's (%s)", c.id)
	}
	nb := g.Neighbors(c.id)
	t := ThresholdOf(g.K(), c.p.Threshold)
	xs := make([]byte, len(nb))
	for i := range nb {
		xs[i] = byte(i + 1)
	}
	seedShares, err := Split(c.seed, xs, t, c.rng)
	if err != nil {
		return nil, err
	}
	keyShares, err := Split(c.sKey.Bytes(), xs, t, c.rng)
	if err != nil {
		return nil, err
	}
	out := make([]*pb.SecAggShare, len(nb))
	for i, v := range nb {
		key, err := agree(c.p, "share", c.cKey, byID[v].CipherPub)
		if err != nil {
			return nil, fmt.Errorf("secagg: with %s: %w", v, err)
		}
		box, err := seal(c.p, key, c.id, v, append(slices.Clone(seedShares[i].Data), keyShares[i].Data...), c.rng)
		if err != nil {
			return nil, err
		}
		out[i] = &pb.SecAggShare{From: c.id, To: v, Ciphertext: box}
	}
	c.keys, c.graph = byID, g
	return out, nil
}

// Mask is phase 3: x (the fixed-point input) masked with this worker's own
// mask and its pairwise masks with its neighbours in shared (U2, the
// workers whose shares were delivered), after opening the shares addressed
// to it. A share that does not open is an error: its sender is lying or
// the round is not the one the shares were made for.
func (c *Client) Mask(x []uint32, shared []string, inbox []*pb.SecAggShare) ([]uint32, error) {
	if c.graph == nil || c.shared != nil {
		return nil, fmt.Errorf("secagg: mask out of order (round %d)", c.p.Round)
	}
	if !slices.IsSorted(shared) || !slices.Contains(shared, c.id) {
		return nil, fmt.Errorf("secagg: the workers that shared must be sorted and hold this worker")
	}
	nb := c.graph.Neighbors(c.id)
	c.held = map[string][]byte{}
	for _, s := range inbox {
		if s.To != c.id || !slices.Contains(nb, s.From) || !slices.Contains(shared, s.From) {
			return nil, fmt.Errorf("secagg: a share from %s to %s is not this worker's to hold", s.From, s.To)
		}
		if _, dup := c.held[s.From]; dup {
			return nil, fmt.Errorf("secagg: two shares from %s", s.From)
		}
		key, err := agree(c.p, "share", c.cKey, c.keys[s.From].CipherPub)
		if err != nil {
			return nil, fmt.Errorf("secagg: with %s: %w", s.From, err)
		}
		plain, err := open(c.p, key, s.From, c.id, s.Ciphertext)
		if err != nil {
			return nil, fmt.Errorf("secagg: %w", err)
		}
		if len(plain) != 2*secretLen {
			return nil, fmt.Errorf("secagg: share from %s: %d bytes, want %d", s.From, len(plain), 2*secretLen)
		}
		c.held[s.From] = plain
	}
	y := slices.Clone(x)
	addMask(y, c.seed, false)
	for _, v := range nb {
		if !slices.Contains(shared, v) {
			continue
		}
		if !c.graph.Has(v) {
			return nil, fmt.Errorf("secagg: %s shared but has no keys", v)
		}
		seed, err := agree(c.p, "mask", c.sKey, c.keys[v].MaskPub)
		if err != nil {
			return nil, fmt.Errorf("secagg: with %s: %w", v, err)
		}
		addMask(y, seed, !c.graph.before(c.id, v))
	}
	c.shared = slices.Clone(shared)
	return y, nil
}

// Reveal is phase 4: given the workers whose masked inputs arrived
// (survivors, a subset of U2 holding at least t workers), this worker's
// shares of each surviving neighbour's seed and of each dropped
// neighbour's mask key. It answers once per round: a second request (a
// coordinator asking for both secrets of one worker) is refused.
func (c *Client) Reveal(survivors []string) ([]*pb.SecAggReveal, error) {
	if c.shared == nil {
		return nil, fmt.Errorf("secagg: reveal before masking (round %d)", c.p.Round)
	}
	if c.revealedOnce {
		return nil, fmt.Errorf("secagg: shares already revealed for round %d: refusing a second request", c.p.Round)
	}
	if !slices.IsSorted(survivors) {
		return nil, fmt.Errorf("secagg: survivors not sorted")
	}
	for _, u := range survivors {
		if !slices.Contains(c.shared, u) {
			return nil, fmt.Errorf("secagg: survivor %s did not share keys", u)
		}
	}
	if t := ThresholdOf(c.graph.K(), c.p.Threshold); len(survivors) < t {
		return nil, fmt.Errorf("%w: %d survivors, threshold %d", ErrTooFewSurvivors, len(survivors), t)
	}
	c.revealedOnce = true
	var out []*pb.SecAggReveal
	for _, v := range c.graph.Neighbors(c.id) {
		plain, ok := c.held[v]
		if !ok {
			continue
		}
		x := uint32(c.graph.Point(v, c.id))
		if slices.Contains(survivors, v) {
			out = append(out, &pb.SecAggReveal{From: c.id, Of: v, X: x, Share: slices.Clone(plain[:secretLen])})
		} else {
			out = append(out, &pb.SecAggReveal{From: c.id, Of: v, MaskKey: true, X: x, Share: slices.Clone(plain[secretLen:])})
		}
	}
	return out, nil
}
