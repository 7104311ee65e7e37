package coordinator

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	pb "github.com/fedtune/fedtune/protocol"
)

var t0 = time.Unix(1_700_000_000, 0)

// fsmHarness applies commands to an FSM as Raft would, with rising indexes.
type fsmHarness struct {
	t   *testing.T
	f   *FSM
	idx uint64
}

func (h *fsmHarness) apply(typ pb.CommandType, msg proto.Message) error {
	h.t.Helper()
	b, err := EncodeCommand(typ, msg, t0.Add(time.Duration(h.idx)*time.Second))
	if err != nil {
		h.t.Fatal(err)
	}
	h.idx++
	res := h.f.Apply(&raft.Log{Index: h.idx, Type: raft.LogCommand, Data: b})
	if res == nil {
		return nil
	}
	return res.(error)
}

func (h *fsmHarness) must(typ pb.CommandType, msg proto.Message) {
	h.t.Helper()
	if err := h.apply(typ, msg); err != nil {
		h.t.Fatalf("%s: %v", typ, err)
	}
}

const (
	cRegister = pb.CommandType_COMMAND_TYPE_REGISTER_JOB
	cStart    = pb.CommandType_COMMAND_TYPE_START_ROUND
	cAccept   = pb.CommandType_COMMAND_TYPE_ACCEPT_UPDATE
	cCommit   = pb.CommandType_COMMAND_TYPE_COMMIT_ROUND
	cAbort    = pb.CommandType_COMMAND_TYPE_ABORT_ROUND
	cUpsert   = pb.CommandType_COMMAND_TYPE_UPSERT_WORKER
	cRemove   = pb.CommandType_COMMAND_TYPE_REMOVE_WORKER
	cFinish   = pb.CommandType_COMMAND_TYPE_FINISH_JOB
	cEval     = pb.CommandType_COMMAND_TYPE_RECORD_EVAL
)

func spec(name string, rounds uint32) *pb.JobSpec {
	return &pb.JobSpec{Name: name, Model: "mnist-mlp-small", Dataset: "mnist", BaseModel: "base", Rounds: rounds, ClientsPerRound: 2, MinUpdates: 1}
}

func roundAt(n uint32, base string, selected ...string) *pb.Round {
	return &pb.Round{Number: n, BaseModel: base, Selected: selected, StartedUnixNano: 1, DeadlineUnixNano: 2}
}

func upd(w string) *pb.AcceptedUpdate {
	return &pb.AcceptedUpdate{Worker: w, Blob: "blob-" + w, Samples: 10, Codec: "fp32"}
}

// TestFSMLifecycle walks a job through rounds, checking each command's
// effect and that invalid commands are refused with the right error and
// change nothing.
func TestFSMLifecycle(t *testing.T) {
	h := &fsmHarness{t: t, f: NewFSM()}
	h.must(cUpsert, &pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: "w1", Labels: map[string]string{"region": "eu"}}})
	h.must(cUpsert, &pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: "w2"}})
	h.must(cRegister, &pb.RegisterJob{Spec: spec("j", 2)})

	refusals := []struct {
		name string
		typ  pb.CommandType
		msg  proto.Message
		want error
	}{
		{"register twice", cRegister, &pb.RegisterJob{Spec: spec("j", 2)}, ErrJobExists},
		{"start unknown job", cStart, &pb.StartRound{Job: "nope", Round: roundAt(1, "base", "w1")}, ErrUnknownJob},
		{"start round 2 first", cStart, &pb.StartRound{Job: "j", Round: roundAt(2, "base", "w1")}, ErrStaleRound},
		{"accept with no round", cAccept, &pb.AcceptUpdate{Job: "j", Round: 1, Update: upd("w1")}, ErrStaleRound},
		{"commit with no round", cCommit, &pb.CommitRound{Job: "j", Round: 1, Model: "m1"}, ErrStaleRound},
	}
	check := func() {
		for _, r := range refusals {
			before, _ := h.f.Job("j")
			err := h.apply(r.typ, r.msg)
			if !errors.Is(err, r.want) {
				t.Errorf("%s: err %v, want %v", r.name, err, r.want)
			}
			after, _ := h.f.Job("j")
			if !proto.Equal(before, after) {
				t.Errorf("%s: refused command changed the job", r.name)
			}
		}
	}
	check()

	h.must(cStart, &pb.StartRound{Job: "j", Round: roundAt(1, "base", "w1", "w2")})
	refusals = []struct {
		name string
		typ  pb.CommandType
		msg  proto.Message
		want error
	}{
		{"second open round", cStart, &pb.StartRound{Job: "j", Round: roundAt(1, "base", "w1")}, ErrRoundOpen},
		{"update for stale round", cAccept, &pb.AcceptUpdate{Job: "j", Round: 7, Update: upd("w1")}, ErrStaleRound},
		{"update from unselected", cAccept, &pb.AcceptUpdate{Job: "j", Round: 1, Update: upd("w9")}, ErrNotSelected},
	}
	check()
	h.must(cAccept, &pb.AcceptUpdate{Job: "j", Round: 1, Update: upd("w2")})
	h.must(cAccept, &pb.AcceptUpdate{Job: "j", Round: 1, Update: upd("w1")})
	refusals = []struct {
		name string
		typ  pb.CommandType
		msg  proto.Message
		want error
	}{
		{"duplicate update", cAccept, &pb.AcceptUpdate{Job: "j", Round: 1, Update: upd("w1")}, ErrDuplicate},
	}
	check()
	j, _ := h.f.Job("j")
	if n := len(j.OpenRound.Updates); n != 2 || j.OpenRound.Updates[0].Worker != "w1" {
		t.Fatalf("updates %v: want w1, w2 in worker order", j.OpenRound.Updates)
	}
	h.must(cCommit, &pb.CommitRound{Job: "j", Round: 1, Model: "m1", Metrics: map[string]float64{"test_accuracy": 0.9}})
	j, _ = h.f.Job("j")
	if j.CurrentModel != "m1" || j.OpenRound != nil || len(j.History) != 1 || j.History[0].Samples != 20 {
		t.Fatalf("after commit: %v", j)
	}
	if j.Status != pb.JobStatus_JOB_STATUS_RUNNING {
		t.Fatalf("job ended after 1 of 2 rounds")
	}
	// A round can be aborted and started again under the same number.
	h.must(cStart, &pb.StartRound{Job: "j", Round: roundAt(2, "m1", "w1")})
	h.must(cAbort, &pb.AbortRound{Job: "j", Round: 2, Reason: "too few"})
	h.must(cStart, &pb.StartRound{Job: "j", Round: roundAt(2, "m1", "w2")})
	h.must(cAccept, &pb.AcceptUpdate{Job: "j", Round: 2, Update: upd("w2")})
	h.must(cCommit, &pb.CommitRound{Job: "j", Round: 2, Model: "m2"})
	j, _ = h.f.Job("j")
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || j.CurrentModel != "m2" {
		t.Fatalf("after the last round: status %v model %s", j.Status, j.CurrentModel)
	}
	if err := h.apply(cStart, &pb.StartRound{Job: "j", Round: roundAt(3, "m2", "w1")}); !errors.Is(err, ErrJobNotActive) {
		t.Errorf("round on a finished job: %v", err)
	}
	h.must(cRemove, &pb.RemoveWorker{Id: "w2"})
	if ws := h.f.Workers(); len(ws) != 1 || ws[0].Id != "w1" {
		t.Errorf("roster %v, want only w1", ws)
	}
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

// TestFSMSnapshotRestore checks a restored FSM equals the original, and
// that restore refuses foreign or newer-format snapshots.
func TestFSMSnapshotRestore(t *testing.T) {
	h := &fsmHarness{t: t, f: NewFSM()}
	h.must(cUpsert, &pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: "w1", GrpcAddr: "a", Labels: map[string]string{"lang": "fr"}}})
	for _, name := range []string{"b", "a"} {
		h.must(cRegister, &pb.RegisterJob{Spec: spec(name, 3), BaseMetrics: map[string]float64{"test_accuracy": 0.5}})
		h.must(cStart, &pb.StartRound{Job: name, Round: roundAt(1, "base", "w1")})
		h.must(cAccept, &pb.AcceptUpdate{Job: name, Round: 1, Update: upd("w1")})
	}
	h.must(cCommit, &pb.CommitRound{Job: "a", Round: 1, Model: "m1"})
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	data := append([]byte(nil), sink.Bytes()...)
	// Changes after the snapshot must not leak into it.
	h.must(cCommit, &pb.CommitRound{Job: "b", Round: 1, Model: "m1"})

	g := NewFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	ja, _ := g.Job("a")
	jb, _ := g.Job("b")
	if len(ja.History) != 1 || ja.CurrentModel != "m1" {
		t.Errorf("restored a: %v", ja)
	}
	if jb.OpenRound == nil || len(jb.OpenRound.Updates) != 1 || len(jb.History) != 0 {
		t.Errorf("restored b should have its round open with one update: %v", jb)
	}
	if ws := g.Workers(); len(ws) != 1 || ws[0].Labels["lang"] != "fr" {
		t.Errorf("restored roster %v", ws)
	}
	// The restored FSM goes on where the original was.
	h2 := &fsmHarness{t: t, f: g, idx: h.idx}
	h2.must(cCommit, &pb.CommitRound{Job: "b", Round: 1, Model: "m1"})
	for name, bad := range map[string][]byte{
		"foreign":   []byte("not a snapshot at all"),
		"newer":     append(append([]byte("fedtune-fsm\x00"), 9), data[len(snapshotHeader):]...),
		"truncated": data[:len(data)-3],
	} {
		if err := NewFSM().Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
			t.Errorf("%s snapshot restored", name)
		}
	}
}

// TestFSMUnknownCommands: an unknown command marked ignore_unknown is
// skipped; one without the mark stops the node instead of diverging.
func TestFSMUnknownCommands(t *testing.T) {
	f := NewFSM()
	skip, _ := proto.Marshal(&pb.Command{Version: 1, Type: pb.CommandType(999), IgnoreUnknown: true})
	if res := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: skip}); res != nil {
		t.Errorf("ignorable unknown command: %v", res)
	}
	stop, _ := proto.Marshal(&pb.Command{Version: 1, Type: pb.CommandType(999)})
	defer func() {
		if recover() == nil {
			t.Error("unknown command without ignore_unknown was applied")
		}
	}()
	f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: stop})
}

// TestRevokeWorkerFSM: a revocation removes the worker from the roster,
// keeps it out, and survives a snapshot.
func TestRevokeWorkerFSM(t *testing.T) {
	h := &fsmHarness{t: t, f: NewFSM()}
	h.must(pb.CommandType_COMMAND_TYPE_UPSERT_WORKER, &pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: "w1"}})
	h.must(pb.CommandType_COMMAND_TYPE_REVOKE_WORKER, &pb.RevokeWorker{Name: "w1", Reason: "leak"})
	if len(h.f.Workers()) != 0 {
		t.Fatal("revoked worker still in the roster")
	}
	if err := h.apply(pb.CommandType_COMMAND_TYPE_UPSERT_WORKER, &pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: "w1"}}); err == nil {
		t.Error("a revoked worker was put back in the roster")
	}
	g := restored(t, h.f)
	if reason, ok := g.Revoked("w1"); !ok || reason != "leak" {
		t.Errorf("after restore: revoked %v (%q)", ok, reason)
	}
}

// TestServerAddrsFSM: the leader's record of coordinators' addresses is
// set, replaced and forgotten, refuses incomplete entries, survives a
// snapshot, and is written as a command older builds may skip.
func TestServerAddrsFSM(t *testing.T) {
	const cAddrs = pb.CommandType_COMMAND_TYPE_SERVER_ADDRS
	h := &fsmHarness{t: t, f: NewFSM()}
	steps := []struct {
		name    string
		msg     *pb.ServerAddrs
		wantErr bool
		want    map[string]string // id -> gRPC address after the step
	}{
		{"first", &pb.ServerAddrs{Id: "c1", RaftAddr: "r1", GrpcAddr: "g1"}, false, map[string]string{"c1": "g1"}},
		{"second", &pb.ServerAddrs{Id: "c2", RaftAddr: "r2", GrpcAddr: "g2"}, false, map[string]string{"c1": "g1", "c2": "g2"}},
		{"moved", &pb.ServerAddrs{Id: "c1", RaftAddr: "r1b", GrpcAddr: "g1b"}, false, map[string]string{"c1": "g1b", "c2": "g2"}},
		{"no id", &pb.ServerAddrs{RaftAddr: "r3", GrpcAddr: "g3"}, true, map[string]string{"c1": "g1b", "c2": "g2"}},
		{"no gRPC address", &pb.ServerAddrs{Id: "c3", RaftAddr: "r3"}, true, map[string]string{"c1": "g1b", "c2": "g2"}},
		{"removed", &pb.ServerAddrs{Id: "c2", Removed: true}, false, map[string]string{"c1": "g1b"}},
		{"removed twice", &pb.ServerAddrs{Id: "c2", Removed: true}, false, map[string]string{"c1": "g1b"}},
	}
	for _, st := range steps {
		if err := h.apply(cAddrs, st.msg); (err != nil) != st.wantErr {
			t.Errorf("%s: error %v, want error %v", st.name, err, st.wantErr)
		}
		got := map[string]string{}
		for id, s := range h.f.Servers() {
			got[id] = s.GrpcAddr
		}
		if !maps.Equal(got, st.want) {
			t.Errorf("%s: servers %v, want %v", st.name, got, st.want)
		}
	}
	g := restored(t, h.f)
	if s := g.Servers()["c1"]; len(g.Servers()) != 1 || s.GetRaftAddr() != "r1b" || s.GetGrpcAddr() != "g1b" {
		t.Errorf("restored servers %v", g.Servers())
	}
	b, err := EncodeCommand(cAddrs, &pb.ServerAddrs{Id: "c1", RaftAddr: "r", GrpcAddr: "g"}, t0)
	if err != nil {
		t.Fatal(err)
	}
	var cmd pb.Command
	if err := proto.Unmarshal(b, &cmd); err != nil || !cmd.IgnoreUnknown {
		t.Errorf("server addresses written without ignore_unknown (%v): an older build would stop on them", err)
	}
}

// restored returns a new FSM restored from a snapshot of f.
func restored(t *testing.T, f *FSM) *FSM {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := NewFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	return g
}

// TestNonFiniteNeverInState: NaN and infinite metrics and scores in a
// command (a log written by an older or faulty leader) never reach the
// state, and the dashboard's ledger encodes whatever it is given.
func TestNonFiniteNeverInState(t *testing.T) {
	h := &fsmHarness{t: t, f: NewFSM()}
	nan, inf := math.NaN(), math.Inf(1)
	h.must(cRegister, &pb.RegisterJob{Spec: spec("j", 2), BaseMetrics: map[string]float64{"test_loss": nan, "test_accuracy": 0.1}})
	h.must(cStart, &pb.StartRound{Job: "j", Round: roundAt(1, "base", "a")})
	u := upd("a")
	u.Metrics = map[string]float64{"loss": inf, "seconds": 2}
	h.must(cAccept, &pb.AcceptUpdate{Job: "j", Round: 1, Update: u})
	h.must(cCommit, &pb.CommitRound{Job: "j", Round: 1, Model: "m1", Metrics: map[string]float64{"train_loss": nan, "test_accuracy": 0.5},
		Scores: []*pb.Score{{Worker: "a", Weight: nan, Norm: inf, Cosine: nan, Distance: -inf}}})
	j, _ := h.f.Job("j")
	if _, ok := j.BaseMetrics["test_loss"]; ok || j.BaseMetrics["test_accuracy"] != 0.1 {
		t.Errorf("base metrics %v", j.BaseMetrics)
	}
	r := j.History[0]
	if _, ok := r.Metrics["train_loss"]; ok || r.Metrics["test_accuracy"] != 0.5 {
		t.Errorf("round metrics %v", r.Metrics)
	}
	if _, ok := r.Accepted[0].Metrics["loss"]; ok {
		t.Errorf("update metrics %v", r.Accepted[0].Metrics)
	}
	if s := r.Scores[0]; s.Weight != 0 || s.Norm != 0 || s.Cosine != 0 || s.Distance != 0 {
		t.Errorf("score %v", s)
	}
	b, err := json.Marshal(map[string][]LedgerRow{"j": {{Worker: "a", Weight: nan, MeanCosine: inf}}})
	if err != nil || !strings.Contains(string(b), `"weight":null`) {
		t.Errorf("ledger JSON %s, %v", b, err)
	}
}
