package testcluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
)

// TestDPJob runs DP-FedAvg jobs on a real coordinator: every round's
// noise is recomputed by verify (drawn from the committed seed), the ε
// spent grows round by round in the history, and a job with a budget
// stops before a round would pass it, saying so.
func TestDPJob(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{HTTPAddr: "127.0.0.1:0"})
	parts, _ := dataset.Partition{Kind: "iid", Seed: 1}.Split(train.Y, 10, 30)
	for i := range 4 {
		StartWorker(t, "dp-"+string(rune('a'+i)), []string{c.GossipAddr()}, train.Subset(parts[i]), nil)
	}
	WaitFor(t, 10*time.Second, "4 workers in the roster", func() bool { return len(c.FSM().Workers()) == 4 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	spec := func(name string, rounds uint32, budget float64) *pb.JobSpec {
		return &pb.JobSpec{Name: name, Model: "mnist-mlp-small", Dataset: "mnist", Rounds: rounds, ClientsPerRound: 2, RoundTimeoutSeconds: 60, Evaluate: true,
			Dp:    &pb.DPSpec{NoiseMultiplier: 1, ClipNorm: 0.5, Epsilon: budget},
			Train: &pb.TrainConfig{LocalSteps: 5, BatchSize: 16, LearningRate: 0.1}}
	}
	SubmitJob(t, pool, c.GRPCAddr(), spec("dp", 3, 0), arch.Init(1))
	j := WaitDoneOn(t, c, "dp", 2*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 3 {
		t.Fatalf("dp job ended %v after %d rounds: %s", j.Status, len(j.History), j.Error)
	}
	conn, err := pool.Conn(c.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	prev := 0.0
	for _, r := range j.History {
		verifyRound(t, conn, "dp", r.Number)
		eps := r.Metrics["dp_epsilon"]
		if r.Selected != 2 || r.Eligible != 4 || !(eps > prev) {
			t.Errorf("round %d: %d of %d selected, ε %v after %v", r.Number, r.Selected, r.Eligible, eps, prev)
		}
		prev = eps
	}
	// ε is 3.89 after one round at q = 0.5, σ = 1, and 5.38 after two: a budget of 5 allows one.
	SubmitJob(t, pool, c.GRPCAddr(), spec("dp-budget", 5, 5), arch.Init(1))
	b := WaitDoneOn(t, c, "dp-budget", 2*time.Minute)
	if len(b.History) != 1 || !strings.Contains(b.Error, "privacy budget reached: round 2 would spend ε") {
		t.Errorf("budgeted job: %d rounds, %q", len(b.History), b.Error)
	}
	// Adaptive clipping from a clip far below the updates' norms: every
	// round records the clip it used and the next, which rises; verify
	// recomputes each round at its own clip.
	ad := spec("dp-adaptive", 3, 0)
	ad.Dp.ClipNorm, ad.Dp.AdaptiveClip, ad.Dp.CountNoise = 0.01, true, 1
	SubmitJob(t, pool, c.GRPCAddr(), ad, arch.Init(1))
	aj := WaitDoneOn(t, c, "dp-adaptive", 2*time.Minute)
	if aj.Status != pb.JobStatus_JOB_STATUS_DONE || len(aj.History) != 3 {
		t.Fatalf("adaptive job ended %v after %d rounds: %s", aj.Status, len(aj.History), aj.Error)
	}
	for i, r := range aj.History {
		verifyRound(t, conn, "dp-adaptive", r.Number)
		m := r.Metrics
		if i > 0 && m["dp_clip"] != aj.History[i-1].Metrics["dp_clip_next"] || !(m["dp_clip_next"] > m["dp_clip"]) {
			t.Errorf("adaptive round %d: clip %v, next %v (previous next %v)", r.Number, m["dp_clip"], m["dp_clip_next"], aj.History[max(i-1, 0)].Metrics["dp_clip_next"])
		}
	}
	_, metrics := get(t, "http://"+c.HTTPAddr()+"/metrics")
	for _, want := range []string{fmt.Sprintf(`fedtune_job_dp_epsilon{job="dp"} %v`, j.History[2].Metrics["dp_epsilon"]), `fedtune_job_dp_epsilon_budget{job="dp-budget"} 5`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	t.Logf("ε after each round: %.3f %.3f %.3f; budgeted job: %s", j.History[0].Metrics["dp_epsilon"], j.History[1].Metrics["dp_epsilon"], j.History[2].Metrics["dp_epsilon"], b.Error)
}

// WaitDoneOn waits until a job on c is no longer running and returns it.
func WaitDoneOn(t *testing.T, c *coordinator.Coordinator, name string, timeout time.Duration) *pb.Job {
	t.Helper()
	var j *pb.Job
	WaitFor(t, timeout, "job "+name+" to end", func() bool {
		var ok bool
		j, ok = c.FSM().Job(name)
		return ok && j.Status != pb.JobStatus_JOB_STATUS_RUNNING
	})
	return j
}

// TestDPJobFailover runs a DP-FedAvg job on three coordinators and kills
// the leader during round 2: the job completes, every replica holds the same
// history with the same ε after every round, and every round's noisy
// aggregate verifies on the new leader.
func TestDPJobFailover(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{})
	startWorkers(t, cl.GossipAddrs(), 4)
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == 4 })
	const rounds = 4
	spec := haJob("dp-ha", rounds, 2)
	spec.Dp = &pb.DPSpec{NoiseMultiplier: 1, ClipNorm: 0.5}
	submit(t, cl, spec)
	cl.WaitRound("dp-ha", 1, 60*time.Second)
	WaitFor(t, 30*time.Second, "round 2 in progress", func() bool {
		j := cl.Job("dp-ha")
		return j.OpenRound != nil || j.Status != pb.JobStatus_JOB_STATUS_RUNNING
	})
	old := cl.Leader()
	cl.Crash(old)
	nl := cl.WaitForLeader(15 * time.Second)
	cl.Start(old)
	j := cl.WaitDone("dp-ha", 2*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	checkHistory(t, cl, j, rounds)
	pool := client.NewPool()
	defer pool.Close()
	nl = cl.WaitForLeader(15 * time.Second)
	conn, err := pool.Conn(nl.C.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range j.History {
		verifyRound(t, conn, "dp-ha", r.Number)
		if _, ok := r.Metrics["dp_noise_std"]; !ok {
			t.Errorf("round %d has no dp_noise_std: no noise added?", r.Number)
		}
	}
	want, err := round.DPEpsilon(j)
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range cl.Up() {
		WaitFor(t, 15*time.Second, "every round on "+nd.Name, func() bool {
			rj, ok := nd.C.FSM().Job("dp-ha")
			return ok && len(rj.History) == rounds
		})
		rj, _ := nd.C.FSM().Job("dp-ha")
		for i, r := range rj.History {
			if r.Metrics["dp_epsilon"] != j.History[i].Metrics["dp_epsilon"] {
				t.Errorf("%s: round %d ε %v, the leader's %v", nd.Name, r.Number, r.Metrics["dp_epsilon"], j.History[i].Metrics["dp_epsilon"])
			}
		}
	}
	if got := j.History[rounds-1].Metrics["dp_epsilon"]; got != want {
		t.Errorf("committed ε %v, recomputed from the history %v", got, want)
	}
	t.Logf("killed %s during round 2; ε %.3f after %d rounds, every round verified on %s", old.Name, want, rounds, nl.Name)
}

// TestDistributedDPWithSecAgg runs DP-FedAvg with distributed noise under
// secure aggregation: the workers clip and noise, the coordinators add no
// noise and see only masked updates; every round verifies and commits its
// ε, and the noised model still learns.
func TestDistributedDPWithSecAgg(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{})
	parts, _ := dataset.Partition{Kind: "iid", Seed: 2}.Split(train.Y, 10, 30)
	for i := range 6 {
		StartWorker(t, fmt.Sprintf("dd-%d", i), []string{c.GossipAddr()}, train.Subset(parts[i]), nil)
	}
	WaitFor(t, 10*time.Second, "6 workers in the roster", func() bool { return len(c.FSM().Workers()) == 6 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{Name: "dd", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 3, ClientsPerRound: 6, MinUpdates: 3,
		RoundTimeoutSeconds: 60, Evaluate: true, Dp: &pb.DPSpec{NoiseMultiplier: 0.1, ClipNorm: 1, Distributed: true},
		Secagg: &pb.SecAggSpec{ClipRange: 2, PhaseTimeoutSeconds: 10},
		Train:  &pb.TrainConfig{LocalSteps: 20, BatchSize: 32, LearningRate: 0.1, Momentum: 0.5}}, arch.Init(1))
	j := WaitDoneOn(t, c, "dd", 2*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 3 {
		t.Fatalf("job ended %v after %d rounds: %s", j.Status, len(j.History), j.Error)
	}
	conn, err := pool.Conn(c.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	prev := 0.0
	for _, r := range j.History {
		verifyRound(t, conn, "dd", r.Number)
		if _, ok := r.Metrics["dp_noise_std"]; ok {
			t.Errorf("round %d: the coordinator added noise to a distributed-DP job", r.Number)
		}
		if eps := r.Metrics["dp_epsilon"]; !(eps > prev) || r.Secagg == nil {
			t.Errorf("round %d: ε %v after %v, secagg %v", r.Number, eps, prev, r.Secagg != nil)
		}
		prev = r.Metrics["dp_epsilon"]
	}
	if acc := j.History[2].Metrics["test_accuracy"]; acc < j.BaseMetrics["test_accuracy"]+0.1 {
		t.Errorf("accuracy %.3f → %.3f", j.BaseMetrics["test_accuracy"], acc)
	}
	t.Logf("distributed DP σ 0.1 under SecAgg: ε %.3f after 3 rounds, accuracy %.3f → %.3f", prev, j.BaseMetrics["test_accuracy"], j.History[2].Metrics["test_accuracy"])
}

// verifyRound asserts that round r of job verifies on the node conn reaches.
func verifyRound(t *testing.T, conn grpc.ClientConnInterface, job string, r uint32) {
	t.Helper()
	v, err := rpcpb.NewAdminClient(conn).VerifyRound(t.Context(), &pb.VerifyRoundRequest{Job: job, Round: r})
	if err != nil || !v.Match {
		t.Errorf("%s round %d does not verify: %v %v", job, r, v, err)
	}
}
