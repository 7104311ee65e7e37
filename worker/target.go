package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/internal/gossip"
)

// errTargetGone ends a call whose coordinator gossip stopped seeing alive.
var errTargetGone = errors.New("coordinator no longer alive in gossip")

// targetCheck is how often a call in flight checks its coordinator in
// gossip.
const targetCheck = 250 * time.Millisecond

// callCtx returns the context of one call to the target coordinator: it
// ends after timeout, or as soon as gossip stops seeing the target alive.
// A coordinator cut off by the network stalls its calls without a reset;
// gossip notices within a probe interval and a suspicion timeout (about a
// second with --fast, a few on a LAN), long before the call's own deadline
// (a long poll, an update upload). The gRPC keepalive (client package)
// backs this up for targets gossip does not know.
func (w *Worker) callCtx(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	watched, stop := context.WithCancelCause(ctx)
	cctx, cancel := context.WithTimeout(watched, timeout)
	target := w.target
	if w.gossip != nil && w.coordinatorAlive(target) {
		go func() {
			tick := time.NewTicker(targetCheck)
			defer tick.Stop()
			for {
				select {
				case <-cctx.Done():
					return
				case <-tick.C:
					if !w.coordinatorAlive(target) {
						stop(fmt.Errorf("%s: %w", target, errTargetGone))
						return
					}
				}
			}
		}()
	}
	return cctx, func() { cancel(); stop(nil) }
}

// callErr returns why a call failed: the gone target if that ended it,
// else err.
func callErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, errTargetGone) {
		return cause
	}
	return err
}

// liveCoordinators returns the gRPC addresses of the coordinators gossip
// sees alive, sorted. It only reads gossip, so calls in flight may use it
// from their own goroutines.
func (w *Worker) liveCoordinators() []string {
	var addrs []string
	for _, m := range w.gossip.WithRole(gossip.RoleCoordinator) {
		if m.Meta.GRPC != "" {
			addrs = append(addrs, m.Meta.GRPC)
		}
	}
	sort.Strings(addrs)
	return addrs
}

// coordinatorAlive reports whether gossip sees a live coordinator serving
// gRPC at addr.
func (w *Worker) coordinatorAlive(addr string) bool {
	return slices.Contains(w.liveCoordinators(), addr)
}

// maxRetryAfter bounds the delay a coordinator may ask a worker to wait
// before sending an update again.
const maxRetryAfter = 30 * time.Second

// retryAfter returns the delay of a refusal that carries gRPC RetryInfo
// (the coordinator's rate limit): the update is to be sent again then.
func retryAfter(err error) (time.Duration, bool) {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return 0, false
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return min(max(ri.GetRetryDelay().AsDuration(), 10*time.Millisecond), maxRetryAfter), true
		}
	}
	return 0, false
}
