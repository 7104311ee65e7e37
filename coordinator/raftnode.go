package coordinator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftwal "github.com/hashicorp/raft-wal"

	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// raftTiming is a set of Raft timeouts. The leader lease is kept shorter
// than the heartbeat timeout, so a deposed leader steps down before a new
// one can be elected.
type raftTiming struct {
	heartbeat, election, lease, commit time.Duration
}

var raftProfiles = map[string]raftTiming{
	"":      {time.Second, time.Second, 500 * time.Millisecond, 50 * time.Millisecond},
	"lan":   {time.Second, time.Second, 500 * time.Millisecond, 50 * time.Millisecond},
	"local": {300 * time.Millisecond, 300 * time.Millisecond, 150 * time.Millisecond, 10 * time.Millisecond},
	"wan":   {3 * time.Second, 3 * time.Second, 1500 * time.Millisecond, 100 * time.Millisecond},
}

func (c *Coordinator) startRaft() error {
	hl := newHCLog(c.log, "raft")
	var logs raft.LogStore
	var stable raft.StableStore
	var snaps raft.SnapshotStore
	if d := c.deps.Raft; d != nil {
		logs, stable, snaps, c.trans = d.Logs, d.Stable, d.Snapshots, d.Transport
	} else if err := c.openRaftStores(hl, &logs, &stable, &snaps); err != nil {
		return err
	}
	return c.newRaft(hl, logs, stable, snaps)
}

// openRaftStores opens the on-disk Raft log, stable store and snapshots
// under DataDir/raft, and the network transport.
func (c *Coordinator) openRaftStores(hl hclog.Logger, logs *raft.LogStore, stable *raft.StableStore, snapsOut *raft.SnapshotStore) error {
	dir := filepath.Join(c.cfg.DataDir, "raft")
	walDir := filepath.Join(dir, "wal")
	if err := os.MkdirAll(walDir, 0o755); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	// raft-wal v0.4.1 or later: v0.4.0 neither closed its meta store (its
	// file lock outlived Close) nor truncated a log suffix safely (a node
	// restarted after "clearing log suffix" failed with "sealed segment has
	// no index block"; found by TestChaosLeaderKills).
	segment := raftwal.DefaultSegmentSize
	if c.cfg.WALSegmentBytes > 0 {
		segment = c.cfg.WALSegmentBytes
	}
	wal, err := raftwal.Open(walDir, raftwal.WithLogger(hl.Named("wal")), raftwal.WithSegmentSize(segment))
	if err != nil {
		return fmt.Errorf("coordinator: open raft log: %w", err)
	}
	c.wal = wal
	marked, err := openMarkedLog(wal, filepath.Join(dir, "wal-last-index"), c.log)
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	c.walMark = marked
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 3, hl)
	if err != nil {
		return fmt.Errorf("coordinator: snapshot store: %w", err)
	}
	c.stable = &quiescingStable{StableStore: wal}
	*logs, *stable, *snapsOut = marked, c.stable, snaps
	switch {
	case c.cfg.RaftStreamLayer != nil:
		c.trans = raft.NewNetworkTransportWithLogger(c.cfg.RaftStreamLayer, 3, 10*time.Second, hl)
	case c.cfg.TLS != nil:
		layer, err := newTLSStreamLayer(c.cfg.RaftAddr, c.cfg.TLS, func() { c.metrics.authRefused.WithLabelValues("raft").Inc() })
		if err != nil {
			return fmt.Errorf("coordinator: raft transport: %w", err)
		}
		c.trans = raft.NewNetworkTransportWithLogger(layer, 3, 10*time.Second, hl)
	default:
		// The advertised address is the listener's own (so port 0 works); a
		// wildcard bind address is refused by the transport as unadvertisable.
		c.trans, err = raft.NewTCPTransportWithLogger(c.cfg.RaftAddr, nil, 3, 10*time.Second, hl)
		if err != nil {
			return fmt.Errorf("coordinator: raft transport: %w", err)
		}
	}
	return nil
}

// newRaft starts Raft on the given stores and c.trans, bootstrapping a
// one-voter cluster first if this node is one and has no state.
func (c *Coordinator) newRaft(hl hclog.Logger, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore) error {
	t := raftProfiles[c.cfg.Profile]
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.cfg.NodeID)
	rc.Logger = hl
	rc.SnapshotThreshold = c.cfg.SnapshotThreshold
	rc.SnapshotInterval = 10 * time.Second
	rc.TrailingLogs = c.cfg.TrailingLogs
	rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout, rc.CommitTimeout = t.heartbeat, t.election, t.lease, t.commit
	if c.cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = c.cfg.HeartbeatTimeout
	}
	if c.cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = c.cfg.ElectionTimeout
	}
	if c.cfg.LeaderLeaseTimeout > 0 {
		rc.LeaderLeaseTimeout = c.cfg.LeaderLeaseTimeout
	}
	if rc.LeaderLeaseTimeout >= rc.HeartbeatTimeout {
		return fmt.Errorf("coordinator: leader lease %v must be shorter than the heartbeat timeout %v", rc.LeaderLeaseTimeout, rc.HeartbeatTimeout)
	}
	var err error
	if c.hasState, err = raft.HasExistingState(logs, stable, snaps); err != nil {
		return fmt.Errorf("coordinator: read raft state: %w", err)
	}
	if !c.hasState && c.cfg.BootstrapExpect == 1 {
		conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: c.trans.LocalAddr()}}}
		if err := raft.BootstrapCluster(rc, logs, stable, snaps, c.trans, conf); err != nil {
			return fmt.Errorf("coordinator: bootstrap: %w", err)
		}
		c.hasState = true
	}
	c.raft, err = raft.NewRaft(rc, c.fsm, logs, stable, snaps, c.trans)
	if err != nil {
		return fmt.Errorf("coordinator: start raft: %w", err)
	}
	return nil
}

// peerHasState asks the other coordinators whether any already has Raft
// state (as Consul does before bootstrapping): a node that joins an existing
// cluster, or comes back with an empty data directory, must be added by the
// leader, never bootstrap a cluster of its own. A peer that cannot be asked
// counts as having state, to stay safe.
func (c *Coordinator) peerHasState(members []gossip.Member) bool {
	for _, m := range members {
		if m.Name == c.cfg.NodeID {
			continue
		}
		conn, err := c.pool.Conn(m.Meta.GRPC)
		if err != nil {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := rpcpb.NewAdminClient(conn).ClusterStatus(ctx, &pb.ClusterStatusRequest{})
		cancel()
		if err != nil || st.LastIndex > 0 || st.LeaderId != "" {
			return true
		}
	}
	return false
}

// bootstrapLoop forms the Raft cluster once gossip shows BootstrapExpect
// coordinators (Consul's bootstrap-expect). Every one of them computes the
// same configuration from the same gossip view, so it does not matter how
// many bootstrap. It stops as soon as this node has Raft state.
func (c *Coordinator) bootstrapLoop() {
	defer c.wg.Done()
	if c.hasState || c.cfg.BootstrapExpect <= 1 {
		return
	}
	c.log.Info("waiting for coordinators to bootstrap the cluster", "expect", c.cfg.BootstrapExpect)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		if c.raft.LastIndex() > 0 {
			return // joined by a leader, or bootstrapped
		}
		members := c.provenCoordinators() // a rogue member neither counts nor blocks
		if len(members) != c.cfg.BootstrapExpect {
			if len(members) > c.cfg.BootstrapExpect {
				c.log.Warn("more coordinators than --bootstrap-expect; waiting to be added by a leader", "seen", len(members), "expect", c.cfg.BootstrapExpect)
			}
			continue
		}
		if c.peerHasState(members) {
			continue // a cluster exists: wait for its leader to add this node
		}
		var conf raft.Configuration
		for _, m := range members {
			conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.Meta.Raft), Suffrage: raft.Voter})
		}
		sort.Slice(conf.Servers, func(i, j int) bool { return conf.Servers[i].ID < conf.Servers[j].ID })
		if err := c.raft.BootstrapCluster(conf).Error(); err != nil {
			c.log.Info("bootstrap not needed", "err", err)
		} else {
			c.log.Info("bootstrapped the cluster", "servers", len(conf.Servers))
		}
		return
	}
}

// quiescingStable is the Raft stable store with a gate: stop closes the
// gate before it closes the store, waiting for writes in flight. Raft's
// heartbeat fast path runs on the transport's goroutines, outside what
// raft.Shutdown waits for: one that passed its shutdown check just before
// could save the term into a closed store, and Raft panics on that (seen
// once in make test, "failed to save current term: closed"). Past the
// gate such a write waits for good instead: the node is stopping, and an
// acknowledgement of a term it did not save must not be sent.
type quiescingStable struct {
	raft.StableStore
	gate sync.RWMutex
}

func (s *quiescingStable) Set(k, v []byte) error {
	s.gate.RLock()
	defer s.gate.RUnlock()
	return s.StableStore.Set(k, v)
}

func (s *quiescingStable) SetUint64(k []byte, v uint64) error {
	s.gate.RLock()
	defer s.gate.RUnlock()
	return s.StableStore.SetUint64(k, v)
}

// close waits for the writes in flight and bars later ones.
func (s *quiescingStable) close() { s.gate.Lock() }
