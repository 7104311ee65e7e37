package coordinator

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestGarbageCollection keeps every blob the FSM names and fresh blobs, and
// deletes old unreferenced ones, including update blobs of rounds older
// than KeepUpdateRounds.
func TestGarbageCollection(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Config{DataDir: dir, GRPCAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0",
		Bootstrap: true, Profile: "local", KeepUpdateRounds: 1}, Deps{Models: model.Catalog{}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	put := func(s string) string {
		h, err := c.blobs.Put([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	base, m1, m2 := put("base"), put("model-1"), put("model-2")
	u1, u2 := put("update-round-1"), put("update-round-2")
	orphan, fresh := put("orphan"), put("fresh orphan")
	h := &fsmHarness{t: t, f: c.fsm}
	s := spec("j", 3)
	s.BaseModel = base
	h.must(cRegister, &pb.RegisterJob{Spec: s})
	for i, m := range []string{m1, m2} {
		u := []string{u1, u2}[i]
		h.must(cStart, &pb.StartRound{Job: "j", Round: roundAt(uint32(i+1), base, "w1")})
		h.must(cAccept, &pb.AcceptUpdate{Job: "j", Round: uint32(i + 1), Update: &pb.AcceptedUpdate{Worker: "w1", Blob: u, Samples: 1}})
		h.must(cCommit, &pb.CommitRound{Job: "j", Round: uint32(i + 1), Model: m})
	}
	old := time.Now().Add(-time.Hour)
	for _, hash := range []string{base, m1, m2, u1, u2, orphan} {
		os.Chtimes(filepath.Join(dir, "blobs", hash[:2], hash), old, old)
	}
	if n := c.collectGarbage(time.Now()); n != 2 {
		t.Errorf("deleted %d blobs, want 2 (the orphan and round 1's update)", n)
	}
	for hash, want := range map[string]bool{base: true, m1: true, m2: true, u2: true, fresh: true, u1: false, orphan: false} {
		if c.blobs.Has(hash) != want {
			t.Errorf("blob %.8s held=%v, want %v", hash, !want, want)
		}
	}
}
