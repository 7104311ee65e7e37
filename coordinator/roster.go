package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"

	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
)

// Gossip finds nodes; it grants nothing. Every worker holds the gossip
// key, so anyone with one can announce members with any name, role and
// labels. With mutual TLS a worker enters the roster — and its labels
// count for job selectors — only once it has polled with a worker
// certificate of that name, and the labels are those it sent with the
// poll; gossip only says whether it is alive. A revoked certificate cannot
// poll, so it never re-enters under any name. (Without TLS nothing can be
// proven and gossip is taken at its word, as the README says.)

// workerProofs are the workers that proved their certificate to this node
// by polling it, with the labels of their latest poll. Leader-local: after
// a failover, workers poll the new leader within a poll.
type workerProofs struct {
	mu sync.Mutex
	by map[string]map[string]string
}

func (p *workerProofs) record(worker string, labels map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.by == nil {
		p.by = map[string]map[string]string{}
	}
	p.by[worker] = maps.Clone(labels)
}

func (p *workerProofs) get(worker string) (map[string]string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.by[worker]
	return l, ok
}

// reconcile writes gossip's view of workers into the roster (Consul's
// reconcileMember) and returns the ids of live, rostered workers.
//
// A member whose name is not a valid node name is ignored, as is (without
// TLS) one whose labels are not valid; with TLS a member is rostered only
// once proven (workerProofs), with the labels it proved.
//
// Absence from gossip means a worker is gone only if this node's gossip is
// part of the pool. A leader whose gossip sees fewer than a majority of the
// Raft voters — its gossip port blocked while Raft's is open, or a gossip
// key the others do not hold — is cut off from it, and would otherwise
// withdraw every assignment, abort every round and, after the grace
// period, empty the roster while the workers are fine. Cut off, it takes
// every rostered worker as live (deadlines still end the work of those
// truly gone) and removes none, until gossip sees a majority again.
func (s *scheduler) reconcile() map[string]*pb.WorkerInfo {
	now := s.c.clock.Now()
	members := s.c.gossip.Members() // read once: coordinators for the check, workers for the roster
	seen, voters, err := s.c.votersInGossip(members)
	if cut := err == nil && seen < voters/2+1; cut != s.cutOff {
		s.cutOff = cut
		if cut {
			s.log.Warn("gossip sees too few coordinators to be believed: taking every rostered worker as live", "voters_seen", seen, "voters", voters)
		} else {
			s.log.Info("gossip sees a majority of coordinators again", "voters_seen", seen, "voters", voters)
		}
	}
	roster := map[string]*pb.WorkerInfo{}
	for _, w := range s.c.fsm.Workers() {
		roster[w.Id] = w
	}
	alive := map[string]*pb.WorkerInfo{}
	for _, m := range members {
		if m.Meta.Role != gossip.RoleWorker {
			continue
		}
		delete(s.goneSince, m.Name)
		if _, revoked := s.c.fsm.Revoked(m.Name); revoked {
			continue // never back in the roster
		}
		cur, ok := roster[m.Name]
		labels, err := s.memberLabels(m)
		if err != nil {
			unproven := errors.Is(err, errNotProven)
			if ok && unproven {
				alive[m.Name] = cur // rostered by an earlier leader; it will poll this one
			}
			if !s.ignored[m.Name] {
				level := slog.LevelWarn
				if unproven {
					level = slog.LevelInfo // a real worker's first poll is on its way
				}
				s.log.Log(context.Background(), level, "gossip member not rostered", "member", m.Name, "reason", err)
				s.ignored[m.Name] = true
			}
			continue
		}
		delete(s.ignored, m.Name)
		if !ok || cur.GrpcAddr != m.Meta.GRPC || !maps.Equal(cur.Labels, labels) {
			w := &pb.WorkerInfo{Id: m.Name, GrpcAddr: m.Meta.GRPC, Labels: labels, LastSeenUnixNano: now.UnixNano()}
			if err := s.c.apply(pb.CommandType_COMMAND_TYPE_UPSERT_WORKER, &pb.UpsertWorker{Worker: w}); err != nil {
				s.log.Warn("roster update failed", "worker", m.Name, "err", err)
				continue
			}
			s.log.Info("worker joined", "worker", m.Name, "labels", labels)
			cur = w
		}
		alive[m.Name] = cur
	}
	for id, w := range roster {
		if _, ok := alive[id]; ok {
			continue
		}
		if s.cutOff {
			delete(s.goneSince, id) // its grace starts when gossip can see it again
			if _, revoked := s.c.fsm.Revoked(id); !revoked {
				alive[id] = w
			}
			continue
		}
		since, ok := s.goneSince[id]
		if !ok {
			s.goneSince[id] = now
			continue
		}
		if now.Sub(since) > s.c.cfg.WorkerGrace {
			if err := s.c.apply(pb.CommandType_COMMAND_TYPE_REMOVE_WORKER, &pb.RemoveWorker{Id: id}); err == nil {
				s.log.Info("worker removed after grace period", "worker", id)
				delete(s.goneSince, id)
			}
		}
	}
	return alive
}

// errNotProven: with TLS, a worker member that has not polled with a
// worker certificate of its name.
var errNotProven = errors.New("has not polled with a worker certificate of this name (gossip alone grants nothing)")

// memberLabels returns the labels a worker member is rostered with, or why
// it is not rostered (errNotProven, or its name or labels are invalid).
func (s *scheduler) memberLabels(m gossip.Member) (map[string]string, error) {
	if err := gossip.CheckName(m.Name); err != nil {
		return nil, err
	}
	if s.c.cfg.TLS == nil {
		if err := gossip.CheckLabels(m.Meta.Labels); err != nil {
			return nil, err
		}
		return m.Meta.Labels, nil
	}
	labels, ok := s.c.proofs.get(m.Name)
	if !ok {
		return nil, errNotProven
	}
	return labels, nil
}
