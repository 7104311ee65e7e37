package roster

import (
	"errors"
	"slices"
	"sort"
	"testing"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
)

// step is one reconciliation of a scripted scenario: what gossip shows at
// a time, and what the reconciler must decide. The roster the step sees is
// the previous steps' upserts and removes applied (as the FSM would).
type step struct {
	at        time.Duration // since the scenario's start
	members   []Member
	seen      int // voters alive in gossip (of 3)
	unknown   bool
	revoked   []string
	upserts   []string
	removes   []string
	alive     []string
	refused   []string
	cutChange bool
}

var lang = map[string]string{"lang": "fr"}

func m(name string) Member { return Member{Name: name, GRPC: name + ":7070", Labels: lang} }

func TestReconcile(t *testing.T) {
	const grace = 10 * time.Second
	relabelled := m("w1")
	relabelled.Labels = map[string]string{"lang": "de"}
	unproven := Member{Name: "w3", GRPC: "w3:7070", Err: ErrNotProven}
	invalid := Member{Name: "bad name", Err: errors.New("invalid name")}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"joins, stays, changes labels", []step{
			{at: 0, members: []Member{m("w1"), m("w2")}, seen: 3, upserts: []string{"w1", "w2"}, alive: []string{"w1", "w2"}},
			{at: time.Second, members: []Member{m("w1"), m("w2")}, seen: 3, alive: []string{"w1", "w2"}},
			{at: 2 * time.Second, members: []Member{relabelled, m("w2")}, seen: 3, upserts: []string{"w1"}, alive: []string{"w1", "w2"}},
		}},
		{"removed only after the grace period", []step{
			{at: 0, members: []Member{m("w1"), m("w2")}, seen: 3, upserts: []string{"w1", "w2"}, alive: []string{"w1", "w2"}},
			{at: time.Second, members: []Member{m("w1")}, seen: 3, alive: []string{"w1"}},
			{at: 11 * time.Second, members: []Member{m("w1")}, seen: 3, alive: []string{"w1"}},
			{at: 12 * time.Second, members: []Member{m("w1")}, seen: 3, removes: []string{"w2"}, alive: []string{"w1"}},
			{at: 13 * time.Second, members: []Member{m("w1")}, seen: 3, alive: []string{"w1"}},
		}},
		{"back within the grace period", []step{
			{at: 0, members: []Member{m("w1")}, seen: 3, upserts: []string{"w1"}, alive: []string{"w1"}},
			{at: time.Second, seen: 3},
			{at: 5 * time.Second, members: []Member{m("w1")}, seen: 3, alive: []string{"w1"}},
			{at: 6 * time.Second, seen: 3},
			{at: 15 * time.Second, seen: 3}, // 9 s since it left again: kept
			{at: 17 * time.Second, seen: 3, removes: []string{"w1"}},
		}},
		{"cut-off gossip keeps the roster and removes nobody", []step{
			{at: 0, members: []Member{m("w1"), m("w2")}, seen: 3, upserts: []string{"w1", "w2"}, alive: []string{"w1", "w2"}},
			{at: time.Second, members: []Member{m("w1")}, seen: 1, alive: []string{"w1", "w2"}, cutChange: true},
			{at: time.Hour, seen: 1, alive: []string{"w1", "w2"}},
			// a majority again: the grace period starts now, not an hour ago
			{at: time.Hour + time.Second, members: []Member{m("w1")}, seen: 2, alive: []string{"w1"}, cutChange: true},
			{at: time.Hour + 5*time.Second, members: []Member{m("w1")}, seen: 2, alive: []string{"w1"}},
			{at: time.Hour + 12*time.Second, members: []Member{m("w1")}, seen: 2, removes: []string{"w2"}, alive: []string{"w1"}},
		}},
		{"an unreadable Raft configuration believes gossip", []step{
			{at: 0, members: []Member{m("w1")}, unknown: true, upserts: []string{"w1"}, alive: []string{"w1"}},
			{at: time.Second, unknown: true},
			{at: 12 * time.Second, unknown: true, removes: []string{"w1"}},
		}},
		{"revoked: never rostered, not live even when cut off", []step{
			{at: 0, members: []Member{m("w1"), m("w2")}, seen: 3, upserts: []string{"w1", "w2"}, alive: []string{"w1", "w2"}},
			{at: time.Second, members: []Member{m("w1"), m("w2")}, seen: 3, revoked: []string{"w2"}, alive: []string{"w1"}},
			{at: 2 * time.Second, seen: 1, revoked: []string{"w2"}, alive: []string{"w1"}, cutChange: true},
		}},
		{"unproven and invalid members", []step{
			{at: 0, members: []Member{m("w1"), unproven, invalid}, seen: 3, upserts: []string{"w1"}, alive: []string{"w1"}, refused: []string{"bad name", "w3"}},
			{at: time.Second, members: []Member{m("w1"), unproven, invalid}, seen: 3, alive: []string{"w1"}}, // reported once
			{at: 2 * time.Second, members: []Member{m("w1"), m("w3")}, seen: 3, upserts: []string{"w3"}, alive: []string{"w1", "w3"}},
			// rostered, then unproven to this (new) leader: still live
			{at: 3 * time.Second, members: []Member{m("w1"), unproven}, seen: 3, alive: []string{"w1", "w3"}, refused: []string{"w3"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(grace)
			start := time.Unix(1_700_000_000, 0)
			roster := map[string]*pb.WorkerInfo{}
			for i, s := range tc.steps {
				res := r.Reconcile(View{Now: start.Add(s.at), Members: s.members, Roster: roster,
					Revoked: func(id string) bool { return slices.Contains(s.revoked, id) }, VotersSeen: s.seen, Voters: 3, VotersKnown: !s.unknown})
				var ups []string
				for _, w := range res.Upserts {
					ups = append(ups, w.Id)
					roster[w.Id] = w
				}
				for _, id := range res.Removes {
					delete(roster, id)
					r.Removed(id)
				}
				var refused []string
				for _, m := range res.Refused {
					refused = append(refused, m.Name)
				}
				check := func(what string, got, want []string) {
					sort.Strings(got)
					if !slices.Equal(got, want) {
						t.Errorf("step %d (%v): %s = %v, want %v", i, s.at, what, got, want)
					}
				}
				check("upserts", ups, s.upserts)
				check("removes", res.Removes, s.removes)
				check("alive", keys(res.Alive), s.alive)
				check("refused", refused, s.refused)
				if res.CutOffChanged != s.cutChange {
					t.Errorf("step %d: cut-off changed = %v, want %v", i, res.CutOffChanged, s.cutChange)
				}
			}
		})
	}
}

func keys(m map[string]*pb.WorkerInfo) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
