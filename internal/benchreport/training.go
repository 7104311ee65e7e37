package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	gblas "gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/tensor/blas"
)

// torchRef is what torch_ref.py measured: PyTorch-CPU on the same MLP,
// batch sizes, optimizer and threads, and the same matrix products.
type torchRef struct {
	Version string             `json:"torch"`
	Threads int                `json:"threads"`
	Train   map[string]float64 `json:"train"` // batch -> samples/s
	Gemm    map[string]float64 `json:"gemm"`  // "MxNxK" -> GFLOP/s
	LLM     map[string]float64 `json:"llm"`   // "full", "lora" -> tokens/s
	BLAS    []string           `json:"blas"`  // shared objects loaded
	err     error
}

// pytorch runs the PyTorch reference (Debian's python3-torch through
// /usr/bin/python3; `make bench` installs it and selects OpenBLAS for
// libblas.so.3) for the given parts ("train", "gemm").
func pytorch(seconds float64, what ...string) torchRef {
	var ref torchRef
	script := filepath.Join("internal", "benchreport", "torch_ref.py")
	if _, err := os.Stat(script); err != nil {
		ref.err = fmt.Errorf("run from the repository root: %w", err)
		return ref
	}
	args := append([]string{script, fmt.Sprint(runtime.GOMAXPROCS(0)), fmt.Sprint(seconds)}, what...)
	out, err := exec.Command("/usr/bin/python3", args...).Output()
	if err != nil {
		ref.err = fmt.Errorf("PyTorch reference: %v (make torchdeps installs Debian's python3-torch)", err)
		return ref
	}
	if err := json.Unmarshal(out, &ref); err != nil {
		ref.err = fmt.Errorf("PyTorch reference output: %w", err)
	}
	return ref
}

// rounds is how many times each side is measured, alternating, so that
// a burst of load from elsewhere on a shared machine hits both; the
// medians are printed.
const rounds = 3

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// training measures local training of the demo model (784-256-10, SGD
// with momentum) at batch 64 and 256 — whole tasks of 128 steps on a warm
// trainer, as a worker runs them — beside PyTorch-CPU doing the same,
// alternating the two three times.
func training(tw *tabwriter.Writer) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	arch, _ := model.Lookup("mnist-mlp")
	data := train.Subset(train.WithLabels(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)[:16384])
	batches := []int{64, 256}
	ours := map[int][]float64{}
	theirs := map[int][]float64{}
	var ref torchRef
	for range rounds {
		for _, batch := range batches {
			ours[batch] = append(ours[batch], trainRate(arch, data, batch))
		}
		if ref = pytorch(2, "train"); ref.err == nil {
			for _, batch := range batches {
				theirs[batch] = append(theirs[batch], ref.Train[fmt.Sprint(batch)])
			}
		}
	}
	fmt.Fprintf(tw, "training mnist-mlp 784-256-10, SGD momentum 0.9, %d threads (medians of %d alternating runs)\tbatch\tfedtune samples/s\tms/step\tPyTorch samples/s\tx PyTorch\t\n", runtime.GOMAXPROCS(0), rounds)
	for _, batch := range batches {
		rate := median(ours[batch])
		torchCol, ratio := "-", "-"
		if len(theirs[batch]) > 0 {
			r := median(theirs[batch])
			torchCol, ratio = fmt.Sprintf("%.0f", r), fmt.Sprintf("%.2f", rate/r)
		}
		fmt.Fprintf(tw, "local training\t%d\t%.0f\t%.3f\t%s\t%s\t\n", batch, rate, float64(batch)/rate*1e3, torchCol, ratio)
	}
	tw.Flush()
	describeTorch(ref)
}

// trainRate returns fedtune's local training samples/s at one batch size:
// tasks of 128 steps on a warm trainer, for about two seconds.
func trainRate(arch model.Architecture, data *dataset.Examples, batch int) float64 {
	tr, _ := arch.NewTrainer()
	defer tr.Close()
	base := arch.Init(1)
	const steps = 128
	cfg := model.TrainConfig{Epochs: 1000, Steps: steps, BatchSize: batch, LR: 0.01, Momentum: 0.9}
	if _, _, err := tr.Train(context.Background(), base, data, cfg); err != nil { // warm: graph built, buffers touched
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var n int
	start := time.Now()
	for time.Since(start) < 2*time.Second {
		if _, _, err := tr.Train(context.Background(), base, data, cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		n++
	}
	return float64(n*steps*batch) / time.Since(start).Seconds()
}

func describeTorch(ref torchRef) {
	if ref.err != nil {
		fmt.Printf("(no PyTorch column: %v)\n", ref.err)
		return
	}
	fmt.Printf("PyTorch %s on %d threads, BLAS: %s; fedtune's BLAS kernel: %s\n", ref.Version, ref.Threads, strings.Join(ref.BLAS, ", "), blas.Kernel())
}

// gemmBench measures Sgemm at shapes the models use: fedtune's BLAS,
// gonum's, and the same product through PyTorch (OpenBLAS), with the
// fraction of this CPU's float32 peak (a register-only FMA loop per core
// times the cores used).
func gemmBench(tw *tabwriter.Writer) {
	cores := runtime.GOMAXPROCS(0)
	peak := blas.PeakGFLOPS(300*time.Millisecond) * float64(cores)
	ours, gon, theirs := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	var ref torchRef
	for range rounds {
		for _, s := range gemmShapes {
			key := fmt.Sprintf("%dx%dx%d", s[0], s[1], s[2])
			gon[key] = append(gon[key], measureGemm(gonum.Implementation{}, s[0], s[1], s[2]))
			ours[key] = append(ours[key], measureGemm(blas.Implementation{}, s[0], s[1], s[2]))
		}
		if ref = pytorch(1, "gemm"); ref.err == nil {
			for key, v := range ref.Gemm {
				theirs[key] = append(theirs[key], v)
			}
		}
	}
	fmt.Fprintf(tw, "Sgemm C = A·B, GFLOP/s (%d cores; measured peak %.0f; medians of %d alternating runs)\tgonum\tfedtune\tPyTorch\tx PyTorch\tof peak\t\n", cores, peak, rounds)
	for _, s := range gemmShapes {
		key := fmt.Sprintf("%dx%dx%d", s[0], s[1], s[2])
		f := median(ours[key])
		torchCol, ratio := "-", "-"
		if len(theirs[key]) > 0 {
			r := median(theirs[key])
			torchCol, ratio = fmt.Sprintf("%.1f", r), fmt.Sprintf("%.2f", f/r)
		}
		fmt.Fprintf(tw, "%d×%d×%d\t%.1f\t%.1f\t%s\t%s\t%.0f%%\t\n", s[0], s[1], s[2], median(gon[key]), f, torchCol, ratio, 100*f/peak)
	}
	tw.Flush()
	describeTorch(ref)
}

// gemmShapes are (m, n, k) of products the models use: a batch of 64
// through the demo model's first layer, square-ish products, and a small
// Llama-family model's MLP up-projection for 512 tokens (SmolLM-135M:
// hidden 576, intermediate 1536).
var gemmShapes = [][3]int{{64, 256, 784}, {256, 1024, 256}, {512, 512, 512}, {512, 1536, 576}}

// measureGemm returns the GFLOP/s of C = A·B (m×k times k×n) with impl.
func measureGemm(impl gblas.Float32, m, n, k int) float64 {
	r := rand.New(rand.NewPCG(1, 1))
	a, b, c := randVec(r, m*k), randVec(r, k*n), make([]float32, m*n)
	res := testing.Benchmark(func(tb *testing.B) {
		for tb.Loop() {
			impl.Sgemm(gblas.NoTrans, gblas.NoTrans, m, n, k, 1, a, k, b, n, 0, c, n)
		}
	})
	return 2 * float64(m*n*k) / float64(res.NsPerOp())
}
