package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/hashicorp/raft"
)

// votersInGossip counts the Raft voters among the given gossip members
// (this node's view: itself included), and the voters there are.
func (c *Coordinator) votersInGossip(members []gossip.Member) (seen, voters int, err error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return 0, 0, fmt.Errorf("raft configuration: %w", err)
	}
	alive := map[string]bool{}
	for _, m := range members {
		alive[m.Name] = m.Meta.Role == gossip.RoleCoordinator
	}
	seen, voters = countVoters(f.Configuration().Servers, func(id string) bool { return alive[id] })
	return seen, voters, nil
}

// countVoters counts the voters among servers, and those of them alive
// says are alive.
func countVoters(servers []raft.Server, alive func(id string) bool) (seen, voters int) {
	for _, s := range servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if alive(string(s.ID)) {
			seen++
		}
	}
	return seen, voters
}

// serverReconciler is the leader's autopilot: it adds coordinators seen in
// gossip to the Raft configuration as non-voters, promotes them to voters
// once they have caught up, and removes coordinators gone from gossip for
// longer than ServerGrace, as long as a quorum of live voters remains.
type serverReconciler struct {
	c         *Coordinator
	log       *slog.Logger
	goneSince map[string]time.Time
	caughtUp  map[string]int // consecutive checks a non-voter was caught up
}

// run reconciles once a second until ctx ends (leadership lost).
func (r *serverReconciler) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		r.reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// changeConfig runs one Raft configuration change and waits for its
// commit, saying so when that takes long (the change holds only this
// goroutine; rounds are scheduled meanwhile).
func (r *serverReconciler) changeConfig(what, server string, f func() raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f().Error() }()
	slow := time.NewTimer(5 * time.Second)
	defer slow.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-slow.C:
			r.log.Warn("configuration change not committed yet; still waiting", "change", what, "server", server)
		}
	}
}

// promoteAfter is how many consecutive checks (one a second) a non-voter
// must be caught up before it becomes a voter.
const promoteAfter = 2

// maxLag is how many log entries behind the leader a non-voter may be and
// still count as caught up.
const maxLag = 64

func (r *serverReconciler) reconcile(ctx context.Context) {
	c := r.c
	now := c.clock.Now()
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	servers := f.Configuration().Servers
	in := map[string]raft.Server{}
	for _, s := range servers {
		in[string(s.ID)] = s
	}
	alive := map[string]gossip.Member{}
	for _, m := range c.gossip.WithRole(gossip.RoleCoordinator) {
		alive[m.Name] = m
		s, ok := in[m.Name]
		// Every server's addresses, this leader's included (its own gossip
		// always shows it), recorded on its first tick.
		if ok && m.Meta.GRPC != "" && string(s.Address) == m.Meta.Raft && c.verifier.verify(m) == nil {
			if err := c.recordServer(&pb.ServerAddrs{Id: m.Name, RaftAddr: m.Meta.Raft, GrpcAddr: m.Meta.GRPC}); err != nil {
				c.log.Warn("record coordinator addresses", "server", m.Name, "err", err)
			}
		}
		if !ok || string(s.Address) != m.Meta.Raft {
			// Joining or moving: only once the member proves, at the
			// address it advertises, a coordinator certificate of its name.
			if err := c.verifier.verify(m); err != nil {
				c.logUnproven(m.Name, err)
				continue
			}
		}
		switch {
		case !ok:
			if err := r.changeConfig("add non-voter", m.Name, func() raft.Future {
				return c.raft.AddNonvoter(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.Raft), 0, 10*time.Second)
			}); err != nil {
				c.log.Warn("add coordinator", "server", m.Name, "err", err)
			} else {
				c.log.Info("coordinator added as non-voter", "server", m.Name, "raft", m.Meta.Raft)
			}
		case string(s.Address) != m.Meta.Raft && m.Meta.Raft != "":
			// Same name at a new address: re-add it under the new one.
			if err := r.changeConfig("remove moved", m.Name, func() raft.Future { return c.raft.RemoveServer(s.ID, 0, 10*time.Second) }); err == nil {
				c.log.Info("coordinator moved; re-adding", "server", m.Name, "from", s.Address, "to", m.Meta.Raft)
			}
		case s.Suffrage == raft.Nonvoter:
			if r.isCaughtUp(ctx, m) {
				r.caughtUp[m.Name]++
			} else {
				r.caughtUp[m.Name] = 0
			}
			if r.caughtUp[m.Name] >= promoteAfter {
				if err := r.changeConfig("promote", m.Name, func() raft.Future { return c.raft.AddVoter(s.ID, s.Address, 0, 10*time.Second) }); err == nil {
					c.log.Info("coordinator promoted to voter", "server", m.Name)
					delete(r.caughtUp, m.Name)
				}
			}
		}
	}
	liveVoters, voters := countVoters(servers, func(id string) bool { _, ok := alive[id]; return ok })
	for _, s := range servers {
		id := string(s.ID)
		if _, ok := alive[id]; ok || id == c.cfg.NodeID {
			delete(r.goneSince, id)
			continue
		}
		since, ok := r.goneSince[id]
		if !ok {
			r.goneSince[id] = now
			continue
		}
		if now.Sub(since) < c.cfg.ServerGrace {
			continue
		}
		remaining := voters
		if s.Suffrage == raft.Voter {
			remaining--
		}
		if liveVoters < remaining/2+1 {
			c.log.Warn("not removing dead coordinator: too few live voters would remain", "server", id)
			continue
		}
		if err := r.changeConfig("remove dead", id, func() raft.Future { return c.raft.RemoveServer(s.ID, 0, 10*time.Second) }); err == nil {
			c.log.Info("dead coordinator removed from the configuration", "server", id, "gone_for", now.Sub(since).Round(time.Second))
			delete(r.goneSince, id)
			if _, ok := c.fsm.Servers()[id]; ok {
				_ = c.apply(pb.CommandType_COMMAND_TYPE_SERVER_ADDRS, &pb.ServerAddrs{Id: id, Removed: true})
			}
			if s.Suffrage == raft.Voter {
				voters--
			}
		}
	}
}

// isCaughtUp asks a non-voter for its applied index.
func (r *serverReconciler) isCaughtUp(ctx context.Context, m gossip.Member) bool {
	conn, err := r.c.pool.Conn(m.Meta.GRPC)
	if err != nil {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := rpcpb.NewAdminClient(conn).ClusterStatus(cctx, &pb.ClusterStatusRequest{})
	if err != nil {
		return false
	}
	return st.AppliedIndex+maxLag >= r.c.raft.CommitIndex()
}
