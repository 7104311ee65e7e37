// Package demo runs fedtune's end-to-end demonstration on one machine: it
// makes a base model by training centrally on MNIST digits 0-4 only, then
// starts a coordinator and gossip-discovered workers on 127.0.0.1 whose local
// data covers all ten digits (non-IID across workers), and fine-tunes the
// base federatedly, printing a line per round.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/local"
	"github.com/fedtune/fedtune/internal/progress"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/worker"
)

// Config sets the demo's size.
type Config struct {
	OutDir      string  // where the base and final models, and the nodes' log, go
	Workers     int     // number of workers (default 4)
	Rounds      int     // federated rounds (default 8)
	Model       string  // architecture (default mnist-mlp)
	BaseLabels  []uint8 // digits the base model is trained on (default 0-4)
	BaseEpochs  int     // central epochs for the base (default 1)
	Alpha       float64 // Dirichlet concentration of the workers' data (default 1)
	LocalEpochs int     // local epochs per round (default 1)
	BatchSize   int     // local batch (default 64)
	LR          float64 // local learning rate (default 0.05)
	Momentum    float64 // local momentum (default 0.9)
	Codec       string  // update codec (default fp32)
	NoEF        bool    // lossy codecs without error feedback
	Seed        uint64
	Out         io.Writer // progress output (default stdout)
	KeepDataDir bool      // keep the coordinator's data directory
}

func (c *Config) defaults() {
	if c.OutDir == "" {
		c.OutDir = "demo-out"
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.Rounds <= 0 {
		c.Rounds = 10
	}
	if c.Model == "" {
		c.Model = "mnist-mlp"
	}
	if len(c.BaseLabels) == 0 {
		c.BaseLabels = []uint8{0, 1, 2, 3, 4}
	}
	if c.BaseEpochs <= 0 {
		c.BaseEpochs = 1
	}
	if c.Alpha <= 0 {
		c.Alpha = 1
	}
	if c.LocalEpochs <= 0 {
		c.LocalEpochs = 1
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 64
	}
	if c.LR <= 0 {
		c.LR = 0.05
	}
	if c.Momentum == 0 {
		c.Momentum = 0.9
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
}

// Result is what the demo measured.
type Result struct {
	BaseAccuracy  float64
	FinalAccuracy float64
	Rounds        int
	FinalModel    string // path of the exported final model
	Seconds       float64
}

// Run runs the demo until the job is done or ctx ends.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	start := time.Now()
	out := cfg.Out
	var res Result
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return res, err
	}
	logPath := filepath.Join(cfg.OutDir, "nodes.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return res, err
	}
	defer logFile.Close()
	logger := slog.New(slog.NewTextHandler(logFile, nil))

	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		return res, err
	}
	test, err := dataset.MNIST(dataset.Test)
	if err != nil {
		return res, err
	}
	arch, err := model.Lookup(cfg.Model)
	if err != nil {
		return res, err
	}

	// 1. The base model: trained centrally on a few digits only.
	fmt.Fprintf(out, "fedtune demo: %d workers, %d rounds, model %s %v\n", cfg.Workers, cfg.Rounds, cfg.Model, arch)
	fmt.Fprintf(out, "step 1/3  base model: central training on digits %v only (%d epoch)\n", cfg.BaseLabels, cfg.BaseEpochs)
	baseData := train.Subset(train.WithLabels(cfg.BaseLabels...))
	base, err := Pretrain(ctx, arch, baseData, cfg.BaseEpochs, 0.05, cfg.Seed, out)
	if err != nil {
		return res, err
	}
	basePath := filepath.Join(cfg.OutDir, "base.safetensors")
	if err := tensor.WriteFile(basePath, base, tensor.F32); err != nil {
		return res, err
	}

	// 2. A coordinator and workers on 127.0.0.1, found by gossip.
	fmt.Fprintf(out, "step 2/3  cluster: 1 coordinator, %d workers on 127.0.0.1, insecure (no TLS: a local demo) (logs: %s)\n", cfg.Workers, logPath)
	dataDir, err := os.MkdirTemp("", "fedtune-demo-")
	if err != nil {
		return res, err
	}
	if !cfg.KeepDataDir {
		defer os.RemoveAll(dataDir)
	}
	parts, err := dataset.Partition{Kind: "dirichlet", Alpha: cfg.Alpha, Seed: cfg.Seed}.Split(train.Y, train.Classes, cfg.Workers)
	if err != nil {
		return res, err
	}
	workers := make([]local.Worker, cfg.Workers)
	for i := range workers {
		workers[i] = local.Worker{ID: fmt.Sprintf("worker-%d", i+1), Data: train.Subset(parts[i]),
			Labels: map[string]string{"region": fmt.Sprintf("site-%d", i+1), "device": "cpu"}}
		fmt.Fprintf(out, "          %s: %5d local images, digits %s\n", workers[i].ID, workers[i].Data.Len(), histogram(workers[i].Data))
	}
	lc, err := local.Start(ctx, dataDir, workers, worker.Config{PollWait: 5 * time.Second, NoErrorFeedback: cfg.NoEF}, logger)
	if err != nil {
		return res, err
	}
	defer lc.Close()
	coord, werrs := lc.Coordinator, lc.Errs()

	// 3. The federated job.
	pool := client.NewPool()
	defer pool.Close()
	conn, err := pool.Conn(coord.GRPCAddr())
	if err != nil {
		return res, err
	}
	b, err := tensor.Marshal(base, tensor.F32)
	if err != nil {
		return res, err
	}
	hash, err := client.PutBlob(ctx, conn, b)
	if err != nil {
		return res, err
	}
	spec := &pb.JobSpec{
		Name: "demo", Model: cfg.Model, Dataset: "mnist", BaseModel: hash, Rounds: uint32(cfg.Rounds),
		ClientsPerRound: uint32(cfg.Workers), MinUpdates: uint32(max(cfg.Workers-1, 1)), RoundTimeoutSeconds: 120,
		Evaluate: true, Seed: cfg.Seed, Codec: cfg.Codec,
		Train: &pb.TrainConfig{LocalEpochs: uint32(cfg.LocalEpochs), BatchSize: uint32(cfg.BatchSize), LearningRate: cfg.LR, Momentum: cfg.Momentum},
	}
	admin := rpcpb.NewAdminClient(conn)
	sub, err := admin.SubmitJob(ctx, &pb.SubmitJobRequest{Spec: spec})
	if err != nil {
		return res, err
	}
	res.BaseAccuracy = sub.Job.BaseMetrics["test_accuracy"]
	fmt.Fprintf(out, "step 3/3  federated fine-tuning: base model scores %.2f%% on all 10 digits (%d test images)\n", 100*res.BaseAccuracy, test.Len())
	fmt.Fprintln(out, progress.RoundHeader)
	printed := 0
	for {
		st, err := admin.JobStatus(ctx, &pb.JobStatusRequest{Name: "demo"})
		if err != nil {
			return res, err
		}
		j := st.Job
		for ; printed < len(j.History); printed++ {
			fmt.Fprintln(out, progress.RoundLine(j, j.History[printed]))
		}
		if j.Status != pb.JobStatus_JOB_STATUS_RUNNING {
			if j.Status != pb.JobStatus_JOB_STATUS_DONE {
				return res, fmt.Errorf("job ended %s: %s", progress.Status(j), j.Error)
			}
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case err := <-werrs:
			if err != nil {
				return res, fmt.Errorf("worker stopped: %w", err)
			}
		case <-time.After(200 * time.Millisecond):
		}
	}
	final, err := client.ExportModel(ctx, conn, "demo", 0, false)
	if err != nil {
		return res, err
	}
	res.FinalModel = filepath.Join(cfg.OutDir, "final.safetensors")
	if err := os.WriteFile(res.FinalModel, final, 0o644); err != nil {
		return res, err
	}
	j, _ := coord.FSM().Job("demo")
	res.Rounds = len(j.History)
	res.FinalAccuracy = j.History[len(j.History)-1].Metrics["test_accuracy"]
	res.Seconds = time.Since(start).Seconds()
	fmt.Fprintf(out, "\nbase accuracy  %.2f%%  (trained on digits %v only)\n", 100*res.BaseAccuracy, cfg.BaseLabels)
	fmt.Fprintf(out, "final accuracy %.2f%%  after %d federated rounds with %d workers\n", 100*res.FinalAccuracy, res.Rounds, cfg.Workers)
	if n := len(j.History); n > 0 {
		var bytes, updates int
		for _, r := range j.History {
			updates += int(r.Updates)
		}
		for _, u := range j.History[n-1].Accepted {
			if sz, err := coord.BlobSize(u.Blob); err == nil {
				bytes += int(sz)
			}
		}
		raw := 4 * base.Len() * len(j.History[n-1].Accepted)
		if c := codecName(cfg.Codec); c == "fp32" {
			fmt.Fprintf(out, "wire size      %d bytes of updates in the last round (fp32, uncompressed)\n", bytes)
		} else {
			fmt.Fprintf(out, "wire size      %d bytes of updates in the last round (%s), %.1fx smaller than fp32\n", bytes, c, float64(raw)/float64(max(bytes, 1)))
		}
	}
	fmt.Fprintf(out, "final model    %s (safetensors)\nbase model     %s\ntotal time     %.0fs\n", res.FinalModel, basePath, res.Seconds)
	return res, nil
}

// Pretrain trains a fresh model centrally on data for epochs, printing a
// line per epoch.
func Pretrain(ctx context.Context, arch model.Architecture, data *dataset.Examples, epochs int, lr float64, seed uint64, out io.Writer) (tensor.Set, error) {
	tr, err := arch.NewTrainer()
	if err != nil {
		return tensor.Set{}, err
	}
	defer tr.Close()
	params := arch.Init(seed)
	for e := range epochs {
		next, met, err := tr.Train(ctx, params, data, model.TrainConfig{Epochs: 1, BatchSize: 64, LR: lr, Momentum: 0.9, Seed: seed + uint64(e)})
		if err != nil {
			return tensor.Set{}, err
		}
		params = next
		fmt.Fprintf(out, "          epoch %d/%d: %d examples, loss %.4f, %.0f examples/s\n", e+1, epochs, data.Len(), met.Loss, float64(met.Seen)/met.Seconds)
	}
	return params, nil
}

func histogram(e *dataset.Examples) string {
	counts := make([]int, e.Classes)
	for _, y := range e.Y {
		counts[y]++
	}
	s := ""
	for d, n := range counts {
		s += fmt.Sprintf(" %d:%4.0f%%", d, 100*float64(n)/float64(max(e.Len(), 1)))
	}
	return s
}

// ErrBelowTarget is returned by callers that require a minimum accuracy.
var ErrBelowTarget = errors.New("final accuracy below target")

func codecName(c string) string {
	if c == "" {
		return "fp32"
	}
	return c
}
