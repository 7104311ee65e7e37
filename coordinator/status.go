package coordinator

import (
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hashicorp/raft"

	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
)

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
