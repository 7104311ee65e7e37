package coordinator

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fedtune/fedtune/internal/blobstream"
)

// ErrBlobNotFound is returned for a hash the store does not hold.
var ErrBlobNotFound = errors.New("blob not found")

// ErrBlobCorrupt is returned when stored bytes no longer match their hash,
// or received bytes do not match the hash they were sent under.
var ErrBlobCorrupt = errors.New("blob corrupt")

// BlobStore is a content-addressed store on disk: each blob is a file named
// by the hex SHA-256 of its bytes under dir/<first two hex digits>/. Writes
// go to a temporary file that is synced and renamed, so a crash leaves
// either the whole blob or none. Safe for concurrent use.
type BlobStore struct {
	dir   string
	bytes atomic.Int64 // held, counted at open and kept by Put and Delete
}

// OpenBlobStore opens (creating if needed) a blob store in dir.
func OpenBlobStore(dir string) (*BlobStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	s := &BlobStore{dir: dir}
	infos, err := s.List()
	if err != nil {
		return nil, fmt.Errorf("blob store: %w", err)
	}
	for _, b := range infos {
		s.bytes.Add(b.Size)
	}
	return s, nil
}

// Bytes returns the bytes the store holds, without reading the directory.
func (s *BlobStore) Bytes() int64 { return s.bytes.Load() }

// HashOf returns the hex SHA-256 of b.
func HashOf(b []byte) string { return blobstream.HashOf(b) }

func validHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

func (s *BlobStore) path(hash string) string {
	return filepath.Join(s.dir, hash[:2], hash)
}

// Put stores b and returns its hash. Storing bytes already held is a no-op.
func (s *BlobStore) Put(b []byte) (string, error) {
	h := HashOf(b)
	if s.Has(h) {
		return h, nil
	}
	p := s.path(h)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("put blob: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".put-*")
	if err != nil {
		return "", fmt.Errorf("put blob: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return "", fmt.Errorf("put blob %s: %w", h[:12], err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("put blob %s: %w", h[:12], err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("put blob %s: %w", h[:12], err)
	}
	// A hard link fails if another Put stored the blob meanwhile, so each
	// blob is counted once; a file system without links gets a rename.
	switch err := os.Link(tmp.Name(), p); {
	case errors.Is(err, os.ErrExist):
		return h, nil
	case err != nil:
		if err := os.Rename(tmp.Name(), p); err != nil {
			return "", fmt.Errorf("put blob %s: %w", h[:12], err)
		}
	}
	s.bytes.Add(int64(len(b)))
	return h, nil
}

// PutVerified stores b only if it hashes to want.
func (s *BlobStore) PutVerified(want string, b []byte) error {
	if got := HashOf(b); got != want {
		return fmt.Errorf("blob %.12s: received bytes hash to %.12s: %w", want, got, ErrBlobCorrupt)
	}
	_, err := s.Put(b)
	return err
}

// Has reports whether the store holds hash.
func (s *BlobStore) Has(hash string) bool {
	if !validHash(hash) {
		return false
	}
	_, err := os.Stat(s.path(hash))
	return err == nil
}

// Get returns the bytes stored under hash, checked against it.
func (s *BlobStore) Get(hash string) ([]byte, error) {
	if !validHash(hash) {
		return nil, fmt.Errorf("blob %q: not a SHA-256 hex hash: %w", hash, ErrBlobNotFound)
	}
	b, err := os.ReadFile(s.path(hash))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blob %.12s: %w", hash, ErrBlobNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %.12s: %w", hash, err)
	}
	if got := HashOf(b); got != hash {
		return nil, fmt.Errorf("blob %.12s: stored bytes hash to %.12s: %w", hash, got, ErrBlobCorrupt)
	}
	return b, nil
}

// Open returns the file holding hash, positioned at its start, after
// checking its bytes against the hash by streaming them (so a blob much
// larger than memory can be verified and then read piecewise).
func (s *BlobStore) Open(hash string) (*os.File, error) {
	if !validHash(hash) {
		return nil, fmt.Errorf("blob %q: not a SHA-256 hex hash: %w", hash, ErrBlobNotFound)
	}
	f, err := os.Open(s.path(hash))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blob %.12s: %w", hash, ErrBlobNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %.12s: %w", hash, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		f.Close()
		return nil, fmt.Errorf("blob %.12s: %w", hash, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hash {
		f.Close()
		return nil, fmt.Errorf("blob %.12s: stored bytes hash to %.12s: %w", hash, got, ErrBlobCorrupt)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("blob %.12s: %w", hash, err)
	}
	return f, nil
}

// Size returns the stored size of hash.
func (s *BlobStore) Size(hash string) (int64, error) {
	if !validHash(hash) {
		return 0, ErrBlobNotFound
	}
	fi, err := os.Stat(s.path(hash))
	if err != nil {
		return 0, fmt.Errorf("blob %.12s: %w", hash, ErrBlobNotFound)
	}
	return fi.Size(), nil
}

// BlobInfo describes a stored blob.
type BlobInfo struct {
	Hash    string
	Size    int64
	ModTime time.Time
}

// List returns every blob in the store.
func (s *BlobStore) List() ([]BlobInfo, error) {
	var out []BlobInfo
	dirs, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list blobs: %w", err)
	}
	for _, d := range dirs {
		if !d.IsDir() || len(d.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(s.dir, d.Name()))
		if err != nil {
			return nil, fmt.Errorf("list blobs: %w", err)
		}
		for _, f := range files {
			if !validHash(f.Name()) {
				continue
			}
			fi, err := f.Info()
			if err != nil {
				continue
			}
			out = append(out, BlobInfo{Hash: f.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
		}
	}
	return out, nil
}

// Delete removes a blob; deleting a blob not held is not an error.
func (s *BlobStore) Delete(hash string) error {
	if !validHash(hash) {
		return fmt.Errorf("delete blob %q: not a SHA-256 hex hash", hash)
	}
	fi, err := os.Stat(s.path(hash))
	if err == nil {
		err = os.Remove(s.path(hash))
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil // not held, or deleted meanwhile and counted there
	case err != nil:
		return fmt.Errorf("delete blob %.12s: %w", hash, err)
	}
	s.bytes.Add(-fi.Size())
	return nil
}
