package main

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/netlab"
	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
)

// labNode is a coordinator process on a host of a network lab.
type labNode struct {
	host  *netlab.Host
	name  string
	proc  *tc.Proc
	admin pb.AdminClient // dialled from the observer host
	self  pb.AdminClient // dialled from its own host (reachable while it is cut off)
}

func (n *labNode) grpcAddr() string { return n.host.Addr(7070) }

// adminFrom returns an Admin client to n's gRPC address whose connections
// are made from host's namespace.
func adminFrom(t *testing.T, host *netlab.Host, addr string) pb.AdminClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(host.Dial),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(client.MaxMessage)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewAdminClient(conn)
}

func raftStatus(a pb.AdminClient) (*pb.ClusterStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return a.ClusterStatus(ctx, &pb.ClusterStatusRequest{})
}

func jobOf(a pb.AdminClient, name string) *pb.Job {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := a.JobStatus(ctx, &pb.JobStatusRequest{Name: name})
	if err != nil {
		return nil
	}
	return resp.Job
}

// committed returns a job's committed rounds (none for no job).
func committed(j *pb.Job) []*pb.RoundRecord {
	if j == nil {
		return nil
	}
	return j.History
}

// TestNetworkPartition runs three coordinators and three workers, each in
// a network namespace of its own, with real addresses on one bridge, and
// cuts the leader's link during a job: every protocol (Raft, gossip, gRPC
// from the workers) loses it at once, with no connection reset. The two
// others elect a leader and, with the workers, commit further rounds; the
// cut-off node steps down and commits nothing; the others' gossip marks it
// failed. Healed, it rejoins as a follower, the three hold one history,
// and the job ends with every round committed once, numbered without a
// gap.
func TestNetworkPartition(t *testing.T) {
	lab := netlab.New(t, "c1", "c2", "c3", "w1", "w2", "w3", "obs")
	obs := lab.Host("obs")
	var nodes []*labNode
	for i := 1; i <= 3; i++ {
		h := lab.Host(fmt.Sprint("c", i))
		nodes = append(nodes, &labNode{host: h, name: fmt.Sprint("coord-", i)})
	}
	for _, n := range nodes {
		args := []string{"netns", "exec", n.host.NS, binary, "coordinator", "--id", n.name, "--data-dir", t.TempDir(),
			"--grpc-addr", n.grpcAddr(), "--raft-addr", n.host.Addr(7071), "--gossip-addr", n.host.Addr(7946),
			"--bootstrap-expect", "3", "--fast"}
		for _, o := range nodes {
			if o != n {
				args = append(args, "--join", o.host.Addr(7946))
			}
		}
		n.proc = tc.StartProc(t, "ip", n.name, args...)
		n.admin = adminFrom(t, obs, n.grpcAddr())
		n.self = adminFrom(t, n.host, n.grpcAddr())
	}
	leaderOf := func(among []*labNode) *labNode {
		for _, n := range among {
			if st, err := raftStatus(n.admin); err == nil && st.State == "Leader" {
				return n
			}
		}
		return nil
	}
	var leader *labNode
	tc.WaitFor(t, 30*time.Second, "a leader", func() bool { leader = leaderOf(nodes); return leader != nil })
	for i := 1; i <= 3; i++ {
		h := lab.Host(fmt.Sprint("w", i))
		args := []string{"netns", "exec", h.NS, binary, "worker", "--id", fmt.Sprint("w", i), "--gossip-addr", h.Addr(7946),
			"--fast", "--poll-wait", "2s", "--state-dir", t.TempDir(), "--num-partitions", "3", "--partition-index", fmt.Sprint(i - 1),
			"--partition", "dirichlet", "--alpha", "1", "--max-examples", "2000"}
		for _, n := range nodes {
			args = append(args, "--join", n.host.Addr(7946))
		}
		tc.StartProc(t, "ip", h.Name, args...)
	}
	tc.WaitFor(t, 30*time.Second, "3 workers", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := leader.admin.ListWorkers(ctx, &pb.ListWorkersRequest{})
		return err == nil && len(resp.Alive) == 3
	})
	const rounds = 24
	submit := obs.Command(binary, submitArgs(leader.grpcAddr(), "part", rounds, 3, "--min-updates", "2", "--steps", "20", "--round-timeout", "10s", "--seed", "3")...)
	if out, err := submit.CombinedOutput(); err != nil {
		t.Fatalf("job submit: %v\n%s", err, out)
	}
	tc.WaitFor(t, time.Minute, "2 committed rounds", func() bool { return len(committed(jobOf(leader.admin, "part"))) >= 2 })

	old := leader
	others := slices.DeleteFunc(slices.Clone(nodes), func(n *labNode) bool { return n == old })
	lab.Cut(old.host)
	cut := time.Now()
	var nl *labNode
	tc.WaitFor(t, 20*time.Second, "a leader on the majority side", func() bool { nl = leaderOf(others); return nl != nil })
	elected := time.Since(cut)
	tc.WaitFor(t, 20*time.Second, old.name+" stepping down", func() bool {
		st, err := raftStatus(old.self)
		return err == nil && st.State != "Leader"
	})
	minority := committed(jobOf(old.self, "part"))
	// Workers must notice on their own that their coordinator is gone: its
	// connections stall with no reset. Before they watched it in gossip,
	// they waited out their calls (and the new leader rescheduled round
	// after round with no updates) for about a minute.
	tc.WaitFor(t, 30*time.Second, "2 more rounds on the majority side", func() bool {
		return len(committed(jobOf(nl.admin, "part"))) >= len(minority)+2
	})
	majority := len(committed(jobOf(nl.admin, "part")))
	tc.WaitFor(t, 20*time.Second, "the majority's gossip marking "+old.name+" failed", func() bool {
		st, err := raftStatus(nl.admin)
		if err != nil {
			return false
		}
		for _, s := range st.Servers {
			if s.Id == old.name {
				return !s.Alive
			}
		}
		return false
	})
	if got := committed(jobOf(old.self, "part")); len(got) != len(minority) {
		t.Errorf("the cut-off node's history moved from %d to %d rounds", len(minority), len(got))
	}
	t.Logf("cut %s off: %s elected in %v; in %v the majority went from %d to %d rounds, the minority stayed at %d",
		old.name, nl.name, elected.Round(time.Millisecond), time.Since(cut).Round(time.Second), len(minority), majority, len(minority))

	lab.Heal(old.host)
	healed := time.Now()
	tc.WaitFor(t, 30*time.Second, old.name+" following again", func() bool {
		st, err := raftStatus(old.self)
		l := leaderOf(nodes)
		return err == nil && l != nil && st.State == "Follower" && st.LeaderId == l.name
	})
	t.Logf("healed: %s follows again after %v", old.name, time.Since(healed).Round(time.Millisecond))

	var final *pb.Job
	tc.WaitFor(t, 3*time.Minute, "the job", func() bool {
		l := leaderOf(nodes)
		if l == nil {
			return false
		}
		final = jobOf(l.admin, "part")
		return final != nil && final.Status != pb.JobStatus_JOB_STATUS_RUNNING
	})
	if final.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", final.Status, final.Error)
	}
	if len(final.History) != rounds {
		t.Fatalf("%d rounds committed, want %d", len(final.History), rounds)
	}
	for i, r := range final.History {
		if r.Number != uint32(i+1) {
			t.Errorf("round %d is numbered %d", i+1, r.Number)
		}
		if len(r.Accepted) < 2 {
			t.Errorf("round %d aggregated %d updates", r.Number, len(r.Accepted))
		}
	}
	for i, r := range minority {
		if !proto.Equal(r, final.History[i]) {
			t.Errorf("round %d, committed before the cut, changed", r.Number)
		}
	}
	tc.WaitFor(t, 30*time.Second, "every coordinator holding the final history", func() bool {
		for _, n := range nodes {
			j := jobOf(n.admin, "part")
			if j == nil || j.Status != final.Status || !slices.EqualFunc(j.History, final.History, func(a, b *pb.RoundRecord) bool { return proto.Equal(a, b) }) {
				return false
			}
		}
		return true
	})
	if acc, base := final.History[rounds-1].Metrics["test_accuracy"], final.BaseMetrics["test_accuracy"]; acc < base+0.3 {
		t.Errorf("accuracy %.3f -> %.3f", base, acc)
	}
}
