package worker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/dataset"
)

// TestStateDirLocked: a second worker given a state directory a running
// worker holds is refused, naming the holder (two workers started from one
// directory shared `fedtune-worker` and could load each other's residuals);
// the directory is free again once the first stops.
func TestStateDirLocked(t *testing.T) {
	dir := t.TempDir()
	train, _ := dataset.MNIST(dataset.Test)
	mk := func(id string) *Worker {
		w, err := New(Config{ID: id, Join: []string{"127.0.0.1:1"}, JoinTimeout: time.Minute, StateDir: dir, Profile: "local"},
			NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train}, nil))
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mk("w1").Run(ctx) }()
	// w1 holds the lock (its pid in LOCK) while it tries to join.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(filepath.Join(dir, "LOCK")); strings.HasPrefix(string(b), "pid ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first worker never took the lock")
		}
	}
	err := mk("w2").Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "in use by another running worker") {
		t.Fatalf("second worker on the same state dir: %v", err)
	}
	cancel()
	<-done
	l, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("after the first worker stopped: %v", err)
	}
	l.Close()
}
