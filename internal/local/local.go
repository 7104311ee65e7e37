// Package local runs a whole fedtune cluster inside this process, on
// 127.0.0.1 with ephemeral ports: one coordinator and a worker node per
// data share, talking gossip and gRPC as separate machines would. The demo
// and `fedtune sim --transport grpc` use it.
package local

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/central"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/worker"
)

// Worker is one worker node to start.
type Worker struct {
	ID     string
	Data   *dataset.Examples // its local MNIST share
	Labels map[string]string
}

// Cluster is a running in-process cluster.
type Cluster struct {
	Coordinator *coordinator.Coordinator
	errs        chan error
	stop        context.CancelFunc
}

// Start starts a coordinator keeping its state in dataDir, then the
// workers (each configured from tmpl, with its own ID, labels and data),
// and returns once every worker is in the coordinator's roster.
func Start(ctx context.Context, dataDir string, workers []Worker, tmpl worker.Config, logger *slog.Logger) (*Cluster, error) {
	coord, err := coordinator.New(coordinator.Config{NodeID: "coordinator-1", DataDir: dataDir, GRPCAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		GossipAddr: "127.0.0.1:0", Bootstrap: true, Profile: "local", Logger: logger}, coordinator.Deps{Models: model.Catalog{}, Evaluator: central.New()})
	if err != nil {
		return nil, err
	}
	wctx, stop := context.WithCancel(ctx)
	c := &Cluster{Coordinator: coord, errs: make(chan error, len(workers)), stop: stop}
	// Workers start in waves, each once the one before is in the roster:
	// hundreds joining one gossip node at once time out.
	const wave = 64
	deadline := time.Now().Add(60*time.Second + time.Duration(len(workers))*100*time.Millisecond)
	for i, spec := range workers {
		if i > 0 && i%wave == 0 {
			if err := c.waitRoster(ctx, i, deadline); err != nil {
				return nil, err
			}
		}
		log := logger.With("node", spec.ID)
		tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": spec.Data}, log)
		cfg := tmpl
		cfg.ID, cfg.Labels, cfg.Logger = spec.ID, spec.Labels, log
		cfg.Join = []string{coord.GossipAddr()}
		if cfg.Profile == "" {
			cfg.Profile = "local"
		}
		w, err := worker.New(cfg, tr)
		if err != nil {
			tr.Close()
			c.Close()
			return nil, err
		}
		go func() {
			defer tr.Close()
			c.errs <- w.Run(wctx)
		}()
	}
	if err := c.waitRoster(ctx, len(workers), deadline); err != nil {
		return nil, err
	}
	return c, nil
}

// waitRoster waits until n workers are in the coordinator's roster; the
// cluster is closed if they are not by the deadline or a worker stops.
func (c *Cluster) waitRoster(ctx context.Context, n int, deadline time.Time) error {
	joined, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	for len(c.Coordinator.FSM().Workers()) < n {
		select {
		case <-joined.Done():
			got := len(c.Coordinator.FSM().Workers())
			c.Close()
			return fmt.Errorf("only %d of %d workers joined", got, n)
		case err := <-c.errs:
			c.Close()
			return fmt.Errorf("worker stopped: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// Errs reports workers that stopped (nil when one ended because the
// cluster is closing).
func (c *Cluster) Errs() <-chan error { return c.errs }

// Close stops the workers and the coordinator.
func (c *Cluster) Close() {
	c.stop()
	c.Coordinator.Close()
}
