// Command benchreport is `make bench`: it measures fedtune's hot paths with
// testing.Benchmark and prints each beside a baseline measured in the same
// run (a plain copy() of the same bytes), so the ratios mean something on a
// noisy machine.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

func main() {
	sections := flag.String("sections", "training,llm,gemm,aggregation,rules,memory,kernels,safetensors,secagg", "comma-separated sections to run")
	rssMode := flag.String("rss-child", "", "internal: aggregate the files of -rss-dir with this rule and print peak RSS")
	rssDir := flag.String("rss-dir", "", "internal: directory of update files for -rss-child")
	flag.Parse()
	if *rssMode != "" {
		rssChild(*rssMode, *rssDir)
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	defer tw.Flush()
	kernelsKind := "pure Go"
	switch {
	case tensor.SIMD() && aggregation.SIMD():
		kernelsKind = "SIMD (GOEXPERIMENT=simd): AVX2 tensor kernels, AVX-512 aggregation kernels"
	case tensor.SIMD():
		kernelsKind = "SIMD (GOEXPERIMENT=simd): AVX2 tensor kernels; pure-Go aggregation kernels (no AVX-512 on this CPU)"
	}
	fmt.Printf("fedtune benchmarks, kernels: %s (ratios are against baselines measured in this run)\n", kernelsKind)
	run := map[string]func(*tabwriter.Writer){
		"training": training, "gemm": gemmBench, "aggregation": aggregationBench, "kernels": kernels, "safetensors": safetensorsBench, "rules": rulesBench, "memory": memoryBench, "llm": llmBench, "secagg": secaggBench,
	}
	for _, s := range strings.Split(*sections, ",") {
		f, ok := run[s]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown section %q\n", s)
			os.Exit(2)
		}
		fmt.Println()
		f(tw)
		tw.Flush()
	}
}

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

// aggregationBench times one FedAvg of 16 demo-model updates against
// copying the same 16 updates' bytes.
func aggregationBench(tw *tabwriter.Writer) {
	r := rand.New(rand.NewPCG(9, 9))
	arch, _ := model.Lookup("mnist-mlp")
	ups := make([]aggregation.Update, 16)
	for i := range ups {
		d := arch.Layout()
		for _, t := range d.Tensors {
			copy(t.Data, randVec(r, len(t.Data)))
		}
		ups[i] = aggregation.Update{Worker: fmt.Sprintf("w%02d", i), Delta: d, Samples: uint64(100 + i)}
	}
	bytes := 16 * ups[0].Delta.Len() * 4
	cp := testing.Benchmark(func(b *testing.B) {
		dst := tensor.ZerosLike(ups[0].Delta)
		for b.Loop() {
			for _, u := range ups {
				for k, t := range u.Delta.Tensors {
					copy(dst.Tensors[k].Data, t.Data)
				}
			}
		}
	})
	agg := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			if _, _, err := (aggregation.FedAvg{}).Aggregate(ups); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Async drift correction: every update stale, corrected against one
	// drift (a dot product with it, then read as update − c·drift).
	moved := arch.Layout()
	for _, t := range moved.Tensors {
		copy(t.Data, randVec(r, len(t.Data)))
	}
	drift, err := round.NewDrift(moved, tensor.ZerosLike(moved))
	if err != nil {
		fail(err)
	}
	corrected := testing.Benchmark(func(b *testing.B) {
		cu := make([]aggregation.Update, len(ups))
		for b.Loop() {
			for i, u := range ups {
				src, _, err := drift.Correct(tensor.SetVector(u.Delta), 0.5)
				if err != nil {
					b.Fatal(err)
				}
				cu[i] = aggregation.Update{Worker: u.Worker, Source: src, Samples: u.Samples}
			}
			if _, _, err := (aggregation.FedAvg{}).Aggregate(cu); err != nil {
				b.Fatal(err)
			}
		}
	})
	fmt.Fprintln(tw, "aggregation, 16 updates x 203,530 params\tMB\tms/op\tx copy()\t")
	fmt.Fprintf(tw, "copy() of the same bytes (baseline)\t%.1f\t%.3f\t1.00\t\n", float64(bytes)/1e6, float64(cp.NsPerOp())/1e6)
	fmt.Fprintf(tw, "FedAvg with scores\t%.1f\t%.3f\t%.2f\t\n", float64(bytes)/1e6, float64(agg.NsPerOp())/1e6, float64(agg.NsPerOp())/float64(cp.NsPerOp()))
	fmt.Fprintf(tw, "FedAvg, every update drift-corrected (async)\t%.1f\t%.3f\t%.2f\t\n", float64(bytes)/1e6, float64(corrected.NsPerOp())/1e6, float64(corrected.NsPerOp())/float64(cp.NsPerOp()))
}

// kernels reports each flat kernel's throughput as a fraction of copy()'s
// on the same 4 MiB vectors (larger than L2).
func kernels(tw *tabwriter.Writer) {
	const n = 1 << 20
	r := rand.New(rand.NewPCG(1, 1))
	x, y := randVec(r, n), randVec(r, n)
	bench := func(f func()) float64 {
		res := testing.Benchmark(func(b *testing.B) {
			for b.Loop() {
				f()
			}
		})
		return float64(4*n) / float64(res.NsPerOp()) // bytes of x per ns = GB/s
	}
	base := bench(func() { copy(y, x) })
	fmt.Fprintln(tw, "kernel, 1M float32 (4 MiB)\tGB/s\tx copy() speed\t")
	fmt.Fprintf(tw, "copy() (baseline)\t%.1f\t1.00\t\n", base)
	for _, k := range []struct {
		name string
		f    func()
	}{
		{"Axpy  y += a*x", func() { tensor.Axpy(1e-3, x, y) }},
		{"Scale x *= a", func() { tensor.Scale(1, x) }},
		{"Dot   x.y", func() { tensor.Dot(x, y) }},
		{"Norm  |x|", func() { tensor.Norm(x) }},
	} {
		gbs := bench(k.f)
		fmt.Fprintf(tw, "%s\t%.1f\t%.2f\t\n", k.name, gbs, gbs/base)
	}
}

// safetensorsBench measures encoding and decoding a demo model.
func safetensorsBench(tw *tabwriter.Writer) {
	arch, _ := model.Lookup("mnist-mlp")
	s := arch.Init(1)
	enc, _ := tensor.Marshal(s, tensor.F32)
	dst := make([]byte, len(enc))
	cp := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			copy(dst, enc)
		}
	})
	m := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			tensor.Marshal(s, tensor.F32)
		}
	})
	u := testing.Benchmark(func(b *testing.B) {
		for b.Loop() {
			tensor.Unmarshal(enc)
		}
	})
	fmt.Fprintln(tw, "safetensors, mnist-mlp checkpoint\tKB\tus/op\tx copy()\t")
	fmt.Fprintf(tw, "copy() (baseline)\t%d\t%.1f\t1.00\t\n", len(enc)/1024, float64(cp.NsPerOp())/1e3)
	fmt.Fprintf(tw, "Marshal F32\t%d\t%.1f\t%.1f\t\n", len(enc)/1024, float64(m.NsPerOp())/1e3, float64(m.NsPerOp())/float64(cp.NsPerOp()))
	fmt.Fprintf(tw, "Unmarshal (validating)\t%d\t%.1f\t%.1f\t\n", len(enc)/1024, float64(u.NsPerOp())/1e3, float64(u.NsPerOp())/float64(cp.NsPerOp()))
}

// rulesBench times every aggregation rule on n updates of d floats held in
// memory, against copying the same bytes once (the baseline FedAvg's
// bandwidth is compared with).
func rulesBench(tw *tabwriter.Writer) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, d := range []int{1 << 20, 4 << 20} {
		for _, n := range []int{16, 64} {
			ups := make([]aggregation.Update, n)
			for i := range ups {
				ups[i] = aggregation.Update{Worker: fmt.Sprintf("w%02d", i), Samples: uint64(10 + i),
					Delta: tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{d}, Data: randVec(r, d)})}
			}
			dst := make([]float32, d)
			cp := testing.Benchmark(func(b *testing.B) {
				for b.Loop() {
					for _, u := range ups {
						copy(dst, u.Delta.Tensors[0].Data)
					}
				}
			})
			fmt.Fprintf(tw, "rules, n=%d updates x d=%dM floats (%d MB)\tms/op\tx fedavg time\tbandwidth vs copy()\t\n", n, d>>20, n*d*4>>20)
			fmt.Fprintf(tw, "copy() of the same bytes (baseline)\t%.1f\t\t1.00\t\n", float64(cp.NsPerOp())/1e6)
			var fedavg float64
			for _, name := range aggregation.Rules {
				rule, err := aggregation.NewRule(name, aggregation.Params{F: n / 8})
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					continue
				}
				res := testing.Benchmark(func(b *testing.B) {
					for b.Loop() {
						if _, _, err := rule.Aggregate(ups); err != nil {
							b.Fatal(err)
						}
					}
				})
				ms := float64(res.NsPerOp()) / 1e6
				if name == "fedavg" {
					fedavg = ms
				}
				fmt.Fprintf(tw, "%s\t%.1f\t%.2f\t%.2f\t\n", name, ms, ms/fedavg, float64(cp.NsPerOp())/float64(res.NsPerOp()))
			}
			tw.Flush()
			fmt.Println()
		}
	}
}
