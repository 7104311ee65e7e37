package testcluster

import (
	"testing"
	"time"

	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestInmemFailover drives the leader's roster and round logic on three
// coordinators with in-memory Raft and gossip: a worker seen in gossip is
// rostered on every node; a round selecting it opens; the leader crashes
// and a new leader continues the same round from the replicated state (no
// new round), aborts it at its deadline (the worker never reports) and
// plans the next attempt; the crashed node restarts on its Raft state and
// catches up; a worker gone from gossip is removed after the grace period.
func TestInmemFailover(t *testing.T) {
	c := StartInmem(t, 3)
	c.Net.Add(gossip.Member{Name: "w1", Meta: gossip.Meta{Role: gossip.RoleWorker, GRPC: "w1:7070", Labels: map[string]string{"lang": "fr"}}})
	every := func(what string, cond func(n *InmemNode) bool) {
		t.Helper()
		WaitFor(t, 10*time.Second, what, func() bool {
			for _, nd := range c.Nodes {
				if nd.C != nil && !cond(nd) {
					return false
				}
			}
			return true
		})
	}
	every("w1 rostered on every node", func(nd *InmemNode) bool { return len(nd.C.FSM().Workers()) == 1 })

	leader := c.Leader(5 * time.Second)
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	SubmitJob(t, pool, leader.C.GRPCAddr(), &pb.JobSpec{Name: "j", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 3, ClientsPerRound: 1,
		RoundTimeoutSeconds: 2, Selector: map[string]string{"lang": "fr"}}, arch.Init(1))
	open := func(nd *InmemNode) *pb.Round {
		j, ok := nd.C.FSM().Job("j")
		if !ok {
			return nil
		}
		return j.OpenRound
	}
	every("round 1 open on every node", func(nd *InmemNode) bool { return open(nd) != nil })
	first := open(leader)
	if first.Number != 1 || len(first.Selected) != 1 || first.Selected[0] != "w1" {
		t.Fatalf("round %d selected %v, want round 1 selecting w1", first.Number, first.Selected)
	}

	leader.Crash()
	next := c.Leader(5 * time.Second)
	if next == leader {
		t.Fatal("the crashed node still leads")
	}
	if r := open(next); r == nil || r.Number != 1 || r.Attempt != first.Attempt || r.DeadlineUnixNano != first.DeadlineUnixNano {
		t.Fatalf("the new leader's open round is %v, want round 1 attempt %d as committed", r, first.Attempt)
	}
	// w1 never reports: at the deadline the new leader aborts the attempt
	// and opens the next.
	every("round 1 replanned as attempt 1", func(nd *InmemNode) bool { r := open(nd); return r != nil && r.Number == 1 && r.Attempt == 1 })

	leader.Start()
	WaitFor(t, 10*time.Second, "the restarted node to catch up", func() bool {
		r := open(leader)
		return r != nil && r.Attempt >= 1
	})

	c.Net.Remove("w1")
	WaitFor(t, 10*time.Second, "w1 removed after the grace period", func() bool {
		return len(c.Leader(5*time.Second).C.FSM().Workers()) == 0
	})
}
