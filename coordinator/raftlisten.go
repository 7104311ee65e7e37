package coordinator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/fedtune/fedtune/internal/pki"
)

// Limits of the Raft listener's TLS handshakes. A real coordinator
// completes its handshake in milliseconds; a connection that does not
// within raftHandshakeTimeout is dropped. Handshakes run concurrently, so
// a peer that connects and stays silent holds one slot for that long and
// delays nobody; the caps bound what a flood of such connections costs.
const (
	raftHandshakeTimeout   = 2 * time.Second
	raftMaxHandshakes      = 128 // pending at once, from all sources
	raftMaxHandshakesPerIP = 32  // pending at once from one address
)

// tlsStreamLayer is Raft's transport over mutual TLS: only peers with a
// coordinator certificate of the cluster's CA are accepted.
//
// Its accept loop hands each new TCP connection to a goroutine of its own
// for the TLS handshake, bounded in time and in number (in all and per
// source address); Accept returns the connections whose handshake proved
// a coordinator. (It once shook hands inside Accept, one at a time with a
// 10 s deadline: three idle TCP connections delayed a coordinator by 29 s,
// and one connection a second to two followers kept a cluster that had
// lost its leader from electing another for as long as it went on.)
type tlsStreamLayer struct {
	ln      net.Listener // TCP
	cfg     *tls.Config
	node    *pki.Node
	refused func()
	ready   chan net.Conn
	done    chan struct{}
	once    sync.Once

	mu      sync.Mutex
	pending map[string]int // source IP -> handshakes in progress
	total   int
}

func newTLSStreamLayer(addr string, node *pki.Node, refused func()) (*tlsStreamLayer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &tlsStreamLayer{ln: ln, cfg: node.ServerTLS(), node: node, refused: refused, ready: make(chan net.Conn), done: make(chan struct{}), pending: map[string]int{}}
	go l.acceptLoop()
	return l, nil
}

// acceptLoop accepts TCP connections and starts their handshakes until
// the listener is closed. Other accept errors (out of descriptors under a
// flood) are waited out with a growing pause, as net/http's server does,
// rather than ending Raft's listener for good.
func (l *tlsStreamLayer) acceptLoop() {
	var pause time.Duration
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.Close()
				return
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			select {
			case <-l.done:
				return
			case <-time.After(pause):
			}
			continue
		}
		pause = 0
		ip := sourceIP(conn.RemoteAddr())
		if !l.reserve(ip) {
			l.refused()
			conn.Close()
			continue
		}
		go l.handshake(conn, ip)
	}
}

func sourceIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}

// reserve takes a handshake slot for ip, or reports that none is free.
func (l *tlsStreamLayer) reserve(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= raftMaxHandshakes || l.pending[ip] >= raftMaxHandshakesPerIP {
		return false
	}
	l.total++
	l.pending[ip]++
	return true
}

func (l *tlsStreamLayer) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.pending[ip]--; l.pending[ip] <= 0 {
		delete(l.pending, ip)
	}
}

// handshake proves conn's peer a coordinator within the timeout and hands
// it to Accept, or closes it.
func (l *tlsStreamLayer) handshake(conn net.Conn, ip string) {
	tc := tls.Server(conn, l.cfg)
	tc.SetDeadline(time.Now().Add(raftHandshakeTimeout))
	err := tc.Handshake()
	tc.SetDeadline(time.Time{})
	l.release(ip)
	if err == nil {
		var id pki.Identity
		if id, err = pki.ConnIdentity(tc); err == nil && id.Role != pki.RoleCoordinator {
			err = fmt.Errorf("%s %q is not a coordinator", id.Role, id.Name)
		}
	}
	if err != nil {
		l.refused()
		tc.Close()
		return
	}
	select {
	case l.ready <- tc:
	case <-l.done:
		tc.Close()
	}
}

// Accept returns the next connection whose peer proved to be a coordinator.
func (l *tlsStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections already returned stay open.
func (l *tlsStreamLayer) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.ln.Close()
	})
	return err
}

// Addr is the listening address.
func (l *tlsStreamLayer) Addr() net.Addr { return l.ln.Addr() }

// Dial connects to another coordinator's Raft transport.
func (l *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	return tls.DialWithDialer(d, "tcp", string(address), l.node.ClientTLS())
}
