// Package netlab builds small networks of Linux network namespaces for
// tests: each host is a namespace with one interface on a bridge that
// lives in a hub namespace of its own, so that the lab touches nothing
// of the machine's own network. A host can be cut off from the others
// (its link on the bridge goes down: every connection to and from it
// stalls, as in a real partition, with no reset) and healed again, or the
// lab split in two groups that reach only their own side.
// Processes run in a host with `ip netns exec`; the test process itself
// dials into a host's namespace with Host.Dial.
//
// It needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2; New skips
// the test with the reason when either is missing.
package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Subnet is the lab's network; host i (from 1) has Subnet.i.
const Subnet = "10.231.0"

const prefix = "ftlab-"

var labs atomic.Int32

// Lab is a set of hosts on one bridge.
type Lab struct {
	t     testing.TB
	name  string // namespace name prefix, unique per lab
	hub   string
	split bool // the second bridge exists
	Hosts []*Host
}

// Host is one network namespace with one address on the lab's bridge.
type Host struct {
	Name string
	NS   string // namespace name (ip netns)
	IP   string
	link string // its veth end on the bridge, in the hub namespace
}

// New builds a lab with one host per name (at most 250), or skips t if
// this machine cannot make namespaces. Everything is removed at cleanup.
func New(t testing.TB, names ...string) *Lab {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("netlab: no ip command (Debian package iproute2)")
	}
	sweep()
	l := &Lab{t: t, name: fmt.Sprintf("%s%d-%d-", prefix, os.Getpid(), labs.Add(1))}
	l.hub = l.name + "hub"
	if err := ip("netns", "add", l.hub); err != nil {
		t.Skipf("netlab: cannot create network namespaces here (needs root): %v", err)
	}
	t.Cleanup(l.remove)
	l.must("-n", l.hub, "link", "add", "br0", "type", "bridge")
	l.must("-n", l.hub, "link", "set", "br0", "up")
	for i, name := range names {
		h := &Host{Name: name, NS: l.name + name, IP: fmt.Sprintf("%s.%d", Subnet, i+1), link: fmt.Sprintf("v%d", i+1)}
		l.must("netns", "add", h.NS)
		l.must("link", "add", h.link, "netns", l.hub, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
		l.must("-n", l.hub, "link", "set", h.link, "master", "br0", "up")
		l.must("-n", h.NS, "addr", "add", h.IP+"/24", "dev", "eth0")
		l.must("-n", h.NS, "link", "set", "eth0", "up")
		l.must("-n", h.NS, "link", "set", "lo", "up")
		l.Hosts = append(l.Hosts, h)
	}
	return l
}

// Host returns the host called name.
func (l *Lab) Host(name string) *Host {
	for _, h := range l.Hosts {
		if h.Name == name {
			return h
		}
	}
	l.t.Fatalf("netlab: no host %q", name)
	return nil
}

// Cut takes h's link to the bridge down: h reaches no other host and none
// reaches it, until Heal.
func (l *Lab) Cut(h *Host) { l.must("-n", l.hub, "link", "set", h.link, "down") }

// Heal brings h's link back.
func (l *Lab) Heal(h *Host) { l.must("-n", l.hub, "link", "set", h.link, "up") }

// blockTable is the nftables table Block adds rules to in a host.
const blockTable = "netlab_block"

// Block drops every TCP and UDP packet from or to port on h's link, in both
// directions, as a firewall rule on one service's port would: the host
// stays reachable on its other ports. It needs nft (Debian nftables) and
// nf_tables in the kernel; the test is skipped without them. Unblock
// removes every such rule.
func (l *Lab) Block(h *Host, port int) {
	l.t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		l.t.Skip("netlab: no nft command (Debian package nftables) to block a port")
	}
	var rules strings.Builder
	fmt.Fprintf(&rules, "table inet %s {\n", blockTable)
	for _, hook := range []struct{ chain, hook, dev string }{{"in", "input", "iifname"}, {"out", "output", "oifname"}} {
		fmt.Fprintf(&rules, "  chain %s { type filter hook %s priority 0;\n", hook.chain, hook.hook)
		for _, proto := range []string{"tcp", "udp"} {
			for _, dir := range []string{"sport", "dport"} {
				fmt.Fprintf(&rules, "    %s \"eth0\" %s %s %d drop\n", hook.dev, proto, dir, port)
			}
		}
		rules.WriteString("  }\n")
	}
	rules.WriteString("}\n")
	cmd := exec.Command("ip", "netns", "exec", h.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		// The rules are fixed and load here; failing elsewhere means the
		// kernel has no nf_tables (a container without it), not a bug.
		l.t.Skipf("netlab: cannot block port %d on %s (nftables in the kernel?): %v: %s", port, h.Name, err, out)
	}
}

// Unblock removes the rules Block added on h.
func (l *Lab) Unblock(h *Host) {
	l.t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", h.NS, "nft", "delete", "table", "inet", blockTable).CombinedOutput(); err != nil {
		l.t.Fatalf("netlab: unblock %s: %v: %s", h.Name, err, out)
	}
}

// Split moves the given hosts onto a bridge of their own: they reach each
// other, and none of the rest, until Join. The rest stay connected.
func (l *Lab) Split(side ...*Host) {
	l.t.Helper()
	if !l.split {
		l.must("-n", l.hub, "link", "add", "br1", "type", "bridge")
		l.must("-n", l.hub, "link", "set", "br1", "up")
		l.split = true
	}
	for _, h := range side {
		l.must("-n", l.hub, "link", "set", h.link, "master", "br1")
	}
}

// Join puts every host back on the one bridge.
func (l *Lab) Join() {
	l.t.Helper()
	for _, h := range l.Hosts {
		l.must("-n", l.hub, "link", "set", h.link, "master", "br0")
	}
}

// Addr returns h's address with port.
func (h *Host) Addr(port int) string { return net.JoinHostPort(h.IP, strconv.Itoa(port)) }

// Command returns a command running bin with args in h's namespace.
func (h *Host) Command(bin string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, bin}, args...)...)
}

// Dial opens a TCP connection to addr from inside h's namespace. Its
// signature suits grpc.WithContextDialer.
func (h *Host) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var conn net.Conn
	err := h.do(func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return conn, err
}

// Listen opens a TCP listener on addr inside h's namespace.
func (h *Host) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// do runs fn on a thread switched into h's namespace, so that the sockets
// fn makes belong to it; the rest of the process stays where it is. If
// switching back fails the thread stays locked and the runtime discards it.
func (h *Host) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer home.Close()
		target, err := os.Open("/var/run/netns/" + h.NS)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: enter %s: %w", h.NS, err)
			return
		}
		err = fn()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func (l *Lab) must(args ...string) {
	l.t.Helper()
	if err := ip(args...); err != nil {
		l.t.Fatalf("netlab: %v", err)
	}
}

// remove deletes the lab's namespaces (their interfaces go with them).
// Processes still running in a namespace keep it alive until they end, so
// tests kill theirs first (their cleanups run before this one).
func (l *Lab) remove() {
	for _, h := range l.Hosts {
		_ = ip("netns", "del", h.NS)
	}
	_ = ip("netns", "del", l.hub)
}

// sweep deletes namespaces left by labs of processes that no longer run
// (a test binary killed before its cleanups).
func sweep() {
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if unix.Kill(pid, 0) == unix.ESRCH {
			_ = ip("netns", "del", e.Name())
		}
	}
}

func ip(args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
