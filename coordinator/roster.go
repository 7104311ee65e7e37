package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"

	"github.com/fedtune/fedtune/coordinator/roster"
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

// reconcile writes gossip's view of workers into the roster (the pure
// roster.Reconciler decides; this commits and logs) and returns the live,
// rostered workers.
//
// A member whose name is not a valid node name is not rostered, nor
// (without TLS) one whose labels are not valid; with TLS a member is
// rostered only once proven (workerProofs), with the labels it proved.
func (s *scheduler) reconcile() map[string]*pb.WorkerInfo {
	members := s.c.gossip.Members() // read once: coordinators for the cut-off guard, workers for the roster
	v := roster.View{Now: s.c.clock.Now(), Roster: map[string]*pb.WorkerInfo{}, Revoked: func(id string) bool {
		_, revoked := s.c.fsm.Revoked(id)
		return revoked
	}}
	var err error
	v.VotersSeen, v.Voters, err = s.c.votersInGossip(members)
	v.VotersKnown = err == nil
	for _, w := range s.c.fsm.Workers() {
		v.Roster[w.Id] = w
	}
	for _, m := range members {
		if m.Meta.Role == gossip.RoleWorker {
			labels, err := s.memberLabels(m)
			v.Members = append(v.Members, roster.Member{Name: m.Name, GRPC: m.Meta.GRPC, Labels: labels, Err: err})
		}
	}
	res := s.roster.Reconcile(v)
	if res.CutOffChanged {
		if res.CutOff {
			s.log.Warn("gossip sees too few coordinators to be believed: taking every rostered worker as live", "voters_seen", v.VotersSeen, "voters", v.Voters)
		} else {
			s.log.Info("gossip sees a majority of coordinators again", "voters_seen", v.VotersSeen, "voters", v.Voters)
		}
	}
	for _, m := range res.Refused {
		level := slog.LevelWarn
		if errors.Is(m.Err, roster.ErrNotProven) {
			level = slog.LevelInfo // a real worker's first poll is on its way
		}
		s.log.Log(context.Background(), level, "gossip member not rostered", "member", m.Name, "reason", m.Err)
	}
	for _, w := range res.Upserts {
		if err := s.c.apply(pb.CommandType_COMMAND_TYPE_UPSERT_WORKER, &pb.UpsertWorker{Worker: w}); err != nil {
			s.log.Warn("roster update failed", "worker", w.Id, "err", err)
			delete(res.Alive, w.Id)
			continue
		}
		s.log.Info("worker joined", "worker", w.Id, "labels", w.Labels)
	}
	for _, id := range res.Removes {
		if err := s.c.apply(pb.CommandType_COMMAND_TYPE_REMOVE_WORKER, &pb.RemoveWorker{Id: id}); err == nil {
			s.log.Info("worker removed after grace period", "worker", id)
			s.roster.Removed(id)
		}
	}
	return res.Alive
}

// memberLabels returns the labels a worker member is rostered with, or why
// it is not rostered (roster.ErrNotProven, or its name or labels are invalid).
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
		return nil, roster.ErrNotProven
	}
	return labels, nil
}
