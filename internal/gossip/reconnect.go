package gossip

import (
	"encoding/json"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Reconnecting after a partition. Once two sides of a cut network have
// declared each other dead, memberlist never probes the dead again, so the
// pool stays split after the network heals: workers are never offered
// rounds again, and coordinators' autopilot would eventually remove a
// healthy server. As Serf does, each node therefore remembers the members
// it saw go and every reconnect interval tries to join them again; joining
// exchanges full state, the other side refutes its death, and the pool is
// whole. memberlist does not tell a member that
// failed from one that left in its leave event (the state it passes is
// stale), so both are tried: a node that left for good refuses the
// connection at once, and is forgotten after reconnectTimeout.

// reconnectTimeout is how long a failed member is tried before it is
// forgotten.
const reconnectTimeout = 24 * time.Hour

// reconnectTries is how many failed workers one round of the loop tries,
// besides every failed coordinator (there are at most a handful).
const reconnectTries = 3

// reconnectInterval returns the profile's interval between reconnect
// attempts.
func reconnectInterval(profile string) time.Duration {
	switch profile {
	case "local":
		return time.Second
	case "wan":
		return 30 * time.Second
	}
	return 10 * time.Second
}

// failed tracks members seen to fail; it is memberlist's event delegate.
type failed struct {
	mu    sync.Mutex
	nodes map[string]failedNode
	now   func() time.Time // time.Now unless a test sets it
}

func (f *failed) clock() time.Time {
	if f.now != nil {
		return f.now()
	}
	return time.Now()
}

type failedNode struct {
	addr        string
	since       time.Time
	coordinator bool
}

func (f *failed) NotifyJoin(n *memberlist.Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.nodes, n.Name)
}

func (f *failed) NotifyLeave(n *memberlist.Node) {
	var meta Meta
	_ = json.Unmarshal(n.Meta, &meta)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.nodes == nil {
		f.nodes = map[string]failedNode{}
	}
	f.nodes[n.Name] = failedNode{addr: n.FullAddress().Addr, since: f.clock(), coordinator: meta.Role == RoleCoordinator}
}

func (f *failed) NotifyUpdate(*memberlist.Node) {}

// pick returns the addresses of every failed coordinator and of up to n
// other failed members at random, forgetting those failed longer than
// reconnectTimeout.
func (f *failed) pick(n int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.clock()
	var coords, others []string
	for name, fn := range f.nodes {
		switch {
		case now.Sub(fn.since) > reconnectTimeout:
			delete(f.nodes, name)
		case fn.coordinator:
			coords = append(coords, fn.addr)
		default:
			others = append(others, fn.addr)
		}
	}
	rand.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	return append(coords, others[:min(n, len(others))]...)
}

// reconnect tries failed members every interval until done is closed.
func (n *Node) reconnect(interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-tick.C:
			// In parallel: an unreachable host costs a connect timeout.
			var wg sync.WaitGroup
			for _, addr := range n.failed.pick(reconnectTries) {
				wg.Go(func() {
					// An error means it is still unreachable: next time.
					_, _ = n.ml.Join([]string{addr})
				})
			}
			wg.Wait()
		}
	}
}
