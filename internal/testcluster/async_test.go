package testcluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/worker"
)

// asyncJob is a short async job: versions of k updates.
func asyncJob(name string, versions, k, concurrency uint32) *pb.JobSpec {
	spec := haJob(name, versions, 1)
	spec.Mode = round.ModeAsync
	spec.Async = &pb.AsyncSpec{BufferSize: k, Concurrency: concurrency}
	return spec
}

// startSlowWorkers starts workers whose uplinks take the given delays.
func startSlowWorkers(t *testing.T, join []string, delays []time.Duration) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	parts, _ := dataset.Partition{Kind: "iid", Seed: 3}.Split(train.Y, 10, 40)
	for i, d := range delays {
		StartWorkerWith(t, worker.Config{ID: fmt.Sprintf("w%d", i+1), Join: join, SubmitDelay: d},
			worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset(parts[i])}, nil))
	}
}

// checkAsyncHistory asserts versions 1..n of k updates each, every task
// counted once in the whole job, no worker more than maxPer times in one
// version, and staleness recorded.
func checkAsyncHistory(t *testing.T, j *pb.Job, n, k, maxPer int) map[uint64]int {
	t.Helper()
	if len(j.History) != n {
		t.Fatalf("%d versions committed, want %d", len(j.History), n)
	}
	count := map[uint64]int{}
	for i, r := range j.History {
		if r.Number != uint32(i+1) || len(r.Accepted) != k || int(r.Updates) != k {
			t.Fatalf("version %d (history[%d]) has %d updates, want %d", r.Number, i, len(r.Accepted), k)
		}
		per := map[string]int{}
		for _, u := range r.Accepted {
			count[u.Task]++
			per[u.Worker]++
			if u.BaseVersion >= r.Number {
				t.Errorf("version %d aggregates an update trained from version %d", r.Number, u.BaseVersion)
			}
		}
		for w, c := range per {
			if c > maxPer {
				t.Errorf("version %d has %d updates of %s, cap %d", r.Number, c, w, maxPer)
			}
		}
		if _, ok := r.Metrics["mean_staleness"]; !ok {
			t.Errorf("version %d has no mean_staleness", r.Number)
		}
	}
	for task, c := range count {
		if c != 1 {
			t.Errorf("task %d counted %d times", task, c)
		}
	}
	return count
}

// TestAsyncJob runs an async job on one coordinator with six workers whose
// uplinks differ up to 1 s: versions of 3 updates, 4 training at once, at
// most one update per worker per version, updates compressed to top-10% +
// int8 with error feedback. Every version verifies, the slow workers
// contribute, and the model learns.
func TestAsyncJob(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{})
	startSlowWorkers(t, []string{c.GossipAddr()}, []time.Duration{0, 0, 100 * time.Millisecond, 300 * time.Millisecond, 600 * time.Millisecond, time.Second})
	WaitFor(t, 10*time.Second, "6 workers", func() bool { return len(c.FSM().Workers()) == 6 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	const versions, k = 10, 3
	spec := asyncJob("async", versions, k, 4)
	spec.Codec = "topk=0.1+int8"
	SubmitJob(t, pool, c.GRPCAddr(), spec, arch.Init(1))
	WaitFor(t, 2*time.Minute, "the async job", func() bool {
		j, _ := c.FSM().Job("async")
		return j.Status != pb.JobStatus_JOB_STATUS_RUNNING
	})
	j, _ := c.FSM().Job("async")
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %s: %s", j.Status, j.Error)
	}
	checkAsyncHistory(t, j, versions, k, 1)
	if len(j.Async.GetAssignments()) != 0 {
		t.Errorf("a finished job keeps %d assignments", len(j.Async.Assignments))
	}
	by := map[string]int{}
	stale := 0.0
	for _, r := range j.History {
		for _, u := range r.Accepted {
			by[u.Worker]++
		}
		stale += r.Metrics["mean_staleness"]
	}
	t.Logf("updates by worker %v; mean staleness %.2f; accuracy %.3f -> %.3f", by, stale/versions, j.BaseMetrics["test_accuracy"], j.History[versions-1].Metrics["test_accuracy"])
	if by["w6"] == 0 || by["w5"] == 0 {
		t.Errorf("the slow workers never contributed: %v", by)
	}
	if stale == 0 {
		t.Error("no update was ever stale: the job ran in lockstep, not asynchronously")
	}
	if j.History[versions-1].Metrics["test_accuracy"] < j.BaseMetrics["test_accuracy"]+0.3 {
		t.Errorf("accuracy %.3f -> %.3f", j.BaseMetrics["test_accuracy"], j.History[versions-1].Metrics["test_accuracy"])
	}
	conn, _ := pool.Conn(c.GRPCAddr())
	for _, r := range []uint32{1, versions / 2, versions} {
		v, err := rpcpb.NewAdminClient(conn).VerifyRound(t.Context(), &pb.VerifyRoundRequest{Job: "async", Round: r})
		if err != nil || !v.Match {
			t.Errorf("version %d does not verify: %v %v", r, v, err)
		}
	}
	ledger := coordinator.Ledger(j)
	total := 0
	for _, row := range ledger {
		total += row.Rounds
	}
	if total != versions*k {
		t.Errorf("the ledger credits %d updates, %d were aggregated", total, versions*k)
	}
}

// TestAsyncStaleAndDuplicate: an update older than max_staleness is refused
// as too stale, one for a task never assigned is refused, and a resubmitted
// accepted update is answered "duplicate" and counted once.
func TestAsyncStaleAndDuplicate(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{})
	startSlowWorkers(t, []string{c.GossipAddr()}, []time.Duration{0, 0})
	StartWorkerWith(t, worker.Config{ID: "stuck", Join: []string{c.GossipAddr()}}, blockingTrainer{})
	WaitFor(t, 10*time.Second, "3 workers", func() bool { return len(c.FSM().Workers()) == 3 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	spec := asyncJob("stale", 4, 2, 3)
	spec.Async.MaxStaleness = 1
	SubmitJob(t, pool, c.GRPCAddr(), spec, arch.Init(1))
	var stuck *pb.Assignment
	WaitFor(t, 10*time.Second, "the stuck worker's assignment", func() bool {
		j, _ := c.FSM().Job("stale")
		for _, a := range j.Async.GetAssignments() {
			if a.Worker == "stuck" {
				stuck = a
			}
		}
		return stuck != nil
	})
	WaitFor(t, time.Minute, "version 2", func() bool { j, _ := c.FSM().Job("stale"); return len(j.History) >= 2 })
	conn, _ := pool.Conn(c.GRPCAddr())
	wk := rpcpb.NewWorkerClient(conn)
	j, _ := c.FSM().Job("stale")
	accepted := j.History[0].Accepted[0]
	payload, err := client.GetBlob(t.Context(), conn, accepted.Blob, client.MaxMessage)
	if err != nil {
		t.Fatal(err)
	}
	submit := func(worker string, version uint32, task uint64, base string) (*pb.SubmitUpdateResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return wk.SubmitUpdate(ctx, &pb.SubmitUpdateRequest{WorkerId: worker, Job: "stale", Round: version, BaseModel: base,
			Codec: "fp32", Payload: payload, Samples: 10, Attempt: uint32(task)})
	}

	// Too stale: the stuck worker's task is from version 0, the job is at 2 or more.
	_, err = submit("stuck", stuck.Version, stuck.Task, stuck.BaseModel)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "too stale") || !strings.Contains(err.Error(), "max_staleness is 1") {
		t.Errorf("stale update: %v, want FailedPrecondition naming the staleness", err)
	}
	// Never assigned.
	j, _ = c.FSM().Job("stale")
	_, err = submit("stuck", uint32(len(j.History)), 999, j.CurrentModel)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no open assignment") {
		t.Errorf("update for a task never assigned: %v", err)
	}
	// Duplicate: the first accepted update, sent again.
	resp, err := submit(accepted.Worker, accepted.BaseVersion, accepted.Task, j.History[0].Accepted[0].Blob)
	if err != nil || !resp.Accepted || !resp.Duplicate {
		t.Errorf("resubmitted update: %v %v, want accepted and duplicate", resp, err)
	}
	WaitFor(t, time.Minute, "the job", func() bool { j, _ = c.FSM().Job("stale"); return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	counts := checkAsyncHistory(t, j, 4, 2, 1)
	if counts[accepted.Task] != 1 {
		t.Errorf("the duplicated task is counted %d times", counts[accepted.Task])
	}
	if counts[stuck.Task] != 0 {
		t.Error("the stale update was aggregated")
	}
}

// TestAsyncWorkerLeaves: a worker that vanishes mid-task (a crash: no
// leave message) loses its assignment as soon as gossip finds it gone, not
// at the task's deadline five minutes on, and its slot goes to the others.
// The job trains one worker at a time and the vanishing worker holds that
// one slot, so the job can only finish once the slot is released.
func TestAsyncWorkerLeaves(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{})
	gone := StartWorkerWith(t, worker.Config{ID: "gone", Join: []string{c.GossipAddr()}, Crash: true}, blockingTrainer{})
	WaitFor(t, 10*time.Second, "the worker", func() bool { return len(c.FSM().Workers()) == 1 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	spec := asyncJob("leave", 3, 2, 1)
	spec.RoundTimeoutSeconds = 300
	SubmitJob(t, pool, c.GRPCAddr(), spec, arch.Init(1))
	WaitFor(t, 10*time.Second, "the one slot assigned to the worker that will leave", func() bool {
		j, _ := c.FSM().Job("leave")
		as := j.Async.GetAssignments()
		return len(as) == 1 && as[0].Worker == "gone"
	})
	startSlowWorkers(t, []string{c.GossipAddr()}, []time.Duration{0, 0})
	WaitFor(t, 10*time.Second, "3 workers", func() bool { return len(c.FSM().Workers()) == 3 })
	gone.Stop()
	left := time.Now()
	WaitFor(t, 30*time.Second, "the assignment of the worker that left withdrawn", func() bool {
		j, _ := c.FSM().Job("leave")
		for _, a := range j.Async.GetAssignments() {
			if a.Worker == "gone" {
				return false
			}
		}
		return true
	})
	t.Logf("assignment withdrawn %v after the worker vanished (deadline: %g s)", time.Since(left).Round(100*time.Millisecond), spec.RoundTimeoutSeconds)
	WaitFor(t, time.Minute, "the job", func() bool {
		j, _ := c.FSM().Job("leave")
		return j.Status != pb.JobStatus_JOB_STATUS_RUNNING
	})
	j, _ := c.FSM().Job("leave")
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %s: %s", j.Status, j.Error)
	}
	checkAsyncHistory(t, j, 3, 2, 1)
	for _, r := range j.History {
		for _, w := range r.Workers {
			if w == "gone" {
				t.Errorf("version %d aggregates an update of the worker that left", r.Number)
			}
		}
	}
}

// TestAsyncLeaderKill runs an async job on three coordinators with workers
// whose uplinks differ, kills the leader while the buffer holds accepted
// updates not yet aggregated, and checks that every one of them is
// aggregated exactly once after the failover and that no task is counted
// twice in the whole job.
func TestAsyncLeaderKill(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{})
	startSlowWorkers(t, cl.GossipAddrs(), []time.Duration{0, 200 * time.Millisecond, 500 * time.Millisecond, 800 * time.Millisecond, 1200 * time.Millisecond})
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == 5 })
	const versions, k = 8, 4
	spec := asyncJob("async-ha", versions, k, 5)
	spec.Async.MaxPerWorker = 2
	submit(t, cl, spec)
	var buffered []uint64
	WaitFor(t, time.Minute, "accepted updates waiting in the buffer after version 2", func() bool {
		j := cl.Job("async-ha")
		buffered = buffered[:0]
		for _, u := range j.Async.GetBuffer() {
			buffered = append(buffered, u.Task)
		}
		return len(j.History) >= 2 && len(buffered) > 0 && len(buffered) < k
	})
	old := cl.Leader()
	cl.Crash(old)
	nl := cl.WaitForLeader(15 * time.Second)
	t.Logf("killed leader %s with tasks %v in the buffer; %s leads", old.Name, buffered, nl.Name)
	cl.Start(old)
	j := cl.WaitDone("async-ha", 2*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	counts := checkAsyncHistory(t, j, versions, k, 2)
	for _, task := range buffered {
		if counts[task] != 1 {
			t.Errorf("task %d, in the buffer at the kill, is aggregated %d times", task, counts[task])
		}
	}
	checkReplicas(t, cl, j)
}
