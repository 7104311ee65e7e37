package testcluster

import (
	"context"
	"math"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
	"github.com/fedtune/fedtune/worker"
)

// recorder is the real trainer, keeping a copy of every delta it returns
// by round (the last one, if a restarted worker trains a round again).
type recorder struct {
	*worker.GorgoniaTrainer
	mu     *sync.Mutex
	deltas map[uint32]tensor.Set
}

func (r *recorder) Train(ctx context.Context, in worker.Input, task *pb.Task) (worker.Result, error) {
	res, err := r.GorgoniaTrainer.Train(ctx, in, task)
	if err == nil {
		r.mu.Lock()
		r.deltas[task.Round] = res.Delta.Clone()
		r.mu.Unlock()
	}
	return res, err
}

// TestErrorFeedbackAcrossRestart: a worker sending top-1% + int8 updates
// keeps its error-feedback residual in --state-dir, and after it is
// stopped and started again mid-job, what the coordinator accepted from
// it plus the residual on disk still adds up to everything it trained:
// nothing was lost or counted twice by the restart.
func TestErrorFeedbackAcrossRestart(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{})
	parts, _ := dataset.Partition{Kind: "iid", Seed: 1}.Split(train.Y, 10, 40)
	state := t.TempDir()
	var mu sync.Mutex
	deltas := map[uint32]tensor.Set{}
	start := func() *WorkerHandle {
		r := &recorder{GorgoniaTrainer: worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset(parts[0])}, nil), mu: &mu, deltas: deltas}
		return StartWorkerWith(t, worker.Config{ID: "ef", Join: []string{c.GossipAddr()}, StateDir: state}, r)
	}
	w := start()
	StartWorker(t, "other", []string{c.GossipAddr()}, train.Subset(parts[1]), nil)
	WaitFor(t, 10*time.Second, "2 workers in the roster", func() bool { return len(c.FSM().Workers()) == 2 })
	arch, _ := model.Lookup("mnist-mlp-small")
	pool := client.NewPool()
	defer pool.Close()
	const rounds = 4
	SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{
		Name: "ef", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: rounds, ClientsPerRound: 2, MinUpdates: 2,
		RoundTimeoutSeconds: 60, Codec: "topk=0.01+int8",
		Train: &pb.TrainConfig{LocalEpochs: 1, BatchSize: 32, LearningRate: 0.1, Momentum: 0.5},
	}, arch.Init(3))
	done := func(n int) func() bool {
		return func() bool { j, _ := c.FSM().Job("ef"); return len(j.History) >= n }
	}
	WaitFor(t, 60*time.Second, "2 rounds", done(2))
	w.Stop()
	start()
	WaitFor(t, 120*time.Second, "all rounds", done(rounds))

	// Sum of the updates accepted from "ef", decoded as the coordinator
	// does, and of the deltas it trained for those rounds.
	j, _ := c.FSM().Job("ef")
	cd, _ := codec.New("topk=0.01+int8")
	var sent, trained tensor.Set
	n := 0
	mu.Lock()
	defer mu.Unlock()
	for _, r := range j.History {
		for _, u := range r.Accepted {
			if u.Worker != "ef" {
				continue
			}
			conn, _ := pool.Conn(c.GRPCAddr())
			b, err := client.GetBlob(context.Background(), conn, u.Blob, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			d, err := cd.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if sent.Tensors == nil {
				sent, trained = tensor.ZerosLike(d), tensor.ZerosLike(d)
			}
			sent.AddScaled(1, d)
			trained.AddScaled(1, deltas[r.Number])
			n++
		}
	}
	if n != rounds {
		t.Fatalf("%d updates from the restarted worker accepted over %d rounds", n, rounds)
	}
	res, err := tensor.ReadFile(filepath.Join(state, "residual-ef.safetensors"))
	if err != nil {
		t.Fatalf("residual not kept in the state dir: %v", err)
	}
	if res.Norm() == 0 {
		t.Fatal("residual is zero: top-1% must leave most of the update behind")
	}
	// sent + residual == trained, coordinate by coordinate.
	sent.AddScaled(1, res)
	for k, tt := range trained.Tensors {
		for i, v := range tt.Data {
			if got := sent.Tensors[k].Data[i]; math.Abs(float64(got-v)) > 1e-4*(1+math.Abs(float64(v))) {
				t.Fatalf("%s[%d]: sent+residual %v, trained %v", tt.Name, i, got, v)
			}
		}
	}
	t.Logf("residual norm %.4f of trained %.4f after %d rounds and a restart", res.Norm(), trained.Norm(), rounds)
}
