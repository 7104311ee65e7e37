// Package worker runs a fedtune worker: it joins the cluster by gossip,
// finds the coordinators from gossip, long-polls the leader for tasks,
// fetches the round's base model by hash, trains on its own data through a
// Trainer, and submits the encoded delta, resubmitting to whichever
// coordinator leads until the update is accepted.
package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
)

// Result is what a Trainer returns for one task.
type Result struct {
	Delta   tensor.Set         // local - base
	Samples uint64             // examples trained on (the FedAvg weight)
	Metrics map[string]float64 // e.g. "loss", "seconds"
}

// Input is what a task trains from.
type Input struct {
	// Base is the round's model version; the update is the trained
	// version minus Base. In a LoRA job (task.Lora set) it holds the
	// adapters.
	Base tensor.Set
	// Frozen is a LoRA job's frozen base model, which the adapters apply
	// to and which training leaves unchanged; empty for other jobs.
	Frozen tensor.Set
	// Tokenizer is a text job's tokenizer.json; empty for other jobs.
	Tokenizer []byte
}

// Trainer fine-tunes a model on the worker's own data for one task.
type Trainer interface {
	Train(ctx context.Context, in Input, task *pb.Task) (Result, error)
}

// Config configures a worker. Zero values get the defaults noted.
type Config struct {
	ID         string            // unique worker name (required)
	Join       []string          // gossip addresses of any cluster nodes (required)
	GossipAddr string            // gossip listen address; default 127.0.0.1:0
	Labels     map[string]string // advertised in gossip, matched by job selectors
	// JoinTimeout is how long Run keeps trying to reach a node at start
	// before it gives up with an error; default 30s.
	JoinTimeout time.Duration
	// PollWait is how long one PollTask may be held; default 10s.
	PollWait time.Duration
	// Profile is the gossip timing profile: local, lan (default) or wan.
	Profile string
	// StateDir, if set, keeps error-feedback residuals across restarts
	// (one safetensors file per job).
	StateDir string
	// NoErrorFeedback sends lossy updates without error feedback (for
	// experiments measuring what error feedback buys).
	NoErrorFeedback bool
	// Crash makes Run exit without telling the gossip pool it leaves, as a
	// killed process would (tests of failure detection).
	Crash bool
	// SubmitDelay waits this long before sending each new update: it
	// simulates a slow uplink, for tests and experiments.
	SubmitDelay time.Duration
	// SecAggMasked, if set, is called in a secure-aggregation round with
	// this worker's update (as trained, and in fixed point) and its masked
	// form just before the masked form is sent; false drops the worker out
	// of the round there, as a crash would (tests of dropouts, and of what
	// the coordinators hold).
	SecAggMasked func(job string, round uint32, delta []float32, plain, masked []uint32) bool
	// GossipKeys encrypt gossip; they must match the cluster's.
	GossipKeys [][]byte
	// Probe, if set, is asked between tasks, at most every ProbeInterval
	// (default 1 minute), for labels that change at run time (a GPU's
	// free memory and idle=true|false); they are merged over Labels
	// (Labels win) and gossiped when they change.
	Probe         func(context.Context) (map[string]string, error)
	ProbeInterval time.Duration
	// TLS, if set, is the worker's certificate for mutual TLS with the
	// coordinators; its name must be ID. Nil is insecure mode.
	TLS    *pki.Node
	Logger *slog.Logger
}

// Worker is a worker node.
type Worker struct {
	cfg     Config
	trainer Trainer
	log     *slog.Logger
	gossip  *gossip.Node
	pool    *client.Pool

	target string // coordinator gRPC address to talk to next
	// lastContact is when a coordinator last answered a poll (Unix ns),
	// read by Ready from other goroutines.
	lastContact atomic.Int64
	known       []string                // coordinator gRPC addresses seen in gossip
	pending     *pb.SubmitUpdateRequest // update not yet accepted
	done        []string                // round attempts accepted from this worker (recent; protocol.AttemptKey)
	models      map[string]tensor.Set
	// modelOrder is models' keys, least recently used first.
	modelOrder []string
	// residuals are the error-feedback residuals of lossy codecs, per job.
	residuals map[string]tensor.Set
	// nextResidual is the residual the pending update leaves behind: it
	// replaces the job's residual only once a leader accepts the update
	// (a refused update is dropped whole, and its residual with it).
	nextResidual *residual
	keys         []string          // gossip keyring last applied from a coordinator
	labels       map[string]string // advertised now
	probed       time.Time
	metrics      *metrics
}

// ErrNoCluster is returned by Run when no node could be reached.
var ErrNoCluster = errors.New("cannot reach any node of the cluster")

// New returns a worker; Run starts it.
func New(cfg Config, trainer Trainer) (*Worker, error) {
	if cfg.ID == "" {
		return nil, errors.New("worker: an id is required")
	}
	if err := gossip.CheckName(cfg.ID); err != nil {
		return nil, fmt.Errorf("worker: id: %w", err)
	}
	if err := gossip.CheckLabels(cfg.Labels); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if len(cfg.Join) == 0 {
		return nil, errors.New("worker: give at least one node's gossip address to join")
	}
	if cfg.GossipAddr == "" {
		cfg.GossipAddr = "127.0.0.1:0"
	}
	if cfg.JoinTimeout <= 0 {
		cfg.JoinTimeout = 30 * time.Second
	}
	if cfg.PollWait <= 0 {
		cfg.PollWait = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	pool := client.NewPool()
	if cfg.TLS != nil {
		if cfg.TLS.ID.Role != pki.RoleWorker || cfg.TLS.ID.Name != cfg.ID {
			return nil, fmt.Errorf("worker: certificate is for %s %q, this worker is %q", cfg.TLS.ID.Role, cfg.TLS.ID.Name, cfg.ID)
		}
		pool = client.NewPoolTLS(cfg.TLS.ClientTLS())
	}
	return &Worker{cfg: cfg, trainer: trainer, log: cfg.Logger.With("node", cfg.ID), pool: pool, models: map[string]tensor.Set{}, residuals: map[string]tensor.Set{}, metrics: newMetrics()}, nil
}

// Run joins the cluster and works until ctx ends. It returns ErrNoCluster
// (wrapped) if no node answered within JoinTimeout.
func (w *Worker) Run(ctx context.Context) error {
	w.labels = w.cfg.Labels
	if w.cfg.Probe != nil {
		if l, err := w.probeLabels(ctx); err == nil {
			w.labels = l
		} else {
			w.log.Warn("probe failed", "err", err)
		}
	}
	w.probed = time.Now()
	if w.cfg.StateDir != "" {
		lock, err := lockStateDir(w.cfg.StateDir)
		if err != nil {
			return fmt.Errorf("worker %s: %w", w.cfg.ID, err)
		}
		defer lock.Close()
	}
	g, err := gossip.Start(gossip.Config{Name: w.cfg.ID, BindAddr: w.cfg.GossipAddr, Profile: w.cfg.Profile, Keys: w.cfg.GossipKeys,
		Meta: gossip.Meta{Role: gossip.RoleWorker, Labels: w.labels}})
	if err != nil {
		return fmt.Errorf("worker %s: %w", w.cfg.ID, err)
	}
	w.gossip = g
	defer func() {
		if w.cfg.Crash {
			_ = g.Shutdown()
		} else {
			_ = g.Leave(time.Second)
		}
		w.pool.Close()
	}()
	if err := w.joinCluster(ctx); err != nil {
		return err
	}
	w.log.Info("worker joined the cluster", "coordinators", w.known, "labels", w.labels)
	backoff := newBackoff()
	for ctx.Err() == nil {
		w.probe(ctx)
		if err := w.once(ctx); err != nil {
			if ctx.Err() != nil {
				break
			}
			w.log.Warn("retrying", "err", err, "after", backoff.peek())
			w.rotate()
			select {
			case <-ctx.Done():
			case <-time.After(backoff.next()):
			}
			continue
		}
		backoff.reset()
	}
	return nil
}

// joinCluster joins gossip and waits until a coordinator is seen.
func (w *Worker) joinCluster(ctx context.Context) error {
	deadline := time.Now().Add(w.cfg.JoinTimeout)
	var last error
	for {
		if err := w.gossip.Join(w.cfg.Join); err != nil {
			last = err
		} else if w.refreshCoordinators() {
			return nil
		} else {
			last = errors.New("joined gossip but no coordinator is alive in it")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker %s: %w at %v after %v: %v", w.cfg.ID, ErrNoCluster, w.cfg.Join, w.cfg.JoinTimeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// refreshCoordinators reads coordinator addresses from gossip. It keeps the
// last known list when gossip shows none (a coordinator restarting).
func (w *Worker) refreshCoordinators() bool {
	addrs := w.liveCoordinators()
	if len(addrs) == 0 {
		return false
	}
	w.known = addrs
	if w.target == "" {
		w.target = addrs[0]
	}
	return true
}

// rotate moves to the next known coordinator after a failure. It also
// rejoins gossip through the seed addresses: a coordinator that restarted
// has an empty member list, and this makes it see the worker at once
// rather than at the next periodic state exchange.
func (w *Worker) rotate() {
	if err := w.gossip.Join(w.cfg.Join); err != nil {
		w.log.Debug("gossip rejoin failed", "err", err)
	}
	w.refreshCoordinators()
	if len(w.known) == 0 {
		return
	}
	i := sort.SearchStrings(w.known, w.target)
	w.target = w.known[(i+1)%len(w.known)]
}

// follow switches to the leader a follower named, or, when it knew none
// (an election, or it is cut off), returns an error so that Run backs off
// and tries the next coordinator.
func (w *Worker) follow(leader string) error {
	if leader == "" || leader == w.target {
		return fmt.Errorf("%s does not lead and knows no leader", w.target)
	}
	w.log.Info("following leader", "leader", leader)
	w.target = leader
	return nil
}

// followKeyring applies the cluster's gossip keyring when a coordinator
// sends a new one (a rotation).
func (w *Worker) followKeyring(keys []string) {
	if len(keys) == 0 || slices.Equal(keys, w.keys) {
		return
	}
	if err := w.gossip.SetKeys(keys); err != nil {
		w.log.Error("gossip keyring not applied", "err", err)
		return
	}
	w.keys = keys
	w.log.Info("gossip keyring updated", "keys", len(keys))
}

// once does one step: resubmit a pending update, or poll for and run a task.
func (w *Worker) once(ctx context.Context) error {
	if w.pending != nil {
		return w.submit(ctx)
	}
	conn, err := w.pool.Conn(w.target)
	if err != nil {
		return err
	}
	pctx, cancel := w.callCtx(ctx, w.cfg.PollWait+10*time.Second)
	defer cancel()
	resp, err := rpcpb.NewWorkerClient(conn).PollTask(pctx, &pb.PollTaskRequest{WorkerId: w.cfg.ID, WaitSeconds: w.cfg.PollWait.Seconds(), Done: w.done, Labels: w.labels})
	if err != nil {
		return fmt.Errorf("poll %s: %w", w.target, callErr(pctx, err))
	}
	w.lastContact.Store(time.Now().UnixNano())
	w.followKeyring(resp.GossipKeys)
	if resp.Task == nil {
		if resp.NotLeader {
			return w.follow(resp.LeaderAddr)
		}
		return nil
	}
	return w.run(ctx, resp.Task)
}

func (w *Worker) run(ctx context.Context, t *pb.Task) error {
	log := w.log.With("job", t.Job, "round", t.Round)
	in := Input{}
	var err error
	if in.Base, err = w.model(ctx, t.Base.GetHash()); err != nil {
		return err
	}
	if t.Lora != nil {
		if in.Frozen, err = w.model(ctx, t.Frozen.GetHash()); err != nil {
			return fmt.Errorf("task %s/%d: frozen base: %w", t.Job, t.Round, err)
		}
	}
	if t.Tokenizer != "" {
		if in.Tokenizer, err = w.blob(ctx, t.Tokenizer); err != nil {
			return fmt.Errorf("task %s/%d: tokenizer: %w", t.Job, t.Round, err)
		}
	}
	if t.EvalOnly {
		return w.evaluate(ctx, in, t)
	}
	cd, err := codec.New(t.Codec)
	if err != nil {
		return fmt.Errorf("task %s/%d: %w", t.Job, t.Round, err)
	}
	log.Info("training", "base", t.Base.GetHash()[:12])
	tctx := ctx
	if t.DeadlineUnixNano > 0 {
		var cancel context.CancelFunc
		tctx, cancel = context.WithDeadline(ctx, time.Unix(0, t.DeadlineUnixNano))
		defer cancel()
	}
	res, err := w.trainer.Train(tctx, in, t)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Training itself failed (diverged, the external trainer crashed
		// or ran out of time): this attempt is skipped rather than trained
		// again in a loop, and the round goes on without this worker.
		log.Error("training failed; skipping this round", "err", err)
		w.metrics.tasks.WithLabelValues("failed").Inc()
		w.markDone(pb.AttemptKey(t.Job, t.Round, t.Attempt))
		w.reportFailure(ctx, t, err)
		return nil
	}
	if t.DpClip > 0 {
		if err := privatize(res.Delta, t.DpClip, t.DpNoiseStd); err != nil {
			return fmt.Errorf("task %s/%d: distributed DP: %w", t.Job, t.Round, err)
		}
		log.Info("update clipped and noised (distributed DP)", "clip", t.DpClip, "noise_std", t.DpNoiseStd)
	}
	if t.Secagg != nil {
		w.metrics.tasks.WithLabelValues("trained").Inc()
		w.metrics.samples.Add(float64(res.Samples))
		log.Info("trained; aggregating securely", "samples", res.Samples, "loss", res.Metrics["loss"])
		return w.secaggRound(ctx, t, res)
	}
	payload, err := w.encode(cd, t.Job, res.Delta)
	if err != nil {
		return fmt.Errorf("task %s/%d: encode: %w", t.Job, t.Round, err)
	}
	w.metrics.tasks.WithLabelValues("trained").Inc()
	w.metrics.samples.Add(float64(res.Samples))
	if s := res.Metrics["seconds"]; s > 0 {
		w.metrics.trainSeconds.Observe(s)
	}
	if sps := res.Metrics["samples_per_second"]; sps > 0 {
		w.metrics.samplesPerSec.Set(sps)
	} else if s := res.Metrics["seconds"]; s > 0 {
		w.metrics.samplesPerSec.Set(float64(res.Samples) / s)
	}
	log.Info("trained", "samples", res.Samples, "loss", res.Metrics["loss"], "seconds", res.Metrics["seconds"], "bytes", len(payload))
	if w.cfg.SubmitDelay > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(w.cfg.SubmitDelay):
		}
	}
	metrics, dropped := pb.SanitizeMetrics(res.Metrics)
	if len(dropped) > 0 {
		// The coordinator refuses an update whose metrics break the bounds;
		// the update itself is good, so it goes without them.
		log.Warn("trainer reported metrics the coordinator would refuse; sending the update without them", "dropped", dropped, "max", pb.MaxMetrics)
	}
	w.pending = &pb.SubmitUpdateRequest{WorkerId: w.cfg.ID, Job: t.Job, Round: t.Round, BaseModel: t.Base.GetHash(),
		Codec: cd.Name(), Payload: payload, Samples: res.Samples, Metrics: metrics, Attempt: t.Attempt}
	return w.submit(ctx)
}

// submit sends the pending update to the target coordinator, following a
// leader hint. The update is kept until a leader accepts it, or refuses it
// for good (its round is over).
func (w *Worker) submit(ctx context.Context) error {
	p := w.pending
	conn, err := w.pool.Conn(w.target)
	if err != nil {
		return err
	}
	sctx, cancel := w.callCtx(ctx, 60*time.Second)
	defer cancel()
	resp, err := rpcpb.NewWorkerClient(conn).SubmitUpdate(sctx, p)
	err = callErr(sctx, err)
	if wait, ok := retryAfter(err); ok {
		// Refused for now (a rate limit): the update stays pending and is
		// sent again after the delay the coordinator asked for.
		w.log.Info("update deferred", "job", p.Job, "round", p.Round, "retry_in", wait)
		w.metrics.updates.WithLabelValues("deferred").Inc()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		return nil
	}
	switch status.Code(err) {
	case codes.OK:
	case codes.FailedPrecondition, codes.NotFound, codes.PermissionDenied, codes.InvalidArgument, codes.ResourceExhausted:
		w.log.Warn("update refused; dropping it", "job", p.Job, "round", p.Round, "err", err)
		w.metrics.updates.WithLabelValues("refused").Inc()
		w.pending, w.nextResidual = nil, nil
		return nil
	default:
		return fmt.Errorf("submit to %s: %w", w.target, err)
	}
	if !resp.Accepted {
		return w.follow(resp.LeaderAddr) // resubmitted on the next step
	}
	w.log.Info("update accepted", "job", p.Job, "round", p.Round, "duplicate", resp.Duplicate)
	outcome := "accepted"
	if resp.Duplicate {
		outcome = "duplicate"
	}
	w.metrics.updates.WithLabelValues(outcome).Inc()
	w.metrics.updateBytes.WithLabelValues(p.Codec).Add(float64(len(p.Payload)))
	w.commitResidual()
	w.markDone(pb.AttemptKey(p.Job, p.Round, p.Attempt))
	w.pending = nil
	return nil
}

// probe refreshes the labels that change at run time (Config.Probe) and
// gossips them when they changed; between tasks only, so that the worker's
// own training does not count as someone else's load.
func (w *Worker) probe(ctx context.Context) {
	if w.cfg.Probe == nil || w.pending != nil || time.Since(w.probed) < cmp.Or(w.cfg.ProbeInterval, time.Minute) {
		return
	}
	w.probed = time.Now()
	next, err := w.probeLabels(ctx)
	if err != nil {
		w.log.Warn("probe failed; labels unchanged", "err", err)
		return
	}
	if maps.Equal(next, w.labels) {
		return
	}
	if err := w.gossip.SetMeta(gossip.Meta{Role: gossip.RoleWorker, Labels: next}, 5*time.Second); err != nil {
		w.log.Warn("labels not gossiped", "err", err)
		return
	}
	w.log.Info("labels changed", "labels", next)
	w.labels = next
}

// probeLabels returns Config.Labels over the probe's labels.
func (w *Worker) probeLabels(ctx context.Context) (map[string]string, error) {
	got, err := w.cfg.Probe(ctx)
	if err != nil {
		return nil, err
	}
	next := map[string]string{}
	for k, v := range got {
		if err := gossip.CheckLabels(map[string]string{k: v}); err != nil {
			w.log.Warn("probed label dropped", "err", err) // the coordinators would refuse it
			continue
		}
		next[k] = v
	}
	maps.Copy(next, w.cfg.Labels)
	return next, nil
}

// markDone records a round attempt this worker is finished with, so that
// coordinators do not offer it again (the recent 64 are kept).
func (w *Worker) markDone(key string) {
	w.done = append(w.done, key)
	if len(w.done) > 64 {
		w.done = w.done[len(w.done)-64:]
	}
}

// encode encodes a delta; a lossy codec gets the job's error-feedback
// residual added, and the residual it leaves behind is kept for the job
// once the update is accepted (commitResidual).
func (w *Worker) encode(cd codec.Codec, job string, delta tensor.Set) ([]byte, error) {
	rc, ok := cd.(codec.ResidualCodec)
	if !ok || w.cfg.NoErrorFeedback {
		return cd.Encode(delta)
	}
	res, ok := w.residuals[job]
	path := ""
	if w.cfg.StateDir != "" {
		path = filepath.Join(w.cfg.StateDir, "residual-"+job+".safetensors")
		if !ok {
			if s, err := tensor.ReadFile(path); err == nil {
				res = s
			}
		}
	}
	if tensor.SameLayout(res, delta) != nil {
		res = tensor.Set{} // none yet, or of another model
	}
	payload, next, err := rc.EncodeResidual(delta, res)
	if err != nil {
		return nil, err
	}
	w.nextResidual = &residual{job: job, set: next, path: path}
	return payload, nil
}

// residual is an error-feedback residual waiting for its update's fate.
type residual struct {
	job, path string
	set       tensor.Set
}

// commitResidual makes the accepted update's residual the job's (in
// memory, and in StateDir so that it survives a restart).
func (w *Worker) commitResidual() {
	r := w.nextResidual
	if r == nil {
		return
	}
	w.nextResidual = nil
	w.residuals[r.job] = r.set
	if r.path == "" {
		return
	}
	err := os.MkdirAll(w.cfg.StateDir, 0o755)
	if err == nil {
		err = tensor.WriteFile(r.path, r.set, tensor.F32)
	}
	if err != nil {
		w.log.Warn("error-feedback residual not saved", "job", r.job, "err", err)
	}
}

type backoff struct{ d time.Duration }

func newBackoff() *backoff             { return &backoff{d: 100 * time.Millisecond} }
func (b *backoff) peek() time.Duration { return b.d }
func (b *backoff) reset()              { b.d = 100 * time.Millisecond }
func (b *backoff) next() time.Duration {
	d := b.d
	b.d = min(2*b.d, 3*time.Second)
	return d
}
