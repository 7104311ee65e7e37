package main

import (
	"strings"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestAsyncProcesses submits an async job with the CLI to a coordinator
// process with three worker processes (one with a slow uplink): the job
// runs to its last version, `job status` and `verify` work on versions,
// and the ledger credits every aggregated update. Its fairness window of 2
// versions is wider than three workers can fill (the last version's two
// workers wait), so the job also shows that the window never stalls it;
// its concurrency falls from 3 to 2 over the job (--concurrency-final), and
// stale updates are drift-corrected (--drift-correction).
func TestAsyncProcesses(t *testing.T) {
	pc := tc.NewProcCluster(t, binary, 1)
	n := pc.Nodes[0]
	startWorkers(pc, 3, 2000, nil, nil, []string{"--submit-delay", "1s"})
	waitWorkers(t, pc, 3)
	out := run(t, submitArgs(n.GRPC, "async-cli", 4, 1, "--mode", "async", "--buffer-size", "2", "--concurrency", "3", "--concurrency-final", "2", "--drift-correction", "0.5", "--max-staleness", "5", "--fair-window", "2", "--steps", "30")...)
	if !strings.Contains(out, "async: versions of 2 updates, 3 → 2 training at once, polynomial staleness weighting, max staleness 5, at most 1 per worker in 2 versions, drift correction 0.5") {
		t.Errorf("submit printed %q", out)
	}
	j := waitJob(t, pc, "async-cli", 2*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 4 {
		t.Fatalf("job ended %v after %d versions: %s", j.Status, len(j.History), j.Error)
	}
	// Verification recomputes each version with its stale updates' drift
	// correction, from the committed models.
	if v := run(t, "verify", "--coordinator", n.GRPC, "--job", "async-cli"); strings.Count(v, ": OK") != 4 {
		t.Errorf("verify:\n%s", v)
	}
	removed := 0.0
	for _, r := range j.History {
		d, ok := r.Metrics["mean_drift_removed"]
		if !ok {
			t.Errorf("version %d: no mean_drift_removed metric with --drift-correction", r.Number)
		}
		removed += d
	}
	if removed <= 0 {
		t.Errorf("no stale update lost anything to drift correction (with 3 training for versions of 2, some are stale)")
	}
	ledger := run(t, "ledger", "--coordinator", n.GRPC, "--job", "async-cli")
	if !strings.Contains(ledger, "4 committed rounds") {
		t.Errorf("ledger:\n%s", ledger)
	}
	if acc := j.History[3].Metrics["test_accuracy"]; acc < j.BaseMetrics["test_accuracy"]+0.3 {
		t.Errorf("accuracy %.3f -> %.3f", j.BaseMetrics["test_accuracy"], acc)
	}
}

// TestAsyncWorkerRestarts: a worker process killed mid-task and started
// again at once, under its id and gossip address, before gossip could
// find it gone, is handed its assignment again (the coordinator keeps it;
// the new process has not done it) and finishes it: the job does not wait
// for the assignment's deadline, and the task is counted once.
func TestAsyncWorkerRestarts(t *testing.T) {
	// LAN gossip timings on the coordinator: it takes seconds, not one, to
	// find a dead member, so the restart (which loads the worker's data
	// before it rejoins: 1.5 s under a full make test's load) comes first,
	// as the scenario needs. With --fast the coordinator sometimes saw w1
	// gone first and rightly gave task 1 to the new process as task 2.
	pc := tc.NewProcCluster(t, binary, 1, "--profile", "lan")
	n := pc.Nodes[0]
	gossip := tc.FreeAddr(t)
	args := []string{"--gossip-addr", gossip, "--max-examples", "2000"}
	w := pc.StartWorker("w1", append(args, "--submit-delay", "1h")...) // trains, then holds its update
	waitWorkers(t, pc, 1)
	run(t, submitArgs(n.GRPC, "restart", 2, 1, "--mode", "async", "--buffer-size", "1", "--concurrency", "1", "--steps", "20", "--round-timeout", "300s")...)
	var task uint64
	waitJob(t, pc, "restart", 30*time.Second, func(j *pb.Job) bool {
		if as := j.Async.GetAssignments(); len(as) == 1 {
			task = as[0].Task
		}
		return task != 0
	})
	time.Sleep(2 * time.Second) // w1 is training or holding its update
	w.Kill()
	restarted := time.Now()
	pc.StartWorker("w1", args...)
	j := waitJob(t, pc, "restart", time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	t.Logf("job done %v after the restart (deadline 300 s)", time.Since(restarted).Round(100*time.Millisecond))
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 2 {
		t.Fatalf("job ended %v after %d versions: %s", j.Status, len(j.History), j.Error)
	}
	seen := map[uint64]int{}
	for _, r := range j.History {
		for _, u := range r.Accepted {
			seen[u.Task]++
		}
	}
	for task, count := range seen {
		if count != 1 {
			t.Errorf("task %d counted %d times", task, count)
		}
	}
	if seen[task] != 1 {
		t.Errorf("tasks aggregated %v: the restarted worker did not finish its assignment (task %d)", seen, task)
	}
}
