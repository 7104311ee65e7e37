package worker

import (
	"fmt"
	"time"
)

// Ready says whether the worker is in touch with the cluster: nil if a
// coordinator answered it within the last two poll waits (plus 30 s), the
// error saying since when otherwise. A worker's /readyz serves it.
func (w *Worker) Ready(now time.Time) error {
	last := w.lastContact.Load()
	if last == 0 {
		return fmt.Errorf("no coordinator has answered yet")
	}
	window := 2*w.cfg.PollWait + 30*time.Second
	if since := now.Sub(time.Unix(0, last)); since > window {
		return fmt.Errorf("no coordinator has answered for %v (bound %v)", since.Round(time.Second), window)
	}
	return nil
}
