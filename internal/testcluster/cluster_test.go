package testcluster

import (
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// TestFederatedJobInProcess runs 1 coordinator and 3 gossip-discovered
// workers in-process and checks that a short job commits every round and
// improves test accuracy.
func TestFederatedJobInProcess(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{})
	parts, _ := dataset.Partition{Kind: "dirichlet", Alpha: 1, Seed: 1}.Split(train.Y, 10, 20)
	for i, id := range []string{"w1", "w2", "w3"} {
		StartWorker(t, id, []string{c.GossipAddr()}, train.Subset(parts[i]), map[string]string{"region": "eu"})
	}
	WaitFor(t, 10*time.Second, "3 workers in the roster", func() bool { return len(c.FSM().Workers()) == 3 })
	arch, _ := model.Lookup("mnist-mlp-small")
	pool := client.NewPool()
	defer pool.Close()
	job := SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{
		Name: "t1", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 3, ClientsPerRound: 3, MinUpdates: 2,
		RoundTimeoutSeconds: 60, Evaluate: true, Selector: map[string]string{"region": "eu"},
		Train: &pb.TrainConfig{LocalEpochs: 1, BatchSize: 32, LearningRate: 0.1, Momentum: 0.5},
	}, arch.Init(7))
	baseAcc := job.BaseMetrics["test_accuracy"]
	WaitFor(t, 120*time.Second, "job done", func() bool {
		j, _ := c.FSM().Job("t1")
		return j.Status == pb.JobStatus_JOB_STATUS_DONE
	})
	j, _ := c.FSM().Job("t1")
	if len(j.History) != 3 {
		t.Fatalf("%d rounds committed, want 3", len(j.History))
	}
	for i, r := range j.History {
		if r.Number != uint32(i+1) || r.Updates < 2 {
			t.Errorf("round %d: number %d with %d updates", i+1, r.Number, r.Updates)
		}
	}
	final := j.History[2].Metrics["test_accuracy"]
	t.Logf("test accuracy %.3f -> %.3f", baseAcc, final)
	if final < baseAcc+0.3 || final < 0.8 {
		t.Errorf("accuracy %.3f -> %.3f: federated training did not improve the model enough", baseAcc, final)
	}

	// A robust rule with norm clipping, chosen in the job spec; its scores
	// reach the ledger in the committed rounds.
	SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{
		Name: "t2", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 2, ClientsPerRound: 3, RoundTimeoutSeconds: 60, Evaluate: true,
		Aggregator: "median", AggregatorParams: &pb.AggregatorParams{ClipNorm: 5}, ServerOptimizer: &pb.ServerOptimizer{Name: "fedavgm", Beta1: 0.5},
		Train: &pb.TrainConfig{LocalEpochs: 1, BatchSize: 32, LearningRate: 0.1, Momentum: 0.5},
	}, arch.Init(7))
	WaitFor(t, 120*time.Second, "robust job done", func() bool {
		j, _ := c.FSM().Job("t2")
		return j.Status == pb.JobStatus_JOB_STATUS_DONE
	})
	j2, _ := c.FSM().Job("t2")
	for _, r := range j2.History {
		if len(r.Scores) != int(r.Updates) {
			t.Errorf("round %d: %d scores for %d updates", r.Number, len(r.Scores), r.Updates)
		}
	}
	if acc := j2.History[1].Metrics["test_accuracy"]; acc < 0.7 {
		t.Errorf("median+clip job reached only %.3f", acc)
	}

	// Compressed updates with error feedback: top-5% + int8.
	SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{
		Name: "t3", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 3, ClientsPerRound: 3, RoundTimeoutSeconds: 60, Evaluate: true,
		Codec: "topk=0.05+int8", Train: &pb.TrainConfig{LocalEpochs: 1, BatchSize: 32, LearningRate: 0.1, Momentum: 0.5},
	}, arch.Init(7))
	WaitFor(t, 120*time.Second, "compressed job done", func() bool {
		j, _ := c.FSM().Job("t3")
		return j.Status == pb.JobStatus_JOB_STATUS_DONE
	})
	j3, _ := c.FSM().Job("t3")
	if acc := j3.History[2].Metrics["test_accuracy"]; acc < 0.7 {
		t.Errorf("top-5%%+int8 job reached only %.3f", acc)
	}
	if j2.History[1].OptimizerState == "" {
		t.Error("fedavgm committed no optimizer state")
	}
	// Every round of every job recomputes to its committed model.
	conn, _ := pool.Conn(c.GRPCAddr())
	for _, j := range c.FSM().Jobs() {
		for _, r := range j.History {
			v, err := rpcpb.NewAdminClient(conn).VerifyRound(t.Context(), &pb.VerifyRoundRequest{Job: j.Spec.Name, Round: r.Number})
			if err != nil || !v.Match {
				t.Errorf("verify %s round %d: %v %v", j.Spec.Name, r.Number, v, err)
			}
		}
	}
}
