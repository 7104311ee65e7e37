// Package client talks to a fedtune cluster over gRPC: it keeps one
// connection per coordinator address, follows leader hints, and moves blobs
// in chunks with their SHA-256 checked.
package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/fedtune/fedtune/internal/blobstream"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// MaxMessage bounds a gRPC message this client sends or receives.
const MaxMessage = 1 << 30

// Connections ping a peer they have heard nothing from for KeepaliveTime
// and drop it when no answer comes within KeepaliveTimeout. A node cut off
// by the network stalls a connection without resetting it; the calls in
// flight on it then fail within about the sum of the two, and the caller
// moves to another node instead of waiting out each call's own deadline.
// Servers must accept pings this often (the coordinator does).
const (
	KeepaliveTime    = 10 * time.Second // grpc-go's floor for clients
	KeepaliveTimeout = 3 * time.Second
)

// ServerKeepalive is what a server of these clients needs: it accepts
// their pings every KeepaliveTime (grpc-go refuses pings more often than
// every 5 minutes by default) and pings idle clients likewise, so that the
// long polls of a client cut off by the network end on its side too.
func ServerKeepalive() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveTime / 2, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
	}
}

// Pool holds one gRPC connection per address. Safe for concurrent use.
type Pool struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	creds credentials.TransportCredentials
}

// NewPool returns an empty pool of plaintext connections (insecure mode).
func NewPool() *Pool { return NewPoolTLS(nil) }

// NewPoolTLS returns an empty pool whose connections use cfg (mutual TLS:
// pki.Node.ClientTLS); nil means plaintext.
func NewPoolTLS(cfg *tls.Config) *Pool {
	creds := insecure.NewCredentials()
	if cfg != nil {
		creds = credentials.NewTLS(cfg)
	}
	return &Pool{conns: map[string]*grpc.ClientConn{}, creds: creds}
}

// Conn returns the connection to addr, dialling lazily.
func (p *Pool) Conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(p.creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout, PermitWithoutStream: true}),
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
func HashOf(b []byte) string { return blobstream.HashOf(b) }

// GetBlob fetches a blob by hash and checks it. limit bounds its size.
func GetBlob(ctx context.Context, conn grpc.ClientConnInterface, hash string, limit int64) ([]byte, error) {
	return getBlob(ctx, conn, &pb.GetBlobRequest{Hash: hash}, limit)
}

// GetLocalBlob is GetBlob from the coordinator's own store only, without
// fetching from its peers: it tells whether that node holds the blob.
func GetLocalBlob(ctx context.Context, conn grpc.ClientConnInterface, hash string, limit int64) ([]byte, error) {
	return getBlob(ctx, conn, &pb.GetBlobRequest{Hash: hash, LocalOnly: true}, limit)
}

func getBlob(ctx context.Context, conn grpc.ClientConnInterface, req *pb.GetBlobRequest, limit int64) ([]byte, error) {
	hash := req.Hash
	stream, err := rpcpb.NewBlobClient(conn).Get(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("get blob %.12s: %w", hash, err)
	}
	b, _, err := blobstream.Recv(stream, hash, limit)
	if err != nil {
		return nil, fmt.Errorf("get blob %.12s: %w", hash, err)
	}
	return b, nil
}

// ExportModel fetches a job's model (round 0: newest) as safetensors bytes;
// merged asks a LoRA job for its base with the adapters folded in.
func ExportModel(ctx context.Context, conn grpc.ClientConnInterface, job string, round uint32, merged bool) ([]byte, error) {
	stream, err := rpcpb.NewAdminClient(conn).ExportModel(ctx, &pb.ExportModelRequest{Job: job, Round: round, Merged: merged})
	if err != nil {
		return nil, fmt.Errorf("export model of %s: %w", job, err)
	}
	b, _, err := blobstream.Recv(stream, "", MaxMessage)
	if err != nil {
		return nil, fmt.Errorf("export model of %s: %w", job, err)
	}
	return b, nil
}

// PutBlob uploads b and returns its hash.
func PutBlob(ctx context.Context, conn grpc.ClientConnInterface, b []byte) (string, error) {
	hash := blobstream.HashOf(b)
	stream, err := rpcpb.NewBlobClient(conn).Put(ctx)
	if err != nil {
		return "", fmt.Errorf("put blob: %w", err)
	}
	// A send error ends the stream; the real error comes from CloseAndRecv.
	_ = blobstream.Send(stream, hash, b)
	if _, err := stream.CloseAndRecv(); err != nil {
		return "", fmt.Errorf("put blob %.12s: %w", hash, err)
	}
	return hash, nil
}

// JobHistory returns a job with its whole history, asked for page by page
// (JobStatus sends about 8 MB of rounds at a time).
func JobHistory(ctx context.Context, admin rpcpb.AdminClient, name string) (*pb.Job, error) {
	var job *pb.Job
	for from := uint32(1); ; {
		resp, err := admin.JobStatus(ctx, &pb.JobStatusRequest{Name: name, FromRound: from})
		if err != nil {
			return nil, err
		}
		if job == nil {
			job = resp.Job
		} else {
			job.History = append(job.History, resp.Job.History...)
		}
		from = resp.HistoryFrom + uint32(len(resp.Job.History))
		if len(resp.Job.History) == 0 || from > resp.HistoryTotal {
			return job, nil
		}
	}
}
