package client

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// stallProxy forwards TCP connections to a backend until stall is called;
// from then on it forwards nothing and closes nothing, as a network that
// drops every packet does: no reset, no FIN, only silence.
type stallProxy struct {
	ln      net.Listener
	stalled chan struct{}
	once    sync.Once
	mu      sync.Mutex
	conns   []net.Conn
}

func newStallProxy(t *testing.T, backend string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, stalled: make(chan struct{})}
	t.Cleanup(p.close)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, b)
			p.mu.Unlock()
			go p.pipe(c, b)
			go p.pipe(b, c)
		}
	}()
	return p
}

func (p *stallProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-p.stalled:
			return // the bytes are lost and the connection stays open
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *stallProxy) stall() { p.once.Do(func() { close(p.stalled) }) }

func (p *stallProxy) close() {
	p.stall()
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// TestKeepaliveEndsStalledCall: a long-lived call through a network that
// goes silent (no reset) fails within about KeepaliveTime +
// KeepaliveTimeout — the client's pings go unanswered — instead of waiting
// out its own deadline, while an idle call on a healthy connection to the
// same server (with ServerKeepalive) lives on.
func TestKeepaliveEndsStalledCall(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a keepalive interval")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerKeepalive()...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	watch := func(addr string) (healthpb.Health_WatchClient, *Pool) {
		pool := NewPool()
		t.Cleanup(pool.Close)
		conn, err := pool.Conn(addr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		t.Cleanup(cancel)
		// Watch answers with the current status, then holds the call open.
		stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("first status: %v", err)
		}
		return stream, pool
	}
	healthy, _ := watch(ln.Addr().String())
	proxy := newStallProxy(t, ln.Addr().String())
	stalled, _ := watch(proxy.ln.Addr().String())

	proxy.stall()
	start := time.Now()
	ended, err := recvWithin(stalled, KeepaliveTime+KeepaliveTimeout+10*time.Second)
	took := time.Since(start)
	switch {
	case !ended:
		t.Fatalf("stalled call still open after %v", took)
	case status.Code(err) != codes.Unavailable:
		t.Errorf("stalled call ended with %v, want Unavailable (keepalive)", err)
	case took > KeepaliveTime+KeepaliveTimeout+5*time.Second:
		t.Errorf("stalled call took %v to end, want about %v", took, KeepaliveTime+KeepaliveTimeout)
	}
	t.Logf("stalled call ended after %v: %v", took.Round(100*time.Millisecond), err)

	// The healthy connection has been as idle and was pinged as well: its
	// call is still open, since its pings were answered.
	if ended, err := recvWithin(healthy, time.Second); ended {
		t.Errorf("healthy idle call ended: %v", err)
	}
}

// recvWithin waits up to d for the stream's next message or error; ended
// is false if neither came.
func recvWithin(s healthpb.Health_WatchClient, d time.Duration) (ended bool, err error) {
	got := make(chan error, 1)
	go func() {
		_, err := s.Recv()
		got <- err
	}()
	select {
	case err := <-got:
		return true, err
	case <-time.After(d):
		return false, nil
	}
}
