package gossip

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"
)

// FakeNet is an in-memory gossip pool for logic tests that need membership
// without sockets: every node started on it sees every other live one at
// once, as a converged memberlist would. Tests add members that are not
// coordinators (workers with labels) with Add, and take nodes out with
// Remove (a crash or a partition, as gossip would report it).
type FakeNet struct {
	mu      sync.Mutex
	members map[string]Member
	keys    []string
}

// NewFakeNet returns an empty pool.
func NewFakeNet() *FakeNet { return &FakeNet{members: map[string]Member{}} }

// Start joins a node to the pool, as Start would join memberlist.
func (f *FakeNet) Start(cfg Config) (*FakeNode, error) {
	if err := CheckName(cfg.Name); err != nil {
		return nil, err
	}
	f.Add(Member{Name: cfg.Name, Addr: "fake/" + cfg.Name, Meta: cfg.Meta})
	return &FakeNode{net: f, name: cfg.Name}, nil
}

// Add puts a member in the pool (or replaces it).
func (f *FakeNet) Add(m Member) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m.Meta.Labels = maps.Clone(m.Meta.Labels)
	f.members[m.Name] = m
}

// Remove takes a member out of the pool, as gossip reports a dead node.
func (f *FakeNet) Remove(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.members, name)
}

// FakeNode is one node's view of a FakeNet; it implements what the
// coordinator needs of a gossip node.
type FakeNode struct {
	net  *FakeNet
	name string
	stop sync.Once
}

// Addr returns the node's pool address.
func (n *FakeNode) Addr() string { return "fake/" + n.name }

// Join does nothing: a FakeNet is always converged.
func (n *FakeNode) Join(addrs []string) error { return nil }

// Members returns the live members, sorted by name.
func (n *FakeNode) Members() []Member {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	out := slices.Collect(maps.Values(n.net.members))
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// WithRole returns the live members of one role.
func (n *FakeNode) WithRole(role string) []Member { return withRole(n.Members(), role) }

// HealthScore is always 0: a FakeNet has no network of its own to fail.
func (n *FakeNode) HealthScore() int { return 0 }

// Keys returns the pool's keyring.
func (n *FakeNode) Keys() []string {
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	return slices.Clone(n.net.keys)
}

// SetKeys installs a keyring pool-wide.
func (n *FakeNode) SetKeys(keys []string) error {
	if len(keys) == 0 {
		return fmt.Errorf("gossip: an empty keyring")
	}
	n.net.mu.Lock()
	defer n.net.mu.Unlock()
	n.net.keys = slices.Clone(keys)
	return nil
}

// Leave takes the node out of the pool.
func (n *FakeNode) Leave(time.Duration) error { return n.Shutdown() }

// Shutdown takes the node out of the pool.
func (n *FakeNode) Shutdown() error {
	n.stop.Do(func() { n.net.Remove(n.name) })
	return nil
}
