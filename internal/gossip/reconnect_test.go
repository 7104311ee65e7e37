package gossip

import (
	"encoding/json"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func member(t *testing.T, name, role string, port uint16) *memberlist.Node {
	t.Helper()
	meta, err := json.Marshal(Meta{Role: role})
	if err != nil {
		t.Fatal(err)
	}
	return &memberlist.Node{Name: name, Addr: net.IPv4(10, 0, 0, 1), Port: port, Meta: meta}
}

// TestFailedMembers: members that leave are remembered for reconnecting,
// every coordinator each round and at most reconnectTries workers; one that
// comes back is forgotten, and so is one gone longer than
// reconnectTimeout.
func TestFailedMembers(t *testing.T) {
	now := time.Unix(1e9, 0)
	f := &failed{now: func() time.Time { return now }}
	f.NotifyLeave(member(t, "c1", RoleCoordinator, 7001))
	f.NotifyLeave(member(t, "c2", RoleCoordinator, 7002))
	for i := range 6 {
		f.NotifyLeave(member(t, string(rune('a'+i)), RoleWorker, uint16(8000+i)))
	}
	got := f.pick(reconnectTries)
	if len(got) != 2+reconnectTries || !slices.Contains(got, "10.0.0.1:7001") || !slices.Contains(got, "10.0.0.1:7002") {
		t.Errorf("pick = %v: want both coordinators and %d workers", got, reconnectTries)
	}
	f.NotifyJoin(member(t, "c1", RoleCoordinator, 7001))
	if got := f.pick(0); !slices.Equal(got, []string{"10.0.0.1:7002"}) {
		t.Errorf("after c1 came back, pick(0) = %v, want only c2", got)
	}
	now = now.Add(reconnectTimeout + time.Second)
	if got := f.pick(10); len(got) != 0 {
		t.Errorf("after the reconnect timeout, pick = %v, want none", got)
	}
}
