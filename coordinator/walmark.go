package coordinator

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"

	"github.com/hashicorp/raft"
)

// markedLog is the Raft log store with a high-water mark beside it: the
// last index stored, rewritten (8 bytes, no fsync: it is for telling, not
// for safety) after every append and suffix truncation. At open, a log
// that ends before its mark lost its tail — a torn write, a crash with
// writes still in the page cache — which raft-wal repairs silently by
// dropping the partial entries (the leader then sends them again). The
// operator hears of it here instead.
type markedLog struct {
	raft.LogStore
	f *os.File
}

// openMarkedLog wraps store with the mark in path, and logs, once, any
// entries the store lost since the mark was last written.
func openMarkedLog(store raft.LogStore, path string, log *slog.Logger) (*markedLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("raft log mark: %w", err)
	}
	var b [8]byte
	last, err := store.LastIndex()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("raft log: %w", err)
	}
	if n, _ := f.ReadAt(b[:], 0); n == 8 {
		if mark := binary.LittleEndian.Uint64(b[:]); mark > last {
			log.Warn("raft log lost its tail at open (torn write or crash before the disk had it); the leader sends the entries again",
				"entries_lost", mark-last, "from_index", last+1, "to_index", mark)
		}
	}
	m := &markedLog{LogStore: store, f: f}
	m.mark(last)
	return m, nil
}

func (m *markedLog) mark(idx uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], idx)
	_, _ = m.f.WriteAt(b[:], 0)
}

// StoreLog stores one entry and moves the mark.
func (m *markedLog) StoreLog(l *raft.Log) error { return m.StoreLogs([]*raft.Log{l}) }

// StoreLogs stores entries and moves the mark to the last.
func (m *markedLog) StoreLogs(logs []*raft.Log) error {
	if err := m.LogStore.StoreLogs(logs); err != nil {
		return err
	}
	if len(logs) > 0 {
		m.mark(logs[len(logs)-1].Index)
	}
	return nil
}

// DeleteRange deletes entries and moves the mark to the store's new end
// (a suffix truncation lowers it; compaction of the head leaves it).
func (m *markedLog) DeleteRange(lo, hi uint64) error {
	if err := m.LogStore.DeleteRange(lo, hi); err != nil {
		return err
	}
	if last, err := m.LogStore.LastIndex(); err == nil {
		m.mark(last)
	}
	return nil
}

// IsMonotonic passes on the store's raft.MonotonicLogStore answer (raft-wal
// cannot hold gaps: after a snapshot restore raft must clear it whole).
func (m *markedLog) IsMonotonic() bool {
	mo, ok := m.LogStore.(raft.MonotonicLogStore)
	return ok && mo.IsMonotonic()
}

// Close closes the mark's file.
func (m *markedLog) Close() error { return m.f.Close() }
