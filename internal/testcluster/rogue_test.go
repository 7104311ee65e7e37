package testcluster

import (
	"crypto/tls"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/worker"
)

// rogue is a gossip member with the cluster's gossip key (every worker
// holds it) and no coordinator certificate, advertising whatever it likes.
func rogue(t *testing.T, name string, keys [][]byte, meta gossip.Meta, join ...string) *gossip.Node {
	t.Helper()
	g, err := gossip.Start(gossip.Config{Name: name, BindAddr: "127.0.0.1:0", Profile: "local", Keys: keys, Meta: meta})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Shutdown() })
	if len(join) > 0 {
		if err := g.Join(join); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// raftServers returns node's Raft configuration as "id@address suffrage".
func raftServers(nd *Node) []string {
	var out []string
	for _, s := range nd.C.Status().Servers {
		out = append(out, fmt.Sprintf("%s@%s %s", s.Id, s.Address, s.Suffrage))
	}
	sort.Strings(out)
	return out
}

// TestRogueGossipMembers: with mutual TLS and a gossip key, a member
// holding the key but no coordinator certificate (a) announces ghost
// workers labelled device=gpu, (b) claims the coordinator role, (c)
// announces itself under a dead coordinator's name, (d) is present when
// the cluster forms with --bootstrap-expect 3. Gossip grants nothing: the
// cluster forms with its three coordinators, no ghost is rostered (a real
// worker is, once it polls with its certificate), the Raft configuration
// never holds the rogue, the dead coordinator keeps its place and rejoins,
// and a leader killed among the rogues is replaced in the usual time.
func TestRogueGossipMembers(t *testing.T) {
	ca := t.TempDir()
	if err := pki.InitCA(ca, "test", time.Hour); err != nil {
		t.Fatal(err)
	}
	key, _ := gossip.NewKey()
	keys, _ := gossip.ParseKeys(key)
	// The rogue "coordinator" answers TLS at its advertised addresses with
	// a worker certificate of the cluster's CA.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", node(t, ca, pki.RoleWorker, "mallory", time.Time{}).ServerTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	fake := gossip.Meta{Role: gossip.RoleCoordinator, GRPC: ln.Addr().String(), Raft: ln.Addr().String()}
	rc := rogue(t, "rogue-coord", keys, fake) // (d): everyone joins it at start

	cl := NewCluster(t, 3, ClusterOptions{RealRaft: true, ExtraJoin: []string{rc.Addr()}, Edit: func(i int, cfg *coordinator.Config) {
		cfg.TLS = node(t, ca, pki.RoleCoordinator, cfg.NodeID, time.Time{})
		cfg.GossipKeys = keys
	}})
	leader := cl.Leader()
	want := raftServers(leader)
	if len(want) != 3 || slices.ContainsFunc(want, func(s string) bool { return !strings.HasPrefix(s, "coord-") || !strings.HasSuffix(s, " Voter") }) {
		t.Fatalf("formed with %v, want the three coordinators as voters", want)
	}

	// (a) ghost workers and a real one.
	for i := range 3 {
		rogue(t, fmt.Sprintf("ghost-%d", i), keys, gossip.Meta{Role: gossip.RoleWorker, Labels: map[string]string{"device": "gpu", "idle": "true"}}, cl.GossipAddrs()...)
	}
	train, _ := dataset.MNIST(dataset.Test)
	tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train}, nil)
	StartWorkerWith(t, worker.Config{ID: "w1", Join: cl.GossipAddrs(), GossipKeys: keys, Labels: map[string]string{"lang": "fr"},
		TLS: node(t, ca, pki.RoleWorker, "w1", time.Time{})}, tr)
	WaitFor(t, 15*time.Second, "w1 in the roster", func() bool { return len(leader.C.FSM().Workers()) > 0 })
	time.Sleep(3 * time.Second) // several reconcile ticks with the ghosts in gossip
	for _, w := range leader.C.FSM().Workers() {
		if w.Id != "w1" || w.Labels["lang"] != "fr" {
			t.Errorf("roster holds %s %v; want only w1 with the labels it polled with", w.Id, w.Labels)
		}
	}
	if got := raftServers(leader); !slices.Equal(got, want) {
		t.Errorf("(b) configuration %v, want %v: a member without a coordinator certificate was added", got, want)
	}

	// (c) a follower dies; a rogue takes its name.
	var victim *Node
	for _, nd := range cl.Nodes {
		if nd != leader {
			victim = nd
			break
		}
	}
	cl.Crash(victim)
	WaitFor(t, 20*time.Second, "gossip to see "+victim.Name+" dead", func() bool {
		return !slices.ContainsFunc(leader.C.Status().Members, func(m *pb.Member) bool { return m.Name == victim.Name })
	})
	time.Sleep(2 * time.Second) // past memberlist's reclaim time for a dead name
	imp := rogue(t, victim.Name, keys, fake, leader.Cfg.GossipAddr)
	WaitFor(t, 10*time.Second, "the leader's gossip to show the rogue as "+victim.Name, func() bool {
		for _, m := range leader.C.Status().Members {
			if m.Name == victim.Name && m.RaftAddr == fake.Raft {
				return true
			}
		}
		return false
	})
	time.Sleep(3 * time.Second) // several reconcile ticks
	if got := raftServers(leader); !slices.Equal(got, want) {
		t.Errorf("(c) configuration with a rogue named %s: %v, want %v", victim.Name, got, want)
	}
	imp.Leave(time.Second)
	imp.Shutdown()
	time.Sleep(time.Second)
	cl.Start(victim)
	cl.WaitForLeader(20 * time.Second)
	WaitFor(t, 20*time.Second, victim.Name+" back in step", func() bool {
		return victim.C.Status().LeaderId != "" && victim.C.Status().AppliedIndex >= leader.C.Status().CommitIndex
	})

	// A leader killed among the rogues is replaced in the usual time.
	killed := time.Now()
	cl.Crash(leader)
	next := cl.WaitForLeader(30 * time.Second)
	took := time.Since(killed)
	t.Logf("failover with rogue members in gossip: %v", took.Round(10*time.Millisecond))
	if next == leader || took > 10*time.Second {
		t.Fatalf("failover took %v", took)
	}
	if got := raftServers(next); !slices.Equal(got, want) {
		t.Errorf("after failover the configuration is %v, want %v", got, want)
	}
	for _, w := range next.C.FSM().Workers() {
		if w.Id != "w1" {
			t.Errorf("after failover the roster holds %s", w.Id)
		}
	}
}
