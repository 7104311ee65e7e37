package gossip

import (
	"strings"
	"testing"
	"time"
)

func TestMembersSeeEachOtherWithMeta(t *testing.T) {
	a, err := Start(Config{Name: "coord", BindAddr: "127.0.0.1:0", Profile: "local", Meta: Meta{Role: RoleCoordinator, GRPC: "127.0.0.1:7070", Raft: "127.0.0.1:7071"}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Leave(time.Second)
	b, err := Start(Config{Name: "w1", BindAddr: "127.0.0.1:0", Profile: "local", Meta: Meta{Role: RoleWorker, Labels: map[string]string{"region": "eu", "lang": "fr"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(a.WithRole(RoleWorker)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("coordinator never saw the worker")
		}
		time.Sleep(20 * time.Millisecond)
	}
	w := a.WithRole(RoleWorker)[0]
	if w.Name != "w1" || w.Meta.Labels["lang"] != "fr" {
		t.Errorf("worker seen as %+v", w)
	}
	if c := b.WithRole(RoleCoordinator); len(c) != 1 || c[0].Meta.GRPC != "127.0.0.1:7070" {
		t.Errorf("coordinators seen by the worker: %+v", c)
	}
	// A leaving node disappears from the others' view.
	b.Leave(time.Second)
	deadline = time.Now().Add(5 * time.Second)
	for len(a.WithRole(RoleWorker)) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("worker still listed after it left")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	big := map[string]string{"blob": strings.Repeat("x", 600)}
	if _, err := Start(Config{Name: "n", BindAddr: "127.0.0.1:0", Meta: Meta{Labels: big}}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("oversized meta: %v", err)
	}
	if _, err := Start(Config{Name: "n", BindAddr: "no-port"}); err == nil {
		t.Error("address without a port accepted")
	}
	if err := (&Node{}).Join(nil); err != nil {
		t.Errorf("joining nobody: %v", err)
	}
}
