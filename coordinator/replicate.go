package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/fedtune/fedtune/internal/client"
)

// ErrNoQuorum means a blob could not be stored on a quorum of voters, so no
// command may name it yet (the durability rule).
var ErrNoQuorum = errors.New("blob not held by a quorum of coordinators")

// peer is another server of the Raft configuration.
type peer struct {
	id    string
	grpc  string // "" when gossip does not know it
	voter bool
}

// peers returns the other servers of the current Raft configuration, with
// their gRPC addresses (grpcAddrs: gossip's, else the recorded ones).
func (c *Coordinator) peers() ([]peer, int, error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, 0, err
	}
	grpcOf := c.grpcAddrs()
	var out []peer
	voters := 0
	for _, s := range f.Configuration().Servers {
		v := s.Suffrage == raft.Voter
		if v {
			voters++
		}
		if string(s.ID) == c.cfg.NodeID {
			continue
		}
		out = append(out, peer{id: string(s.ID), grpc: grpcOf[string(s.ID)], voter: v})
	}
	return out, voters, nil
}

// replicate stores b locally and pushes it to every other server of the
// configuration, returning once a quorum of voters (this node included)
// holds it; pushes to the rest finish in the background. Only then may a
// command naming the blob be appended (DESIGN.md's durability rule).
func (c *Coordinator) replicate(ctx context.Context, b []byte) (string, error) {
	start := time.Now()
	hash, err := c.blobs.Put(b)
	if err != nil {
		return "", err
	}
	peers, voters, err := c.peers()
	if err != nil {
		return "", fmt.Errorf("replicate blob %.12s: %w", hash, err)
	}
	need := voters/2 + 1
	acks := 1
	if acks >= need {
		return hash, nil
	}
	type result struct {
		voter bool
		err   error
	}
	results := make(chan result, len(peers))
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.pushBlob(pctx, p, hash, b)
			results <- result{p.voter, err}
		}()
	}
	go func() { wg.Wait(); cancel() }()
	var errs []error
	for range peers {
		select {
		case r := <-results:
			if r.err != nil {
				errs = append(errs, r.err)
			} else if r.voter {
				acks++
			}
		case <-ctx.Done():
			return "", fmt.Errorf("replicate blob %.12s: %w", hash, ctx.Err())
		}
		if acks >= need {
			c.metrics.replication(time.Since(start))
			return hash, nil
		}
	}
	return "", fmt.Errorf("replicate blob %.12s: %d of %d voters hold it, need %d: %w (%v)", hash, acks, voters, need, ErrNoQuorum, errors.Join(errs...))
}

func (c *Coordinator) pushBlob(ctx context.Context, p peer, hash string, b []byte) error {
	if p.grpc == "" {
		return fmt.Errorf("push to %s: no gRPC address in gossip", p.id)
	}
	conn, err := c.pool.Conn(p.grpc)
	if err != nil {
		return err
	}
	if _, err := client.PutBlob(ctx, conn, b); err != nil {
		return fmt.Errorf("push to %s: %w", p.id, err)
	}
	return nil
}

// blob returns a blob from the local store, fetching it from a peer when
// this node lacks it (a new node, a restored snapshot, a follower outside
// the quorum that acknowledged it).
func (c *Coordinator) blob(ctx context.Context, hash string) ([]byte, error) {
	b, err := c.blobs.Get(hash)
	if !errors.Is(err, ErrBlobNotFound) {
		return b, err
	}
	peers, _, perr := c.peers()
	if perr != nil {
		return nil, err
	}
	// Ask the leader first: it holds every blob a command names.
	lid := ""
	if _, id := c.raft.LeaderWithID(); id != "" {
		lid = string(id)
	}
	for pass := 0; pass < 2; pass++ {
		for _, p := range peers {
			if (pass == 0) != (p.id == lid) || p.grpc == "" {
				continue
			}
			conn, cerr := c.pool.Conn(p.grpc)
			if cerr != nil {
				continue
			}
			// Local copies only: a peer without the blob says so at once.
			// (Asking for the peer's fetch made a blob no one held — the
			// updates of a garbage-collected round — bounce between the
			// coordinators until the 60 s timeouts: fedtune verify hung.)
			fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			got, ferr := client.GetLocalBlob(fctx, conn, hash, c.cfg.MaxBlobBytes)
			cancel()
			if ferr != nil {
				continue
			}
			if _, serr := c.blobs.Put(got); serr != nil {
				return nil, serr
			}
			return got, nil
		}
	}
	return nil, err
}
