package testcluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/internal/central"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/model"
)

// Inmem is a cluster of coordinators in one process whose Raft runs on
// hashicorp/raft's in-memory stores and InmemTransport and whose gossip is
// a gossip.FakeNet: elections, replication, failover, the roster and the
// leader's scheduling with no Raft or gossip sockets, and no waiting on
// failure detection. (Each node's gRPC server still listens on 127.0.0.1:
// clients and peers reach it there.) Nodes crash and restart with their
// Raft state, as processes with their data directories would.
type Inmem struct {
	t     testing.TB
	Net   *gossip.FakeNet
	Nodes []*InmemNode
}

// InmemNode is one coordinator of an Inmem cluster, with the Raft state
// that outlives it.
type InmemNode struct {
	ID     string
	C      *coordinator.Coordinator // nil while crashed
	cfg    coordinator.Config
	logs   *raft.InmemStore
	snaps  *raft.InmemSnapshotStore
	trans  *raft.InmemTransport
	addr   raft.ServerAddress
	parent *Inmem
}

// InmemWorkerGrace is how long an Inmem cluster's leader waits before it
// removes a worker gone from gossip (a real cluster: minutes).
const InmemWorkerGrace = time.Second

// StartInmem starts n coordinators bootstrapped as one cluster of n voters,
// and waits for a leader.
func StartInmem(t testing.TB, n int) *Inmem {
	t.Helper()
	c := &Inmem{t: t, Net: gossip.NewFakeNet()}
	var conf raft.Configuration
	for i := range n {
		id := fmt.Sprintf("coord-%d", i+1)
		nd := &InmemNode{ID: id, logs: raft.NewInmemStore(), snaps: raft.NewInmemSnapshotStore(), addr: raft.ServerAddress("inmem-" + id), parent: c,
			cfg: coordinator.Config{NodeID: id, DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", Profile: "local", WorkerGrace: InmemWorkerGrace, Logger: Logger(t).With("node", id)}}
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(id), Address: nd.addr, Suffrage: raft.Voter})
		c.Nodes = append(c.Nodes, nd)
	}
	for _, nd := range c.Nodes {
		rc := raft.DefaultConfig()
		rc.LocalID = raft.ServerID(nd.ID)
		_, trans := raft.NewInmemTransport(nd.addr)
		if err := raft.BootstrapCluster(rc, nd.logs, nd.logs, nd.snaps, trans, conf); err != nil {
			t.Fatalf("bootstrap %s: %v", nd.ID, err)
		}
	}
	for _, nd := range c.Nodes {
		nd.Start()
	}
	t.Cleanup(func() {
		for _, nd := range c.Nodes {
			if nd.C != nil {
				nd.C.Close()
			}
		}
	})
	c.Leader(10 * time.Second)
	return c
}

// Start starts (or restarts) the node on its Raft state, with a fresh
// transport connected to every other node's.
func (nd *InmemNode) Start() {
	t := nd.parent.t
	t.Helper()
	_, nd.trans = raft.NewInmemTransport(nd.addr)
	for _, o := range nd.parent.Nodes {
		if o != nd && o.trans != nil {
			nd.trans.Connect(o.addr, o.trans)
			o.trans.Connect(nd.addr, nd.trans)
		}
	}
	deps := coordinator.Deps{Models: model.Catalog{}, Evaluator: central.New(),
		Raft: &coordinator.RaftDeps{Logs: nd.logs, Stable: nd.logs, Snapshots: nd.snaps, Transport: nd.trans},
		Gossip: func(cfg gossip.Config) (coordinator.Membership, error) {
			cfg.Meta.Raft = string(nd.addr)
			return nd.parent.Net.Start(cfg)
		}}
	c, err := coordinator.New(nd.cfg, deps)
	if err != nil {
		t.Fatalf("start %s: %v", nd.ID, err)
	}
	nd.C = c
}

// Crash stops the node as a kill would: it leaves gossip without a word,
// its transport is cut from every other, its Raft state is kept.
func (nd *InmemNode) Crash() {
	nd.parent.t.Helper()
	if nd.C == nil {
		return
	}
	if err := nd.C.Crash(); err != nil {
		nd.parent.t.Fatalf("crash %s: %v", nd.ID, err)
	}
	nd.C = nil
	for _, o := range nd.parent.Nodes {
		if o != nd && o.trans != nil {
			o.trans.Disconnect(nd.addr)
		}
	}
	nd.trans = nil
}

// Leader waits up to timeout for exactly one running node to lead and
// returns it.
func (c *Inmem) Leader(timeout time.Duration) *InmemNode {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		var leaders []*InmemNode
		for _, nd := range c.Nodes {
			if nd.C != nil && nd.C.IsLeader() {
				leaders = append(leaders, nd)
			}
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("no single leader within %v (%d leading)", timeout, len(leaders))
		case <-time.After(10 * time.Millisecond):
		}
	}
}
