package coordinator

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// dashboardView is what the web dashboard (internal/dashboard) reads:
// this node's view of the cluster, the roster, the jobs and their ledgers.
type dashboardView struct{ c *Coordinator }

type dashboardWorker struct {
	ID             string            `json:"id"`
	GossipAddr     string            `json:"gossip_addr,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	Alive          bool              `json:"alive"`
	LastSeenUnixMs int64             `json:"last_seen_unix_ms"`
}

type dashboardState struct {
	NowUnixMs int64                  `json:"now_unix_ms"`
	Cluster   json.RawMessage        `json:"cluster"`
	Workers   []dashboardWorker      `json:"workers"`
	Jobs      []json.RawMessage      `json:"jobs"`
	Ledgers   map[string][]LedgerRow `json:"ledgers"`
	// Concurrency is each async job's current limit on workers training
	// at once (ConcurrencyAt: its schedule, if it has one).
	Concurrency map[string]int `json:"concurrency"`
	// Conditions say why a running job is not progressing, by job.
	Conditions map[string][]string `json:"conditions"`
}

var dashboardJSON = protojson.MarshalOptions{UseProtoNames: true}

// State returns the dashboard's JSON. Rounds are sent without their
// updates and scores (the ledger sums those up).
func (v dashboardView) State() ([]byte, error) {
	c := v.c
	cluster, err := dashboardJSON.Marshal(c.Status())
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	st := dashboardState{NowUnixMs: c.clock.Now().UnixMilli(), Cluster: cluster, Workers: []dashboardWorker{}, Jobs: []json.RawMessage{}, Ledgers: map[string][]LedgerRow{},
		Concurrency: map[string]int{}, Conditions: map[string][]string{}}
	alive := map[string]string{}
	for _, m := range c.gossip.WithRole(gossip.RoleWorker) {
		alive[m.Name] = m.Addr
	}
	var live []*pb.WorkerInfo // for the jobs' conditions
	for _, w := range c.fsm.Workers() {
		addr, ok := alive[w.Id]
		st.Workers = append(st.Workers, dashboardWorker{ID: w.Id, GossipAddr: addr, Labels: w.Labels, Alive: ok, LastSeenUnixMs: w.LastSeenUnixNano / 1e6})
		if ok {
			live = append(live, w)
		}
	}
	now := c.clock.Now()
	for _, j := range c.fsm.Jobs() {
		st.Ledgers[j.Spec.Name] = Ledger(j)
		if cs := conditions(j, live, now); len(cs) > 0 {
			st.Conditions[j.Spec.Name] = cs
		}
		if round.IsAsync(j.Spec) {
			st.Concurrency[j.Spec.Name] = round.ConcurrencyAt(j)
		}
		slim := proto.Clone(j).(*pb.Job)
		for _, r := range slim.History {
			r.Accepted, r.Scores = nil, nil
		}
		b, err := dashboardJSON.Marshal(slim)
		if err != nil {
			return nil, fmt.Errorf("dashboard: job %s: %w", j.Spec.Name, err)
		}
		st.Jobs = append(st.Jobs, b)
	}
	return json.Marshal(st)
}

// Changed returns a channel closed at the next applied command.
func (v dashboardView) Changed() <-chan struct{} { return v.c.fsm.Changed() }
