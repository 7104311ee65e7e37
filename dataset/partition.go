package dataset

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"gonum.org/v1/gonum/stat/distuv"
)

// Partition splits a data set's examples among n clients. Every partitioner
// is a pure function of the labels and the seed: each worker computes the
// same split and keeps its own part, so no data moves.
type Partition struct {
	// Kind is "iid", "shards" or "dirichlet".
	Kind string
	// Shards is the number of label-sorted shards per client (kind "shards").
	Shards int
	// Alpha is the Dirichlet concentration (kind "dirichlet"); small is more skewed.
	Alpha float64
	// Seed fixes the split.
	Seed uint64
}

// Split returns, for each of n clients, the indices of its examples.
// Every example goes to exactly one client.
func (p Partition) Split(labels []uint8, classes, n int) ([][]int, error) {
	if n <= 0 {
		return nil, fmt.Errorf("partition: %d clients, want at least 1", n)
	}
	src := rand.NewPCG(p.Seed, 0x9e3779b97f4a7c15)
	r := rand.New(src)
	switch p.Kind {
	case "", "iid":
		return iid(r, len(labels), n), nil
	case "shards":
		s := p.Shards
		if s <= 0 {
			s = 2
		}
		return shards(r, labels, n, s)
	case "dirichlet":
		if !(p.Alpha > 0) || math.IsInf(p.Alpha, 0) {
			return nil, fmt.Errorf("partition: dirichlet alpha %v, want > 0", p.Alpha)
		}
		return dirichlet(r, src, labels, classes, n, p.Alpha), nil
	}
	return nil, fmt.Errorf("partition: unknown kind %q (want iid, shards or dirichlet)", p.Kind)
}

func iid(r *rand.Rand, total, n int) [][]int {
	perm := r.Perm(total)
	out := make([][]int, n)
	for c := range out {
		lo, hi := c*total/n, (c+1)*total/n
		out[c] = append([]int(nil), perm[lo:hi]...)
		sort.Ints(out[c])
	}
	return out
}

// shards sorts the examples by label, cuts them into n*s equal shards and
// deals s random shards to each client (McMahan et al. 2017's pathological
// non-IID split).
func shards(r *rand.Rand, labels []uint8, n, s int) ([][]int, error) {
	total := n * s
	if total > len(labels) {
		return nil, fmt.Errorf("partition: %d shards for %d examples", total, len(labels))
	}
	idx := make([]int, len(labels))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return labels[idx[a]] < labels[idx[b]] })
	order := r.Perm(total)
	out := make([][]int, n)
	for k, sh := range order {
		c := k / s
		lo, hi := sh*len(idx)/total, (sh+1)*len(idx)/total
		out[c] = append(out[c], idx[lo:hi]...)
	}
	for c := range out {
		sort.Ints(out[c])
	}
	return out, nil
}

// dirichlet draws, for each class, client proportions from Dir(alpha) and
// deals that class's examples accordingly (Hsu et al. 2019).
func dirichlet(r *rand.Rand, src rand.Source, labels []uint8, classes, n int, alpha float64) [][]int {
	g := distuv.Gamma{Alpha: alpha, Beta: 1, Src: src}
	byClass := make([][]int, classes)
	for i, y := range labels {
		if int(y) < classes {
			byClass[y] = append(byClass[y], i)
		}
	}
	out := make([][]int, n)
	props := make([]float64, n)
	for _, members := range byClass {
		r.Shuffle(len(members), func(a, b int) { members[a], members[b] = members[b], members[a] })
		var sum float64
		for c := range props {
			props[c] = g.Rand()
			sum += props[c]
		}
		start, acc := 0, 0.0
		for c := range props {
			acc += props[c] / sum
			end := int(math.Round(acc * float64(len(members))))
			if c == n-1 {
				end = len(members)
			}
			out[c] = append(out[c], members[start:end]...)
			start = end
		}
	}
	for c := range out {
		sort.Ints(out[c])
	}
	return out
}
