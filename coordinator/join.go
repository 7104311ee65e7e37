package coordinator

import (
	"time"

	"github.com/fedtune/fedtune/internal/gossip"
)

// joinRetryMax caps the wait between two tries of joinLoop.
const joinRetryMax = 10 * time.Second

// joinLoop keeps trying the --join addresses while this node's gossip shows
// no other coordinator: at start when it came up before the nodes it joins
// (three coordinators started at once, in any order), and later if it lost
// them all. Without it such a node waited to be found, and nobody looks for
// a node that never joined. The wait doubles from a second to joinRetryMax
// and starts again once it sees another coordinator.
func (c *Coordinator) joinLoop() {
	defer c.wg.Done()
	if len(c.cfg.Join) == 0 {
		return
	}
	wait, logged := time.Second, false
	for {
		select {
		case <-c.done:
			return
		case <-time.After(wait):
		}
		if len(c.gossip.WithRole(gossip.RoleCoordinator)) > 1 {
			wait, logged = time.Second, false
			continue
		}
		if err := c.gossip.Join(c.cfg.Join); err != nil {
			if !logged {
				c.log.Warn("no other coordinator in gossip; trying --join again until one answers", "join", c.cfg.Join, "err", err)
				logged = true
			}
			wait = min(2*wait, joinRetryMax)
			continue
		}
		c.log.Info("joined gossip", "join", c.cfg.Join)
		wait, logged = time.Second, false
	}
}
