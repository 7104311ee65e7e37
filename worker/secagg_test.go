package worker

import (
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/secagg"
)

// TestCertAuth: a worker's SecAgg keys signed with its certificate verify
// for another worker of the same CA; tampered keys, keys under another
// worker's name, a coordinator's certificate and another CA's do not.
func TestCertAuth(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	for _, d := range []string{dir, other} {
		if err := pki.InitCA(d, "test CA", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(ca, role, name string) *pki.Node {
		if err := pki.Issue(ca, ca, role, name, time.Hour, time.Now().Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		n, err := pki.Load(ca, name)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	w1, w2 := certAuth{issue(dir, pki.RoleWorker, "w1")}, certAuth{issue(dir, pki.RoleWorker, "w2")}
	coord := certAuth{issue(dir, pki.RoleCoordinator, "c1")}
	stranger := certAuth{issue(other, pki.RoleWorker, "w1")}
	p := secagg.Params{Job: "j", Round: 2}
	sign := func(a certAuth, worker string) *pb.SecAggKeys {
		k := &pb.SecAggKeys{Worker: worker, CipherPub: make([]byte, 32), MaskPub: make([]byte, 32), SeedCommit: make([]byte, 32)}
		if err := a.Sign(k, secagg.SignedBytes(p, k)); err != nil {
			t.Fatal(err)
		}
		return k
	}
	k := sign(w1, "w1")
	if err := w2.Verify(k, secagg.SignedBytes(p, k)); err != nil {
		t.Fatalf("w1's signed keys do not verify at w2: %v", err)
	}
	k.MaskPub[0] ^= 1
	if err := w2.Verify(k, secagg.SignedBytes(p, k)); err == nil || !strings.Contains(err.Error(), "bad signature") {
		t.Errorf("tampered keys: %v", err)
	}
	for name, k := range map[string]*pb.SecAggKeys{
		"w1's certificate for w2's keys": sign(w1, "w2"),
		"a coordinator's certificate":    sign(coord, "c1"),
		"another CA's worker":            sign(stranger, "w1"),
		"unsigned":                       {Worker: "w1", CipherPub: make([]byte, 32), MaskPub: make([]byte, 32), SeedCommit: make([]byte, 32)},
	} {
		if err := w2.Verify(k, secagg.SignedBytes(p, k)); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
