package coordinator

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
	"github.com/hashicorp/raft"
)

// Deps are what a coordinator is given instead of building it, as
// hashicorp/raft's NewRaft takes its stores and Consul's agent its Deps:
// the seams to the models and to evaluation, which the binary (or a test)
// chooses. They keep this package free of the model families and data sets.
type Deps struct {
	// Models answers for the model families jobs name (required; the
	// binary passes model.Catalog{}).
	Models round.Models
	// Evaluator scores a job's model centrally after every round; nil
	// means none, and jobs asking for evaluation are refused.
	Evaluator Evaluator
	// Raft, if set, is this node's Raft storage and transport; nil means
	// raft-wal's log and stable store and file snapshots under DataDir, and
	// a TCP (or TLS) transport on RaftAddr. Tests pass raft's in-memory
	// stores and InmemTransport (internal/testcluster's in-memory mode).
	Raft *RaftDeps
	// Blobs, if set, is this node's blob store; nil opens DataDir/blobs.
	Blobs *BlobStore
	// Clock tells the leader's and the services' time; nil is the system
	// clock. (Committed state never reads it: commands carry their time.)
	Clock Clock
	// Gossip, if set, starts this node's membership; nil means memberlist
	// (gossip.Start). Tests pass an in-memory pool (gossip.FakeNet).
	Gossip func(gossip.Config) (Membership, error)
}

// RaftDeps are hashicorp/raft's own interfaces, as raft.NewRaft takes them.
type RaftDeps struct {
	Logs      raft.LogStore
	Stable    raft.StableStore
	Snapshots raft.SnapshotStore
	Transport raft.Transport
}

// Membership is what the coordinator needs of gossip: the live members with
// their roles, addresses and labels, joining, and the gossip keyring.
// *gossip.Node is the real one.
type Membership interface {
	Addr() string
	Join(addrs []string) error
	Members() []gossip.Member
	WithRole(role string) []gossip.Member
	HealthScore() int
	Keys() []string
	SetKeys(keys []string) error
	Leave(timeout time.Duration) error
	Shutdown() error
}

// cachedModels asks the Models seam for each architecture's layout once:
// a layout is as large as the model (zero-valued), and every submit and
// every LoRA job's checks need it. The layouts are read-only.
type cachedModels struct {
	round.Models
	layouts sync.Map // architecture and configuration -> tensor.Set
}

// Layout returns the architecture's zero-valued parameters.
func (m *cachedModels) Layout(name string, config []byte) (tensor.Set, error) {
	key := fmt.Sprintf("%s/%x", name, sha256.Sum256(config))
	if s, ok := m.layouts.Load(key); ok {
		return s.(tensor.Set), nil
	}
	s, err := m.Models.Layout(name, config)
	if err != nil {
		return tensor.Set{}, err
	}
	got, _ := m.layouts.LoadOrStore(key, s)
	return got.(tensor.Set), nil
}

func (d Deps) clock() Clock {
	if d.Clock == nil {
		return systemClock{}
	}
	return d.Clock
}

// startGossip starts the membership the deps name.
func (d Deps) startGossip(cfg gossip.Config) (Membership, error) {
	if d.Gossip != nil {
		return d.Gossip(cfg)
	}
	n, err := gossip.Start(cfg)
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Evaluator scores full models on test data the binary holds. The
// coordinator calls it from several goroutines at once (one per job).
type Evaluator interface {
	// CheckDataset refuses a data set name it cannot evaluate on,
	// cheaply (called for every job submitted).
	CheckDataset(name string) error
	// Evaluate scores params, a full model of the named architecture, on
	// the test split of the named data set.
	Evaluate(ctx context.Context, model, dataset string, params tensor.Set) (round.Eval, error)
}

// errNoEvaluator refuses a job that asks for evaluation on a coordinator
// given none.
var errNoEvaluator = errors.New("this coordinator has no evaluator: submit the job without evaluation")

func (d Deps) check() error {
	if d.Models == nil {
		return errors.New("coordinator: Deps.Models is required (the binary passes model.Catalog{})")
	}
	return nil
}
