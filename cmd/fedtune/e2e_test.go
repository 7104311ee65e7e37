package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fedtune/fedtune/internal/client"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// These tests start the built fedtune binary as separate processes on
// 127.0.0.1: one coordinator and three workers, as a user would.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fedtune-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "fedtune")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build fedtune: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a running fedtune process whose output is kept for the test log.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(binary, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("---- output of %s ----\n%s", name, p.out.String())
		}
	})
	return p
}

// kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(binary, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("fedtune %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type node struct{ grpc, raft, gossip, http, dir string }

func newNode(t *testing.T) node {
	return node{grpc: freePort(t), raft: freePort(t), gossip: freePort(t), http: freePort(t), dir: t.TempDir()}
}

func (n node) start(t *testing.T) *proc {
	return start(t, "coordinator", "coordinator", "--id", "coord-1", "--data-dir", n.dir, "--grpc-addr", n.grpc,
		"--raft-addr", n.raft, "--gossip-addr", n.gossip, "--http-addr", n.http, "--fast")
}

// startWorkers starts count workers; extra[i], if given, adds flags to worker i.
func startWorkers(t *testing.T, n node, count int, extra ...[]string) {
	for i := range count {
		args := []string{"worker", "--id", fmt.Sprintf("w%d", i+1), "--join", n.gossip, "--fast",
			"--num-partitions", fmt.Sprint(count), "--partition-index", fmt.Sprint(i), "--partition", "dirichlet", "--alpha", "1",
			"--max-examples", "2500", "--poll-wait", "2s", "--label", fmt.Sprintf("region=r%d", i%2)}
		if i < len(extra) {
			args = append(args, extra[i]...)
		}
		start(t, fmt.Sprintf("worker-%d", i+1), args...)
	}
}

func waitJob(t *testing.T, admin pb.AdminClient, name string, timeout time.Duration, cond func(*pb.Job) bool) *pb.Job {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := admin.JobStatus(ctx, &pb.JobStatusRequest{Name: name})
		cancel()
		if err == nil && cond(resp.Job) {
			return resp.Job
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: condition not reached in %v (last: %v, err %v)", name, timeout, resp.GetJob(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitWorkers(t *testing.T, admin pb.AdminClient, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := admin.ListWorkers(ctx, &pb.ListWorkersRequest{})
		cancel()
		if err == nil && len(resp.Alive) >= n && len(resp.Workers) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d workers did not join in 30s (%v, %v)", n, resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func submitArgs(n node, name string, rounds int, extra ...string) []string {
	return append([]string{"job", "submit", "--coordinator", n.grpc, "--name", name, "--model", "mnist-mlp-small",
		"--rounds", fmt.Sprint(rounds), "--clients", "3", "--batch-size", "32", "--lr", "0.1", "--momentum", "0.5",
		"--round-timeout", "60s"}, extra...)
}

// TestProcesses runs 1 coordinator and 3 workers as processes, submits a
// job with the CLI, and checks the accuracy went up and the model exports.
func TestProcesses(t *testing.T) {
	n := newNode(t)
	n.start(t)
	startWorkers(t, n, 3)
	pool := client.NewPool()
	defer pool.Close()
	conn, _ := pool.Conn(n.grpc)
	admin := pb.NewAdminClient(conn)
	waitWorkers(t, admin, 3)
	out := run(t, append(submitArgs(n, "e2e", 3, "--min-updates", "2"), "--selector", "region=r0", "--selector", "")...)
	if !strings.Contains(out, "job e2e submitted") {
		t.Fatalf("submit printed %q", out)
	}
	// The selector limits the job to region=r0 workers (w1, w3).
	j := waitJob(t, admin, "e2e", 3*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 3 {
		t.Fatalf("job ended %v after %d rounds: %s", j.Status, len(j.History), j.Error)
	}
	for _, r := range j.History {
		for _, w := range r.Workers {
			if w == "w2" {
				t.Errorf("round %d used w2, which the selector region=r0 excludes", r.Number)
			}
		}
	}
	base, final := j.BaseMetrics["test_accuracy"], j.History[2].Metrics["test_accuracy"]
	t.Logf("test accuracy %.3f -> %.3f", base, final)
	if final < base+0.3 {
		t.Errorf("accuracy %.3f -> %.3f: no real improvement", base, final)
	}
	status := run(t, "job", "status", "--coordinator", n.grpc, "e2e")
	if !strings.Contains(status, "done") || !strings.Contains(status, fmt.Sprintf("%.2f%%", 100*final)) {
		t.Errorf("job status output lacks the final state:\n%s", status)
	}
	path := filepath.Join(t.TempDir(), "final.safetensors")
	run(t, "model", "export", "--coordinator", n.grpc, "--job", "e2e", "-o", path)
	s, err := tensor.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Metadata["fedtune.round"] != "3" || s.Metadata["fedtune.sha256"] != j.CurrentModel {
		t.Errorf("exported metadata %v", s.Metadata)
	}
	if list := run(t, "workers", "--coordinator", n.grpc); strings.Count(list, "alive") != 3 {
		t.Errorf("workers list:\n%s", list)
	}
	resp, err := http.Get("http://" + n.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"fedtune_rounds_committed_total 3", "fedtune_raft_is_leader 1", "fedtune_updates_accepted_total"} {
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
	n := newNode(t)
	co := n.start(t)
	// w3's uplink is slow, so rounds stay open for a while with some
	// updates accepted and some not: the kill lands mid-round.
	startWorkers(t, n, 3, nil, nil, []string{"--submit-delay", "2s"})
	pool := client.NewPool()
	defer pool.Close()
	conn, _ := pool.Conn(n.grpc)
	admin := pb.NewAdminClient(conn)
	waitWorkers(t, admin, 3)
	const rounds = 6
	run(t, submitArgs(n, "durable", rounds, "--min-updates", "3", "--steps", "40")...)
	before := waitJob(t, admin, "durable", 2*time.Minute, func(j *pb.Job) bool {
		return len(j.History) >= 2 && j.OpenRound != nil && len(j.OpenRound.Updates) > 0
	})
	co.kill()
	t.Logf("killed the coordinator with %d rounds committed, round %d open with %d updates",
		len(before.History), before.OpenRound.Number, len(before.OpenRound.Updates))

	n.start(t)
	after := waitJob(t, admin, "durable", 3*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
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
		{[]string{"worker", "--join", "127.0.0.1:1", "--join-timeout", "1s", "--max-examples", "100"}, "cannot reach any node"},
		{[]string{"worker", "--label", "novalue"}, "want key=value"},
	}
	for _, c := range cases {
		out, err := exec.Command(binary, c.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("fedtune %s: err %v, output %q; want failure mentioning %q", strings.Join(c.args, " "), err, out, c.want)
		}
		if strings.Contains(string(out), "panic") {
			t.Errorf("fedtune %s panicked:\n%s", strings.Join(c.args, " "), out)
		}
	}
}
