package coordinator

import "slices"

// keyringLoop applies the cluster's gossip keyring, as the log changes it,
// to this node's gossip.
func (c *Coordinator) keyringLoop() {
	defer c.wg.Done()
	var applied []string
	for {
		changed := c.fsm.Changed()
		if k := c.fsm.Keyring(); len(k) > 0 && !slices.Equal(k, applied) {
			if err := c.gossip.SetKeys(k); err != nil {
				c.log.Error("gossip keyring not applied", "err", err)
			} else {
				applied = k
				c.log.Info("gossip keyring applied", "keys", len(k))
			}
		}
		select {
		case <-c.done:
			return
		case <-changed:
		}
	}
}
