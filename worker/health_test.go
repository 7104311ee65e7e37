package worker

import (
	"testing"
	"time"
)

func TestReady(t *testing.T) {
	w := &Worker{cfg: Config{PollWait: 10 * time.Second}}
	now := time.Unix(1_700_000_000, 0)
	if err := w.Ready(now); err == nil {
		t.Error("ready before any coordinator answered")
	}
	w.lastContact.Store(now.Add(-20 * time.Second).UnixNano())
	if err := w.Ready(now); err != nil {
		t.Errorf("not ready 20 s after an answer (bound 50 s): %v", err)
	}
	w.lastContact.Store(now.Add(-51 * time.Second).UnixNano())
	if err := w.Ready(now); err == nil {
		t.Error("ready 51 s after the last answer (bound 50 s)")
	}
}
