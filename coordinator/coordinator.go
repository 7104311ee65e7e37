// Package coordinator runs a fedtune coordinator: a Raft node (raft-wal log
// and stable store, file snapshots) whose FSM holds jobs, rounds, model
// versions and the worker roster; a content-addressed blob store; a gossip
// member; the leader-only scheduler; and the gRPC services Worker, Blob and
// Admin.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/dashboard"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// Clock tells the time; tests inject their own.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Config configures a coordinator. Zero values get the defaults noted.
type Config struct {
	NodeID     string   // unique name; default: the host name
	DataDir    string   // raft/, blobs/ live here (required)
	GRPCAddr   string   // gRPC listen address; default 127.0.0.1:7070
	RaftAddr   string   // Raft listen address; default 127.0.0.1:7071
	GossipAddr string   // gossip listen address; default 127.0.0.1:7946
	Join       []string // gossip addresses of nodes already in the cluster
	// Bootstrap makes this node a one-voter cluster when it has no Raft
	// state yet (the same as BootstrapExpect 1).
	Bootstrap bool
	// BootstrapExpect > 1 forms a cluster of that many voters as soon as
	// gossip shows exactly that many coordinators, none with Raft state (as
	// Consul servers do). Coordinators that come later are added by the
	// leader as non-voters and promoted once caught up.
	BootstrapExpect int
	// Profile selects Raft and gossip timings: "local" (one machine or a
	// fast LAN: new leader in well under a second), "lan" (default) or
	// "wan" (regional sites). The *Timeout fields override it.
	Profile            string
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// ServerGrace is how long a coordinator may be gone from gossip before
	// the leader removes it from the Raft configuration; default 10m.
	ServerGrace time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot; default 1024.
	SnapshotThreshold uint64
	// TrailingLogs is how many log entries a snapshot leaves behind for
	// slow followers; one further behind gets the snapshot (InstallSnapshot).
	// Default 1024.
	TrailingLogs uint64
	// WALSegmentBytes is the size of a Raft log segment file (default
	// raft-wal's 64 MiB). Compaction drops whole segments only.
	WALSegmentBytes int
	// KeepUpdateRounds is how many recent committed rounds keep their
	// update blobs (for verification); older ones are garbage-collected. Default 5.
	KeepUpdateRounds int
	// HTTPAddr, if set, serves Prometheus metrics on /metrics and the
	// read-only web dashboard on /.
	HTTPAddr string
	// Pprof also serves Go's profiles (net/http/pprof) under /debug/pprof/
	// on HTTPAddr: heap, goroutines, CPU. Off by default; they show the
	// program's internals to anyone who can reach the address.
	Pprof bool
	// GossipKeys, if any, encrypt gossip (gossip.Config.Keys): nodes
	// without them are not seen.
	GossipKeys [][]byte
	// TLS, if set, turns on mutual TLS: every gRPC service and the Raft
	// transport require a certificate of the cluster's CA, and each
	// caller's role and name come from it. Nil is insecure mode.
	TLS *pki.Node
	// RaftStreamLayer, if set, carries Raft traffic instead of TCP on
	// RaftAddr (tests use it to inject partitions).
	RaftStreamLayer raft.StreamLayer
	// MaxBlobBytes bounds a blob (model or update); default 1 GiB.
	MaxBlobBytes int64
	// SubmitRate and SubmitBurst bound each worker's update submissions
	// (token bucket, per second); default 2 per second, bursts of 10.
	// A worker sends one update per round, so only a faulty or hostile one
	// meets the limit.
	SubmitRate  float64
	SubmitBurst int
	// TickInterval is how often the scheduler looks at open rounds; default 100ms.
	TickInterval time.Duration
	// WorkerGrace is how long a worker may be gone from gossip before the
	// leader removes it from the roster; default 5m.
	WorkerGrace time.Duration
	Logger      *slog.Logger
}

func (c *Config) defaults() error {
	if c.DataDir == "" {
		return errors.New("coordinator: a data directory is required")
	}
	if c.NodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("coordinator: node id: %w", err)
		}
		c.NodeID = h
	}
	if err := gossip.CheckName(c.NodeID); err != nil {
		return fmt.Errorf("coordinator: id: %w", err)
	}
	if c.GRPCAddr == "" {
		c.GRPCAddr = "127.0.0.1:7070"
	}
	if c.RaftAddr == "" {
		c.RaftAddr = "127.0.0.1:7071"
	}
	if c.GossipAddr == "" {
		c.GossipAddr = "127.0.0.1:7946"
	}
	for _, n := range []struct {
		name string
		neg  bool
	}{
		{"max blob bytes", c.MaxBlobBytes < 0}, {"submit rate", c.SubmitRate < 0 || c.SubmitRate != c.SubmitRate}, {"submit burst", c.SubmitBurst < 0},
		{"tick interval", c.TickInterval < 0}, {"worker grace", c.WorkerGrace < 0}, {"server grace", c.ServerGrace < 0}, {"keep update rounds", c.KeepUpdateRounds < 0},
	} {
		if n.neg {
			return fmt.Errorf("coordinator: %s must not be negative (0: the default)", n.name)
		}
	}
	if c.MaxBlobBytes == 0 {
		c.MaxBlobBytes = 1 << 30
	}
	if c.SubmitRate <= 0 {
		c.SubmitRate = 2
	}
	if c.SubmitBurst <= 0 {
		c.SubmitBurst = 10
	}
	if c.TickInterval <= 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.WorkerGrace <= 0 {
		c.WorkerGrace = 5 * time.Minute
	}
	if c.ServerGrace <= 0 {
		c.ServerGrace = 10 * time.Minute
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 1024
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 1024
	}
	if c.KeepUpdateRounds <= 0 {
		c.KeepUpdateRounds = 5
	}
	if c.Bootstrap && c.BootstrapExpect == 0 {
		c.BootstrapExpect = 1
	}
	if _, ok := raftProfiles[c.Profile]; !ok {
		return fmt.Errorf("coordinator: profile %q: want local, lan or wan", c.Profile)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Coordinator is a running coordinator node.
type Coordinator struct {
	cfg      Config
	log      *slog.Logger
	clock    Clock
	fsm      *FSM
	raft     *raft.Raft
	wal      *raftwal.WAL
	walMark  *markedLog
	stable   *quiescingStable // the stable store's gate, closed before the WAL
	hasState bool             // Raft state existed at start
	trans    raft.Transport
	blobs    *BlobStore
	gossip   Membership
	grpc     *grpc.Server
	lis      net.Listener
	deps     Deps
	pool     *client.Pool // connections to other coordinators
	submits  *submitLimits
	metrics  *metrics
	http     *http.Server
	httpAddr string // where http listens ("" if off)

	layouts  sync.Map    // "model/lora-r<rank>" -> a LoRA job's adapter layout, read-only once stored
	frozen   frozenCache // LoRA jobs' frozen bases
	proofs   workerProofs
	polls    pollLimits
	verifier *peerVerifier

	unprovenMu     sync.Mutex
	unprovenLogged map[string]string // coordinator member -> last proof failure logged
	norms          struct {          // model hash -> L2 norm (the bound on updates to it)
		mu sync.Mutex
		by map[string]float64
	}

	mu           sync.Mutex
	stopLeader   context.CancelFunc
	leaderDone   chan struct{} // closed when the running leader loop has returned
	leaderLostAt time.Time     // when this node last saw no leader (for failover time)
	done         chan struct{}
	wg           sync.WaitGroup
}

// Limits of the gRPC server.
const (
	MaxGRPCConns      = 4096 // open connections; more wait to be accepted
	MaxStreamsPerConn = 128  // concurrent calls on one connection
	MaxPollsPerWorker = 4    // PollTask calls one worker may have waiting
)

// New starts a coordinator: opens its stores, starts Raft, gossip and gRPC.
func New(cfg Config, deps Deps) (*Coordinator, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := deps.check(); err != nil {
		return nil, err
	}
	deps.Models = &cachedModels{Models: deps.Models}
	c := &Coordinator{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), clock: deps.clock(), fsm: NewFSM(), done: make(chan struct{}), deps: deps, pool: client.NewPool(), metrics: newMetrics()}
	if cfg.TLS != nil {
		c.pool = client.NewPoolTLS(cfg.TLS.ClientTLS())
	}
	c.submits = &submitLimits{rate: rate.Limit(cfg.SubmitRate), burst: cfg.SubmitBurst}
	c.verifier = newPeerVerifier(cfg.TLS)
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	var err error
	if c.blobs = deps.Blobs; c.blobs == nil {
		if c.blobs, err = OpenBlobStore(filepath.Join(cfg.DataDir, "blobs")); err != nil {
			return nil, err
		}
	}
	if err := c.startRaft(); err != nil {
		return nil, err
	}
	if c.lis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("coordinator: gRPC listen: %w", err)
	}
	// Bounds against floods: open connections (idle ones without a
	// certificate once took 18,000 of 20,000 descriptors), the time a
	// connection has to finish its TLS handshake, streams per connection.
	grpcLis := netutil.LimitListener(c.lis, MaxGRPCConns)
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(int(min(cfg.MaxBlobBytes+(1<<20), 1<<31-1))), grpc.MaxSendMsgSize(64 << 20),
		grpc.UnaryInterceptor(c.unaryAuth), grpc.StreamInterceptor(c.streamAuth),
		grpc.ConnectionTimeout(5 * time.Second), grpc.MaxConcurrentStreams(MaxStreamsPerConn)}
	opts = append(opts, client.ServerKeepalive()...)
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS.ServerTLS())))
	}
	c.grpc = grpc.NewServer(opts...)
	rpcpb.RegisterWorkerServer(c.grpc, &workerService{c: c})
	rpcpb.RegisterBlobServer(c.grpc, &blobService{c: c})
	rpcpb.RegisterAdminServer(c.grpc, &adminService{c: c})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.grpc.Serve(grpcLis); err != nil {
			c.log.Error("gRPC server stopped", "err", err)
		}
	}()
	c.gossip, err = deps.startGossip(gossip.Config{
		Name:     cfg.NodeID,
		BindAddr: cfg.GossipAddr,
		Meta:     gossip.Meta{Role: gossip.RoleCoordinator, GRPC: c.lis.Addr().String(), Raft: string(c.trans.LocalAddr())},
		Profile:  cfg.Profile,
		Keys:     cfg.GossipKeys,
	})
	if err != nil {
		return nil, err
	}
	if err := c.gossip.Join(cfg.Join); err != nil {
		c.log.Warn("gossip join failed; trying again in the background", "err", err)
	}
	c.registerState()
	if cfg.HTTPAddr != "" {
		hl, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("coordinator: metrics listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(c.metrics.reg, promhttp.HandlerOpts{}))
		c.healthHandlers(mux)
		mux.Handle("/", dashboard.Handler(dashboardView{c}, c.done, c.metrics.dashboardStreams.Inc))
		if cfg.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		c.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		c.httpAddr = hl.Addr().String()
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := c.http.Serve(hl); err != nil && err != http.ErrServerClosed {
				c.log.Error("metrics server stopped", "err", err)
			}
		}()
	}
	c.wg.Add(6)
	go c.joinLoop()
	go c.observeLeadership()
	go c.watchLeadership()
	go c.bootstrapLoop()
	go c.blobLoop()
	go c.keyringLoop()
	ok = true
	c.log.Info("coordinator started", "grpc", c.GRPCAddr(), "raft", c.trans.LocalAddr(), "gossip", c.gossip.Addr(), "data_dir", cfg.DataDir)
	return c, nil
}

// GRPCAddr returns the address the gRPC services listen on.
func (c *Coordinator) GRPCAddr() string { return c.lis.Addr().String() }

// GossipAddr returns this node's gossip address.
func (c *Coordinator) GossipAddr() string { return c.gossip.Addr() }

// FSM returns the node's replicated state (read-only use).
func (c *Coordinator) FSM() *FSM { return c.fsm }

// BlobSize returns the stored size of a blob.
func (c *Coordinator) BlobSize(hash string) (int64, error) { return c.blobs.Size(hash) }

// IsLeader reports whether this node is the Raft leader now.
func (c *Coordinator) IsLeader() bool { return c.raft.State() == raft.Leader }

// WaitLeader waits until this node leads or ctx ends.
func (c *Coordinator) WaitLeader(ctx context.Context) error {
	for !c.IsLeader() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for leadership: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// leaderGRPC returns the gRPC address of the current leader, from gossip
// meta, else from the addresses the leader recorded (recordServer), or ""
// when unknown.
func (c *Coordinator) leaderGRPC() string {
	addr, id := c.raft.LeaderWithID()
	if addr == "" {
		return ""
	}
	if addr == c.trans.LocalAddr() {
		return c.GRPCAddr()
	}
	return c.grpcAddrs()[string(id)]
}

// grpcAddrs maps coordinators' ids to their gRPC addresses: those gossip
// shows, else those recorded in the replicated state.
func (c *Coordinator) grpcAddrs() map[string]string {
	out := map[string]string{}
	for id, s := range c.fsm.Servers() {
		out[id] = s.GrpcAddr
	}
	for _, m := range c.gossip.WithRole(gossip.RoleCoordinator) {
		out[m.Name] = m.Meta.GRPC
	}
	return out
}

// recordServer writes a coordinator's addresses into the replicated state
// unless they are there already (leader only).
func (c *Coordinator) recordServer(a *pb.ServerAddrs) error {
	if old, ok := c.fsm.Servers()[a.Id]; ok && old.RaftAddr == a.RaftAddr && old.GrpcAddr == a.GrpcAddr {
		return nil
	}
	return c.apply(pb.CommandType_COMMAND_TYPE_SERVER_ADDRS, a)
}

// apply commits one command through Raft and returns the FSM's verdict.
func (c *Coordinator) apply(t pb.CommandType, msg proto.Message) error {
	b, err := EncodeCommand(t, msg, c.clock.Now())
	if err != nil {
		return err
	}
	f := c.raft.Apply(b, 10*time.Second)
	if err := f.Error(); err != nil {
		return fmt.Errorf("raft apply %s: %w", t, err)
	}
	if err, ok := f.Response().(error); ok {
		return err
	}
	return nil
}

// watchLeadership runs the leader loop while this node leads.
func (c *Coordinator) watchLeadership() {
	defer c.wg.Done()
	ch := c.raft.LeaderCh()
	for {
		select {
		case <-c.done:
			c.stepDown()
			return
		case leader := <-ch:
			c.metrics.isLeader.Set(map[bool]float64{true: 1}[leader])
			if leader {
				c.stepDown() // the previous loop has returned before a new one starts
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				c.mu.Lock()
				c.stopLeader, c.leaderDone = cancel, done
				c.mu.Unlock()
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					defer close(done)
					c.leaderLoop(ctx)
				}()
			} else {
				c.stepDown()
			}
		}
	}
}

// stepDown stops the leader loop, if one runs, and waits until it has
// returned (as Consul's monitorLeadership does), so that two loops of one
// node never overlap when leadership is lost and won again quickly.
func (c *Coordinator) stepDown() {
	c.mu.Lock()
	stop, done := c.stopLeader, c.leaderDone
	c.stopLeader, c.leaderDone = nil, nil
	c.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// Close stops the node: gRPC, the leader loop, gossip (leaving the pool
// gracefully), Raft, then the log.
func (c *Coordinator) Close() error { return c.stop(true) }

func (c *Coordinator) stop(graceful bool) error {
	select {
	case <-c.done:
		return nil
	default:
		close(c.done)
	}
	if c.grpc != nil {
		c.grpc.Stop()
	}
	if c.http != nil {
		_ = c.http.Close()
	}
	if c.gossip != nil {
		if graceful {
			_ = c.gossip.Leave(time.Second)
		} else {
			_ = c.gossip.Shutdown()
		}
	}
	if c.raft != nil {
		if c.trans != nil {
			c.trans.SetHeartbeatHandler(nil) // no new heartbeats on the fast path (quiescingStable)
		}
		_ = c.raft.Shutdown().Error()
	}
	c.wg.Wait()
	if cl, ok := c.trans.(interface{ Close() error }); ok && c.trans != nil {
		_ = cl.Close()
	}
	if c.stable != nil {
		c.stable.close()
	}
	if c.walMark != nil {
		_ = c.walMark.Close()
	}
	if c.wal != nil {
		_ = c.wal.Close()
	}

	c.pool.Close()
	return nil
}
