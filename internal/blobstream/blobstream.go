// Package blobstream moves content-addressed bytes over gRPC streams of
// protocol.BlobChunk: the first chunk names the blob's SHA-256 and size, the
// rest carry data. Receivers enforce the declared size and a limit before
// they buffer anything, and check the hash at the end.
package blobstream

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	pb "github.com/fedtune/fedtune/protocol"
)

// ChunkSize is the size of the pieces blobs are sent in.
const ChunkSize = 1 << 20

// ErrHashMismatch means received bytes do not match their hash.
var ErrHashMismatch = errors.New("blob bytes do not match their hash")

// ErrTooLarge means a blob declared or sent more bytes than allowed.
var ErrTooLarge = errors.New("blob too large")

// HashOf returns the hex SHA-256 of b.
func HashOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Send sends b as chunks; the first carries hash and the size.
func Send(stream interface{ Send(*pb.BlobChunk) error }, hash string, b []byte) error {
	first := true
	for len(b) > 0 || first {
		n := min(len(b), ChunkSize)
		ch := &pb.BlobChunk{Data: b[:n]}
		if first {
			ch.Hash, ch.Size = hash, uint64(len(b))
			first = false
		}
		if err := stream.Send(ch); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// Recv reads a chunk stream to its end and returns the bytes and the hash
// they were sent under. want, if not empty, must equal that hash. The bytes
// must match the declared size, stay within limit, and hash to the hash.
func Recv(stream interface{ Recv() (*pb.BlobChunk, error) }, want string, limit int64) ([]byte, string, error) {
	first, err := stream.Recv()
	if err != nil {
		return nil, "", fmt.Errorf("first chunk: %w", err)
	}
	hash := first.Hash
	if want != "" && hash != want {
		return nil, "", fmt.Errorf("stream names blob %.12s, want %.12s: %w", hash, want, ErrHashMismatch)
	}
	if int64(first.Size) > limit || first.Size > 1<<40 {
		return nil, "", fmt.Errorf("%d bytes declared, limit %d: %w", first.Size, limit, ErrTooLarge)
	}
	buf := make([]byte, 0, min(first.Size, 64<<20))
	buf = append(buf, first.Data...)
	for {
		ch, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, "", err
		}
		if uint64(len(buf)+len(ch.Data)) > first.Size {
			return nil, "", fmt.Errorf("more bytes than the declared %d: %w", first.Size, ErrTooLarge)
		}
		buf = append(buf, ch.Data...)
	}
	if uint64(len(buf)) != first.Size {
		return nil, "", fmt.Errorf("received %d bytes, declared %d", len(buf), first.Size)
	}
	if got := HashOf(buf); got != hash {
		return nil, "", fmt.Errorf("bytes hash to %.12s, sent as %.12s: %w", got, hash, ErrHashMismatch)
	}
	return buf, hash, nil
}
