package testcluster

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
)

// TestTornWALTailLogged: a coordinator whose Raft log lost its tail (the
// last segment cut 300 bytes into its entries, as a torn write leaves it)
// says so at restart, with the entries lost (raft-wal repairs it silently
// and the leader sends them again; an operator saw nothing).
func TestTornWALTailLogged(t *testing.T) {
	dir := t.TempDir()
	c := StartCoordinator(t, coordinator.Config{DataDir: dir})
	handWorkers(t, c, "w1", "w2", "w3") // a few roster entries in the log
	WaitFor(t, 10*time.Second, "the roster", func() bool { return len(c.FSM().Workers()) == 3 })
	c.Crash()

	segs, _ := filepath.Glob(filepath.Join(dir, "raft", "wal", "*.wal"))
	if len(segs) == 0 {
		t.Fatal("no WAL segment")
	}
	sort.Strings(segs)
	tail := segs[len(segs)-1]
	b, err := os.ReadFile(tail)
	if err != nil {
		t.Fatal(err)
	}
	end := len(bytes.TrimRight(b, "\x00")) // the segment is preallocated with zeros
	if err := os.WriteFile(tail, append(b[:end-300], make([]byte, len(b)-end+300)...), 0o644); err != nil {
		t.Fatal(err)
	}

	var logged syncBuffer
	StartCoordinator(t, coordinator.Config{DataDir: dir, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if out := logged.String(); !strings.Contains(out, "raft log lost its tail") || !strings.Contains(out, "entries_lost=") {
		t.Errorf("restart after a torn tail logged nothing about it:\n%s", out)
	}
}
