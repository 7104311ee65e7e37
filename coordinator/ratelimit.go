package coordinator

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// submitLimits are the per-worker token buckets of SubmitUpdate.
type submitLimits struct {
	mu    sync.Mutex
	rate  rate.Limit
	burst int
	by    map[string]*rate.Limiter
}

// allow reports whether worker may submit now, and if not, how long until
// it may.
func (l *submitLimits) allow(worker string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by == nil {
		l.by = map[string]*rate.Limiter{}
	}
	lim, ok := l.by[worker]
	if !ok {
		lim = rate.NewLimiter(l.rate, l.burst)
		l.by[worker] = lim
	}
	r := lim.Reserve()
	if d := r.Delay(); d > 0 {
		r.Cancel() // a refused call takes no token
		return false, d
	}
	return true, 0
}
