package testcluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/worker"
)

// TestLeaderCutOffFromGossip restarts a follower with a gossip key the
// others do not hold — cut off from gossip, not from Raft, as a node whose
// gossip port a firewall blocks — and hands it leadership in the middle of
// an async job. It must keep the job going: it takes the rostered workers
// as live (withdrawing no assignment and removing no worker), followers
// send the workers to it by the addresses it recorded in the replicated
// state, and it replicates each new model to peers it finds the same way.
func TestLeaderCutOffFromGossip(t *testing.T) {
	key := func() [][]byte {
		k, err := gossip.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		ks, err := gossip.ParseKeys(k)
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	good := key()
	cl := NewCluster(t, 3, ClusterOptions{Edit: func(_ int, cfg *coordinator.Config) { cfg.GossipKeys = good }})
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	parts, _ := dataset.Partition{Kind: "iid", Seed: 3}.Split(train.Y, 10, 40)
	const workers = 4
	for i := range workers {
		StartWorkerWith(t, worker.Config{ID: fmt.Sprintf("w%d", i+1), Join: cl.GossipAddrs(), GossipKeys: good, SubmitDelay: time.Duration(i) * 150 * time.Millisecond},
			worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset(parts[i])}, nil))
	}
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == workers })
	const versions, k = 10, 2
	submit(t, cl, asyncJob("cut-off", versions, k, 3))
	cl.WaitRound("cut-off", 1, time.Minute)

	var cut *Node
	for _, nd := range cl.Nodes {
		if !nd.C.IsLeader() {
			cut = nd
		}
	}
	cl.Crash(cut)
	cut.Cfg.GossipKeys = key()
	cl.Start(cut)
	WaitFor(t, 20*time.Second, cut.Name+" back in Raft", func() bool {
		_, ok := cut.C.FSM().Job("cut-off")
		return ok && cut.C.Status().LeaderId != ""
	})
	if err := cl.Leader().C.TransferLeadership(cut.Name); err != nil {
		t.Fatal(err)
	}
	cl.WaitForLeader(20 * time.Second)
	if l := cl.Leader(); l != cut {
		t.Fatalf("%v leads, want %s", l, cut.Name)
	}
	if seen := cut.C.AliveWorkers(); len(seen) != 0 {
		t.Fatalf("%s's gossip sees workers %v: it is not cut off, the test tests nothing", cut.Name, seen)
	}
	at := len(cl.Job("cut-off").History)
	t.Logf("%s leads, cut off from gossip, at version %d of %d", cut.Name, at, versions)

	j := cl.WaitDone("cut-off", 2*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	checkAsyncHistory(t, j, versions, k, 1)
	if l := cl.Leader(); l != cut {
		t.Fatalf("leadership moved to %v during the job; the cut-off leader did not finish it", l)
	}
	if n := len(cut.C.FSM().Workers()); n != workers {
		t.Errorf("roster has %d workers after the cut-off leader's versions, want %d", n, workers)
	}
	if g := metric(t, cut.C, "fedtune_gossip_voters_seen"); g != 1 {
		t.Errorf("fedtune_gossip_voters_seen = %v on the cut-off leader, want 1 (itself)", g)
	}
	if w := metric(t, cut.C, "fedtune_async_tasks_total", "withdrawn"); w != 0 {
		t.Errorf("the cut-off leader withdrew %v assignments from workers it could not see", w)
	}
	checkReplicas(t, cl, j)
}
