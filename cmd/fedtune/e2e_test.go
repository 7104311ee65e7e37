package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// These tests start the built fedtune binary as separate processes on
// 127.0.0.1, as a user would.

var binary string

func TestMain(m *testing.M) {
	// The process tests run insecure clusters (TestSecureCluster sets up
	// certificates and clears this for its own processes).
	os.Setenv("FEDTUNE_INSECURE", "1")
	dir, err := os.MkdirTemp("", "fedtune-e2e-")
	if err != nil {
		panic(err)
	}
	if binary, err = tc.BuildBinary(dir, "."); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// exec runs the binary and returns its combined output and error.
func exec(args ...string) (string, error) {
	out, err := osexec.Command(binary, args...).CombinedOutput()
	return string(out), err
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := osexec.Command(binary, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("fedtune %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// startWorkers starts count worker processes, each with a different non-IID
// share of MNIST; extra[i], if given, adds flags to worker i.
func startWorkers(pc *tc.ProcCluster, count, examples int, extra ...[]string) []*tc.Proc {
	var procs []*tc.Proc
	for i := range count {
		args := []string{"--num-partitions", fmt.Sprint(count), "--partition-index", fmt.Sprint(i), "--partition", "dirichlet",
			"--alpha", "1", "--max-examples", fmt.Sprint(examples), "--label", fmt.Sprintf("region=r%d", i%2)}
		if i < len(extra) {
			args = append(args, extra[i]...)
		}
		procs = append(procs, pc.StartWorker(fmt.Sprintf("w%d", i+1), args...))
	}
	return procs
}

func waitJob(t *testing.T, pc *tc.ProcCluster, name string, timeout time.Duration, cond func(*pb.Job) bool) *pb.Job {
	t.Helper()
	var j *pb.Job
	tc.WaitFor(t, timeout, "job "+name, func() bool {
		j = pc.Job(name)
		return j != nil && cond(j)
	})
	return j
}

func waitWorkers(t *testing.T, pc *tc.ProcCluster, n int) {
	t.Helper()
	tc.WaitFor(t, 30*time.Second, fmt.Sprintf("%d workers", n), func() bool {
		l := pc.Leader()
		if l == nil {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := pc.Admin(l).ListWorkers(ctx, &pb.ListWorkersRequest{})
		return err == nil && len(resp.Alive) >= n && len(resp.Workers) >= n
	})
}

func submitArgs(addr, name string, rounds, clients int, extra ...string) []string {
	return append([]string{"job", "submit", "--coordinator", addr, "--name", name, "--model", "mnist-mlp-small",
		"--rounds", fmt.Sprint(rounds), "--clients", fmt.Sprint(clients), "--batch-size", "32", "--lr", "0.1", "--momentum", "0.5",
		"--round-timeout", "60s"}, extra...)
}

// TestProcesses runs 1 coordinator and 3 workers as processes, submits a
// job with the CLI, and checks the accuracy went up and the model exports.
func TestProcesses(t *testing.T) {
	pc := tc.NewProcCluster(t, binary, 1)
	n := pc.Nodes[0]
	startWorkers(pc, 3, 2500)
	waitWorkers(t, pc, 3)
	out := run(t, append(submitArgs(n.GRPC, "e2e", 3, 3, "--min-updates", "2"), "--selector", "region=r0", "--selector", "")...)
	if !strings.Contains(out, "job e2e submitted") {
		t.Fatalf("submit printed %q", out)
	}
	// The selector limits the job to region=r0 workers (w1, w3).
	j := waitJob(t, pc, "e2e", 3*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 3 {
		t.Fatalf("job ended %v after %d rounds: %s", j.Status, len(j.History), j.Error)
	}
	for _, r := range j.History {
		if slices.Contains(r.Workers, "w2") {
			t.Errorf("round %d used w2, which the selector region=r0 excludes", r.Number)
		}
	}
	base, final := j.BaseMetrics["test_accuracy"], j.History[2].Metrics["test_accuracy"]
	t.Logf("test accuracy %.3f -> %.3f", base, final)
	if final < base+0.3 {
		t.Errorf("accuracy %.3f -> %.3f: no real improvement", base, final)
	}
	status := run(t, "job", "status", "--coordinator", n.GRPC, "e2e")
	if !strings.Contains(status, "done") || !strings.Contains(status, fmt.Sprintf("%.2f%%", 100*final)) {
		t.Errorf("job status output lacks the final state:\n%s", status)
	}
	path := filepath.Join(t.TempDir(), "final.safetensors")
	run(t, "model", "export", "--coordinator", n.GRPC, "--job", "e2e", "-o", path)
	s, err := tensor.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Metadata["fedtune.round"] != "3" || s.Metadata["fedtune.sha256"] != j.CurrentModel {
		t.Errorf("exported metadata %v", s.Metadata)
	}
	// Every round recomputes to the committed model; the ledger credits the
	// selected workers only.
	if v := run(t, "verify", "--coordinator", n.GRPC, "--job", "e2e"); strings.Count(v, ": OK") != 3 {
		t.Errorf("verify:\n%s", v)
	}
	ledger := run(t, "ledger", "--coordinator", n.GRPC, "--job", "e2e")
	if !strings.Contains(ledger, "w1 ") || !strings.Contains(ledger, "w3 ") || strings.Contains(ledger, "w2 ") {
		t.Errorf("ledger:\n%s", ledger)
	}
	if list := run(t, "workers", "--coordinator", n.GRPC); strings.Count(list, "alive") != 3 {
		t.Errorf("workers list:\n%s", list)
	}
	resp, err := http.Get("http://" + n.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"fedtune_rounds_committed_total 3", "fedtune_raft_is_leader 1", "fedtune_updates_accepted_total",
		`fedtune_aggregation_seconds_count{rule="fedavg"} 3`, `fedtune_gossip_members{role="worker"} 3`, `fedtune_gossip_members{role="coordinator"} 1`,
		`fedtune_update_bytes_total{codec="fp32"}`, "fedtune_rounds_started_total", "fedtune_raft_commit_index", "fedtune_raft_term", "fedtune_blob_store_bytes"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestCoordinatorKill9 kills the coordinator with SIGKILL in the middle of
// a job and restarts it on the same data directory: the job continues from
// the last committed round, no committed round is lost or repeated, and the
// workers come back by themselves.
func TestCoordinatorKill9(t *testing.T) {
	pc := tc.NewProcCluster(t, binary, 1)
	n := pc.Nodes[0]
	// w3's uplink is slow, so rounds stay open for a while with some
	// updates accepted and some not: the kill lands mid-round.
	startWorkers(pc, 3, 2500, nil, nil, []string{"--submit-delay", "2s"})
	waitWorkers(t, pc, 3)
	const rounds = 6
	run(t, submitArgs(n.GRPC, "durable", rounds, 3, "--min-updates", "3", "--steps", "40")...)
	before := waitJob(t, pc, "durable", 2*time.Minute, func(j *pb.Job) bool {
		return len(j.History) >= 2 && j.OpenRound != nil && len(j.OpenRound.Updates) > 0
	})
	pc.Kill(n)
	t.Logf("killed the coordinator with %d rounds committed, round %d open with %d updates",
		len(before.History), before.OpenRound.Number, len(before.OpenRound.Updates))

	pc.Start(n)
	after := waitJob(t, pc, "durable", 3*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if after.Status != pb.JobStatus_JOB_STATUS_DONE || len(after.History) != rounds {
		t.Fatalf("after restart the job ended %v with %d rounds: %s", after.Status, len(after.History), after.Error)
	}
	for i, r := range after.History {
		if r.Number != uint32(i+1) {
			t.Errorf("history[%d] is round %d: a round was lost or repeated", i, r.Number)
		}
	}
	for i, r := range before.History {
		got := after.History[i]
		if got.Model != r.Model || got.CommittedUnixNano != r.CommittedUnixNano {
			t.Errorf("round %d changed across the restart: model %.12s -> %.12s", r.Number, r.Model, got.Model)
		}
	}
	// The updates accepted before the kill are in the round, counted once.
	open := after.History[before.OpenRound.Number-1]
	for _, u := range before.OpenRound.Updates {
		if !slices.Contains(open.Workers, u.Worker) {
			t.Errorf("update of %s, accepted before the kill, is missing from round %d (%v)", u.Worker, open.Number, open.Workers)
		}
	}
	if open.Updates != 3 {
		t.Errorf("round %d counted %d updates, want 3 (no double counting)", open.Number, open.Updates)
	}
	// min-updates = 3 = every worker: rounds after the restart prove all
	// three workers reconnected on their own.
	last := after.History[rounds-1]
	if last.Updates != 3 {
		t.Errorf("last round had %d updates, want 3 (all workers back)", last.Updates)
	}
	if last.Metrics["test_accuracy"] <= after.BaseMetrics["test_accuracy"] {
		t.Errorf("accuracy did not improve: %v -> %v", after.BaseMetrics["test_accuracy"], last.Metrics["test_accuracy"])
	}
}

// TestCLIErrors checks bad invocations fail with a clear message.
func TestCLIErrors(t *testing.T) {
	corrupt := filepath.Join(t.TempDir(), "corrupt.safetensors")
	os.WriteFile(corrupt, []byte("\xff\xff\xff\xff\xff\xff\xff\x7fnot json"), 0o644)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"job", "submit", "--name", "x", "--model", "gpt-17", "--coordinator", "127.0.0.1:1"}, "unknown model"},
		{[]string{"job", "submit", "--name", "x", "--base", corrupt, "--coordinator", "127.0.0.1:1"}, "invalid safetensors"},
		{[]string{"model", "inspect", corrupt}, "invalid safetensors"},
		{[]string{"worker", "--join", "127.0.0.1:1", "--join-timeout", "1s", "--max-examples", "100", "--state-dir", t.TempDir()}, "cannot reach any node"},
		{[]string{"worker", "--label", "novalue"}, "want key=value"},
		{[]string{"coordinator", "--profile", "moon", "--data-dir", t.TempDir()}, "profile"},
		{[]string{"sim", "--set", "workerz=10"}, `unknown key "workerz"`},
		{[]string{"sim", "--set", "workers=10", "--set", "clients_per_round=20"}, `key "clients_per_round"`},
		{[]string{"sim", "--set", "aggregator=bulyan", "--set", "attack=ipm", "--set", "byzantine=0.3", "--set", "workers=20"}, `key "byzantine"`},
		{[]string{"sim", "--config", corrupt}, "experiment"},
		{[]string{"sim", corrupt}, "experiment"}, // the experiment as the argument is read, not ignored
		{[]string{"sim", corrupt, "extra.yaml"}, "unexpected arguments"},
		{[]string{"sim", "--set", "dp_noise=1", "--set", "aggregator=median", "--dry-run"}, `key "aggregator"`},
		{[]string{"job", "submit", "--name", "x", "--secagg", "--aggregator", "median", "--coordinator", "127.0.0.1:1"}, "robust rules read every update"},
		{[]string{"job", "submit", "--name", "x", "--dp-noise", "1", "--dp-clip", "1", "--dp-adaptive-clip", "--dp-count-noise", "0.1", "--coordinator", "127.0.0.1:1"}, "--dp-count-noise"},
		{[]string{"sim", "--transport", "carrier-pigeon", "--dry-run"}, "transport"},
		{[]string{"plot", corrupt}, "results"},
		{[]string{"job", "submit", "--name", "x", "--lora-alpha", "4", "--coordinator", "127.0.0.1:1"}, "need --lora-rank"},
		{[]string{"job", "submit", "--name", "x", "--lora-rank", "80", "--model", "mnist-mlp-small", "--coordinator", "127.0.0.1:1"}, "would not be low-rank"},
		{[]string{"job", "submit", "--name", "x", "--lora-rank", "2", "--lora-aggregation", "exact", "--aggregator", "median", "--coordinator", "127.0.0.1:1"}, "cannot be combined"},
		{[]string{"model", "eval", "--model", "mnist-mlp-small", corrupt}, "invalid safetensors"},
		{[]string{"job", "submit", "--name", "x", "--buffer-size", "4", "--coordinator", "127.0.0.1:1"}, "is for --mode async"},
		{[]string{"job", "submit", "--name", "x", "--mode", "turbo", "--coordinator", "127.0.0.1:1"}, `mode "turbo"`},
		{[]string{"job", "submit", "--name", "x", "--mode", "async", "--buffer-size", "4", "--aggregator", "krum", "--byzantine", "1", "--coordinator", "127.0.0.1:1"}, "--buffer-size 4"},
		{[]string{"job", "submit", "--name", "x", "--mode", "async", "--staleness", "linear", "--coordinator", "127.0.0.1:1"}, "staleness"},
		{[]string{"sim", "--set", "mode=async", "--set", "speed=warp:9", "--dry-run"}, `key "speed"`},
		{[]string{"model", "pretrain", "--dataset", "words-xx", "-o", filepath.Join(t.TempDir(), "x")}, "unknown language"},
	}
	for _, c := range cases {
		out, err := osexec.Command(binary, c.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("fedtune %s: err %v, output %q; want failure mentioning %q", strings.Join(c.args, " "), err, out, c.want)
		}
		if strings.Contains(string(out), "panic") {
			t.Errorf("fedtune %s panicked:\n%s", strings.Join(c.args, " "), out)
		}
	}
}
