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
	ln, err := a.Listen(a.Addr(9000))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
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
	reach := func(from *Host) error {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		c, err := from.Dial(ctx, a.Addr(9000))
		if err != nil {
			return err
		}
		defer c.Close()
		got, err := io.ReadAll(c)
		if err == nil && string(got) != "hi" {
			t.Errorf("read %q", got)
		}
		return err
	}
	if err := reach(b); err != nil {
		t.Fatalf("b cannot reach a: %v", err)
	}
	l.Cut(a)
	if err := reach(b); err == nil {
		t.Fatal("b reaches a while a is cut off")
	}
	if err := reach(a); err != nil {
		t.Errorf("a cannot reach itself while cut off: %v", err)
	}
	l.Heal(a)
	if err := reach(b); err != nil {
		t.Errorf("b cannot reach a after healing: %v", err)
	}
}
