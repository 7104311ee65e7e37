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
	if !reaches(b, a) {
		t.Error("b cannot reach a after healing")
	}
}

// serve accepts connections on h's port 9000 and writes "hi" on each.
func serve(t *testing.T, h *Host) {
	t.Helper()
	ln, err := h.Listen(h.Addr(9000))
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
func reaches(from, to *Host) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c, err := from.Dial(ctx, to.Addr(9000))
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
			deadline := time.Now().Add(5 * time.Second)
			for !reaches(from, to) {
				if time.Now().After(deadline) {
					t.Errorf("joined: %s cannot reach %s", from.Name, to.Name)
					break
				}
			}
		}
	}
}
