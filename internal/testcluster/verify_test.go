package testcluster

import (
	"context"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/internal/client"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// TestVerifyCollectedRound: on every coordinator of a 3-node cluster,
// verifying a round whose updates were garbage-collected answers at once
// that they are no longer stored, and the rounds still stored verify. (A
// node without a blob asked its peers for their fetch, and they asked
// back: the call hung 25-70 s, then failed on a keepalive.)
func TestVerifyCollectedRound(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{Edit: func(i int, cfg *coordinator.Config) { cfg.KeepUpdateRounds = 1 }})
	startWorkers(t, cl.GossipAddrs(), 2)
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == 2 })
	spec := haJob("gc", 4, 2)
	spec.Evaluate = false
	submit(t, cl, spec)
	if j := cl.WaitDone("gc", 2*time.Minute); j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	for _, nd := range cl.Nodes {
		WaitFor(t, 10*time.Second, nd.Name+" applied the last round", func() bool {
			j, ok := nd.C.FSM().Job("gc")
			return ok && len(j.History) == 4
		})
		nd.C.CollectGarbage(time.Now().Add(time.Hour)) // past the grace of fresh blobs
	}
	pool := client.NewPool()
	defer pool.Close()
	goroutines := runtime.NumGoroutine()
	var heap runtime.MemStats
	runtime.ReadMemStats(&heap)
	heapBefore := heap.HeapInuse
	defer func() {
		// The calls that bounced a missing blob between the nodes piled up
		// goroutines and buffers hop by hop (coordinators grew to GBs).
		runtime.GC()
		runtime.ReadMemStats(&heap)
		t.Logf("goroutines %d -> %d, heap in use %d -> %d MB", goroutines, runtime.NumGoroutine(), heapBefore>>20, heap.HeapInuse>>20)
		if n := runtime.NumGoroutine(); n > goroutines+200 {
			t.Errorf("goroutines %d -> %d after the verify calls", goroutines, n)
		}
	}()
	for _, nd := range cl.Nodes {
		conn, _ := pool.Conn(nd.C.GRPCAddr())
		admin := rpcpb.NewAdminClient(conn)
		WaitFor(t, 20*time.Second, nd.Name+" collected round 1's updates", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			_, err := admin.VerifyRound(ctx, &pb.VerifyRoundRequest{Job: "gc", Round: 1})
			if status.Code(err) != codes.FailedPrecondition {
				return false
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("%s: a collected round took %v to answer", nd.Name, d)
			}
			return true
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		v, err := admin.VerifyRound(ctx, &pb.VerifyRoundRequest{Job: "gc", Round: 4})
		cancel()
		if err != nil || !v.Match {
			t.Errorf("%s: round 4 (stored): %v %v", nd.Name, v, err)
		}
	}
}
