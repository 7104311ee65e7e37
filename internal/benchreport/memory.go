package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/tensor"
)

// memoryBench writes n = 64 updates of d = 4M floats as safetensors files
// and, for each rule, aggregates them from the files in a fresh child
// process that reports its peak resident memory (VmHWM). The baseline is
// a child that only holds one model of the same size.
func memoryBench(tw *tabwriter.Writer) {
	const n, d = 64, 4 << 20
	dir, err := os.MkdirTemp("", "fedtune-bench-")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(dir)
	r := rand.New(rand.NewPCG(7, 7))
	v := make([]float32, d)
	for i := range n {
		for k := range v {
			v[k] = float32(r.NormFloat64())
		}
		s := tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{d}, Data: v})
		if err := tensor.WriteFile(filepath.Join(dir, fmt.Sprintf("u%02d.safetensors", i)), s, tensor.F32); err != nil {
			fail(err)
		}
	}
	model := float64(d*4) / (1 << 20)
	blocks := float64(runtime.GOMAXPROCS(0)*n*64<<10*4) / (1 << 20) // a 64K-float chunk per update per core
	fmt.Fprintf(tw, "peak memory, n=%d updates x d=4M floats streamed from files (%d MB on disk)\tpeak RSS MB\tx (one model + blocks)\ts\t\n", n, n*d*4>>20)
	base, _, err := child("model", dir)
	if err != nil {
		fail(err)
	}
	fmt.Fprintf(tw, "baseline: process holding one %0.f MB model\t%.0f\t\t\t\n", model, base)
	fmt.Fprintf(tw, "(blocks: a 64K-float chunk per update per core = %.0f MB)\t\t\t\t\n", blocks)
	for _, name := range aggregation.Rules {
		rss, secs, err := child(name, dir)
		if err != nil {
			fail(err)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t\n", name, rss, rss/(base+blocks), secs)
	}
}

// child runs this program in rss-child mode and returns its peak RSS in MB
// and the aggregation time.
func child(mode, dir string) (float64, float64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, 0, err
	}
	out, err := exec.Command(self, "-rss-child", mode, "-rss-dir", dir).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("rss child %s: %v: %s", mode, err, out)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("rss child %s: unexpected output %q", mode, out)
	}
	rss, _ := strconv.ParseFloat(f[0], 64)
	secs, _ := strconv.ParseFloat(f[1], 64)
	return rss, secs, nil
}

// rssChild aggregates the files in dir with rule (or, for "model", only
// allocates and fills one model of their size), then prints its peak RSS
// in MB and the seconds taken.
func rssChild(rule, dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	start := time.Now()
	if rule == "model" {
		v, err := tensor.OpenVector(files[0])
		if err != nil {
			fail(err)
		}
		s, err := tensor.Materialize(v)
		if err != nil {
			fail(err)
		}
		runtime.KeepAlive(s)
	} else {
		a, err := aggregation.NewRule(rule, aggregation.Params{F: len(files) / 8})
		if err != nil {
			fail(err)
		}
		var ups []aggregation.Update
		for i, f := range files {
			v, err := tensor.OpenVector(f)
			if err != nil {
				fail(err)
			}
			defer v.Close()
			ups = append(ups, aggregation.Update{Worker: fmt.Sprintf("w%02d", i), Source: v, Samples: uint64(10 + i)})
		}
		out, _, err := a.Aggregate(ups)
		if err != nil {
			fail(err)
		}
		runtime.KeepAlive(out)
	}
	secs := time.Since(start).Seconds()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fail(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			fmt.Printf("%.1f %.3f\n", kb/1024, secs)
			return
		}
	}
	fail(fmt.Errorf("no VmHWM in /proc/self/status"))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
