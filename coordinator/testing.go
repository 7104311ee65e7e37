package coordinator

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/fedtune/fedtune/internal/gossip"
)

// Methods for tests and the test harness (internal/testcluster): they
// inspect or force what a running coordinator never needs to expose.

// AliveWorkers returns the ids of the workers gossip sees alive.
func (c *Coordinator) AliveWorkers() []string {
	var out []string
	for _, m := range c.gossip.WithRole(gossip.RoleWorker) {
		out = append(out, m.Name)
	}
	return out
}

// BlobHashes returns the hashes of every blob this node stores, sorted.
func (c *Coordinator) BlobHashes() ([]string, error) {
	infos, err := c.blobs.List()
	if err != nil {
		return nil, err
	}
	out := make([]string, len(infos))
	for i, b := range infos {
		out[i] = b.Hash
	}
	sort.Strings(out)
	return out, nil
}

// GossipKeys returns this node's gossip keyring (base64, primary first).
func (c *Coordinator) GossipKeys() []string { return c.gossip.Keys() }

// HTTPAddr returns the address of /metrics and the dashboard ("" if off).
func (c *Coordinator) HTTPAddr() string { return c.httpAddr }

// HasBlob reports whether this node's blob store holds hash.
func (c *Coordinator) HasBlob(hash string) bool { return c.blobs.Has(hash) }

// RaftAddr returns the Raft transport's address.
func (c *Coordinator) RaftAddr() string { return string(c.trans.LocalAddr()) }

// Snapshot makes Raft snapshot the FSM now and compact the log behind it.
func (c *Coordinator) Snapshot() error {
	if err := c.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// Crash stops the node as a crash would look to the others: no gossip
// leave message, no leadership transfer. For tests.
func (c *Coordinator) Crash() error { return c.stop(false) }

// CollectGarbage deletes the blobs nothing references that are older than
// blobGrace as of now, and returns how many it deleted. The blob loop runs
// it every minute; tests run it at a chosen time.
func (c *Coordinator) CollectGarbage(now time.Time) int { return c.collectGarbage(now) }

// ReadBlob returns the blob stored under hash (fetched from a peer if this
// node lacks it).
func (c *Coordinator) ReadBlob(hash string) ([]byte, error) {
	return c.blob(context.Background(), hash)
}
