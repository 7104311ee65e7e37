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
	for _, spec := range workers {
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
	joined, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for len(coord.FSM().Workers()) < len(workers) {
		select {
		case <-joined.Done():
			n := len(coord.FSM().Workers())
			c.Close()
			return nil, fmt.Errorf("only %d of %d workers joined", n, len(workers))
		case err := <-c.errs:
			c.Close()
			return nil, fmt.Errorf("worker stopped: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return c, nil
}

// Errs reports workers that stopped (nil when one ended because the
// cluster is closing).
func (c *Cluster) Errs() <-chan error { return c.errs }

// Close stops the workers and the coordinator.
func (c *Cluster) Close() {
	c.stop()
	c.Coordinator.Close()
}
