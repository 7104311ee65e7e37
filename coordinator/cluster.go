package coordinator

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hashicorp/raft"

	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// ClusterStatus describes this node's view of the cluster: Raft state,
// indexes and configuration, and gossip members.
func (s *adminService) ClusterStatus(ctx context.Context, _ *pb.ClusterStatusRequest) (*pb.ClusterStatusResponse, error) {
	return s.c.Status(), nil
}

// Status is the ClusterStatus of this node.
func (c *Coordinator) Status() *pb.ClusterStatusResponse {
	st := c.raft.Stats()
	_, lid := c.raft.LeaderWithID()
	resp := &pb.ClusterStatusResponse{
		Node:         c.cfg.NodeID,
		State:        c.raft.State().String(),
		LeaderId:     string(lid),
		LeaderGrpc:   c.leaderGRPC(),
		LastIndex:    c.raft.LastIndex(),
		GossipHealth: uint32(c.gossip.HealthScore()),
		AppliedIndex: c.raft.AppliedIndex(),
		CommitIndex:  c.raft.CommitIndex(),
	}
	fmt.Sscan(st["term"], &resp.Term)
	fmt.Sscan(st["last_snapshot_index"], &resp.LastSnapshotIndex)
	if lc := c.raft.LastContact(); !lc.IsZero() {
		resp.LastContactMs = uint64(time.Since(lc).Milliseconds())
	}
	alive := map[string]gossip.Member{}
	for _, m := range c.gossip.Members() {
		alive[m.Name] = m
		resp.Members = append(resp.Members, &pb.Member{Name: m.Name, Addr: m.Addr, Role: m.Meta.Role, GrpcAddr: m.Meta.GRPC, RaftAddr: m.Meta.Raft, Labels: m.Meta.Labels})
	}
	if f := c.raft.GetConfiguration(); f.Error() == nil {
		grpcOf := c.grpcAddrs()
		for _, s := range f.Configuration().Servers {
			_, ok := alive[string(s.ID)]
			resp.Servers = append(resp.Servers, &pb.RaftServer{Id: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String(), GrpcAddr: grpcOf[string(s.ID)], Alive: ok})
		}
	}
	sort.Slice(resp.Servers, func(i, j int) bool { return resp.Servers[i].Id < resp.Servers[j].Id })
	return resp
}

// notLeader is the error of a change asked of a node that does not lead:
// where the leader is, or, with none, why ("no leader: 1 of 3 voters
// reachable, last heard from one 40s ago": a majority is down or cut off).
func (c *Coordinator) notLeader() error {
	if addr := c.leaderGRPC(); addr != "" {
		return status.Errorf(codes.FailedPrecondition, "not the leader; the leader is at %s", addr)
	}
	return status.Errorf(codes.Unavailable, "%s", c.noLeaderReason())
}

// noLeaderReason describes a node's view when it knows no leader.
func (c *Coordinator) noLeaderReason() string {
	seen, voters, err := c.votersInGossip(c.gossip.Members())
	msg := "no leader"
	switch {
	case err != nil:
	case seen < voters/2+1:
		msg += fmt.Sprintf(": %d of %d voters reachable (electing one takes %d)", seen, voters, voters/2+1)
	default:
		msg += fmt.Sprintf(" yet: an election is under way (%d of %d voters alive in gossip)", seen, voters)
	}
	if lc := c.raft.LastContact(); !lc.IsZero() {
		msg += fmt.Sprintf("; last heard from a leader %v ago", time.Since(lc).Round(time.Second))
	}
	return msg
}

// TransferLeadership hands this node's leadership to the voter id, or, if
// id is "", to the most up-to-date follower (before maintenance on this
// node), and waits until it has gone.
func (c *Coordinator) TransferLeadership(id string) error {
	if !c.IsLeader() {
		return fmt.Errorf("transfer leadership: %s does not lead", c.cfg.NodeID)
	}
	if id == "" {
		return c.raft.LeadershipTransfer().Error()
	}
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("transfer leadership: raft configuration: %w", err)
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id && s.Suffrage == raft.Voter {
			if err := c.raft.LeadershipTransferToServer(s.ID, s.Address).Error(); err != nil {
				return fmt.Errorf("transfer leadership to %s: %w", id, err)
			}
			return nil
		}
	}
	return fmt.Errorf("transfer leadership: %q is not a voter of the configuration", id)
}

// joinRetryMax caps the wait between two tries of joinLoop.
const joinRetryMax = 10 * time.Second

// joinLoop keeps trying the --join addresses while this node's gossip shows
// no other coordinator: at start when it came up before the nodes it joins
// (three coordinators started at once, in any order), and later if it lost
// them all. Without it such a node waited to be found, and nobody looks for
// a node that never joined. The wait doubles from a second to joinRetryMax
// and starts again once it sees another coordinator.
func (c *Coordinator) joinLoop() {
	defer c.wg.Done()
	if len(c.cfg.Join) == 0 {
		return
	}
	wait, logged := time.Second, false
	for {
		select {
		case <-c.done:
			return
		case <-time.After(wait):
		}
		if len(c.gossip.WithRole(gossip.RoleCoordinator)) > 1 {
			wait, logged = time.Second, false
			continue
		}
		if err := c.gossip.Join(c.cfg.Join); err != nil {
			if !logged {
				c.log.Warn("no other coordinator in gossip; trying --join again until one answers", "join", c.cfg.Join, "err", err)
				logged = true
			}
			wait = min(2*wait, joinRetryMax)
			continue
		}
		c.log.Info("joined gossip", "join", c.cfg.Join)
		wait, logged = time.Second, false
	}
}

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
	goneSince map[string]time.Time
	caughtUp  map[string]int // consecutive checks a non-voter was caught up
	last      time.Time
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
	if now.Sub(r.last) < time.Second {
		return
	}
	r.last = now
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
			if err := c.raft.AddNonvoter(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.Raft), 0, 10*time.Second).Error(); err != nil {
				c.log.Warn("add coordinator", "server", m.Name, "err", err)
			} else {
				c.log.Info("coordinator added as non-voter", "server", m.Name, "raft", m.Meta.Raft)
			}
		case string(s.Address) != m.Meta.Raft && m.Meta.Raft != "":
			// Same name at a new address: re-add it under the new one.
			if err := c.raft.RemoveServer(s.ID, 0, 10*time.Second).Error(); err == nil {
				c.log.Info("coordinator moved; re-adding", "server", m.Name, "from", s.Address, "to", m.Meta.Raft)
			}
		case s.Suffrage == raft.Nonvoter:
			if r.isCaughtUp(ctx, m) {
				r.caughtUp[m.Name]++
			} else {
				r.caughtUp[m.Name] = 0
			}
			if r.caughtUp[m.Name] >= promoteAfter {
				if err := c.raft.AddVoter(s.ID, s.Address, 0, 10*time.Second).Error(); err == nil {
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
		if err := c.raft.RemoveServer(s.ID, 0, 10*time.Second).Error(); err == nil {
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

// observeLeadership counts leader changes seen by this node and remembers
// when it last heard from a leader that is gone, to measure failover.
func (c *Coordinator) observeLeadership() {
	defer c.wg.Done()
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	c.raft.RegisterObserver(obs)
	defer c.raft.DeregisterObserver(obs)
	var last raft.ServerID
	for {
		select {
		case <-c.done:
			return
		case o := <-ch:
			lo := o.Data.(raft.LeaderObservation)
			if lo.LeaderID == "" {
				// The leader was gone since this node last heard from it;
				// its heartbeat timeout only noticed it now.
				lost := c.raft.LastContact()
				if lost.IsZero() {
					lost = time.Now()
				}
				c.mu.Lock()
				if c.leaderLostAt.IsZero() {
					c.leaderLostAt = lost
				}
				c.mu.Unlock()
				continue
			}
			if lo.LeaderID != last {
				c.metrics.leaderChanges.Inc()
				last = lo.LeaderID
			}
		}
	}
}
