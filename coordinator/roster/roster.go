// Package roster turns gossip's view of the workers into roster commands:
// the leader's reconciliation (Consul's reconcileMember) as a pure
// function of what gossip shows, what the log holds and the time. It does
// no I/O: the leader reads gossip and the FSM, calls Reconcile, commits
// the commands it returns and logs the events, and tests script it.
package roster

import (
	"errors"
	"maps"
	"sort"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
)

// ErrNotProven marks a worker member that has not yet proven its name
// (with TLS: polled with a worker certificate of that name). It is kept
// live if rostered already (rostered by an earlier leader, it will poll
// this one), and its absence from the roster is logged at info level.
var ErrNotProven = errors.New("has not polled with a worker certificate of this name (gossip alone grants nothing)")

// Member is a worker as this node's gossip shows it.
type Member struct {
	Name   string
	GRPC   string            // its gRPC address
	Labels map[string]string // the labels to roster it with, when Err is nil
	Err    error             // why it may not be rostered (invalid name or labels, or ErrNotProven)
}

// View is what one reconciliation looks at.
type View struct {
	Now     time.Time
	Members []Member                  // the worker members alive in gossip
	Roster  map[string]*pb.WorkerInfo // the committed roster
	Revoked func(id string) bool      // barred workers, never rostered again
	// VotersSeen of Voters Raft voters are alive in this node's gossip.
	// VotersKnown is false when the Raft configuration could not be read
	// (then gossip is believed).
	VotersSeen, Voters int
	VotersKnown        bool
}

// Result is what a reconciliation decided.
type Result struct {
	// Upserts are the workers to commit (new, or changed address or labels).
	Upserts []*pb.WorkerInfo
	// Removes are rostered workers gone from gossip for longer than the
	// grace period. Call Removed for each once its removal is committed.
	Removes []string
	// Alive are the live workers, by id, assuming the upserts commit (a
	// caller whose upsert failed drops that worker).
	Alive map[string]*pb.WorkerInfo
	// CutOffChanged says the cut-off guard switched (see Reconciler); its
	// state is then CutOff.
	CutOffChanged, CutOff bool
	// Refused are members newly refused a place in the roster (each is
	// reported once until it is rostered).
	Refused []Member
}

// Reconciler holds what reconciliation remembers between calls: since
// when each rostered worker has been missing from gossip, which members it
// has reported refusing, and whether this node's gossip is cut off.
//
// Absence from gossip means a worker is gone only if this node's gossip is
// part of the pool. A leader whose gossip sees fewer than a majority of the
// Raft voters — its gossip port blocked while Raft's is open, or a gossip
// key the others do not hold — is cut off from it, and would otherwise
// withdraw every assignment, abort every round and, after the grace
// period, empty the roster while the workers are fine. Cut off, it takes
// every rostered worker as live (deadlines still end the work of those
// truly gone) and removes none, until gossip sees a majority again.
//
// A Reconciler belongs to one leadership term; it is not safe for
// concurrent use.
type Reconciler struct {
	Grace     time.Duration // how long a worker may be missing before it is removed
	goneSince map[string]time.Time
	refused   map[string]bool
	cutOff    bool
}

// New returns a Reconciler that removes workers missing for longer than grace.
func New(grace time.Duration) *Reconciler {
	return &Reconciler{Grace: grace, goneSince: map[string]time.Time{}, refused: map[string]bool{}}
}

// Reconcile compares gossip with the roster and returns the commands that
// bring the roster in line, and the live workers.
func (r *Reconciler) Reconcile(v View) Result {
	revoked := v.Revoked
	if revoked == nil {
		revoked = func(string) bool { return false }
	}
	var res Result
	if cut := v.VotersKnown && v.VotersSeen < v.Voters/2+1; cut != r.cutOff {
		r.cutOff = cut
		res.CutOffChanged = true
	}
	res.CutOff = r.cutOff
	res.Alive = map[string]*pb.WorkerInfo{}
	for _, m := range v.Members {
		delete(r.goneSince, m.Name)
		if revoked(m.Name) {
			continue
		}
		cur, rostered := v.Roster[m.Name]
		if m.Err != nil {
			if rostered && errors.Is(m.Err, ErrNotProven) {
				res.Alive[m.Name] = cur
			}
			if !r.refused[m.Name] {
				r.refused[m.Name] = true
				res.Refused = append(res.Refused, m)
			}
			continue
		}
		delete(r.refused, m.Name)
		if !rostered || cur.GrpcAddr != m.GRPC || !maps.Equal(cur.Labels, m.Labels) {
			cur = &pb.WorkerInfo{Id: m.Name, GrpcAddr: m.GRPC, Labels: m.Labels, LastSeenUnixNano: v.Now.UnixNano()}
			res.Upserts = append(res.Upserts, cur)
		}
		res.Alive[m.Name] = cur
	}
	ids := make([]string, 0, len(v.Roster))
	for id := range v.Roster {
		ids = append(ids, id)
	}
	sort.Strings(ids) // commands in a fixed order
	for _, id := range ids {
		if _, ok := res.Alive[id]; ok {
			continue
		}
		if r.cutOff {
			delete(r.goneSince, id) // its grace starts when gossip can see it again
			if !revoked(id) {
				res.Alive[id] = v.Roster[id]
			}
			continue
		}
		since, ok := r.goneSince[id]
		if !ok {
			r.goneSince[id] = v.Now
			continue
		}
		if v.Now.Sub(since) > r.Grace {
			res.Removes = append(res.Removes, id)
		}
	}
	return res
}

// Removed records that a worker's removal was committed.
func (r *Reconciler) Removed(id string) { delete(r.goneSince, id) }
