package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/fedtune/fedtune/internal/client"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
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

// referenced returns the blobs the FSM still needs: every job's base and
// committed models, the open round's base and updates, and the updates of
// the last KeepUpdateRounds committed rounds.
func (c *Coordinator) referenced() map[string]bool {
	ref := map[string]bool{}
	c.fsm.ReadJobs(func(j *pb.Job) {
		ref[j.Spec.GetBaseModel()] = true
		ref[round.InitialModel(j.Spec)] = true
		ref[j.CurrentModel] = true
		for i, h := range j.History {
			ref[h.Model] = true
			if i >= len(j.History)-c.cfg.KeepUpdateRounds-1 {
				ref[h.OptimizerState] = true // the state verification of the kept rounds starts from
			}
			if i >= len(j.History)-c.cfg.KeepUpdateRounds {
				for _, u := range h.Accepted {
					ref[u.Blob] = true
				}
			}
		}
		for _, a := range j.Async.GetAssignments() {
			ref[a.BaseModel] = true
		}
		for _, u := range j.Async.GetBuffer() {
			ref[u.Blob] = true
		}
		if r := j.OpenRound; r != nil {
			ref[r.BaseModel] = true
			for _, u := range r.Updates {
				ref[u.Blob] = true
			}
		}
	})
	delete(ref, "")
	return ref
}

// blobGrace protects fresh blobs from garbage collection: they may be
// about to be named by a command.
const blobGrace = 10 * time.Minute

// blobLoop runs on every node: it fetches referenced blobs this node lacks
// and deletes blobs nothing references any more.
func (c *Coordinator) blobLoop() {
	defer c.wg.Done()
	fetch := time.NewTicker(time.Second)
	defer fetch.Stop()
	gc := time.NewTicker(time.Minute)
	defer gc.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-c.done; cancel() }()
	for {
		select {
		case <-c.done:
			return
		case <-fetch.C:
			for h := range c.referenced() {
				if !c.blobs.Has(h) {
					if _, err := c.blob(ctx, h); err != nil && ctx.Err() == nil {
						c.log.Debug("blob not fetched yet", "blob", h[:min(12, len(h))], "err", err)
					}
				}
			}
		case <-gc.C:
			c.collectGarbage(c.clock.Now())
		}
	}
}

// CollectGarbage deletes the blobs nothing references that are older than
// blobGrace as of now, and returns how many it deleted. The blob loop runs
// it every minute; tests run it at a chosen time.
func (c *Coordinator) CollectGarbage(now time.Time) int { return c.collectGarbage(now) }

// collectGarbage deletes unreferenced blobs older than blobGrace.
func (c *Coordinator) collectGarbage(now time.Time) int {
	ref := c.referenced()
	all, err := c.blobs.List()
	if err != nil {
		c.log.Warn("blob gc", "err", err)
		return 0
	}
	n := 0
	for _, b := range all {
		if ref[b.Hash] || now.Sub(b.ModTime) < blobGrace {
			continue
		}
		if err := c.blobs.Delete(b.Hash); err == nil {
			n++
		}
	}
	if n > 0 {
		c.log.Info("blob gc", "deleted", n)
	}
	return n
}

// keyringLoop applies the cluster's gossip keyring, as the log changes it,
// to this node's gossip.
func (c *Coordinator) keyringLoop() {
	defer c.wg.Done()
	var applied []string
	for {
		changed := c.fsm.Changed()
		if k := c.fsm.Keyring(); len(k) > 0 && !slices.Equal(k, applied) {
			if err := c.gossip.SetKeys(k); err != nil {
				c.log.Error("gossip keyring not applied", "err", err)
			} else {
				applied = k
				c.log.Info("gossip keyring applied", "keys", len(k))
			}
		}
		select {
		case <-c.done:
			return
		case <-changed:
		}
	}
}
