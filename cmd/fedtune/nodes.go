package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/central"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/worker"
)

func coordinatorCommand() *cli.Command {
	return &cli.Command{
		Name:  "coordinator",
		Usage: "run a coordinator node (Raft-replicated state, scheduler, gRPC services)",
		Description: `Starts a coordinator. The first coordinator of a cluster bootstraps a
one-node Raft cluster in --data-dir; restarted with the same --data-dir it
recovers every committed round and resumes open jobs.

Flags may also come from a YAML file (--config), keys named as the flags.`,
		Before: applyConfig,
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "id", Value: hostname(), DefaultText: "this host's name", Usage: "unique node name", EnvVars: []string{"FEDTUNE_ID"}},
			&cli.StringFlag{Name: "data-dir", Value: "fedtune-data", Usage: "directory for the Raft log, snapshots and blobs", EnvVars: []string{"FEDTUNE_DATA_DIR"}},
			&cli.StringFlag{Name: "grpc-addr", Value: "127.0.0.1:7070", Usage: "gRPC listen address (workers and the CLI connect here)", EnvVars: []string{"FEDTUNE_GRPC_ADDR"}},
			&cli.StringFlag{Name: "raft-addr", Value: "127.0.0.1:7071", Usage: "Raft listen address", EnvVars: []string{"FEDTUNE_RAFT_ADDR"}},
			&cli.StringFlag{Name: "gossip-addr", Value: "127.0.0.1:7946", Usage: "gossip listen address", EnvVars: []string{"FEDTUNE_GOSSIP_ADDR"}},
			&cli.StringSliceFlag{Name: "join", Usage: "gossip address of a node already in the cluster (repeatable)", EnvVars: []string{"FEDTUNE_JOIN"}},
			&cli.IntFlag{Name: "bootstrap-expect", Value: 1, Usage: "form the Raft cluster once this many coordinators are seen in gossip (1: a one-node cluster; 3 or 5 for fault tolerance)", EnvVars: []string{"FEDTUNE_BOOTSTRAP_EXPECT"}},
			&cli.StringFlag{Name: "profile", Value: "lan", Usage: "Raft and gossip timings: local (one machine), lan or wan (regional sites)", EnvVars: []string{"FEDTUNE_PROFILE"}},
			&cli.BoolFlag{Name: "fast", Usage: "shorthand for --profile local", EnvVars: []string{"FEDTUNE_FAST"}},
			&cli.DurationFlag{Name: "raft-heartbeat-timeout", Usage: "override the profile's Raft heartbeat timeout", EnvVars: []string{"FEDTUNE_RAFT_HEARTBEAT_TIMEOUT"}},
			&cli.DurationFlag{Name: "raft-election-timeout", Usage: "override the profile's Raft election timeout", EnvVars: []string{"FEDTUNE_RAFT_ELECTION_TIMEOUT"}},
			&cli.DurationFlag{Name: "raft-lease-timeout", Usage: "override the profile's leader lease (must be shorter than the heartbeat timeout)", EnvVars: []string{"FEDTUNE_RAFT_LEASE_TIMEOUT"}},
			&cli.DurationFlag{Name: "server-grace", Value: 10 * time.Minute, Usage: "how long a coordinator may be gone from gossip before it leaves the Raft configuration", EnvVars: []string{"FEDTUNE_SERVER_GRACE"}},
			&cli.Uint64Flag{Name: "snapshot-threshold", Value: 1024, Usage: "log entries between Raft snapshots", EnvVars: []string{"FEDTUNE_SNAPSHOT_THRESHOLD"}},
			&cli.StringFlag{Name: "http-addr", Value: "127.0.0.1:7072", Usage: "HTTP address for /metrics and the web dashboard at / (empty: off)", EnvVars: []string{"FEDTUNE_HTTP_ADDR"}},
			&cli.BoolFlag{Name: "pprof", Usage: "also serve Go's profiles (heap, goroutines, CPU) under /debug/pprof/ on --http-addr; for diagnosis, not for an address others reach", EnvVars: []string{"FEDTUNE_PPROF"}},
			&cli.Int64Flag{Name: "max-blob-bytes", Value: 1 << 30, Usage: "largest model or update accepted, in bytes", EnvVars: []string{"FEDTUNE_MAX_BLOB_BYTES"}},
			&cli.StringFlag{Name: "gossip-key", Usage: "base64 keys encrypting gossip, comma-separated, the first used to encrypt (fedtune keyring generate); nodes without them are not seen", EnvVars: []string{"FEDTUNE_GOSSIP_KEY"}},
			&cli.Float64Flag{Name: "submit-rate", Value: 2, Usage: "updates per second a worker may submit (token bucket; one per round is normal)", EnvVars: []string{"FEDTUNE_SUBMIT_RATE"}},
			&cli.IntFlag{Name: "submit-burst", Value: 10, Usage: "burst of updates a worker may submit at once", EnvVars: []string{"FEDTUNE_SUBMIT_BURST"}},
			&cli.DurationFlag{Name: "worker-grace", Value: 5 * time.Minute, Usage: "how long a worker may be gone from gossip before it leaves the roster", EnvVars: []string{"FEDTUNE_WORKER_GRACE"}},
		},
		Action: func(c *cli.Context) error {
			base, err := logger(c, os.Stderr)
			if err != nil {
				return err
			}
			log := base.With("node", c.String("id")) // the coordinator adds its node to its own lines
			tlsNode, keys, err := nodeSecurity(c, log)
			if err != nil {
				return err
			}
			co, err := coordinator.New(coordinator.Config{
				NodeID: c.String("id"), DataDir: c.String("data-dir"), GRPCAddr: c.String("grpc-addr"), RaftAddr: c.String("raft-addr"),
				GossipAddr: c.String("gossip-addr"), Join: c.StringSlice("join"), BootstrapExpect: c.Int("bootstrap-expect"), Profile: profile(c),
				HeartbeatTimeout: c.Duration("raft-heartbeat-timeout"), ElectionTimeout: c.Duration("raft-election-timeout"), LeaderLeaseTimeout: c.Duration("raft-lease-timeout"),
				ServerGrace: c.Duration("server-grace"), SnapshotThreshold: c.Uint64("snapshot-threshold"), HTTPAddr: c.String("http-addr"), Pprof: c.Bool("pprof"),
				MaxBlobBytes: c.Int64("max-blob-bytes"), WorkerGrace: c.Duration("worker-grace"), TLS: tlsNode, GossipKeys: keys, SubmitRate: c.Float64("submit-rate"), SubmitBurst: c.Int("submit-burst"), Logger: base,
			}, coordinator.Deps{Models: model.Catalog{}, Evaluator: central.New()})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "coordinator %s: grpc=%s gossip=%s data-dir=%s\n", c.String("id"), co.GRPCAddr(), co.GossipAddr(), c.String("data-dir"))
			<-c.Context.Done()
			log.Info("shutting down")
			return co.Close()
		},
	}
}

func workerCommand() *cli.Command {
	return &cli.Command{
		Name:  "worker",
		Usage: "run a worker: join by gossip, train on local data, submit updates",
		Description: `Starts a worker that joins the cluster through any node's gossip address,
trains the rounds it is selected for on its own data, and submits updates.

Local data: --dataset names the data set; --partition, --num-partitions and
--partition-index pick this worker's share of it, so several workers on one
machine can stand in for sites holding different data.

Flags may also come from a YAML file (--config), keys named as the flags.`,
		Before: applyConfig,
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "id", Value: hostname() + "-worker", DefaultText: "(host name)-worker", Usage: "unique worker name", EnvVars: []string{"FEDTUNE_ID"}},
			&cli.StringSliceFlag{Name: "join", Value: cli.NewStringSlice("127.0.0.1:7946"), Usage: "gossip address of any cluster node (repeatable)", EnvVars: []string{"FEDTUNE_JOIN"}},
			&cli.StringFlag{Name: "gossip-addr", Value: "127.0.0.1:0", Usage: "gossip listen address (port 0: any free port)", EnvVars: []string{"FEDTUNE_GOSSIP_ADDR"}},
			&cli.StringSliceFlag{Name: "label", Usage: "label advertised to the cluster, key=value (repeatable), e.g. region=eu", EnvVars: []string{"FEDTUNE_LABELS"}},
			&cli.StringFlag{Name: "dataset", Value: "mnist", Usage: "local data set", EnvVars: []string{"FEDTUNE_DATASET"}},
			&cli.StringFlag{Name: "mnist-dir", Usage: "read MNIST idx .gz files from this directory instead of the embedded copy", EnvVars: []string{"FEDTUNE_MNIST_DIR"}},
			&cli.StringFlag{Name: "partition", Value: "dirichlet", Usage: "how the data set is split among partitions: iid, shards or dirichlet", EnvVars: []string{"FEDTUNE_PARTITION"}},
			&cli.IntFlag{Name: "num-partitions", Value: 1, Usage: "number of partitions the data set is split into", EnvVars: []string{"FEDTUNE_NUM_PARTITIONS"}},
			&cli.IntFlag{Name: "partition-index", Value: 0, Usage: "which partition (0-based) this worker holds", EnvVars: []string{"FEDTUNE_PARTITION_INDEX"}},
			&cli.Float64Flag{Name: "alpha", Value: 1.0, Usage: "Dirichlet concentration for --partition dirichlet (smaller: more skewed)", EnvVars: []string{"FEDTUNE_ALPHA"}},
			&cli.IntFlag{Name: "shards", Value: 2, Usage: "label shards per partition for --partition shards", EnvVars: []string{"FEDTUNE_SHARDS"}},
			&cli.Uint64Flag{Name: "partition-seed", Value: 1, Usage: "seed of the split (all workers must use the same)", EnvVars: []string{"FEDTUNE_PARTITION_SEED"}},
			&cli.IntFlag{Name: "max-examples", Usage: "use at most this many local examples (0: all)", EnvVars: []string{"FEDTUNE_MAX_EXAMPLES"}},
			&cli.IntFlag{Name: "max-bytes", Value: 4 << 20, Usage: "text data sets (man-<lang>, fortunes-<lang>): cap on the text read before it is shared among partitions", EnvVars: []string{"FEDTUNE_MAX_BYTES"}},
			&cli.Float64Flag{Name: "held-out", Value: 0.1, Usage: "text data sets: share of this worker's documents kept out of training for federated evaluation", EnvVars: []string{"FEDTUNE_HELD_OUT"}},
			&cli.DurationFlag{Name: "join-timeout", Value: 30 * time.Second, Usage: "give up if no node answers within this time", EnvVars: []string{"FEDTUNE_JOIN_TIMEOUT"}},
			&cli.DurationFlag{Name: "poll-wait", Value: 10 * time.Second, Usage: "how long one task poll may wait on the coordinator", EnvVars: []string{"FEDTUNE_POLL_WAIT"}},
			&cli.StringFlag{Name: "profile", Value: "lan", Usage: "gossip timings: local (one machine), lan or wan", EnvVars: []string{"FEDTUNE_PROFILE"}},
			&cli.BoolFlag{Name: "fast", Usage: "shorthand for --profile local", EnvVars: []string{"FEDTUNE_FAST"}},
			&cli.StringFlag{Name: "state-dir", Usage: "directory for state kept across restarts (error-feedback residuals); one per worker, locked while it runs", DefaultText: "fedtune-worker-<id>", EnvVars: []string{"FEDTUNE_STATE_DIR"}},
			&cli.BoolFlag{Name: "no-error-feedback", Usage: "send lossy updates without error feedback", EnvVars: []string{"FEDTUNE_NO_ERROR_FEEDBACK"}},
			&cli.StringFlag{Name: "gossip-key", Usage: "base64 keys encrypting gossip, comma-separated, the first used to encrypt (fedtune keyring generate); nodes without them are not seen", EnvVars: []string{"FEDTUNE_GOSSIP_KEY"}},
			&cli.StringFlag{Name: "device", Value: "auto", Usage: "auto (an NVIDIA GPU if nvidia-smi finds one, else the CPU), cpu or gpu; advertised as labels device=, gpu=, gpu_free_mb=", EnvVars: []string{"FEDTUNE_DEVICE"}},
			&cli.StringFlag{Name: "http-addr", Usage: "HTTP address for this worker's /metrics (training samples/s, tasks, updates, bytes); empty: off", EnvVars: []string{"FEDTUNE_WORKER_HTTP_ADDR"}},
			&cli.DurationFlag{Name: "probe-interval", Value: time.Minute, Usage: "how often the device's labels (GPU free memory, idle) are probed again, between tasks", EnvVars: []string{"FEDTUNE_PROBE_INTERVAL"}},
			&cli.StringFlag{Name: "trainer", Value: "gorgonia", Usage: "gorgonia (built in), or exec: run --trainer-cmd for each task (see examples/external-trainer)", EnvVars: []string{"FEDTUNE_TRAINER"}},
			&cli.StringFlag{Name: "trainer-cmd", Usage: "external trainer command (sh -c) for --trainer exec, e.g. \"python3 train.py\"", EnvVars: []string{"FEDTUNE_TRAINER_CMD"}},
			&cli.StringFlag{Name: "trainer-dir", Usage: "where external-trainer task directories are made (default: the system temp dir)", EnvVars: []string{"FEDTUNE_TRAINER_DIR"}},
			&cli.DurationFlag{Name: "trainer-timeout", Usage: "kill an external trainer after this long (besides the round's deadline; 0: none)", EnvVars: []string{"FEDTUNE_TRAINER_TIMEOUT"}},
			&cli.DurationFlag{Name: "submit-delay", Usage: "wait this long before sending each update (simulates a slow uplink)", EnvVars: []string{"FEDTUNE_SUBMIT_DELAY"}},
		},
		Subcommands: []*cli.Command{{
			Name:      "revoke",
			Usage:     "bar a worker cluster-wide (committed to the log): it leaves the roster and every coordinator refuses it",
			ArgsUsage: "NAME",
			Flags: []cli.Flag{
				coordinatorFlag(),
				&cli.StringFlag{Name: "reason", Value: "revoked by an administrator", Usage: "why, recorded with the revocation", EnvVars: []string{"FEDTUNE_REVOKE_REASON"}},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("worker revoke: give the worker's name")
				}
				pool, conn, err := dialLeader(c)
				if err != nil {
					return err
				}
				defer pool.Close()
				if _, err := rpcpb.NewAdminClient(conn).RevokeWorker(c.Context, &pb.RevokeWorkerRequest{Name: c.Args().First(), Reason: c.String("reason")}); err != nil {
					return fmt.Errorf("revoke %s: %w", c.Args().First(), err)
				}
				fmt.Fprintf(c.App.Writer, "worker %s revoked on every coordinator\n", c.Args().First())
				return nil
			},
		}},
		Action: func(c *cli.Context) error {
			base, err := logger(c, os.Stderr)
			if err != nil {
				return err
			}
			log := base.With("node", c.String("id")) // the worker adds its node to its own lines
			labels, err := parseLabels("label", c.StringSlice("label"))
			if err != nil {
				return err
			}
			dev, err := worker.DetectDevice(c.Context, c.String("device"))
			if err != nil {
				return err
			}
			log.Info("device", "kind", dev.Kind, "gpu", dev.Name, "free_mb", dev.FreeMB, "util", dev.Util)
			// The device's labels are probed again between tasks (free
			// memory, idle); an explicit --label wins over them.
			probe := func(ctx context.Context) (map[string]string, error) {
				d, err := worker.DetectDevice(ctx, dev.Kind)
				return d.Labels(), err
			}
			var tr interface {
				worker.Trainer
				Close()
			}
			var local *dataset.Examples
			if name := c.String("dataset"); dataset.IsText(name) {
				text, err := localText(c)
				if err != nil {
					return err
				}
				log.Info("local text", "dataset", name, "documents", len(text.Train), "held_out", len(text.HeldOut), "partition", fmt.Sprintf("%d/%d", c.Int("partition-index"), c.Int("num-partitions")))
				if c.String("trainer") != "gorgonia" {
					return fmt.Errorf("--dataset %s: text data sets are trained by the gorgonia trainer", name)
				}
				g := worker.NewGorgoniaTrainer(nil, log)
				g.AddText(name, text)
				tr = g
			} else if local, err = localData(c); err != nil {
				return err
			} else {
				log.Info("local data", "dataset", name, "examples", local.Len(), "partition", fmt.Sprintf("%d/%d", c.Int("partition-index"), c.Int("num-partitions")))
			}
			switch c.String("trainer") {
			case "gorgonia":
				if tr == nil {
					tr = worker.NewGorgoniaTrainer(map[string]*dataset.Examples{c.String("dataset"): local}, log)
				}
			case "exec":
				if c.String("trainer-cmd") == "" {
					return fmt.Errorf("--trainer exec needs --trainer-cmd")
				}
				tr = &worker.ExecTrainer{Cmd: c.String("trainer-cmd"), Dir: c.String("trainer-dir"), Timeout: c.Duration("trainer-timeout"),
					Data: map[string]*dataset.Examples{c.String("dataset"): local}, Log: log}
			default:
				return fmt.Errorf("--trainer %q: want gorgonia or exec", c.String("trainer"))
			}
			defer tr.Close()
			tlsNode, keys, err := nodeSecurity(c, log)
			if err != nil {
				return err
			}
			w, err := worker.New(worker.Config{ID: c.String("id"), TLS: tlsNode, GossipKeys: keys, Join: c.StringSlice("join"), GossipAddr: c.String("gossip-addr"), Labels: labels, Probe: probe, ProbeInterval: c.Duration("probe-interval"),
				JoinTimeout: c.Duration("join-timeout"), PollWait: c.Duration("poll-wait"), Profile: profile(c), StateDir: cmp.Or(c.String("state-dir"), "fedtune-worker-"+c.String("id")), NoErrorFeedback: c.Bool("no-error-feedback"), SubmitDelay: c.Duration("submit-delay"), Logger: base}, tr)
			if err != nil {
				return err
			}
			if addr := c.String("http-addr"); addr != "" {
				stop, err := serveMetrics(addr, w.Registry(), func() error { return w.Ready(time.Now()) }, log)
				if err != nil {
					return err
				}
				defer stop()
			}
			return w.Run(c.Context)
		},
	}
}

// serveMetrics serves reg on addr's /metrics, /healthz (200 while the
// process serves) and /readyz (200 when ready says nil, else 503 with the
// reason) until stop is called.
func serveMetrics(addr string, reg *prometheus.Registry, ready func() error, log *slog.Logger) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "coordinator: FAIL", err)
			return
		}
		fmt.Fprintln(w, "coordinator: ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && err != http.ErrServerClosed {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics", "addr", "http://"+l.Addr().String()+"/metrics")
	return func() { srv.Close() }, nil
}

// nodeSecurity loads a node's certificate (named by its --id) from
// --cert-dir — or, under --insecure, none, with a warning — and its gossip
// keys.
func nodeSecurity(c *cli.Context, log *slog.Logger) (*pki.Node, [][]byte, error) {
	keys, err := gossip.ParseKeys(c.String("gossip-key"))
	if err != nil {
		return nil, nil, err
	}
	if c.Bool("insecure") {
		log.Warn("INSECURE: running without TLS; any process that reaches this node can read models and submit updates (--insecure is for local demos)")
		return nil, keys, nil
	}
	n, err := pki.Load(c.String("cert-dir"), c.String("id"))
	if err != nil {
		return nil, nil, fmt.Errorf("%w (or pass --insecure for a local demo without TLS)", err)
	}
	if len(keys) == 0 {
		log.Warn("TLS is on but gossip is not encrypted: anyone who reaches the gossip port can read the membership (names, addresses, labels) and join it; give every node the same --gossip-key (fedtune keyring generate)")
	}
	return n, keys, nil
}

func localData(c *cli.Context) (*dataset.Examples, error) {
	name := c.String("dataset")
	var all *dataset.Examples
	var err error
	if dir := c.String("mnist-dir"); dir != "" && name == "mnist" {
		all, err = dataset.MNISTDir(dir, dataset.Train)
	} else {
		all, err = dataset.Load(name, dataset.Train)
	}
	if err != nil {
		return nil, err
	}
	n, i := c.Int("num-partitions"), c.Int("partition-index")
	if n < 1 || i < 0 || i >= n {
		return nil, fmt.Errorf("--partition-index %d must be in [0, --num-partitions %d)", i, n)
	}
	p := dataset.Partition{Kind: strings.ToLower(c.String("partition")), Alpha: c.Float64("alpha"), Shards: c.Int("shards"), Seed: c.Uint64("partition-seed")}
	parts, err := p.Split(all.Y, all.Classes, n)
	if err != nil {
		return nil, err
	}
	idx := parts[i]
	if m := c.Int("max-examples"); m > 0 && len(idx) > m {
		idx = idx[:m]
	}
	if len(idx) == 0 {
		return nil, fmt.Errorf("partition %d of %d is empty", i, n)
	}
	return all.Subset(idx), nil
}

// localText reads this worker's share of a text data set and splits off
// its held-out part.
func localText(c *cli.Context) (worker.Text, error) {
	train, held, err := dataset.TextShare(c.String("dataset"), c.Int("max-bytes"), c.Int("num-partitions"), c.Int("partition-index"),
		c.Float64("held-out"), c.Uint64("partition-seed"))
	if err != nil {
		return worker.Text{}, fmt.Errorf("--dataset %s: %w", c.String("dataset"), err)
	}
	return worker.Text{Train: train, HeldOut: held}, nil
}

// profile returns the timing profile flags ask for.
func profile(c *cli.Context) string {
	if c.Bool("fast") {
		return "local"
	}
	return c.String("profile")
}
