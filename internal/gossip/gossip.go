// Package gossip is fedtune's membership layer over hashicorp/memberlist:
// every node (coordinator or worker) joins one gossip pool and advertises
// its role, gRPC and Raft addresses and labels in node meta.
package gossip

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Roles a node advertises.
const (
	RoleCoordinator = "coordinator"
	RoleWorker      = "worker"
)

// Meta is what a node tells the pool about itself. Encoded as compact JSON,
// it must fit memberlist's 512-byte meta limit.
type Meta struct {
	Role   string            `json:"r"`
	GRPC   string            `json:"g,omitempty"`
	Raft   string            `json:"f,omitempty"`
	Labels map[string]string `json:"l,omitempty"`
}

// Member is a live node of the pool.
type Member struct {
	Name string
	Addr string // gossip address
	Meta Meta
}

// Config configures a gossip node.
type Config struct {
	Name      string // unique node name (the worker or coordinator id)
	BindAddr  string // host:port to listen on for gossip (port 0: any free port)
	Meta      Meta
	LogOutput io.Writer // memberlist's own log; nil discards it
	// Profile selects timings: "local" (one machine: failure detection in
	// about a second), "lan" (the default) or "wan" (sites across regions).
	Profile string
	// Keys, if any, encrypt and authenticate every gossip message
	// (AES-GCM, memberlist's keyring): the first encrypts, all decrypt, so
	// a new key can be installed everywhere before it is put first. Each
	// is 16, 24 or 32 bytes. A node without a key the others hold is not
	// seen by them.
	Keys [][]byte
}

// ParseKeys decodes comma-separated base64 gossip keys (the first is the
// primary), checking their lengths.
func ParseKeys(s string) ([][]byte, error) {
	if s == "" {
		return nil, nil
	}
	var keys [][]byte
	for _, part := range strings.Split(s, ",") {
		k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("gossip key: not base64: %w", err)
		}
		if n := len(k); n != 16 && n != 24 && n != 32 {
			return nil, fmt.Errorf("gossip key: %d bytes, want 16, 24 or 32 (fedtune keyring generate makes one)", n)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// NewKey returns a random 32-byte gossip key, base64-encoded.
func NewKey() (string, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(k), nil
}

// Profiles lists the timing profiles Start accepts.
var Profiles = []string{"local", "lan", "wan"}

// Node is a running gossip member.
type Node struct {
	ml     *memberlist.Memberlist
	del    *delegate
	kr     *memberlist.Keyring // nil: gossip is not encrypted
	failed *failed             // members seen to fail, tried again (reconnect.go)
	done   chan struct{}
	stop   sync.Once
}

// ErrNoKeyring means the node started without a gossip key: encryption
// cannot be turned on at run time.
var ErrNoKeyring = errors.New("gossip runs unencrypted (no --gossip-key at start): a keyring cannot be changed")

// Keys returns the keyring, base64, primary first (nil if unencrypted).
func (n *Node) Keys() []string {
	if n.kr == nil {
		return nil
	}
	primary := n.kr.GetPrimaryKey()
	out := []string{base64.StdEncoding.EncodeToString(primary)}
	for _, k := range n.kr.GetKeys() {
		if !bytes.Equal(k, primary) {
			out = append(out, base64.StdEncoding.EncodeToString(k))
		}
	}
	return out
}

// SetKeys makes the keyring exactly keys (base64), the first encrypting:
// new keys are installed, the primary switched, and the others removed.
func (n *Node) SetKeys(keys []string) error {
	if n.kr == nil {
		return ErrNoKeyring
	}
	raw, err := ParseKeys(strings.Join(keys, ","))
	if err != nil || len(raw) == 0 {
		return fmt.Errorf("gossip keyring %v: %v", keys, err)
	}
	for _, k := range raw {
		if err := n.kr.AddKey(k); err != nil {
			return err
		}
	}
	if err := n.kr.UseKey(raw[0]); err != nil {
		return err
	}
	for _, k := range n.kr.GetKeys() {
		if !slices.ContainsFunc(raw, func(r []byte) bool { return bytes.Equal(r, k) }) {
			if err := n.kr.RemoveKey(k); err != nil {
				return err
			}
		}
	}
	return nil
}

type delegate struct {
	mu   sync.Mutex
	meta []byte
}

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}

// SetMeta changes what this node advertises and gossips the change to the
// pool (within timeout).
func (n *Node) SetMeta(m Meta, timeout time.Duration) error {
	meta, err := encodeMeta(m)
	if err != nil {
		return err
	}
	n.del.mu.Lock()
	n.del.meta = meta
	n.del.mu.Unlock()
	return n.ml.UpdateNode(timeout)
}

func encodeMeta(m Meta) ([]byte, error) {
	meta, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("gossip meta: %w", err)
	}
	if len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("gossip meta is %d bytes, limit %d: use fewer or shorter labels", len(meta), memberlist.MetaMaxSize)
	}
	return meta, nil
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// Start creates the gossip node and starts listening; call Join to meet the pool.
func Start(cfg Config) (*Node, error) {
	meta, err := encodeMeta(cfg.Meta)
	if err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address %q: %w", cfg.BindAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("gossip bind port %q: %w", portStr, err)
	}
	var mc *memberlist.Config
	switch cfg.Profile {
	case "", "lan":
		mc = memberlist.DefaultLANConfig()
	case "wan":
		mc = memberlist.DefaultWANConfig()
	case "local":
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 500 * time.Millisecond
		mc.ProbeTimeout = 250 * time.Millisecond
		mc.SuspicionMult = 2
		mc.GossipInterval = 100 * time.Millisecond
	default:
		return nil, fmt.Errorf("gossip profile %q: want local, lan or wan", cfg.Profile)
	}
	// A node that crashed and comes back under the same name at a new
	// address (a restarted worker on an ephemeral port) may reclaim its
	// name once it has been dead this long; memberlist's default never.
	mc.DeadNodeReclaimTime = 3 * mc.ProbeInterval
	mc.Name = cfg.Name
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	del := &delegate{meta: meta}
	mc.Delegate = del
	fl := &failed{}
	mc.Events = fl
	out := cfg.LogOutput
	if out == nil {
		out = io.Discard
	}
	mc.Logger = log.New(out, "gossip: ", log.LstdFlags)
	if len(cfg.Keys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
		if err != nil {
			return nil, fmt.Errorf("gossip keyring: %w", err)
		}
		mc.Keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	n := &Node{ml: ml, del: del, kr: mc.Keyring, failed: fl, done: make(chan struct{})}
	go n.reconnect(reconnectInterval(cfg.Profile))
	return n, nil
}

// Addr returns the address other nodes reach this one's gossip at.
func (n *Node) Addr() string {
	ln := n.ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
}

// Join contacts the given gossip addresses; it succeeds if any answered.
func (n *Node) Join(addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	if _, err := n.ml.Join(addrs); err != nil {
		return fmt.Errorf("gossip join %v: %w", addrs, err)
	}
	return nil
}

// Members returns the live members (alive or suspect), this node included,
// sorted by name. Members whose meta is unreadable are left out.
func (n *Node) Members() []Member {
	var out []Member
	for _, m := range n.ml.Members() {
		var meta Meta
		if err := json.Unmarshal(m.Meta, &meta); err != nil {
			continue
		}
		out = append(out, Member{Name: m.Name, Addr: m.Address(), Meta: meta})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// HealthScore is memberlist's local health (Lifeguard's awareness): 0
// while this node's probes of others are answered, rising to 7 as they go
// unanswered with no other member vouching that the target is down — a
// sign that the trouble is this node's own network rather than the others.
func (n *Node) HealthScore() int { return n.ml.GetHealthScore() }

// WithRole returns the live members of one role.
func (n *Node) WithRole(role string) []Member { return withRole(n.Members(), role) }

// withRole keeps the members of one role.
func withRole(members []Member, role string) []Member {
	var out []Member
	for _, m := range members {
		if m.Meta.Role == role {
			out = append(out, m)
		}
	}
	return out
}

// Leave tells the pool this node is going, then stops it.
func (n *Node) Leave(timeout time.Duration) error {
	n.stop.Do(func() { close(n.done) })
	err := n.ml.Leave(timeout)
	if serr := n.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Shutdown stops the node without telling the pool, as a crash would.
func (n *Node) Shutdown() error {
	n.stop.Do(func() { close(n.done) })
	return n.ml.Shutdown()
}
