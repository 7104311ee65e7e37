package main

import (
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"testing"
	"text/tabwriter"

	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/secagg"
)

// secaggBench times secure aggregation of the demo MLP's updates (203,530
// values) with 16 workers in the complete graph: one worker's part in a
// round (keys, sealed shares for 15 neighbours, encoding and 16 masks) and
// the leader's unmasking of the sum, with no dropout and with 3, against
// copy() of one update's bytes.
func secaggBench(tw *tabwriter.Writer) {
	const workers = 16
	arch, _ := model.Lookup("mnist-mlp")
	n := arch.Layout().Len()
	p := secagg.Params{Job: "bench", Round: 1, Seed: 1, FracBits: secagg.FracBits(workers, 1), ClipRange: 1}
	r := mrand.New(mrand.NewPCG(3, 3))
	x := randVec(r, n)
	for i := range x {
		x[i] *= 0.01
	}
	clients := make([]*secagg.Client, workers)
	keys := make([]*pb.SecAggKeys, workers)
	var shared []string
	for i := range clients {
		var err error
		if clients[i], keys[i], err = secagg.NewClient(p, fmt.Sprintf("w%02d", i), rand.Reader, nil); err != nil {
			fail(err)
		}
		shared = append(shared, keys[i].Worker)
	}
	inbox := map[string][]*pb.SecAggShare{}
	for _, c := range clients {
		shares, err := c.Shares(keys)
		if err != nil {
			fail(err)
		}
		for _, s := range shares {
			inbox[s.To] = append(inbox[s.To], s)
		}
	}
	plain := secagg.Encode(x, p.FracBits, p.ClipRange)
	masked := map[string][]uint32{}
	for i, c := range clients {
		y, err := c.Mask(plain, shared, inbox[keys[i].Worker])
		if err != nil {
			fail(err)
		}
		masked[keys[i].Worker] = y
	}
	var all []*pb.SecAggReveal // no dropout: every worker reveals its shares of every neighbour's seed
	for _, c := range clients {
		rv, err := c.Reveal(shared)
		if err != nil {
			fail(err)
		}
		all = append(all, rv...)
	}
	cp := testing.Benchmark(func(b *testing.B) {
		dst := make([]float32, n)
		for b.Loop() {
			copy(dst, x)
		}
	})
	client := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			c, k, err := secagg.NewClient(p, keys[0].Worker, rand.Reader, nil)
			if err != nil {
				b.Fatal(err)
			}
			ks := append([]*pb.SecAggKeys{k}, keys[1:]...)
			if _, err := c.Shares(ks); err != nil {
				b.Fatal(err)
			}
			if _, err := c.Mask(secagg.Encode(x, p.FracBits, p.ClipRange), shared, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	unmask := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			if _, err := secagg.Unmask(p, keys, shared, masked, all); err != nil {
				b.Fatal(err)
			}
		}
	})
	mb := float64(4*n) / 1e6
	ms := func(r testing.BenchmarkResult) float64 { return float64(r.NsPerOp()) / 1e6 }
	fmt.Fprintf(tw, "secure aggregation, %d workers x %d params\tMB\tms/op\tx copy()\t\n", workers, n)
	fmt.Fprintf(tw, "copy() of one update (baseline)\t%.1f\t%.3f\t1.00\t\n", mb, ms(cp))
	fmt.Fprintf(tw, "one worker: keys, 15 sealed shares, encode, 16 masks\t%.1f\t%.3f\t%.1f\t\n", mb, ms(client), ms(client)/ms(cp))
	fmt.Fprintf(tw, "leader: unmask the sum of %d, no dropout\t%.1f\t%.3f\t%.1f\t\n", workers, float64(workers)*mb, ms(unmask), ms(unmask)/ms(cp))
}
