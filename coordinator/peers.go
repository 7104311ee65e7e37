package coordinator

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
)

// peerVerifier proves that a gossip member advertising the coordinator
// role is one: TLS handshakes at the Raft and gRPC addresses it advertises
// must show a coordinator certificate of the cluster's CA under the
// member's name.
// Only proven members count for --bootstrap-expect and are added to (or
// moved in) the Raft configuration. Without TLS every member passes (there
// is nothing to prove with). Safe for concurrent use.
type peerVerifier struct {
	node    *pki.Node // nil: insecure mode
	timeout time.Duration
	retry   time.Duration // how long a failed proof is remembered

	mu     sync.Mutex
	proven map[string]string // name -> addresses proven ("raft grpc")
	failed map[string]failedProof
}

type failedProof struct {
	addr string
	at   time.Time
	err  error
}

func newPeerVerifier(node *pki.Node) *peerVerifier {
	return &peerVerifier{node: node, timeout: 2 * time.Second, retry: 5 * time.Second, proven: map[string]string{}, failed: map[string]failedProof{}}
}

// verify returns nil if m proved to be the coordinator it claims to be at
// its advertised addresses (once proven, name and addresses are remembered; a
// failure is remembered for a few seconds, so the leader's loop does not
// dial on every tick).
func (v *peerVerifier) verify(m gossip.Member) error {
	if v.node == nil {
		return nil
	}
	if err := gossip.CheckName(m.Name); err != nil {
		return err
	}
	addrs := m.Meta.Raft + " " + m.Meta.GRPC
	v.mu.Lock()
	if v.proven[m.Name] == addrs {
		v.mu.Unlock()
		return nil
	}
	if f, ok := v.failed[m.Name]; ok && f.addr == addrs && time.Since(f.at) < v.retry {
		v.mu.Unlock()
		return f.err
	}
	v.mu.Unlock()
	err := v.handshake(m.Name, "Raft", m.Meta.Raft)
	if err == nil {
		err = v.handshake(m.Name, "gRPC", m.Meta.GRPC)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err != nil {
		v.failed[m.Name] = failedProof{addr: addrs, at: time.Now(), err: err}
		return err
	}
	delete(v.failed, m.Name)
	v.proven[m.Name] = addrs
	return nil
}

// handshake dials addr (the member's what: Raft or gRPC) and checks the
// certificate it presents.
func (v *peerVerifier) handshake(name, what, addr string) error {
	if addr == "" {
		return fmt.Errorf("coordinator %q advertises no %s address", name, what)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: v.timeout}, "tcp", addr, v.node.ClientTLS())
	if err != nil {
		return fmt.Errorf("coordinator %q at %s (%s): TLS handshake: %w", name, addr, what, err)
	}
	defer conn.Close()
	id, err := pki.ConnIdentity(conn)
	switch {
	case err != nil:
		return fmt.Errorf("coordinator %q at %s: %w", name, addr, err)
	case id.Role != pki.RoleCoordinator || id.Name != name:
		return fmt.Errorf("gossip member %q at %s (%s) presents the certificate of %s %q", name, addr, what, id.Role, id.Name)
	}
	return nil
}

// provenCoordinators returns the gossip members with the coordinator role
// that verify, logging each refusal once per reason.
func (c *Coordinator) provenCoordinators() []gossip.Member {
	var out []gossip.Member
	for _, m := range c.gossip.WithRole(gossip.RoleCoordinator) {
		if err := c.verifier.verify(m); err != nil {
			c.logUnproven(m.Name, err)
			continue
		}
		out = append(out, m)
	}
	return out
}

// logUnproven warns about a member that failed its proof, and counts it in
// fedtune_auth_refused_total{reason="gossip"}, once per distinct reason.
func (c *Coordinator) logUnproven(name string, err error) {
	c.unprovenMu.Lock()
	defer c.unprovenMu.Unlock()
	if c.unprovenLogged == nil {
		c.unprovenLogged = map[string]string{}
	}
	if c.unprovenLogged[name] == err.Error() {
		return
	}
	c.unprovenLogged[name] = err.Error()
	c.metrics.authRefused.WithLabelValues("gossip").Inc()
	c.log.Warn("gossip member claims the coordinator role without proving it; ignored", "member", name, "err", err)
}
