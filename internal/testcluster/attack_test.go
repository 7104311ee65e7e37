package testcluster

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// connFlood opens TCP connections to addrs and leaves them silent: held
// keeps that many open to each address (opening another when one is
// dropped), and one more is opened to each every period. It stops when
// ctx ends and reports how many it opened.
func connFlood(ctx context.Context, addrs []string, held int, period time.Duration) *atomic.Int64 {
	var opened atomic.Int64
	var wg sync.WaitGroup
	hold := func(addr string) {
		defer wg.Done()
		for ctx.Err() == nil {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			opened.Add(1)
			// Silent until the server drops it (or the test ends).
			go func() { <-ctx.Done(); c.Close() }()
			c.Read(make([]byte, 1))
			c.Close()
		}
	}
	for _, a := range addrs {
		for range held {
			wg.Add(1)
			go hold(a)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(period)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
						opened.Add(1)
						go func() { <-ctx.Done(); c.Close() }()
					}
				}
			}
		}()
	}
	go func() { <-ctx.Done(); wg.Wait() }()
	return &opened
}

// TestRaftHandshakeFlood: an attacker without a certificate holds silent
// TCP connections to the followers' Raft ports and opens more all the
// time; the leader is killed. Handshakes run concurrently and time out in
// seconds, so the followers elect a new leader in the usual time (before,
// the Raft listener shook hands one at a time inside Accept with a 10 s
// deadline, and such an attack kept a cluster leaderless as long as it
// lasted). A peer with a worker certificate is refused at the handshake.
func TestRaftHandshakeFlood(t *testing.T) {
	ca := t.TempDir()
	if err := pki.InitCA(ca, "test", time.Hour); err != nil {
		t.Fatal(err)
	}
	cl := NewCluster(t, 3, ClusterOptions{RealRaft: true, Edit: func(i int, cfg *coordinator.Config) {
		cfg.TLS = node(t, ca, pki.RoleCoordinator, cfg.NodeID, time.Time{})
	}})
	leader := cl.Leader()
	var targets []string
	for _, nd := range cl.Nodes {
		if nd != leader {
			targets = append(targets, nd.Cfg.RaftAddr)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opened := connFlood(ctx, targets, 12, 100*time.Millisecond)
	time.Sleep(2 * time.Second) // the flood is under way

	// A rogue with a worker certificate gets no Raft connection.
	w := node(t, ca, pki.RoleWorker, "rogue", time.Time{})
	if c, err := tls.Dial("tcp", targets[0], w.ClientTLS()); err == nil {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("a worker certificate's Raft connection was kept open")
		}
		c.Close()
	}

	killed := time.Now()
	cl.Crash(leader)
	next := cl.WaitForLeader(30 * time.Second)
	took := time.Since(killed)
	t.Logf("new leader %s %v after the kill, %d silent connections opened by then", next.Name, took.Round(10*time.Millisecond), opened.Load())
	if next == leader || took > 10*time.Second {
		t.Fatalf("failover under the connection flood took %v (usual: about a second)", took)
	}
}

// TestGRPCIdleConnectionsDropped: TCP connections to a TLS coordinator's
// gRPC port that never start a handshake are closed within seconds (they
// were kept open: 19,500 of them used 18,000 descriptors), and a real
// client is served meanwhile.
func TestGRPCIdleConnectionsDropped(t *testing.T) {
	ca := t.TempDir()
	if err := pki.InitCA(ca, "test", time.Hour); err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{TLS: node(t, ca, pki.RoleCoordinator, "coord-1", time.Time{})})
	var conns []net.Conn
	for range 200 {
		conn, err := net.Dial("tcp", c.GRPCAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, conn)
	}
	admin := client.NewPoolTLS(node(t, ca, pki.RoleAdmin, "alice", time.Time{}).ClientTLS())
	defer admin.Close()
	conn, _ := admin.Conn(c.GRPCAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := rpcpb.NewAdminClient(conn).ClusterStatus(ctx, &pb.ClusterStatusRequest{}); err != nil {
		t.Errorf("a real client during the idle connections: %v", err)
	}
	start := time.Now()
	for i, conn := range conns {
		conn.SetReadDeadline(start.Add(15 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("idle connection %d still open after %v", i, time.Since(start).Round(time.Second))
		}
	}
	t.Logf("200 idle connections closed by the server within %v", time.Since(start).Round(100*time.Millisecond))
}
