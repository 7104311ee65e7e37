package testcluster

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/internal/central"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
)

// Node is one in-process coordinator of a Cluster; C is nil while it is down.
type Node struct {
	Name string
	Cfg  coordinator.Config
	C    *coordinator.Coordinator
}

// Cluster is N in-process coordinators on 127.0.0.1 that formed a Raft
// cluster by gossip (--bootstrap-expect N), with their Raft traffic on a
// FaultNet so tests can partition them.
type Cluster struct {
	t        testing.TB
	Net      *FaultNet
	Nodes    []*Node
	realRaft bool
	join     []string
}

// ClusterOptions tunes NewCluster.
type ClusterOptions struct {
	// Edit, if set, adjusts each node's config before it starts.
	Edit func(i int, cfg *coordinator.Config)
	// RealRaft carries Raft over the coordinators' own transport (TCP, or
	// TLS when the config has certificates) instead of the FaultNet:
	// partitions are then unavailable.
	RealRaft bool
	// ExtraJoin are gossip addresses every node joins besides the others'
	// (a rogue member present from the start).
	ExtraJoin []string
}

// NewCluster starts n coordinators and waits for a leader.
func NewCluster(t testing.TB, n int, opts ClusterOptions) *Cluster {
	t.Helper()
	cl := &Cluster{t: t, Net: NewFaultNet(), realRaft: opts.RealRaft, join: opts.ExtraJoin}
	log := Logger(t)
	for i := range n {
		name := fmt.Sprintf("coord-%d", i+1)
		cfg := coordinator.Config{NodeID: name, DataDir: t.TempDir(), GRPCAddr: freeAddrTB(t), GossipAddr: freeAddrTB(t),
			BootstrapExpect: n, Profile: "local", Logger: log}
		if opts.Edit != nil {
			opts.Edit(i, &cfg)
		}
		cl.Nodes = append(cl.Nodes, &Node{Name: name, Cfg: cfg})
	}
	for _, nd := range cl.Nodes {
		cl.Start(nd)
	}
	t.Cleanup(func() {
		for _, nd := range cl.Nodes {
			if nd.C != nil {
				nd.C.Close()
			}
		}
	})
	cl.WaitForLeader(20 * time.Second)
	return cl
}

// FreeAddr returns a free 127.0.0.1 TCP address.
func FreeAddr(t testing.TB) string { return freeAddrTB(t) }

// handedOut is every address FreeAddr returned in this process: the
// kernel may give a just-closed port again, and two nodes of one test
// would then collide (seen: a coordinator's gRPC port handed out again as
// another's gossip port).
var handedOut = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

func freeAddrTB(t testing.TB) string {
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		l, err := netListen()
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut.m[addr] {
			handedOut.m[addr] = true
			return addr
		}
	}
	t.Fatal("no fresh free port in 100 tries")
	return ""
}

// Start starts (or restarts) a node on its data directory and addresses,
// joining the gossip of the others.
func (cl *Cluster) Start(nd *Node) {
	cl.t.Helper()
	addr := nd.Cfg.RaftAddr
	if addr == "" {
		addr = "127.0.0.1:0"
		if cl.realRaft {
			addr = freeAddrTB(cl.t) // fixed, so a restart keeps it
		}
	}
	if cl.realRaft {
		nd.Cfg.RaftAddr = addr
	} else {
		layer, err := cl.Net.Layer(nd.Name, addr)
		if err != nil {
			cl.t.Fatalf("raft layer for %s: %v", nd.Name, err)
		}
		nd.Cfg.RaftAddr = layer.Addr().String()
		nd.Cfg.RaftStreamLayer = layer
	}
	nd.Cfg.Join = append([]string(nil), cl.join...)
	for _, o := range cl.Nodes {
		if o != nd {
			nd.Cfg.Join = append(nd.Cfg.Join, o.Cfg.GossipAddr)
		}
	}
	c, err := coordinator.New(nd.Cfg, coordinator.Deps{Models: model.Catalog{}, Evaluator: central.New()})
	if err != nil {
		cl.t.Fatalf("start %s: %v", nd.Name, err)
	}
	nd.C = c
}

// Crash stops a node as a crash would (no graceful leave).
func (cl *Cluster) Crash(nd *Node) {
	if nd.C != nil {
		nd.C.Crash()
		nd.C = nil
	}
}

// Up returns the running nodes.
func (cl *Cluster) Up() []*Node {
	var out []*Node
	for _, nd := range cl.Nodes {
		if nd.C != nil {
			out = append(out, nd)
		}
	}
	return out
}

// Leader returns the running node that leads, or nil.
func (cl *Cluster) Leader() *Node {
	for _, nd := range cl.Up() {
		if nd.C.IsLeader() {
			return nd
		}
	}
	return nil
}

// RosterSize is how many workers the leader's roster holds (0 while no
// node leads, as between an election's terms).
func (cl *Cluster) RosterSize() int {
	if l := cl.Leader(); l != nil {
		return len(l.C.FSM().Workers())
	}
	return 0
}

// WaitForLeader waits until a running node leads and every running node
// agrees on it.
func (cl *Cluster) WaitForLeader(timeout time.Duration) *Node {
	cl.t.Helper()
	var leader *Node
	WaitFor(cl.t, timeout, "a leader all nodes agree on", func() bool {
		leader = cl.Leader()
		if leader == nil {
			return false
		}
		for _, nd := range cl.Up() {
			if nd.C.Status().LeaderId != leader.Name {
				return false
			}
		}
		return true
	})
	return leader
}

// GossipAddrs returns every node's gossip address (workers join any).
func (cl *Cluster) GossipAddrs() []string {
	var out []string
	for _, nd := range cl.Nodes {
		out = append(out, nd.Cfg.GossipAddr)
	}
	return out
}

// Job returns the job as the current leader (or any running node) sees it.
func (cl *Cluster) Job(name string) *pb.Job {
	nodes := cl.Up()
	if l := cl.Leader(); l != nil {
		nodes = append([]*Node{l}, nodes...)
	}
	for _, nd := range nodes {
		if j, ok := nd.C.FSM().Job(name); ok {
			return j
		}
	}
	return nil
}

// WaitRound waits until job has at least r committed rounds.
func (cl *Cluster) WaitRound(job string, r int, timeout time.Duration) *pb.Job {
	cl.t.Helper()
	var j *pb.Job
	WaitFor(cl.t, timeout, fmt.Sprintf("job %s round %d", job, r), func() bool {
		j = cl.Job(job)
		return j != nil && len(j.History) >= r
	})
	return j
}

// WaitDone waits until the job is no longer running.
func (cl *Cluster) WaitDone(job string, timeout time.Duration) *pb.Job {
	cl.t.Helper()
	var j *pb.Job
	WaitFor(cl.t, timeout, "job "+job+" to end", func() bool {
		j = cl.Job(job)
		return j != nil && j.Status != pb.JobStatus_JOB_STATUS_RUNNING
	})
	return j
}
