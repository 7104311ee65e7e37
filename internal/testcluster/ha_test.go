package testcluster

import (
	"flag"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
)

// haJob is a short job for cluster tests: small model, few steps per round.
func haJob(name string, rounds uint32, clients uint32) *pb.JobSpec {
	return &pb.JobSpec{Name: name, Model: "mnist-mlp-small", Dataset: "mnist", Rounds: rounds, ClientsPerRound: clients,
		RoundTimeoutSeconds: 30, Evaluate: true, Train: &pb.TrainConfig{LocalSteps: 25, BatchSize: 32, LearningRate: 0.1, Momentum: 0.5}}
}

func startWorkers(t *testing.T, join []string, n int) []*WorkerHandle {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	parts, _ := dataset.Partition{Kind: "dirichlet", Alpha: 1, Seed: 3}.Split(train.Y, 10, 40)
	var hs []*WorkerHandle
	for i := range n {
		hs = append(hs, StartWorker(t, fmt.Sprintf("w%d", i+1), join, train.Subset(parts[i]), nil))
	}
	return hs
}

func submit(t *testing.T, cl *Cluster, spec *pb.JobSpec) *pb.Job {
	leader := cl.WaitForLeader(20 * time.Second)
	pool := client.NewPool()
	t.Cleanup(pool.Close)
	arch, _ := model.Lookup(spec.Model)
	return SubmitJob(t, pool, leader.C.GRPCAddr(), spec, arch.Init(1))
}

// checkHistory asserts rounds 1..n with no gap or repeat, and that every
// committed model blob is held, under the hash the log names, by every
// running coordinator.
func checkHistory(t *testing.T, cl *Cluster, j *pb.Job, n int) {
	t.Helper()
	if len(j.History) != n {
		t.Fatalf("%d rounds committed, want %d", len(j.History), n)
	}
	for i, r := range j.History {
		if r.Number != uint32(i+1) {
			t.Fatalf("history[%d] is round %d: gap or repeat", i, r.Number)
		}
		seen := map[string]bool{}
		for _, w := range r.Workers {
			if seen[w] {
				t.Fatalf("round %d counts worker %s twice", r.Number, w)
			}
			seen[w] = true
		}
	}
	checkReplicas(t, cl, j)
}

// checkReplicas asserts every committed model blob is held by every
// running coordinator, and every replica applied the same history.
func checkReplicas(t *testing.T, cl *Cluster, j *pb.Job) {
	t.Helper()
	WaitFor(t, 15*time.Second, "every model blob on every coordinator", func() bool {
		for _, nd := range cl.Up() {
			for _, r := range j.History {
				if !nd.C.HasBlob(r.Model) {
					return false
				}
			}
		}
		return true
	})
	// Every replica applied the same history.
	WaitFor(t, 15*time.Second, "replicas agree", func() bool {
		for _, nd := range cl.Up() {
			other, ok := nd.C.FSM().Job(j.Spec.Name)
			if !ok || !proto.Equal(stripOpen(other), stripOpen(j)) {
				return false
			}
		}
		return true
	})
}

func stripOpen(j *pb.Job) *pb.Job {
	c := proto.Clone(j).(*pb.Job)
	c.OpenRound = nil
	return c
}

// TestClusterForms: three coordinators find each other by gossip and form
// one Raft cluster of three voters.
func TestClusterForms(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{})
	st := cl.Leader().C.Status()
	if len(st.Servers) != 3 {
		t.Fatalf("configuration %v, want 3 servers", st.Servers)
	}
	for _, s := range st.Servers {
		if s.Suffrage != "Voter" || !s.Alive || s.GrpcAddr == "" {
			t.Errorf("server %v: want an alive voter with a gRPC address", s)
		}
	}
}

// TestLeaderFailoverMidJob kills the leader twice in the middle of rounds;
// the job completes with no gap, no repeat and every model everywhere.
func TestLeaderFailoverMidJob(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{})
	startWorkers(t, cl.GossipAddrs(), 3)
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == 3 })
	const rounds = 6
	submit(t, cl, haJob("ha", rounds, 3))
	for _, after := range []int{1, 3} {
		j := cl.WaitRound("ha", after, 60*time.Second)
		WaitFor(t, 30*time.Second, "a round in progress", func() bool {
			j = cl.Job("ha")
			return j.OpenRound != nil || j.Status != pb.JobStatus_JOB_STATUS_RUNNING
		})
		old := cl.Leader()
		if old == nil {
			t.Fatal("no leader")
		}
		start := time.Now()
		cl.Crash(old)
		nl := cl.WaitForLeader(15 * time.Second)
		t.Logf("killed leader %s after round %d; %s leads after %v", old.Name, len(j.History), nl.Name, time.Since(start).Round(time.Millisecond))
		cl.Start(old)
	}
	j := cl.WaitDone("ha", 2*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	checkHistory(t, cl, j, rounds)
	if acc := j.History[rounds-1].Metrics["test_accuracy"]; acc < j.BaseMetrics["test_accuracy"]+0.3 {
		t.Errorf("accuracy %.3f -> %.3f", j.BaseMetrics["test_accuracy"], acc)
	}
}

var partitionFor = flag.Duration("chaos.partition", 0, "how long TestPartitionedLeader keeps the leader cut off (0: until the majority committed 2 rounds)")

// TestPartitionedLeader cuts the leader off from the other coordinators
// (not from its workers): the minority commits nothing, the majority elects
// a leader and goes on, and after healing all agree on one history.
func TestPartitionedLeader(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{})
	startWorkers(t, cl.GossipAddrs(), 3)
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == 3 })
	submit(t, cl, haJob("part", 40, 3))
	cl.WaitRound("part", 2, 60*time.Second)
	old := cl.Leader()
	cl.Net.Partition(old.Name)
	cut := time.Now()
	// The majority elects a new leader and commits more rounds.
	var nl *Node
	WaitFor(t, 15*time.Second, "a leader on the majority side", func() bool {
		for _, nd := range cl.Up() {
			if nd != old && nd.C.IsLeader() {
				nl = nd
				return true
			}
		}
		return false
	})
	t.Logf("partitioned %s; %s leads after %v", old.Name, nl.Name, time.Since(cut).Round(time.Millisecond))
	WaitFor(t, 10*time.Second, "old leader steps down", func() bool { return !old.C.IsLeader() })
	minority, _ := old.C.FSM().Job("part")
	jm, _ := nl.C.FSM().Job("part")
	WaitFor(t, 60*time.Second, "majority commits 2 more rounds", func() bool {
		jm, _ = nl.C.FSM().Job("part")
		return len(jm.History) >= len(minority.History)+2
	})
	if rest := *partitionFor - time.Since(cut); rest > 0 {
		time.Sleep(rest)
		jm, _ = nl.C.FSM().Job("part")
	}
	if j, _ := old.C.FSM().Job("part"); len(j.History) != len(minority.History) {
		t.Errorf("the minority committed rounds while cut off: %d -> %d", len(minority.History), len(j.History))
	}
	t.Logf("cut off for %v: minority stayed at %d rounds, majority reached %d", time.Since(cut).Round(time.Second), len(minority.History), len(jm.History))
	cl.Net.Heal()
	healed := cl.WaitForLeader(20 * time.Second)
	t.Logf("healed; %s leads", healed.Name)
	WaitFor(t, 30*time.Second, "all three agree", func() bool {
		var ref *pb.Job
		for _, nd := range cl.Up() {
			j, _ := nd.C.FSM().Job("part")
			c := stripOpen(j)
			if ref == nil {
				ref = c
			} else if !proto.Equal(ref, c) {
				return false
			}
		}
		return len(ref.History) > len(jm.History)-1
	})
}

// TestMembershipChanges: a fourth coordinator joins as a non-voter and is
// promoted; a crashed one is removed after the grace period.
func TestMembershipChanges(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{Edit: func(i int, cfg *coordinator.Config) { cfg.ServerGrace = 2 * time.Second }})
	leader := cl.WaitForLeader(10 * time.Second)
	nd := &Node{Name: "coord-4", Cfg: coordinator.Config{NodeID: "coord-4", DataDir: t.TempDir(), GRPCAddr: freeAddrTB(t), GossipAddr: freeAddrTB(t),
		BootstrapExpect: 3, Profile: "local", ServerGrace: 2 * time.Second, Logger: Logger(t)}}
	cl.Nodes = append(cl.Nodes, nd)
	cl.Start(nd)
	suffrage := func(id string) string {
		for _, s := range cl.Leader().C.Status().Servers {
			if s.Id == id {
				return s.Suffrage
			}
		}
		return ""
	}
	WaitFor(t, 20*time.Second, "coord-4 promoted to voter", func() bool { return cl.Leader() != nil && suffrage("coord-4") == "Voter" })
	var victim *Node
	for _, n := range cl.Up() {
		if n != leader && n != nd {
			victim = n
			break
		}
	}
	cl.Crash(victim)
	WaitFor(t, 30*time.Second, victim.Name+" removed", func() bool { return cl.Leader() != nil && suffrage(victim.Name) == "" })
	if n := len(cl.Leader().C.Status().Servers); n != 3 {
		t.Errorf("%d servers after removal, want 3", n)
	}
}

// TestWholeClusterRestart crashes every coordinator mid-job and restarts
// them one by one: the job continues from its last committed round.
func TestWholeClusterRestart(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{})
	startWorkers(t, cl.GossipAddrs(), 3)
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == 3 })
	const rounds = 5
	submit(t, cl, haJob("restart", rounds, 3))
	before := cl.WaitRound("restart", 2, 60*time.Second)
	for _, nd := range cl.Nodes {
		cl.Crash(nd)
	}
	for _, nd := range cl.Nodes {
		time.Sleep(500 * time.Millisecond)
		cl.Start(nd)
	}
	j := cl.WaitDone("restart", 2*time.Minute)
	checkHistory(t, cl, j, rounds)
	for i, r := range before.History {
		if j.History[i].Model != r.Model {
			t.Errorf("round %d changed across the restart", r.Number)
		}
	}
}

// TestFollowerCatchesUpFromSnapshot: a follower down while the others
// commit rounds and compact their logs comes back, receives the leader's
// snapshot (InstallSnapshot, its log is too far behind), and fetches every
// model blob the restored state names.
func TestFollowerCatchesUpFromSnapshot(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{Edit: func(i int, cfg *coordinator.Config) {
		// Small log segments: raft-wal compacts whole segments only.
		cfg.SnapshotThreshold, cfg.TrailingLogs, cfg.WALSegmentBytes = 8, 4, 2048
	}})
	startWorkers(t, cl.GossipAddrs(), 3)
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == 3 })
	var follower *Node
	for _, nd := range cl.Up() {
		if nd != cl.Leader() {
			follower = nd
			break
		}
	}
	cl.Crash(follower)
	const rounds = 6
	submit(t, cl, haJob("snap", rounds, 3))
	j := cl.WaitDone("snap", 2*time.Minute)
	for _, nd := range cl.Up() {
		if err := nd.C.Snapshot(); err != nil {
			t.Fatal(err)
		}
	}
	cl.Start(follower)
	WaitFor(t, 30*time.Second, "the follower to restore the job", func() bool {
		got, ok := follower.C.FSM().Job("snap")
		return ok && proto.Equal(got, j)
	})
	if st := follower.C.Status(); st.LastSnapshotIndex == 0 {
		t.Errorf("follower caught up without a snapshot (applied %d): InstallSnapshot was not exercised", st.AppliedIndex)
	}
	checkHistory(t, cl, j, rounds)
}
