package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/netlab"
	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

var (
	netnsCut     = flag.Duration("chaos.netns-cut", 20*time.Second, "how long the network-namespace tests keep a host cut off or the network split")
	netnsProfile = flag.String("chaos.netns-profile", "local", "timing profile (local, lan, wan) of the nodes in the network-namespace tests")
)

// labNode is a coordinator process on a host of a network lab.
type labNode struct {
	host  *netlab.Host
	name  string
	proc  *tc.Proc
	admin rpcpb.AdminClient // dialled from the observer host
	self  rpcpb.AdminClient // dialled from its own host (reachable while it is cut off)
}

func (n *labNode) grpcAddr() string { return n.host.Addr(7070) }

// adminFrom returns an Admin client to n's gRPC address whose connections
// are made from host's namespace.
func adminFrom(t *testing.T, host *netlab.Host, addr string) rpcpb.AdminClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(host.Dial),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(client.MaxMessage)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rpcpb.NewAdminClient(conn)
}

func raftStatus(a rpcpb.AdminClient) (*pb.ClusterStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return a.ClusterStatus(ctx, &pb.ClusterStatusRequest{})
}

func jobOf(a rpcpb.AdminClient, name string) *pb.Job {
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

// labCluster is three coordinator and three worker processes, each on a
// host of a network lab, and an observer host for the test's own calls.
type labCluster struct {
	lab   *netlab.Lab
	obs   *netlab.Host
	nodes []*labNode
}

// startLabCluster starts the coordinators and workers, waits for a leader
// and for the three workers in its roster, and submits job name with
// extra job flags.
func startLabCluster(t *testing.T, name string, rounds int, extra ...string) *labCluster {
	t.Helper()
	lab := netlab.New(t, "c1", "c2", "c3", "w1", "w2", "w3", "obs")
	lc := &labCluster{lab: lab, obs: lab.Host("obs")}
	for i := 1; i <= 3; i++ {
		lc.nodes = append(lc.nodes, &labNode{host: lab.Host(fmt.Sprint("c", i)), name: fmt.Sprint("coord-", i)})
	}
	for _, n := range lc.nodes {
		args := []string{"netns", "exec", n.host.NS, binary, "coordinator", "--id", n.name, "--data-dir", t.TempDir(),
			"--grpc-addr", n.grpcAddr(), "--raft-addr", n.host.Addr(7071), "--gossip-addr", n.host.Addr(7946),
			"--bootstrap-expect", "3", "--profile", *netnsProfile, "--worker-grace", "1h"}
		for _, o := range lc.nodes {
			if o != n {
				args = append(args, "--join", o.host.Addr(7946))
			}
		}
		n.proc = tc.StartProc(t, "ip", n.name, args...)
		n.admin = adminFrom(t, lc.obs, n.grpcAddr())
		n.self = adminFrom(t, n.host, n.grpcAddr())
	}
	var leader *labNode
	tc.WaitFor(t, 30*time.Second, "a leader", func() bool { leader = lc.leader(lc.nodes); return leader != nil })
	for i := 1; i <= 3; i++ {
		h := lab.Host(fmt.Sprint("w", i))
		args := []string{"netns", "exec", h.NS, binary, "worker", "--id", h.Name, "--gossip-addr", h.Addr(7946),
			"--profile", *netnsProfile, "--poll-wait", "2s", "--state-dir", t.TempDir(), "--num-partitions", "3", "--partition-index", fmt.Sprint(i - 1),
			"--partition", "dirichlet", "--alpha", "1", "--max-examples", "2000"}
		for _, n := range lc.nodes {
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
	submit := lc.obs.Command(binary, submitArgs(leader.grpcAddr(), name, rounds, 3, extra...)...)
	if out, err := submit.CombinedOutput(); err != nil {
		t.Fatalf("job submit: %v\n%s", err, out)
	}
	return lc
}

// leader returns the node among the given ones that says it leads, asked
// from the observer.
func (lc *labCluster) leader(among []*labNode) *labNode {
	for _, n := range among {
		if st, err := raftStatus(n.admin); err == nil && st.State == "Leader" {
			return n
		}
	}
	return nil
}

// job returns a job as the current leader sees it, or nil.
func (lc *labCluster) job(name string) *pb.Job {
	if l := lc.leader(lc.nodes); l != nil {
		return jobOf(l.admin, name)
	}
	return nil
}

// losesLeadership waits, after old was cut off from others, for a leader
// among others and for old to step down; it returns the new leader and
// old's committed rounds once it stepped down.
func (lc *labCluster) losesLeadership(t *testing.T, job string, old *labNode, others []*labNode) (*labNode, []*pb.RoundRecord) {
	t.Helper()
	var nl *labNode
	tc.WaitFor(t, 20*time.Second, "a leader on the majority side", func() bool { nl = lc.leader(others); return nl != nil })
	tc.WaitFor(t, 20*time.Second, old.name+" stepping down", func() bool {
		st, err := raftStatus(old.self)
		return err == nil && st.State != "Leader"
	})
	return nl, committed(jobOf(old.self, job))
}

// waitWhole waits until every coordinator names one leader and sees every
// coordinator alive in its gossip: after a partition, Raft heals by itself,
// gossip only by rejoining (autopilot would otherwise remove a healthy
// server after --server-grace).
func (lc *labCluster) waitWhole(t *testing.T) {
	t.Helper()
	tc.WaitFor(t, 30*time.Second, "one leader, every coordinator alive in every coordinator's gossip", func() bool {
		l := lc.leader(lc.nodes)
		if l == nil {
			return false
		}
		for _, n := range lc.nodes {
			st, err := raftStatus(n.admin)
			if err != nil || st.LeaderId != l.name || len(st.Servers) != 3 {
				return false
			}
			for _, s := range st.Servers {
				if !s.Alive {
					return false
				}
			}
		}
		return true
	})
}

// waitDone waits for job name to end and checks it committed every round
// once, numbered without a gap, each with at least minUpdates updates.
func (lc *labCluster) waitDone(t *testing.T, name string, rounds, minUpdates int) *pb.Job {
	t.Helper()
	var final *pb.Job
	tc.WaitFor(t, 3*time.Minute, "job "+name, func() bool {
		final = lc.job(name)
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
		if len(r.Accepted) < minUpdates {
			t.Errorf("round %d aggregated %d updates", r.Number, len(r.Accepted))
		}
		seen := map[string]bool{}
		for _, u := range r.Accepted {
			if seen[u.Worker] {
				t.Errorf("round %d counts %s twice", r.Number, u.Worker)
			}
			seen[u.Worker] = true
		}
	}
	tc.WaitFor(t, 30*time.Second, "every coordinator holding the final history", func() bool {
		for _, n := range lc.nodes {
			j := jobOf(n.admin, name)
			if j == nil || j.Status != final.Status || !slices.EqualFunc(j.History, final.History, func(a, b *pb.RoundRecord) bool { return proto.Equal(a, b) }) {
				return false
			}
		}
		return true
	})
	if acc, base := final.History[rounds-1].Metrics["test_accuracy"], final.BaseMetrics["test_accuracy"]; acc < base+0.3 {
		t.Errorf("accuracy %.3f -> %.3f", base, acc)
	}
	return final
}

// TestNetworkPartition runs three coordinators and three workers, each in
// a network namespace of its own, with real addresses on one bridge, and
// cuts the leader's link during a job: every protocol (Raft, gossip, gRPC
// from the workers) loses it at once, with no connection reset. The two
// others elect a leader and, with the workers, commit further rounds; the
// cut-off node steps down and commits nothing; the others' gossip marks it
// failed. Healed after 20 s, it rejoins as a follower and as a gossip
// member, the three hold one history, and the job ends with every round
// committed once, numbered without a gap.
func TestNetworkPartition(t *testing.T) {
	const rounds = 24
	lc := startLabCluster(t, "part", rounds, "--min-updates", "2", "--steps", "20", "--round-timeout", "10s", "--seed", "3")
	nodes, lab := lc.nodes, lc.lab
	leader := lc.leader(nodes)
	tc.WaitFor(t, time.Minute, "2 committed rounds", func() bool { return len(committed(jobOf(leader.admin, "part"))) >= 2 })

	old := leader
	others := slices.DeleteFunc(slices.Clone(nodes), func(n *labNode) bool { return n == old })
	lab.Cut(old.host)
	cut := time.Now()
	nl, minority := lc.losesLeadership(t, "part", old, others)
	elected := time.Since(cut)
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
	t.Logf("cut %s off: %s led and %s had stepped down %v after the cut; in %v the majority went from %d to %d rounds, the minority stayed at %d",
		old.name, nl.name, old.name, elected.Round(time.Millisecond), time.Since(cut).Round(time.Second), len(minority), majority, len(minority))

	// Longer than memberlist gossips to the dead (15 s with --fast): past
	// that, both sides have given up on each other, and only gossip's
	// reconnect loop mends the pool (Raft heals by itself).
	time.Sleep(time.Until(cut.Add(*netnsCut)))
	lab.Heal(old.host)
	healed := time.Now()
	lc.waitWhole(t)
	t.Logf("healed: %s follows, gossip whole, after %v", old.name, time.Since(healed).Round(time.Millisecond))

	final := lc.waitDone(t, "part", rounds, 2)
	for i, r := range minority {
		if !proto.Equal(r, final.History[i]) {
			t.Errorf("round %d, committed before the cut, changed", r.Number)
		}
	}
}

// TestWorkerPartition cuts one worker's link mid-job for 20 s. The other
// two carry the rounds on (the cluster's gossip marks the cut worker failed
// and the planner stops choosing it); an update it trained but could not
// deliver is never counted; healed, it rejoins the gossip pool, is chosen
// and contributes again, and the job commits every round once.
func TestWorkerPartition(t *testing.T) {
	// Enough rounds to outlast the cut (about 2.5 a second here).
	rounds := 40 + 4*int(netnsCut.Seconds())
	lc := startLabCluster(t, "wpart", rounds, "--min-updates", "2", "--steps", "20", "--round-timeout", "6s", "--seed", "5")
	tc.WaitFor(t, time.Minute, "2 committed rounds", func() bool { return len(committed(lc.job("wpart"))) >= 2 })
	w1 := lc.lab.Host("w1")
	lc.lab.Cut(w1)
	cutAt := time.Now()
	atCut := len(committed(lc.job("wpart")))
	tc.WaitFor(t, 20*time.Second, "the cluster seeing w1 gone", func() bool {
		l := lc.leader(lc.nodes)
		if l == nil {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := l.admin.ListWorkers(ctx, &pb.ListWorkersRequest{})
		return err == nil && len(resp.Alive) == 2 && !slices.Contains(resp.Alive, "w1")
	})
	tc.WaitFor(t, 45*time.Second, "3 more rounds without w1", func() bool { return len(committed(lc.job("wpart"))) >= atCut+4 })
	// Longer than memberlist gossips to the dead (15 s with --fast): past
	// that, only rejoining (gossip's reconnect loop) mends the pool.
	time.Sleep(time.Until(cutAt.Add(*netnsCut)))
	lc.lab.Heal(w1)
	healed := time.Now()
	atHeal := len(committed(lc.job("wpart")))
	var (
		back      uint32
		backAfter time.Duration
	)
	tc.WaitFor(t, 20*time.Second, "w1 contributing again", func() bool {
		j := lc.job("wpart")
		for _, r := range committed(j) {
			if int(r.Number) > atHeal && slices.ContainsFunc(r.Accepted, func(u *pb.AcceptedUpdate) bool { return u.Worker == "w1" }) {
				back, backAfter = r.Number, time.Since(healed)
				return true
			}
		}
		return j != nil && j.Status != pb.JobStatus_JOB_STATUS_RUNNING
	})
	final := lc.waitDone(t, "wpart", rounds, 2)
	if back == 0 {
		t.Errorf("w1 contributed to no round after it was healed (rounds %d..%d)", atHeal+1, rounds)
	}
	// The round open at the cut may hold w1's update; none started after it
	// and committed before the heal can.
	for _, r := range final.History[min(atCut+1, len(final.History)):min(atHeal, len(final.History))] {
		if slices.ContainsFunc(r.Accepted, func(u *pb.AcceptedUpdate) bool { return u.Worker == "w1" }) {
			t.Errorf("round %d, planned while w1 was cut off, counts an update of w1", r.Number)
		}
	}
	t.Logf("w1 cut after round %d, healed after round %d, back in round %d, %v after the heal", atCut, atHeal, back, backAfter.Round(time.Millisecond))
}

// TestSplitWithWorkers splits the lab in two mid-job for 20 s: the leader
// with one worker on one side, the two other coordinators with two workers
// on the other. The minority side commits nothing, so its worker's
// training counts for nothing; the majority elects a leader and commits
// rounds with its own workers. Joined again, the old leader follows, the
// gossip pool is whole, the minority's worker contributes again, and the
// replicas agree on one history.
func TestSplitWithWorkers(t *testing.T) {
	rounds := 40 + 4*int(netnsCut.Seconds())
	lc := startLabCluster(t, "split", rounds, "--min-updates", "2", "--steps", "20", "--round-timeout", "6s", "--seed", "9")
	tc.WaitFor(t, time.Minute, "2 committed rounds", func() bool { return len(committed(lc.job("split"))) >= 2 })
	old := lc.leader(lc.nodes)
	others := slices.DeleteFunc(slices.Clone(lc.nodes), func(n *labNode) bool { return n == old })
	lc.lab.Split(old.host, lc.lab.Host("w1"))
	cut := time.Now()
	nl, minority := lc.losesLeadership(t, "split", old, others)
	tc.WaitFor(t, 30*time.Second, "3 more rounds on the majority side", func() bool {
		return len(committed(jobOf(nl.admin, "split"))) >= len(minority)+3
	})
	time.Sleep(time.Until(cut.Add(*netnsCut)))
	if got := committed(jobOf(old.self, "split")); len(got) != len(minority) {
		t.Errorf("the minority side committed rounds: %d -> %d", len(minority), len(got))
	}
	lc.lab.Join()
	joined := time.Now()
	atJoin := len(committed(jobOf(nl.admin, "split")))
	lc.waitWhole(t)
	t.Logf("split %s and w1 off: %s led after the split; minority stayed at %d rounds; joined after %v, whole again in %v",
		old.name, nl.name, len(minority), joined.Sub(cut).Round(time.Second), time.Since(joined).Round(time.Millisecond))
	tc.WaitFor(t, 30*time.Second, "w1 contributing again", func() bool {
		for _, r := range committed(lc.job("split")) {
			if int(r.Number) > atJoin && slices.ContainsFunc(r.Accepted, func(u *pb.AcceptedUpdate) bool { return u.Worker == "w1" }) {
				return true
			}
		}
		return false
	})
	final := lc.waitDone(t, "split", rounds, 2)
	for _, r := range final.History[min(len(minority)+1, len(final.History)):min(atJoin, len(final.History))] {
		if slices.ContainsFunc(r.Accepted, func(u *pb.AcceptedUpdate) bool { return u.Worker == "w1" }) {
			t.Errorf("round %d, planned while w1 was on the minority side, counts an update of w1", r.Number)
		}
	}
}

// TestLeaderGossipBlocked blocks the leader's gossip port (TCP and UDP,
// both ways, as a firewall rule would) mid-job for 20 s while its Raft and
// gRPC ports stay open. The leader keeps leading and the job goes on:
// the others' gossip marks it failed, so workers reach it through the
// followers, which name it from the addresses recorded in the replicated
// state; and it takes its rostered workers as live rather than gone (its
// own gossip sees none of them), so it keeps planning rounds with all
// three. Unblocked, gossip is whole again and the job ends with every
// round committed once. Before, the leader saw no live worker and planned
// no round until gossip healed.
func TestLeaderGossipBlocked(t *testing.T) {
	rounds := 40 + 4*int(netnsCut.Seconds())
	lc := startLabCluster(t, "gblock", rounds, "--min-updates", "2", "--steps", "20", "--round-timeout", "6s", "--seed", "11")
	tc.WaitFor(t, time.Minute, "2 committed rounds", func() bool { return len(committed(lc.job("gblock"))) >= 2 })
	leader := lc.leader(lc.nodes)
	lc.lab.Block(leader.host, 7946)
	blocked := time.Now()
	// memberlist's health score on the leader and the members its gossip
	// shows, at each change until it sees no one (logged).
	var health []string
	last := ""
	sample := func() {
		if st, err := raftStatus(leader.admin); err == nil {
			if now := fmt.Sprintf("%d/%d", st.GossipHealth, len(st.Members)); now != last {
				health, last = append(health, fmt.Sprintf("%.1fs %s", time.Since(blocked).Seconds(), now)), now
			}
		}
	}
	tc.WaitFor(t, 20*time.Second, "the followers' gossip marking "+leader.name+" failed", func() bool {
		sample()
		for _, n := range lc.nodes {
			if n == leader {
				continue
			}
			st, err := raftStatus(n.admin)
			if err != nil || slices.ContainsFunc(st.Servers, func(s *pb.RaftServer) bool { return s.Id == leader.name && s.Alive }) {
				return false
			}
		}
		return true
	})
	seen := time.Since(blocked)
	atFollowers := len(committed(jobOf(leader.admin, "gblock")))
	// Its own gossip declares the others dead more slowly (Lifeguard slows
	// a node that misses acks); the rounds it commits meanwhile are logged.
	tc.WaitFor(t, 30*time.Second, leader.name+"'s gossip seeing no other member", func() bool {
		sample()
		st, err := raftStatus(leader.admin)
		return err == nil && len(st.Members) == 1
	})
	alone := time.Since(blocked)
	inWindow := len(committed(jobOf(leader.admin, "gblock"))) - atFollowers
	t.Logf("%s's gossip health score/members shown, after the block: %v", leader.name, health)
	t.Logf("rounds committed between the followers' verdict and its own (%v): %d", (alone - seen).Round(time.Millisecond), inWindow)
	if out, err := lc.obs.Command(binary, "cluster", "raft", "--coordinator", leader.grpcAddr()).CombinedOutput(); err != nil || !strings.Contains(string(out), "warning: "+leader.name+"'s gossip sees 1 of 3 voters") {
		t.Errorf("cluster raft on the cut-off leader does not warn (err %v):\n%s", err, out)
	}
	atSeen := len(committed(jobOf(leader.admin, "gblock")))
	tc.WaitFor(t, 45*time.Second, "5 more rounds with the leader's gossip blocked", func() bool {
		return len(committed(jobOf(leader.admin, "gblock"))) >= atSeen+5
	})
	if l := lc.leader(lc.nodes); l != leader {
		t.Fatalf("leadership moved from %s to %v while only gossip was blocked", leader.name, l)
	}
	contributed := map[string]bool{}
	var sizes []int
	for _, r := range committed(jobOf(leader.admin, "gblock"))[atSeen:] {
		sizes = append(sizes, len(r.Accepted))
		for _, u := range r.Accepted {
			contributed[u.Worker] = true
		}
	}
	if len(contributed) != 3 {
		t.Errorf("while its gossip was blocked the leader's rounds counted workers %v, want all three", contributed)
	}
	t.Logf("%s's gossip port blocked: the followers saw it failed after %v, it saw no other member after %v; it went on leading, with rounds of %v updates after that",
		leader.name, seen.Round(time.Millisecond), alone.Round(time.Millisecond), sizes)
	time.Sleep(time.Until(blocked.Add(*netnsCut)))
	lc.lab.Unblock(leader.host)
	unblocked := time.Now()
	lc.waitWhole(t)
	t.Logf("unblocked: gossip whole again after %v", time.Since(unblocked).Round(time.Millisecond))
	lc.waitDone(t, "gblock", rounds, 2)
}
