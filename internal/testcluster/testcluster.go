// Package testcluster starts real coordinators and workers in-process on
// 127.0.0.1 with ephemeral ports, for tests (the equivalent of raft's
// testing.go). Logs go to the test's log, shown only on failure.
package testcluster

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/central"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/worker"
)

// tlogWriter routes log lines to t.Log.
type tlogWriter struct {
	t  testing.TB
	mu sync.Mutex
	on bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.on {
		w.t.Log(string(p))
	}
	return len(p), nil
}

// Logger returns a slog logger writing to t.Log until the test ends.
func Logger(t testing.TB) *slog.Logger {
	w := &tlogWriter{t: t, on: true}
	t.Cleanup(func() { w.mu.Lock(); w.on = false; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// StartCoordinator starts a single-node (bootstrapped) coordinator in dir
// and waits until it leads. Addresses default to ephemeral ports.
func StartCoordinator(t testing.TB, cfg coordinator.Config) *coordinator.Coordinator {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "coord-1"
	}
	for _, a := range []*string{&cfg.GRPCAddr, &cfg.RaftAddr, &cfg.GossipAddr} {
		if *a == "" {
			*a = "127.0.0.1:0"
		}
	}
	cfg.Bootstrap, cfg.Profile = true, "local"
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	c, err := coordinator.New(cfg, coordinator.Deps{Models: model.Catalog{}, Evaluator: central.New()})
	if err != nil {
		t.Fatalf("start coordinator: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// WorkerHandle stops a worker started by StartWorker.
type WorkerHandle struct {
	ID     string
	W      *worker.Worker
	cancel context.CancelFunc
	done   chan struct{}
}

// Stop stops the worker and waits for it to be gone.
func (h *WorkerHandle) Stop() {
	h.cancel()
	<-h.done
}

// StartWorker runs a worker holding data for "mnist" until the test ends
// or Stop is called.
func StartWorker(t testing.TB, id string, join []string, data *dataset.Examples, labels map[string]string) *WorkerHandle {
	return startWorker(t, worker.Config{ID: id, Join: join, Labels: labels}, data)
}

// StartCrashingWorker is StartWorker for a worker whose Stop looks like a
// crash to the cluster: it vanishes from gossip without a leave message.
func StartCrashingWorker(t testing.TB, id string, join []string, data *dataset.Examples) *WorkerHandle {
	return startWorker(t, worker.Config{ID: id, Join: join, Crash: true}, data)
}

func startWorker(t testing.TB, cfg worker.Config, data *dataset.Examples) *WorkerHandle {
	t.Helper()
	tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": data}, nil)
	return StartWorkerWith(t, cfg, tr)
}

// StartWorkerWith starts a worker with the given config (local gossip
// profile, short polls) and trainer, which it closes when it stops.
func StartWorkerWith(t testing.TB, cfg worker.Config, tr interface {
	worker.Trainer
	Close()
}) *WorkerHandle {
	t.Helper()
	id := cfg.ID
	cfg.Profile, cfg.PollWait, cfg.Logger = "local", 2*time.Second, Logger(t)
	w, err := worker.New(cfg, tr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &WorkerHandle{ID: id, W: w, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		defer tr.Close()
		if err := w.Run(ctx); err != nil {
			t.Errorf("worker %s: %v", id, err)
		}
	}()
	t.Cleanup(h.Stop)
	return h
}

// SubmitJob uploads base and submits spec (with BaseModel set) to addr.
func SubmitJob(t testing.TB, pool *client.Pool, addr string, spec *pb.JobSpec, base tensor.Set) *pb.Job {
	t.Helper()
	conn, err := pool.Conn(addr)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tensor.Marshal(base, tensor.F32)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hash, err := client.PutBlob(ctx, conn, b)
	if err != nil {
		t.Fatal(err)
	}
	spec.BaseModel = hash
	resp, err := rpcpb.NewAdminClient(conn).SubmitJob(ctx, &pb.SubmitJobRequest{Spec: spec})
	if err != nil {
		t.Fatalf("submit job: %v", err)
	}
	return resp.Job
}

// WaitFor polls cond every 50ms until it holds or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
