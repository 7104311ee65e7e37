package netlab

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestCutAndHeal: a host reaches another across the bridge, not while it
// is cut off (the connection attempt times out: no reset, as in a real
// partition), and again once healed; a cut host still reaches itself.
func TestCutAndHeal(t *testing.T) {
	l := New(t, "a", "b")
	a, b := l.Host("a"), l.Host("b")
	serve(t, a)
	if !reaches(b, a) {
		t.Fatal("b cannot reach a")
	}
	l.Cut(a)
	if reaches(b, a) {
		t.Fatal("b reaches a while a is cut off")
	}
	if !reaches(a, a) {
		t.Error("a cannot reach itself while cut off")
	}
	l.Heal(a)
	// The link comes back up and neighbour entries that failed during the
	// cut are retried within a second or so (one try at once failed under
	// load in a full make test).
	if !reachesWithin(b, a, 5*time.Second) {
		t.Error("b cannot reach a within 5 s of healing")
	}
}

// reachesWithin tries reaches until it succeeds or d has passed.
func reachesWithin(from, to *Host, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !reaches(from, to) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// TestBlockPort: with port 9000 blocked on a, b reaches a on another
// port but not on 9000, nor a b on 9000 (both directions); a still reaches
// itself; unblocked, b reaches a on 9000 again.
func TestBlockPort(t *testing.T) {
	l := New(t, "a", "b")
	a, b := l.Host("a"), l.Host("b")
	serve(t, a)
	serve(t, b)
	serveOn(t, a, 9001)
	l.Block(a, 9000)
	for _, tt := range []struct {
		name     string
		from, to *Host
		port     int
		want     bool
	}{
		{"b to a's blocked port", b, a, 9000, false},
		{"a to b's port of the same number", a, b, 9000, false},
		{"b to a's other port", b, a, 9001, true},
		{"a to itself", a, a, 9000, true},
	} {
		if got := reachesOn(tt.from, tt.to, tt.port); got != tt.want {
			t.Errorf("%s: reaches %v, want %v", tt.name, got, tt.want)
		}
	}
	l.Unblock(a)
	if !reaches(b, a) {
		t.Error("b cannot reach a's port 9000 after unblocking")
	}
}

// serve accepts connections on h's port 9000 and writes "hi" on each.
func serve(t *testing.T, h *Host) { serveOn(t, h, 9000) }

// serveOn accepts connections on h's port and writes "hi" on each.
func serveOn(t *testing.T, h *Host, port int) {
	t.Helper()
	ln, err := h.Listen(h.Addr(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
}

// reaches reports whether from can connect to to's port 9000 and read
// its greeting.
func reaches(from, to *Host) bool { return reachesOn(from, to, 9000) }

// reachesOn reports whether from can connect to to's port and read its
// greeting.
func reachesOn(from, to *Host, port int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := from.Dial(ctx, to.Addr(port))
	if err != nil {
		return false
	}
	defer c.Close()
	got, err := io.ReadAll(c)
	return err == nil && string(got) == "hi"
}

// TestSplitAndJoin: split in {a, b} and {c}, each side reaches its own
// hosts only; joined, all reach all again.
func TestSplitAndJoin(t *testing.T) {
	l := New(t, "a", "b", "c")
	a, b, c := l.Host("a"), l.Host("b"), l.Host("c")
	for _, h := range l.Hosts {
		serve(t, h)
	}
	l.Split(c)
	for _, tt := range []struct {
		from, to *Host
		want     bool
	}{{a, b, true}, {b, a, true}, {a, c, false}, {c, b, false}, {c, c, true}} {
		if got := reaches(tt.from, tt.to); got != tt.want {
			t.Errorf("split: %s reaches %s: %v, want %v", tt.from.Name, tt.to.Name, got, tt.want)
		}
	}
	l.Join()
	// Neighbour entries that failed during the split are retried within a
	// second or so.
	for _, from := range l.Hosts {
		for _, to := range l.Hosts {
			if !reachesWithin(from, to, 5*time.Second) {
				t.Errorf("joined: %s cannot reach %s", from.Name, to.Name)
			}
		}
	}
}
