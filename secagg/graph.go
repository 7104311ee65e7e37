// Package secagg is secure aggregation (SecAgg+, Bell et al. 2020) as a
// pure core: the workers' side (Client: keys, encrypted Shamir shares,
// masked fixed-point input, revealed shares) and the coordinator's (Unmask:
// the sum of the surviving workers' inputs from their masked inputs and the
// revealed shares), with no network, clock or storage. The coordinator and
// the workers carry its messages (protocol.SecAgg*) between phases.
//
// Each worker u masks its input x_u as
//
//	y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u)∩U2, v after u} PRG(s_uv) − Σ_{v ∈ N(u)∩U2, v before u} PRG(s_uv)   (mod 2^32)
//
// where b_u is its own random seed, s_uv the seed agreed with neighbour v by
// X25519, N(u) its neighbours in the round's masking graph and U2 the
// workers whose shares were delivered. Pairwise masks cancel in the sum of
// two workers' inputs; b_u (for a worker whose input arrived) or u's mask
// key (for one whose input did not) is recovered from t of its neighbours'
// shares, never both for one worker.
package secagg

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Params are one round's protocol parameters, the same on every node.
type Params struct {
	Job     string
	Round   uint32
	Attempt uint32
	// Seed orders the masking graph (the job's seed and the round).
	Seed uint64
	// Neighbors is k, each worker's neighbours (0: default for the size).
	Neighbors int
	// Threshold is the fraction f of a neighbourhood whose shares recover
	// a secret: t = ⌊k·f⌋+1 (0: 0.5).
	Threshold float64
	// FracBits is the fixed-point encoding's fraction bits; ClipRange the
	// bound each coordinate is clamped to before encoding.
	FracBits  uint32
	ClipRange float64
}

// MaxNeighbors bounds a neighbourhood (share points are bytes).
const MaxNeighbors = 254

// Degree is the neighbourhood size k for n workers: every other worker
// while n ≤ 17 (classic SecAgg), else ⌈2·log2 n⌉ rounded up to even, at
// most n−1 (SecAgg+'s logarithmic degree).
func Degree(n, requested int) int {
	if n <= 1 {
		return 0
	}
	k := requested
	if k <= 0 {
		if n <= 17 {
			k = n - 1
		} else {
			k = int(math.Ceil(2 * math.Log2(float64(n))))
			k += k % 2
		}
	}
	return min(k, n-1, MaxNeighbors)
}

// ThresholdOf is t for a neighbourhood of k: ⌊k·f⌋+1, at least 2 when k ≥ 2
// (one share alone would reveal the secret to its holder).
func ThresholdOf(k int, f float64) int {
	if f <= 0 {
		f = 0.5
	}
	t := int(math.Floor(float64(k)*f)) + 1
	if k >= 2 {
		t = max(t, 2)
	}
	return min(t, k)
}

// Graph is the round's masking graph over the workers U1 (sorted ids): a
// seeded ring order, each worker linked to the k/2 before and after it
// (every other worker when k = n−1).
type Graph struct {
	ids  []string
	pos  map[string]int // index in ids
	ring []int          // ring position of each index
	at   []int          // index at each ring position
	k    int
}

// NewGraph builds the graph of ids (sorted, distinct) for p.
func NewGraph(ids []string, p Params) (*Graph, error) {
	if !slices.IsSorted(ids) {
		return nil, fmt.Errorf("secagg: workers not sorted")
	}
	g := &Graph{ids: ids, pos: make(map[string]int, len(ids)), ring: make([]int, len(ids))}
	for i, id := range ids {
		if _, dup := g.pos[id]; dup {
			return nil, fmt.Errorf("secagg: worker %q twice", id)
		}
		g.pos[id] = i
	}
	g.k = Degree(len(ids), p.Neighbors)
	g.at = rand.New(rand.NewPCG(p.Seed, uint64(p.Round)<<32|uint64(p.Attempt))).Perm(len(ids))
	for r, i := range g.at {
		g.ring[i] = r
	}
	return g, nil
}

// K is the neighbourhood size.
func (g *Graph) K() int { return g.k }

// Has says whether id is in the graph.
func (g *Graph) Has(id string) bool { _, ok := g.pos[id]; return ok }

// Neighbors lists id's neighbours, sorted; a share of id's secrets for the
// i-th of them has evaluation point i+1.
func (g *Graph) Neighbors(id string) []string {
	i, ok := g.pos[id]
	if !ok {
		return nil
	}
	n := len(g.ids)
	var out []string
	if g.k >= n-1 {
		out = slices.Clone(g.ids)
		out = slices.Delete(out, i, i+1)
		return out
	}
	for d := 1; d <= g.k/2; d++ {
		out = append(out, g.ids[g.at[(g.ring[i]+d)%n]], g.ids[g.at[(g.ring[i]-d+n)%n]])
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Point is the evaluation point of holder's share of owner's secrets (0 if
// holder is not owner's neighbour).
func (g *Graph) Point(owner, holder string) byte {
	i := slices.Index(g.Neighbors(owner), holder)
	return byte(i + 1)
}

// before says whether u comes before v in the graph's id order (the sign
// of their pairwise mask in u's input: + when u is before v).
func (g *Graph) before(u, v string) bool { return g.pos[u] < g.pos[v] }
