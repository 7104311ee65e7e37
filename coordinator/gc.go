package coordinator

import (
	"context"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// referenced returns the blobs the FSM still needs: every job's base and
// committed models, a text job's tokenizer, the open round's base and updates, and the updates of
// the last KeepUpdateRounds committed rounds.
func (c *Coordinator) referenced() map[string]bool {
	ref := map[string]bool{}
	c.fsm.ReadJobs(func(j *pb.Job) {
		ref[j.Spec.GetBaseModel()] = true
		ref[j.Spec.GetTokenizer()] = true
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
