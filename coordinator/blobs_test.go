package coordinator

import (
	"bytes"
	"sync"
	"testing"
)

// TestBlobStoreBytes: the store's byte count (the blob_store_bytes gauge)
// follows Put and Delete without reading the directory, counts a blob
// stored by several Puts at once only once, and is counted again from disk
// when the store is reopened.
func TestBlobStoreBytes(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenBlobStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, b := []byte("ten bytes!"), bytes.Repeat([]byte{7}, 1000)
	steps := []struct {
		name string
		do   func() error
		want int64
	}{
		{"empty", func() error { return nil }, 0},
		{"put a", func() error { _, err := s.Put(a); return err }, 10},
		{"put a again", func() error { _, err := s.Put(a); return err }, 10},
		{"put b from eight goroutines", func() error {
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for range 8 {
				wg.Go(func() {
					if _, err := s.Put(b); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			return <-errs
		}, 1010},
		{"delete a", func() error { return s.Delete(HashOf(a)) }, 1000},
		{"delete a again", func() error { return s.Delete(HashOf(a)) }, 1000},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := s.Bytes(); got != st.want {
			t.Errorf("after %s: %d bytes, want %d", st.name, got, st.want)
		}
	}
	again, err := OpenBlobStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Bytes(); got != 1000 {
		t.Errorf("reopened: %d bytes, want 1000", got)
	}
	if _, err := again.Get(HashOf(b)); err != nil {
		t.Errorf("blob b after concurrent puts: %v", err)
	}
}
