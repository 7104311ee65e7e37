package testcluster

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/worker"
)

// TestLoRAJob runs LoRA jobs on a real coordinator with three workers,
// with both adapter aggregations: only adapters travel (every accepted
// update has the adapters' size, a small fraction of the model's), the
// frozen base is untouched, the merged model improves on the base, every
// committed round verifies, and exports give PEFT-named adapters or the
// merged model that scores what the round recorded.
func TestLoRAJob(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	test, err := dataset.MNIST(dataset.Test)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{})
	parts, _ := dataset.Partition{Kind: "iid", Seed: 1}.Split(train.Y, 10, 30)
	for i := range 3 {
		StartWorker(t, "lora-"+string(rune('a'+i)), []string{c.GossipAddr()}, train.Subset(parts[i]), nil)
	}
	WaitFor(t, 10*time.Second, "3 workers in the roster", func() bool { return len(c.FSM().Workers()) == 3 })
	arch, _ := model.Lookup("mnist-mlp-small")
	base := arch.Init(3)
	l := lora.Config{Rank: 4, Alpha: 8}
	adLayout, _ := l.Layout(arch)
	adapterBytes, modelBytes := 4*adLayout.Len(), 4*arch.Layout().Len()
	pool := client.NewPool()
	defer pool.Close()
	conn, err := pool.Conn(c.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	admin := rpcpb.NewAdminClient(conn)

	for _, agg := range []string{round.LoRANaive, round.LoRAExact} {
		t.Run(agg, func(t *testing.T) {
			const rounds = 4
			name := "lora-" + agg
			job := SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{
				Name: name, Model: "mnist-mlp-small", Dataset: "mnist", Rounds: rounds, ClientsPerRound: 3, RoundTimeoutSeconds: 120, Evaluate: true,
				Lora:  &pb.LoRASpec{Rank: uint32(l.Rank), Alpha: l.Alpha, Aggregation: agg},
				Train: &pb.TrainConfig{LocalEpochs: 1, BatchSize: 32, LearningRate: 0.05, Momentum: 0.5},
			}, base)
			if job.CurrentModel != job.Spec.Lora.Adapter || job.Spec.Lora.Adapter == "" {
				t.Fatalf("a LoRA job starts from its adapters: current %q, adapters %q", job.CurrentModel, job.Spec.Lora.Adapter)
			}
			WaitFor(t, 3*time.Minute, "all rounds", func() bool {
				j, _ := c.FSM().Job(name)
				return j.Status != pb.JobStatus_JOB_STATUS_RUNNING
			})
			j, _ := c.FSM().Job(name)
			if j.Status != pb.JobStatus_JOB_STATUS_DONE {
				t.Fatalf("job ended %s: %s", j.Status, j.Error)
			}
			for _, r := range j.History {
				for _, u := range r.Accepted {
					size, err := c.BlobSize(u.Blob)
					if err != nil {
						t.Fatal(err)
					}
					if size < int64(adapterBytes) || size > int64(adapterBytes)+1024 {
						t.Errorf("round %d: update of %s is %d bytes; the rank-%d adapters are %d", r.Number, u.Worker, size, l.Rank, adapterBytes)
					}
				}
				v, err := admin.VerifyRound(t.Context(), &pb.VerifyRoundRequest{Job: name, Round: r.Number})
				if err != nil || !v.Match {
					t.Errorf("round %d does not verify: %v %v", r.Number, v, err)
				}
			}
			t.Logf("%s: update %d bytes = %.1f%% of the model's %d; accuracy %.2f%% -> %.2f%%", agg, adapterBytes,
				100*float64(adapterBytes)/float64(modelBytes), modelBytes, 100*j.BaseMetrics["test_accuracy"], 100*j.History[rounds-1].Metrics["test_accuracy"])
			if got, from := j.History[rounds-1].Metrics["test_accuracy"], j.BaseMetrics["test_accuracy"]; got < from+0.3 {
				t.Errorf("merged model scores %.2f%%, base %.2f%%: want +30 points from adapters alone", 100*got, 100*from)
			}

			// The adapters, as PEFT names them.
			b, err := client.ExportModel(t.Context(), conn, name, 0, false)
			if err != nil {
				t.Fatal(err)
			}
			ad, err := tensor.Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			if err := tensor.SameLayout(ad, adLayout); err != nil {
				t.Fatalf("exported adapters: %v", err)
			}
			if !strings.HasSuffix(ad.Tensors[0].Name, ".lora_A.weight") || ad.Metadata["fedtune.lora_rank"] != "4" {
				t.Errorf("exported adapters: %s, metadata %v", ad.Tensors[0].Name, ad.Metadata)
			}
			// The merged model: the base with only the weights changed, by
			// a rank-r product, scoring what the last round recorded.
			b, err = client.ExportModel(t.Context(), conn, name, 0, true)
			if err != nil {
				t.Fatal(err)
			}
			merged, err := tensor.Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := l.Merge(arch, base, ad)
			for k, tt := range merged.Tensors {
				if strings.HasSuffix(tt.Name, ".bias") && !slices.Equal(tt.Data, base.Tensors[k].Data) {
					t.Errorf("frozen %s changed", tt.Name)
				}
				if !slices.Equal(tt.Data, want.Tensors[k].Data) {
					t.Errorf("merged %s differs from base + exported adapters", tt.Name)
				}
			}
			ev, _ := arch.NewEvaluator(1000)
			defer ev.Close()
			res, err := ev.Evaluate(merged, test)
			if err != nil {
				t.Fatal(err)
			}
			if got := j.History[rounds-1].Metrics["test_accuracy"]; res.Accuracy != got {
				t.Errorf("merged export scores %.4f, the round recorded %.4f", res.Accuracy, got)
			}
		})
	}

	if _, err := client.ExportModel(t.Context(), conn, "missing", 0, true); status.Code(err) != codes.NotFound {
		t.Errorf("export of an unknown job: %v", err)
	}
	if _, err := client.ExportModel(t.Context(), conn, "lora-naive", 9, false); status.Code(err) != codes.NotFound {
		t.Errorf("export of a round not committed: %v", err)
	}

	// LoRA, distributed DP and secure aggregation together: the workers
	// clip and noise their adapters' update, mask it, and the leader
	// unmasks the adapters' sum; every round verifies and commits its ε.
	t.Run("dp-secagg", func(t *testing.T) {
		SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{
			Name: "lora-private", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 2, ClientsPerRound: 3, RoundTimeoutSeconds: 120, Evaluate: true,
			Lora:   &pb.LoRASpec{Rank: uint32(l.Rank), Alpha: l.Alpha},
			Dp:     &pb.DPSpec{NoiseMultiplier: 0.3, ClipNorm: 1, Distributed: true},
			Secagg: &pb.SecAggSpec{PhaseTimeoutSeconds: 10},
			Train:  &pb.TrainConfig{LocalEpochs: 1, BatchSize: 32, LearningRate: 0.05, Momentum: 0.5},
		}, base)
		j := WaitDoneOn(t, c, "lora-private", 2*time.Minute)
		if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 2 {
			t.Fatalf("job ended %s after %d rounds: %s", j.Status, len(j.History), j.Error)
		}
		for _, r := range j.History {
			verifyRound(t, conn, "lora-private", r.Number)
			for _, u := range r.Accepted {
				if n, _ := c.BlobSize(u.Blob); n != int64(adapterBytes) {
					t.Errorf("round %d: masked update of %d bytes, the adapters are %d", r.Number, n, adapterBytes)
				}
			}
			if r.Secagg == nil || !(r.Metrics["dp_epsilon"] > 0) {
				t.Errorf("round %d: secagg %v, ε %v", r.Number, r.Secagg != nil, r.Metrics["dp_epsilon"])
			}
		}
	})

	// Updates of the wrong shape are refused with a clear reason: a worker
	// (here the test, speaking for a selected worker that never trains)
	// sending a whole model's delta, or adapters of another rank.
	StartWorkerWith(t, worker.Config{ID: "idle", Join: []string{c.GossipAddr()}, Labels: map[string]string{"pool": "idle"}}, blockingTrainer{})
	WaitFor(t, 10*time.Second, "the idle worker in the roster", func() bool { return len(c.FSM().Workers()) == 4 })
	SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{
		Name: "lora-shapes", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 1, ClientsPerRound: 1, RoundTimeoutSeconds: 120,
		Selector: map[string]string{"pool": "idle"}, Lora: &pb.LoRASpec{Rank: 4},
	}, base)
	var round *pb.Round
	WaitFor(t, 10*time.Second, "the round to open", func() bool {
		j, _ := c.FSM().Job("lora-shapes")
		round = j.OpenRound
		return round != nil
	})
	wk := rpcpb.NewWorkerClient(conn)
	rank2, _ := lora.Config{Rank: 2}.Layout(arch)
	for _, tc := range []struct {
		name  string
		delta tensor.Set
		code  codes.Code
		want  string
	}{
		{"whole model", arch.Layout(), codes.ResourceExhausted, "rank-4 adapters"},
		{"rank 2", rank2, codes.InvalidArgument, "rank-4 adapters"},
	} {
		payload, _ := tensor.Marshal(tc.delta, tensor.F32)
		_, err := wk.SubmitUpdate(t.Context(), &pb.SubmitUpdateRequest{WorkerId: "idle", Job: "lora-shapes", Round: round.Number, BaseModel: round.BaseModel,
			Codec: "fp32", Payload: payload, Samples: 10, Attempt: round.Attempt})
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %s naming %q", tc.name, err, tc.code, tc.want)
		}
	}
	j, _ := c.FSM().Job("lora-shapes")
	if len(j.OpenRound.GetUpdates()) != 0 {
		t.Errorf("refused updates were recorded: %v", j.OpenRound.Updates)
	}
	payload, _ := tensor.Marshal(adLayout, tensor.F32)
	if _, err := wk.SubmitUpdate(t.Context(), &pb.SubmitUpdateRequest{WorkerId: "idle", Job: "lora-shapes", Round: round.Number, BaseModel: round.BaseModel,
		Codec: "fp32", Payload: payload, Samples: 10, Attempt: round.Attempt}); err != nil {
		t.Errorf("an update of the adapters' shape is refused: %v", err)
	}
}

// blockingTrainer never finishes a task (until its round ends).
type blockingTrainer struct{}

func (blockingTrainer) Train(ctx context.Context, _ worker.Input, _ *pb.Task) (worker.Result, error) {
	<-ctx.Done()
	return worker.Result{}, ctx.Err()
}

func (blockingTrainer) Close() {}
