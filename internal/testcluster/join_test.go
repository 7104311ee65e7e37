package testcluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/internal/central"
	"github.com/fedtune/fedtune/model"
)

// TestCoordinatorsStartedInAnyOrder starts three coordinators that all
// --join the first one's gossip address, the first one last: the two
// started before it find nobody at start, keep trying their --join address
// in the background, and the three form one Raft cluster of three voters
// once it is up.
func TestCoordinatorsStartedInAnyOrder(t *testing.T) {
	seed := FreeAddr(t)
	var nodes []*coordinator.Coordinator
	t.Cleanup(func() {
		for _, c := range nodes {
			c.Close()
		}
	})
	start := func(i int) {
		cfg := coordinator.Config{NodeID: fmt.Sprintf("coord-%d", i), DataDir: t.TempDir(), GRPCAddr: FreeAddr(t), RaftAddr: FreeAddr(t),
			BootstrapExpect: 3, Profile: "local", Logger: Logger(t)}
		cfg.GossipAddr = FreeAddr(t)
		if i == 1 {
			cfg.GossipAddr = seed
		} else {
			cfg.Join = []string{seed}
		}
		c, err := coordinator.New(cfg, coordinator.Deps{Models: model.Catalog{}, Evaluator: central.New()})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, c)
	}
	start(2)
	start(3)
	time.Sleep(2 * time.Second) // their first tries fail: nothing listens at the seed address yet
	start(1)
	WaitFor(t, 30*time.Second, "one leader with three voters", func() bool {
		for _, c := range nodes {
			if !c.IsLeader() {
				continue
			}
			st := c.Status()
			voters := 0
			for _, s := range st.Servers {
				if strings.EqualFold(s.Suffrage, "voter") {
					voters++
				}
			}
			return voters == 3
		}
		return false
	})
}
