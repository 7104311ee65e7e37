package coordinator

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/internal/gossip"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// Errors an FSM command may be refused with. They are returned as the
// apply response (the log entry is kept, the state is unchanged), and the
// gRPC layer maps them to status codes.
// The round-level ones are the round core's.
var (
	ErrUnknownJob   = errors.New("unknown job")
	ErrJobExists    = errors.New("job already exists")
	ErrJobNotActive = round.ErrJobNotActive
	ErrStaleRound   = round.ErrStaleRound
	ErrNotSelected  = round.ErrNotSelected
	ErrDuplicate    = round.ErrDuplicate
	ErrRoundOpen    = round.ErrRoundOpen
)

// CommandVersion is the Command envelope version this build writes and reads.
const CommandVersion = 1

// advisory are the command types a node may skip without diverging (they
// inform, they decide nothing): written with ignore_unknown, so that a node
// of an older build replays past them.
var advisory = map[pb.CommandType]bool{pb.CommandType_COMMAND_TYPE_SERVER_ADDRS: true}

// EncodeCommand wraps msg in a versioned Command envelope.
func EncodeCommand(t pb.CommandType, msg proto.Message, now time.Time) ([]byte, error) {
	payload, err := proto.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return proto.Marshal(&pb.Command{Version: CommandVersion, Type: t, Payload: payload, ProposedUnixNano: now.UnixNano(), IgnoreUnknown: advisory[t]})
}

// FSM is the replicated state machine: jobs with their rounds and model
// versions, and the worker roster. Raft calls Apply, Snapshot and Restore
// from its FSM goroutine; readers call the accessor methods from any
// goroutine and get copies.
type FSM struct {
	mu      sync.RWMutex
	jobs    map[string]*pb.Job
	workers map[string]*pb.WorkerInfo
	revoked map[string]*pb.RevokedWorker
	keyring []string                   // gossip keys (base64), primary first; nil: as the nodes started
	servers map[string]*pb.ServerAddrs // coordinators' addresses by id (advisory)
	changed chan struct{}              // closed and replaced after every applied command
}

// NewFSM returns an empty FSM.
func NewFSM() *FSM {
	return &FSM{jobs: map[string]*pb.Job{}, workers: map[string]*pb.WorkerInfo{}, revoked: map[string]*pb.RevokedWorker{},
		servers: map[string]*pb.ServerAddrs{}, changed: make(chan struct{})}
}

type applyFn func(f *FSM, payload []byte, at int64) error

// appliers is the dispatch table: one small function per command type.
var appliers = map[pb.CommandType]applyFn{
	pb.CommandType_COMMAND_TYPE_REGISTER_JOB:   applyRegisterJob,
	pb.CommandType_COMMAND_TYPE_START_ROUND:    applyStartRound,
	pb.CommandType_COMMAND_TYPE_ACCEPT_UPDATE:  applyAcceptUpdate,
	pb.CommandType_COMMAND_TYPE_COMMIT_ROUND:   applyCommitRound,
	pb.CommandType_COMMAND_TYPE_ABORT_ROUND:    applyAbortRound,
	pb.CommandType_COMMAND_TYPE_FINISH_JOB:     applyFinishJob,
	pb.CommandType_COMMAND_TYPE_UPSERT_WORKER:  applyUpsertWorker,
	pb.CommandType_COMMAND_TYPE_REMOVE_WORKER:  applyRemoveWorker,
	pb.CommandType_COMMAND_TYPE_REVOKE_WORKER:  applyRevokeWorker,
	pb.CommandType_COMMAND_TYPE_KEYRING:        applyKeyring,
	pb.CommandType_COMMAND_TYPE_ASSIGN_TASKS:   applyAssignTasks,
	pb.CommandType_COMMAND_TYPE_RECORD_EVAL:    applyRecordEval,
	pb.CommandType_COMMAND_TYPE_CONTROL_JOB:    applyControlJob,
	pb.CommandType_COMMAND_TYPE_RECORD_FAILURE: applyRecordFailure,
	pb.CommandType_COMMAND_TYPE_SECAGG_MESSAGE: applySecAggMessage,
	pb.CommandType_COMMAND_TYPE_SECAGG_PHASE:   applySecAggPhase,
	pb.CommandType_COMMAND_TYPE_SERVER_ADDRS:   applyServerAddrs,
}

// Apply applies one committed log entry. It returns nil or an error
// explaining why the command changed nothing. An entry this build cannot
// understand and that is not marked ignore_unknown stops the node: applying
// past it would let this replica diverge.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var cmd pb.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		panic(fmt.Sprintf("fedtune fsm: log entry %d is not a Command (%v); refusing to diverge", l.Index, err))
	}
	fn, ok := appliers[cmd.Type]
	if !ok || cmd.Version > CommandVersion {
		if cmd.IgnoreUnknown {
			return nil
		}
		panic(fmt.Sprintf("fedtune fsm: log entry %d has command %v version %d this build does not know; upgrade this node", l.Index, cmd.Type, cmd.Version))
	}
	f.mu.Lock()
	err := fn(f, cmd.Payload, cmd.ProposedUnixNano)
	ch := f.changed
	f.changed = make(chan struct{})
	f.mu.Unlock()
	close(ch)
	return err
}

// Changed returns a channel closed at the next applied command.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

func decode(payload []byte, m proto.Message) error {
	if err := proto.Unmarshal(payload, m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	return nil
}

// The job commands decode their payload and call the round core's
// transition on the job's state (round.Job).

func applyRegisterJob(f *FSM, payload []byte, at int64) error {
	var c pb.RegisterJob
	if err := decode(payload, &c); err != nil {
		return err
	}
	if _, ok := f.jobs[c.GetSpec().GetName()]; ok {
		return fmt.Errorf("register %q: %w", c.Spec.Name, ErrJobExists)
	}
	j, err := round.NewJob(c.Spec, c.BaseMetrics, at)
	if err != nil {
		return err
	}
	f.jobs[c.Spec.Name] = j.Job
	return nil
}

// job returns a job's state, or ErrUnknownJob.
func (f *FSM) job(name string) (round.Job, error) {
	j, ok := f.jobs[name]
	if !ok {
		return round.Job{}, fmt.Errorf("job %q: %w", name, ErrUnknownJob)
	}
	return round.Job{Job: j}, nil
}

// onJob decodes a job command and applies fn to the job it names.
func onJob[C any, P interface {
	*C
	proto.Message
	GetJob() string
}](f *FSM, payload []byte, fn func(round.Job, P) error) error {
	c := P(new(C))
	if err := decode(payload, c); err != nil {
		return err
	}
	j, err := f.job(c.GetJob())
	if err != nil {
		return err
	}
	return fn(j, c)
}

func applyStartRound(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.StartRound) error { return j.StartRound(c.Round) })
}

func applyAcceptUpdate(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.AcceptUpdate) error { return j.AcceptUpdate(c.Round, c.Update) })
}

func applyCommitRound(f *FSM, payload []byte, at int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.CommitRound) error { return j.CommitRound(c, at) })
}

func applyAbortRound(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.AbortRound) error { return j.AbortRound(c.Round) })
}

func applyFinishJob(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.FinishJob) error { return j.Finish(c.Status, c.Error) })
}

func applyAssignTasks(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.AssignTasks) error { return j.AssignTasks(c.Assign, c.Release) })
}

func applyUpsertWorker(f *FSM, payload []byte, _ int64) error {
	var c pb.UpsertWorker
	if err := decode(payload, &c); err != nil {
		return err
	}
	if c.Worker.GetId() == "" {
		return fmt.Errorf("upsert worker: empty id")
	}
	if _, ok := f.revoked[c.Worker.Id]; ok {
		return fmt.Errorf("upsert worker: %s is revoked", c.Worker.Id)
	}
	f.workers[c.Worker.Id] = c.Worker
	return nil
}

func applyRemoveWorker(f *FSM, payload []byte, _ int64) error {
	var c pb.RemoveWorker
	if err := decode(payload, &c); err != nil {
		return err
	}
	delete(f.workers, c.Id)
	return nil
}

func applyRevokeWorker(f *FSM, payload []byte, at int64) error {
	var c pb.RevokeWorker
	if err := decode(payload, &c); err != nil {
		return err
	}
	if c.Name == "" {
		return fmt.Errorf("revoke worker: empty name")
	}
	f.revoked[c.Name] = &pb.RevokedWorker{Name: c.Name, Reason: c.Reason, RevokedUnixNano: at}
	delete(f.workers, c.Name)
	return nil
}

func applyKeyring(f *FSM, payload []byte, _ int64) error {
	var c pb.Keyring
	if err := decode(payload, &c); err != nil {
		return err
	}
	if _, err := gossip.ParseKeys(c.Key); err != nil || c.Key == "" || strings.Contains(c.Key, ",") {
		return fmt.Errorf("keyring: key %q is not one valid gossip key", c.Key)
	}
	ring := f.keyring
	if len(ring) == 0 {
		ring = c.Current
	}
	if len(ring) == 0 {
		return fmt.Errorf("keyring: the cluster runs without gossip encryption; start the nodes with --gossip-key to use a keyring")
	}
	idx := slices.Index(ring, c.Key)
	next := slices.Clone(ring)
	switch c.Op {
	case pb.Keyring_OP_INSTALL:
		if idx < 0 {
			next = append(next, c.Key)
		}
	case pb.Keyring_OP_USE:
		if idx < 0 {
			return fmt.Errorf("keyring: use a key that is not installed")
		}
		next = append([]string{c.Key}, slices.Delete(next, idx, idx+1)...)
	case pb.Keyring_OP_REMOVE:
		if idx < 0 {
			return fmt.Errorf("keyring: remove a key that is not installed")
		}
		if idx == 0 {
			return fmt.Errorf("keyring: the key in use cannot be removed; use another first")
		}
		next = slices.Delete(next, idx, idx+1)
	default:
		return fmt.Errorf("keyring: unknown operation %v", c.Op)
	}
	f.keyring = next
	return nil
}

func applyServerAddrs(f *FSM, payload []byte, _ int64) error {
	var c pb.ServerAddrs
	if err := decode(payload, &c); err != nil {
		return err
	}
	switch {
	case c.Id == "":
		return fmt.Errorf("server addresses need the server's id")
	case c.Removed:
		delete(f.servers, c.Id)
	case c.RaftAddr == "" || c.GrpcAddr == "":
		return fmt.Errorf("server %q: addresses need both a Raft and a gRPC address", c.Id)
	default:
		f.servers[c.Id] = &c
	}
	return nil
}

// Servers returns the coordinators' addresses as the leader recorded them,
// by id.
func (f *FSM) Servers() map[string]*pb.ServerAddrs {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]*pb.ServerAddrs, len(f.servers))
	for id, s := range f.servers {
		out[id] = proto.Clone(s).(*pb.ServerAddrs)
	}
	return out
}

// Keyring returns the cluster's gossip keyring (primary first), or nil if
// it was never changed at run time.
func (f *FSM) Keyring() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Clone(f.keyring)
}

// Revoked reports whether a worker has been revoked, and why.
func (f *FSM) Revoked(name string) (string, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	r, ok := f.revoked[name]
	return r.GetReason(), ok
}

// Job returns a copy of the named job.
func (f *FSM) Job(name string) (*pb.Job, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	j, ok := f.jobs[name]
	if !ok {
		return nil, false
	}
	return proto.Clone(j).(*pb.Job), true
}

// Jobs returns copies of all jobs, sorted by name.
func (f *FSM) Jobs() []*pb.Job {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*pb.Job, 0, len(f.jobs))
	for _, j := range f.jobs {
		out = append(out, proto.Clone(j).(*pb.Job))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Spec.Name < out[b].Spec.Name })
	return out
}

// RunningJobs returns the running jobs, sorted by name: copies of their
// state except their histories, whose records are shared with the FSM. A
// committed record never changes (transitions only append), and callers
// must not change one. The leader's tick, task polls and blob checks read
// these; copying each job's whole history at each of them cost the leader
// seconds per tick for long jobs (BenchmarkSchedulerTick).
func (f *FSM) RunningJobs() []*pb.Job {
	// The write lock: each history is detached for the moment of its
	// job's copy, and no reader may see it detached.
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*pb.Job, 0, len(f.jobs))
	for _, j := range f.jobs {
		if j.Status == pb.JobStatus_JOB_STATUS_RUNNING {
			h := j.History
			j.History = nil
			c := proto.Clone(j).(*pb.Job)
			j.History = h
			c.History = h[:len(h):len(h)] // an append by the caller copies
			out = append(out, c)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Spec.Name < out[b].Spec.Name })
	return out
}

// ReadJobs calls fn for every job, in no order, under the FSM's read lock,
// without copying: fn must neither keep nor change what it is given, and
// must not call back into the FSM.
func (f *FSM) ReadJobs(fn func(j *pb.Job)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, j := range f.jobs {
		fn(j)
	}
}

// Worker returns a copy of one worker's roster entry.
func (f *FSM) Worker(id string) (*pb.WorkerInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, ok := f.workers[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(w).(*pb.WorkerInfo), true
}

// Workers returns copies of the roster, sorted by id.
func (f *FSM) Workers() []*pb.WorkerInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*pb.WorkerInfo, 0, len(f.workers))
	for _, w := range f.workers {
		out = append(out, proto.Clone(w).(*pb.WorkerInfo))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Id < out[b].Id })
	return out
}

// snapshotHeader starts every FSM snapshot; its last byte is the format version.
var snapshotHeader = []byte("fedtune-fsm\x00\x01")

// Snapshot captures the state for Raft. It copies under the lock; Persist
// then runs concurrently with further Applies.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := &pb.Snapshot{}
	for _, j := range f.jobs {
		s.Jobs = append(s.Jobs, proto.Clone(j).(*pb.Job))
	}
	for _, w := range f.workers {
		s.Workers = append(s.Workers, proto.Clone(w).(*pb.WorkerInfo))
	}
	for _, r := range f.revoked {
		s.Revoked = append(s.Revoked, proto.Clone(r).(*pb.RevokedWorker))
	}
	sort.Slice(s.Revoked, func(a, b int) bool { return s.Revoked[a].Name < s.Revoked[b].Name })
	s.GossipKeys = slices.Clone(f.keyring)
	for _, a := range f.servers {
		s.Servers = append(s.Servers, proto.Clone(a).(*pb.ServerAddrs))
	}
	sort.Slice(s.Servers, func(a, b int) bool { return s.Servers[a].Id < s.Servers[b].Id })
	sort.Slice(s.Jobs, func(a, b int) bool { return s.Jobs[a].Spec.Name < s.Jobs[b].Spec.Name })
	sort.Slice(s.Workers, func(a, b int) bool { return s.Workers[a].Id < s.Workers[b].Id })
	return fsmSnapshot{s}, nil
}

// Restore replaces the state with a snapshot written by Persist.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if len(b) < len(snapshotHeader) || string(b[:len(snapshotHeader)-1]) != string(snapshotHeader[:len(snapshotHeader)-1]) {
		return fmt.Errorf("restore snapshot: not a fedtune FSM snapshot")
	}
	if v := b[len(snapshotHeader)-1]; v != snapshotHeader[len(snapshotHeader)-1] {
		return fmt.Errorf("restore snapshot: format version %d, this build reads %d", v, snapshotHeader[len(snapshotHeader)-1])
	}
	var s pb.Snapshot
	if err := proto.Unmarshal(b[len(snapshotHeader):], &s); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	jobs := make(map[string]*pb.Job, len(s.Jobs))
	for _, j := range s.Jobs {
		jobs[j.GetSpec().GetName()] = j
	}
	workers := make(map[string]*pb.WorkerInfo, len(s.Workers))
	for _, w := range s.Workers {
		workers[w.Id] = w
	}
	revoked := make(map[string]*pb.RevokedWorker, len(s.Revoked))
	for _, r := range s.Revoked {
		revoked[r.Name] = r
	}
	servers := make(map[string]*pb.ServerAddrs, len(s.Servers))
	for _, a := range s.Servers {
		servers[a.Id] = a
	}
	f.mu.Lock()
	f.jobs, f.workers, f.revoked, f.keyring, f.servers = jobs, workers, revoked, s.GossipKeys, servers
	ch := f.changed
	f.changed = make(chan struct{})
	f.mu.Unlock()
	close(ch)
	return nil
}

type fsmSnapshot struct{ s *pb.Snapshot }

// Persist writes the header then the protobuf-encoded state.
func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.s)
	if err == nil {
		if _, err = sink.Write(snapshotHeader); err == nil {
			_, err = sink.Write(b)
		}
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release does nothing; the snapshot owns its copy.
func (fsmSnapshot) Release() {}

func applyRecordEval(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.RecordEval) error { return j.RecordEval(c.Round, c.Report) })
}

// applyControlJob pauses, resumes or cancels a job, or deletes its state
// (its blobs are then collected; its name may be used again).
func applyControlJob(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.ControlJob) error {
		if c.Action != round.ActionDelete {
			return j.Control(c.Action, c.Reason)
		}
		if err := j.CheckDelete(c.Force); err != nil {
			return err
		}
		delete(f.jobs, c.Job)
		return nil
	})
}

func applyRecordFailure(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.RecordFailure) error { return j.RecordFailure(c.Round, c.Attempt, c.Failure) })
}

func applySecAggMessage(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.SecAggMessage) error { return j.SecAggMessage(c) })
}

func applySecAggPhase(f *FSM, payload []byte, _ int64) error {
	return onJob(f, payload, func(j round.Job, c *pb.SecAggPhase) error { return j.SecAggPhase(c) })
}
