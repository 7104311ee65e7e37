package blobstream

import (
	"io"
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
)

type frames struct{ chunks []*pb.BlobChunk }

func (f *frames) Recv() (*pb.BlobChunk, error) {
	if len(f.chunks) == 0 {
		return nil, io.EOF
	}
	c := f.chunks[0]
	f.chunks = f.chunks[1:]
	return c, nil
}

// FuzzRecv feeds Recv arbitrary frames (declared hash and size, then data
// chunks): it must never panic, never accept bytes that do not hash to the
// declared hash or exceed the limit, and never allocate more than the
// limit up front.
func FuzzRecv(f *testing.F) {
	good := []byte("a model, in a few bytes")
	f.Add(HashOf(good), uint64(len(good)), good[:5], good[5:], int64(1<<20), false)
	f.Add(HashOf(good), uint64(1<<40), good, []byte(nil), int64(1<<30), true)
	f.Fuzz(func(t *testing.T, hash string, size uint64, first, rest []byte, limit int64, split bool) {
		limit = max(limit, 0) % (1 << 20)
		chunks := []*pb.BlobChunk{{Hash: hash, Size: size, Data: first}}
		if split && len(rest) > 1 {
			chunks = append(chunks, &pb.BlobChunk{Data: rest[:len(rest)/2]}, &pb.BlobChunk{Data: rest[len(rest)/2:]})
		} else if len(rest) > 0 {
			chunks = append(chunks, &pb.BlobChunk{Data: rest})
		}
		b, got, err := Recv(&frames{chunks}, "", limit)
		if err != nil {
			if b != nil {
				t.Fatal("bytes returned with an error")
			}
			return
		}
		if int64(len(b)) > limit || got != hash || HashOf(b) != hash || uint64(len(b)) != size {
			t.Fatalf("accepted %d bytes hashing to %.12s for declared %.12s/%d (limit %d)", len(b), HashOf(b), hash, size, limit)
		}
	})
}
