// Package cluster runs a sim experiment through the real cluster path — a
// coordinator and one worker node per virtual worker, in this process,
// talking gossip and gRPC over 127.0.0.1 — so that users can measure what
// the simulation saves (`fedtune sim --transport grpc`).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/local"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/sim"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/worker"
)

// Run runs cfg as a job on an in-process cluster and reports each
// committed round as sim.Run does. Attacks and dropout are simulation
// features: a config using them is refused.
func Run(ctx context.Context, cfg sim.Config, train, test *dataset.Examples, progress func(sim.RoundResult)) ([]sim.RoundResult, error) {
	if (cfg.Attack != "" && cfg.Attack != "none") || cfg.Dropout > 0 || cfg.WorkerMomentum > 0 {
		return nil, errors.New("transport grpc runs honest workers only: set attack none, dropout 0 and worker_momentum 0")
	}
	if cfg.Partition.Kind == "groups" || train.Dim != 784 {
		return nil, errors.New("transport grpc runs MNIST jobs only (workers load the data set by name)")
	}
	if test.Len() != 10000 {
		return nil, errors.New("transport grpc evaluates on the whole MNIST test set: set test_examples 0")
	}
	dir, err := os.MkdirTemp("", "fedtune-sim-grpc-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	parts, err := cfg.Partition.Split(train.Y, train.Classes, cfg.Workers)
	if err != nil {
		return nil, err
	}
	workers := make([]local.Worker, cfg.Workers)
	for i := range workers {
		workers[i] = local.Worker{ID: sim.WorkerID(i), Data: train.Subset(parts[i])}
	}
	lc, err := local.Start(ctx, dir, workers, worker.Config{PollWait: 2 * time.Second, NoErrorFeedback: cfg.NoErrorFeedback}, logger)
	if err != nil {
		return nil, err
	}
	defer lc.Close()
	coord, werrs := lc.Coordinator, lc.Errs()
	pool := client.NewPool()
	defer pool.Close()
	conn, err := pool.Conn(coord.GRPCAddr())
	if err != nil {
		return nil, err
	}
	base := cfg.Base
	if len(base.Tensors) == 0 {
		arch, err := model.Lookup(cfg.Model)
		if err != nil {
			return nil, err
		}
		base = arch.Init(cfg.Seed) // as sim.Run starts
	}
	b, err := tensor.Marshal(base, tensor.F32)
	if err != nil {
		return nil, err
	}
	hash, err := client.PutBlob(ctx, conn, b)
	if err != nil {
		return nil, err
	}
	k := cfg.ClientsPerRound
	if k == 0 {
		k = cfg.Workers
	}
	spec := &pb.JobSpec{
		Name: "sim", Model: cfg.Model, Dataset: "mnist", BaseModel: hash, Rounds: uint32(cfg.Rounds),
		ClientsPerRound: uint32(k), MinUpdates: uint32(k), RoundTimeoutSeconds: 600, Evaluate: true, Seed: cfg.Seed,
		Codec: cfg.Codec, Aggregator: cfg.Rule,
		AggregatorParams: &pb.AggregatorParams{TrimFraction: cfg.Params.TrimFraction, F: uint32(cfg.Params.F), M: uint32(cfg.Params.M),
			ClipNorm: cfg.Params.ClipNorm, Tau: cfg.Params.Tau, Iterations: uint32(cfg.Params.Iterations), Smoothing: cfg.Params.Smoothing},
		ServerOptimizer: &pb.ServerOptimizer{Name: cfg.Server.Name, Lr: cfg.Server.LR, Beta1: cfg.Server.Beta1, Beta2: cfg.Server.Beta2, Epsilon: cfg.Server.Eps},
		Train: &pb.TrainConfig{LocalEpochs: uint32(cfg.Train.Epochs), LocalSteps: uint32(cfg.Train.Steps), BatchSize: uint32(cfg.Train.BatchSize),
			LearningRate: cfg.Train.LR, Momentum: cfg.Train.Momentum, ProxMu: cfg.Train.ProxMu},
		Dp: cfg.DP,
	}
	if cfg.Mode == round.ModeAsync {
		// The real async path: versions of buffer_size updates, in real time.
		spec.Mode, spec.Async = round.ModeAsync, cfg.Async
	}
	admin := rpcpb.NewAdminClient(conn)
	if _, err := admin.SubmitJob(ctx, &pb.SubmitJobRequest{Spec: spec}); err != nil {
		return nil, err
	}
	var results []sim.RoundResult
	for {
		j, ok := coord.FSM().Job("sim")
		if !ok {
			return nil, errors.New("job vanished")
		}
		for len(results) < len(j.History) {
			r := j.History[len(results)]
			res := sim.RoundResult{Round: int(r.Number), Participants: int(r.Updates), Attempts: 1, Accuracy: math.NaN(), Loss: math.NaN(),
				Seconds: time.Duration(r.CommittedUnixNano - r.StartedUnixNano).Seconds()}
			if v, ok := r.Metrics["test_accuracy"]; ok {
				res.Accuracy, res.Loss = v, r.Metrics["test_loss"]
			}
			res.Epsilon = r.Metrics["dp_epsilon"]
			for _, u := range r.Accepted {
				if n, err := coord.BlobSize(u.Blob); err == nil {
					res.Bytes += n
				}
			}
			if progress != nil {
				progress(res)
			}
			results = append(results, res)
		}
		if j.Status != pb.JobStatus_JOB_STATUS_RUNNING {
			if j.Status != pb.JobStatus_JOB_STATUS_DONE {
				return results, fmt.Errorf("job ended: %s", j.Error)
			}
			if j.Spec.GetDp().GetEpsilon() > 0 && len(results) > 0 && len(results) < cfg.Rounds {
				results[len(results)-1].BudgetReached = true // the leader stopped the job at its budget
			}
			// Every round is recomputed from its committed updates (and,
			// with DP, its seeded noise) and must give the committed model.
			for i := range results {
				v, err := admin.VerifyRound(ctx, &pb.VerifyRoundRequest{Job: "sim", Round: uint32(results[i].Round)})
				if err != nil {
					return results, fmt.Errorf("verify round %d: %w", results[i].Round, err)
				}
				if !v.Match {
					return results, fmt.Errorf("round %d does not verify: committed %.12s, recomputed %.12s", results[i].Round, v.CommittedModel, v.RecomputedModel)
				}
				results[i].Verified = true
			}
			return results, nil
		}
		select {
		case <-ctx.Done():
			return results, ctx.Err()
		case err := <-werrs:
			if err != nil {
				return results, fmt.Errorf("worker stopped: %w", err)
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
}
