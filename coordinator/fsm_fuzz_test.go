package coordinator

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	pb "github.com/fedtune/fedtune/protocol"
)

// FuzzFSMCommands applies commands of every known type with arbitrary
// payloads to an FSM holding a job with an open round. Apply must never
// panic on them, and a command it refuses must leave the state exactly as
// it was (every replica reaches the same verdict and nothing changes).
func FuzzFSMCommands(f *testing.F) {
	seeds := []proto.Message{
		&pb.AcceptUpdate{Job: "j", Round: 1, Update: upd("w1")},
		&pb.CommitRound{Job: "j", Round: 1, Model: "m1"},
		&pb.StartRound{Job: "j", Round: roundAt(2, "m1", "w1")},
		&pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: "w9"}},
		&pb.RevokeWorker{Name: "w1"},
		&pb.RegisterJob{Spec: spec("k", 1)},
		&pb.SecAggMessage{Job: "j", Round: 1, Worker: "w1", Phase: 1, Keys: &pb.SecAggKeys{Worker: "w1"}},
		&pb.SecAggPhase{Job: "j", Round: 1, Phase: 2},
	}
	for i, m := range seeds {
		b, _ := proto.Marshal(m)
		f.Add(uint8(i+1), b)
	}
	f.Fuzz(func(t *testing.T, typ uint8, payload []byte) {
		h := &fsmHarness{t: nil, f: NewFSM()}
		for _, c := range []struct {
			typ pb.CommandType
			msg proto.Message
		}{
			{cUpsert, &pb.UpsertWorker{Worker: &pb.WorkerInfo{Id: "w1"}}},
			{cRegister, &pb.RegisterJob{Spec: spec("j", 3)}},
			{cStart, &pb.StartRound{Job: "j", Round: roundAt(1, "base", "w1")}},
		} {
			b, _ := EncodeCommand(c.typ, c.msg, t0)
			h.idx++
			if res := h.f.Apply(&raft.Log{Index: h.idx, Type: raft.LogCommand, Data: b}); res != nil {
				t.Fatalf("setup %v: %v", c.typ, res)
			}
		}
		before := snapshotBytes(t, h.f)
		ct := pb.CommandType(1 + int(typ)%len(appliers))
		b, err := proto.Marshal(&pb.Command{Version: CommandVersion, Type: ct, Payload: payload, ProposedUnixNano: t0.UnixNano()})
		if err != nil {
			t.Fatal(err)
		}
		res := h.f.Apply(&raft.Log{Index: 99, Type: raft.LogCommand, Data: b})
		if res != nil && !bytes.Equal(before, snapshotBytes(t, h.f)) {
			t.Fatalf("%v refused (%v) but changed the state", ct, res)
		}
	})
}

func snapshotBytes(t *testing.T, f *FSM) []byte {
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := s.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), sink.Bytes()...)
}
