package testcluster

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// FaultNet carries the Raft traffic of in-process coordinators over real
// TCP on 127.0.0.1 and can cut it between groups of nodes (a network
// partition): dials across the cut fail and open connections across it are
// closed. Raft opens a connection per direction from the sender's side, so
// cutting dials and existing connections cuts both directions.
type FaultNet struct {
	mu      sync.Mutex
	names   map[string]string // raft address -> node name
	blocked map[[2]string]bool
	conns   map[[2]string][]net.Conn
}

// NewFaultNet returns a network with no faults.
func NewFaultNet() *FaultNet {
	return &FaultNet{names: map[string]string{}, blocked: map[[2]string]bool{}, conns: map[[2]string][]net.Conn{}}
}

// Layer returns a Raft StreamLayer for node name listening on addr
// ("127.0.0.1:0" for any port).
func (f *FaultNet) Layer(name, addr string) (*FaultLayer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.names[ln.Addr().String()] = name
	f.mu.Unlock()
	return &FaultLayer{Listener: ln, net: f, name: name}, nil
}

// Partition cuts every link between a node of side and a node outside it.
func (f *FaultNet) Partition(side ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := map[string]bool{}
	for _, s := range side {
		in[s] = true
	}
	for _, a := range f.names {
		for _, b := range f.names {
			if in[a] != in[b] {
				f.blocked[[2]string{a, b}] = true
				for _, c := range f.conns[[2]string{a, b}] {
					c.Close()
				}
				delete(f.conns, [2]string{a, b})
			}
		}
	}
}

// Heal removes every cut.
func (f *FaultNet) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked = map[[2]string]bool{}
}

// FaultLayer is one node's end of a FaultNet; it implements raft.StreamLayer.
type FaultLayer struct {
	net.Listener
	net  *FaultNet
	name string
}

// Dial connects to a Raft address unless the link is cut.
func (l *FaultLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	f := l.net
	f.mu.Lock()
	to := f.names[string(address)]
	key := [2]string{l.name, to}
	if f.blocked[key] {
		f.mu.Unlock()
		return nil, fmt.Errorf("faultnet: %s -> %s is partitioned", l.name, to)
	}
	f.mu.Unlock()
	c, err := net.DialTimeout("tcp", string(address), timeout)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blocked[key] {
		c.Close()
		return nil, fmt.Errorf("faultnet: %s -> %s is partitioned", l.name, to)
	}
	f.conns[key] = append(f.conns[key], c)
	return c, nil
}

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
