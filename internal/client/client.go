// Package client talks to a fedtune cluster over gRPC: it keeps one
// connection per coordinator address, follows leader hints, and moves blobs
// in chunks with their SHA-256 checked.
package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/fedtune/fedtune/protocol"
)

// ChunkSize is the size of the pieces blobs are sent in.
const ChunkSize = 1 << 20

// MaxMessage bounds a gRPC message this client sends or receives.
const MaxMessage = 1 << 30

// Pool holds one gRPC connection per address. Safe for concurrent use.
type Pool struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// NewPool returns an empty pool.
func NewPool() *Pool { return &Pool{conns: map[string]*grpc.ClientConn{}} }

// Conn returns the connection to addr, dialling lazily.
func (p *Pool) Conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessage), grpc.MaxCallSendMsgSize(MaxMessage)))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

// Close closes every connection.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
		delete(p.conns, a)
	}
}

// HashOf returns the hex SHA-256 of b.
func HashOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// ErrHashMismatch means received bytes do not match the hash asked for.
var ErrHashMismatch = errors.New("blob bytes do not match their hash")

// GetBlob fetches a blob by hash and checks it. limit bounds its size.
func GetBlob(ctx context.Context, conn grpc.ClientConnInterface, hash string, limit int64) ([]byte, error) {
	stream, err := pb.NewBlobClient(conn).Get(ctx, &pb.GetBlobRequest{Hash: hash})
	if err != nil {
		return nil, fmt.Errorf("get blob %.12s: %w", hash, err)
	}
	return recvChunks(stream, hash, limit)
}

// RecvChunks reads a chunk stream (Blob.Get, Admin.ExportModel) whose
// first chunk names the hash and size; want, if not empty, must match it.
func recvChunks(stream interface{ Recv() (*pb.BlobChunk, error) }, want string, limit int64) ([]byte, error) {
	first, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("get blob %.12s: %w", want, err)
	}
	if int64(first.Size) > limit {
		return nil, fmt.Errorf("get blob %.12s: %d bytes exceeds the limit of %d", want, first.Size, limit)
	}
	buf := make([]byte, 0, first.Size)
	buf = append(buf, first.Data...)
	for {
		ch, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("get blob %.12s: %w", want, err)
		}
		if uint64(len(buf)+len(ch.Data)) > first.Size {
			return nil, fmt.Errorf("get blob %.12s: more bytes than the declared %d", want, first.Size)
		}
		buf = append(buf, ch.Data...)
	}
	if uint64(len(buf)) != first.Size {
		return nil, fmt.Errorf("get blob %.12s: %d bytes, declared %d", want, len(buf), first.Size)
	}
	if want == "" {
		want = first.Hash
	}
	if got := HashOf(buf); got != want {
		return nil, fmt.Errorf("get blob %.12s: got bytes hashing to %.12s: %w", want, got, ErrHashMismatch)
	}
	return buf, nil
}

// ExportModel fetches a job's model (round 0: newest) as safetensors bytes.
func ExportModel(ctx context.Context, conn grpc.ClientConnInterface, job string, round uint32) ([]byte, error) {
	stream, err := pb.NewAdminClient(conn).ExportModel(ctx, &pb.ExportModelRequest{Job: job, Round: round})
	if err != nil {
		return nil, fmt.Errorf("export model of %s: %w", job, err)
	}
	return recvChunks(stream, "", MaxMessage)
}

// PutBlob uploads b and returns its hash.
func PutBlob(ctx context.Context, conn grpc.ClientConnInterface, b []byte) (string, error) {
	hash := HashOf(b)
	stream, err := pb.NewBlobClient(conn).Put(ctx)
	if err != nil {
		return "", fmt.Errorf("put blob: %w", err)
	}
	first := true
	for len(b) > 0 || first {
		n := min(len(b), ChunkSize)
		ch := &pb.BlobChunk{Data: b[:n]}
		if first {
			ch.Hash, ch.Size = hash, uint64(len(b))
			first = false
		}
		if err := stream.Send(ch); err != nil {
			break // the real error comes from CloseAndRecv
		}
		b = b[n:]
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return "", fmt.Errorf("put blob %.12s: %w", hash, err)
	}
	return hash, nil
}
