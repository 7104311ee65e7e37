package sim

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
)

// Time is simulated: a worker needs speed × examples × SecondsPerExample
// simulated seconds for a task (examples processed, counting epochs), so a
// fleet whose speeds differ tenfold runs in seconds of real time and gives
// the same numbers on every machine. Sync rounds last as long as their
// slowest sampled worker; async jobs finish tasks in order of simulated
// time.

// ParseSpeeds gives each of n workers its slowness factor (1: the fastest
// class; 10: ten times slower) from a distribution:
//
//	""  or "1"               all equal
//	"uniform:LO,HI"          uniform in [LO, HI]
//	"lognormal:SIGMA"        exp(SIGMA·z), z standard normal, scaled so the fastest is 1
//	"tiers:gpu=1,cpu=10"     named tiers, dealt to the workers in turn
//
// The factors are a function of the spec, n and seed.
func ParseSpeeds(spec string, n int, seed uint64) ([]float64, error) {
	out := make([]float64, n)
	r := rand.New(rand.NewPCG(seed, 0x5bee0))
	kind, arg, _ := strings.Cut(spec, ":")
	bad := func(format string, a ...any) ([]float64, error) {
		return nil, fmt.Errorf("speed %q: %s (want uniform:LO,HI, lognormal:SIGMA or tiers:NAME=FACTOR,…)", spec, fmt.Sprintf(format, a...))
	}
	switch kind {
	case "", "1":
		for i := range out {
			out[i] = 1
		}
	case "uniform":
		lo, hi, ok := strings.Cut(arg, ",")
		a, err1 := strconv.ParseFloat(lo, 64)
		b, err2 := strconv.ParseFloat(hi, 64)
		if !ok || err1 != nil || err2 != nil || !(a > 0) || b < a {
			return bad("bounds %q", arg)
		}
		for i := range out {
			out[i] = a + (b-a)*r.Float64()
		}
	case "lognormal":
		sigma, err := strconv.ParseFloat(arg, 64)
		if err != nil || sigma < 0 || sigma > 5 {
			return bad("sigma %q", arg)
		}
		least := math.Inf(1)
		for i := range out {
			out[i] = math.Exp(sigma * r.NormFloat64())
			least = min(least, out[i])
		}
		for i := range out {
			out[i] /= least
		}
	case "tiers":
		var factors []float64
		for _, t := range strings.Split(arg, ",") {
			name, f, ok := strings.Cut(t, "=")
			v, err := strconv.ParseFloat(f, 64)
			if !ok || name == "" || err != nil || !(v > 0) {
				return bad("tier %q", t)
			}
			factors = append(factors, v)
		}
		for i := range out {
			out[i] = factors[i%len(factors)]
		}
	default:
		return bad("unknown distribution %q", kind)
	}
	return out, nil
}

// inflight is a simulated event at time at: a task's update arriving, or
// (with dropout) its worker vanishing mid-task (leave) and coming back
// when the task would have ended (back).
type inflight struct {
	at      float64
	task    uint64
	worker  int
	version uint32
	delta   tensor.Set
	samples uint64
	kind    eventKind
}

type eventKind int

const (
	arrive eventKind = iota
	leave
	back
)

type eventQueue []*inflight

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].task < q[j].task
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*inflight)) }
func (q *eventQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

// runAsync simulates an async job (FedBuff) in simulated time, scheduled by
// the coordinator's own PlanAssignments and weighted by its
// StalenessWeight: Rounds counts versions, each aggregating BufferSize
// updates. A RoundResult is one version. With Dropout, a task's worker
// vanishes with that probability at a uniform point of the task, its update
// lost; the coordinator, seeing it gone from the live workers, withdraws
// the assignment then, and the worker is back when the task would have
// ended.
func runAsync(ctx context.Context, cfg Config, e *env, progress func(RoundResult)) ([]RoundResult, error) {
	spec := &pb.JobSpec{Name: "sim", Mode: round.ModeAsync, Async: cfg.Async, Aggregator: cfg.Rule, Seed: cfg.Seed,
		RoundTimeoutSeconds: 1e9, Rounds: uint32(cfg.Rounds), AggregatorParams: &pb.AggregatorParams{F: uint32(cfg.Params.F), TrimFraction: cfg.Params.TrimFraction}}
	spec.BaseModel = "v0" // versions are named v<n>: the source below serves them from memory
	job, err := round.NewJob(spec, nil, 0)
	if err != nil {
		return nil, err
	}
	fleet := make([]*pb.WorkerInfo, cfg.Workers)
	groups := 0
	for _, x := range e.train.Group {
		groups = max(groups, int(x)+1)
	}
	for w := range fleet {
		fleet[w] = &pb.WorkerInfo{Id: WorkerID(w), Labels: workerLabels(cfg, groups, w)}
	}
	away := map[int]bool{} // workers that vanished and are not back yet
	live := func() []*pb.WorkerInfo {
		if len(away) == 0 {
			return fleet
		}
		var l []*pb.WorkerInfo
		for w, info := range fleet {
			if !away[w] {
				l = append(l, info)
			}
		}
		return l
	}
	index := func(id string) int { w, _ := strconv.Atoi(strings.TrimPrefix(id, "w")); return w }
	var (
		queue    eventQueue
		pending  = map[uint64]*inflight{}
		payloads = map[uint64][]byte{} // buffered updates, encoded
		now      float64
		results  []RoundResult
		bytes    int64
		global   = e.global
		state    tensor.Set
		models   = map[uint32]tensor.Set{0: e.global} // the versions a stale update may come from, for drift correction
	)
	clock := func() time.Time { return time.Unix(0, 0).Add(time.Duration(now * float64(time.Second))) }
	src := memSource{codec: e.codec, payloads: payloads, models: models}
	pipe := round.Pipeline{Rule: e.rule, Optimizer: e.opt, Async: cfg.Async}
	// schedule applies PlanAssignments at the current simulated time
	// through the job's AssignTasks transition: withdrawn tasks are
	// dropped, new ones trained (in parallel) from the current version and
	// queued to finish after their worker's time.
	schedule := func() error {
		if job.Running() != nil {
			return nil // the last version is made
		}
		assign, release := round.PlanAssignments(job.Job, live(), clock())
		for _, t := range release {
			delete(pending, t)
		}
		if err := job.AssignTasks(assign, release); err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		if len(assign) == 0 {
			return nil
		}
		tasks := make([]*inflight, len(assign))
		err := e.pool.run(ctx, len(assign), func(tr model.Trainer, i int) error {
			a := assign[i]
			w := index(a.Worker)
			tc := cfg.Train
			tc.Seed = round.AsyncTaskSeed(cfg.Seed, a.Task) ^ uint64(w)<<8
			trained, met, err := tr.Train(ctx, global, e.train.Subset(e.parts[w]), tc)
			if err != nil {
				return fmt.Errorf("worker %d task %d: %w", w, a.Task, err)
			}
			d, err := tensor.Diff(trained, global)
			tasks[i] = &inflight{at: now + e.taskSeconds(w, met.Seen, round.AsyncTaskSeed(cfg.Seed, a.Task)), task: a.Task, worker: w, version: a.Version, delta: d, samples: uint64(len(e.parts[w]))}
			return err
		})
		if err != nil {
			return err
		}
		for i, a := range assign {
			t := tasks[i]
			pending[a.Task] = t
			if cfg.Dropout > 0 {
				r := rand.New(rand.NewPCG(cfg.Seed^0xd209, a.Task))
				if r.Float64() < cfg.Dropout {
					// Vanishes at a uniform point of the task and is noticed
					// DetectSeconds later; back when the task would have
					// ended, or once noticed.
					gone := now + r.Float64()*(t.at-now) + cfg.DetectSeconds
					heap.Push(&queue, &inflight{at: max(t.at, gone), task: a.Task, worker: t.worker, kind: back})
					t = &inflight{at: gone, task: a.Task, worker: t.worker, kind: leave}
				}
			}
			heap.Push(&queue, t)
		}
		return nil
	}
	if err := schedule(); err != nil {
		return nil, err
	}
	k := int(cfg.Async.BufferSize)
	for len(results) < cfg.Rounds {
		if queue.Len() == 0 {
			return results, fmt.Errorf("sim: async: nothing in flight at version %d (concurrency %d, %d workers)", len(results), cfg.Async.Concurrency, cfg.Workers)
		}
		t := heap.Pop(&queue).(*inflight)
		if t.kind != arrive {
			// A worker noticed gone (its assignment is withdrawn) or back.
			now = t.at
			if t.kind == leave {
				away[t.worker] = true
			} else {
				delete(away, t.worker)
			}
			if err := schedule(); err != nil {
				return results, err
			}
			continue
		}
		if _, ok := pending[t.task]; !ok {
			continue // withdrawn as too stale: its update is refused
		}
		delete(pending, t.task)
		now = t.at
		payload, err := e.encode(t.worker, t.delta)
		if err != nil {
			return results, err
		}
		bytes += int64(len(payload))
		payloads[t.task] = payload
		if err := job.AcceptUpdate(t.version, &pb.AcceptedUpdate{Worker: WorkerID(t.worker), Task: t.task, Samples: t.samples}); err != nil {
			return results, fmt.Errorf("sim: %w", err)
		}
		if len(job.Async.Buffer) >= k {
			version := uint32(len(results))
			res := RoundResult{Round: int(version) + 1, Participants: k, Trained: k, Attempts: 1, Accuracy: math.NaN(), Loss: math.NaN(), Bytes: bytes, SimTime: now}
			used := job.Async.Buffer[:k]
			for _, u := range used {
				res.Workers = append(res.Workers, index(u.Worker))
			}
			out, err := pipe.Run(ctx, round.Inputs{Number: version + 1, Base: global, State: state, Updates: used}, src)
			if err != nil {
				return results, fmt.Errorf("version %d: %w", version+1, err)
			}
			for _, u := range used {
				delete(payloads, u.Task)
			}
			global, state = out.Model, out.State
			if cfg.Async.GetDriftCorrection() > 0 {
				models[version+1] = global
				if old := int(version) - int(cfg.Async.GetMaxStaleness()); old >= 0 {
					delete(models, uint32(old)) // updates from it are refused from now on
				}
			}
			if err := job.CommitRound(&pb.CommitRound{Job: spec.Name, Round: version + 1, Model: fmt.Sprintf("v%d", version+1), Buffered: uint32(k)}, clock().UnixNano()); err != nil {
				return results, fmt.Errorf("sim: %w", err)
			}
			res.MeanStaleness = out.Metrics["mean_staleness"]
			bytes = 0
			if err := e.evaluate(&res, global, len(results)+1 == cfg.Rounds); err != nil {
				return results, err
			}
			results = append(results, res)
			if progress != nil {
				progress(res)
			}
			if global.CheckFinite() != nil {
				break
			}
		}
		if err := schedule(); err != nil {
			return results, err
		}
	}
	return results, nil
}

// memSource is the round core's update source in the simulator: encoded
// updates by task, and the model versions drift correction may need.
type memSource struct {
	codec    codec.Codec
	payloads map[uint64][]byte
	models   map[uint32]tensor.Set
}

func (m memSource) Update(_ context.Context, u *pb.AcceptedUpdate, n int) (tensor.Vector, func(), error) {
	v, err := codec.DecodeVector(m.codec, m.payloads[u.Task], n)
	return v, func() {}, err
}

func (m memSource) Version(_ context.Context, v uint32) (tensor.Set, error) {
	s, ok := m.models[v]
	if !ok {
		return tensor.Set{}, fmt.Errorf("version %d is no longer kept", v)
	}
	return s, nil
}

// env is what a simulated run shares between its sync and async drivers.
type env struct {
	arch              model.Architecture
	train             *dataset.Examples
	test              *dataset.Examples
	parts             [][]int
	speeds            []float64
	global            tensor.Set
	rule              aggregation.Aggregator
	opt               aggregation.ServerOptimizer
	codec             codec.Codec
	lossy             bool
	residuals         map[int]tensor.Set
	ev                model.Evaluator
	groups            []*dataset.Examples // the test set by group (words: by language), when it has several
	secondsPerExample float64
	jitter            float64 // Config.SpeedJitter
	pool              *trainerPool
	evalEvery         int
	evals             int
}

// taskSeconds is the simulated time worker w needs to process seen
// examples in the task named by key (see ParseSpeeds and
// Config.SpeedJitter).
func (e *env) taskSeconds(w, seen int, key uint64) float64 {
	return e.speeds[w] * float64(seen) * e.secondsPerExample * jitterFactor(e.jitter, key)
}

// jitterFactor is a task's time multiplier for jitter σ: exp(σz − σ²/2),
// z standard normal drawn from key (its own stream: other draws from the
// same key are unaffected), so its mean is 1. 1 when σ is 0.
func jitterFactor(sigma float64, key uint64) float64 {
	if sigma == 0 {
		return 1
	}
	z := rand.New(rand.NewPCG(0x717e4, key)).NormFloat64()
	return math.Exp(sigma*z - sigma*sigma/2)
}

// vanish is when, in simulated seconds from its start, worker w vanishes
// from a task of recipe tc it was going to lose: at a uniform point of the
// task (timed as Train would take it), drawn from key.
func (e *env) vanish(w int, tc model.TrainConfig, key uint64) float64 {
	steps := model.PlannedSteps(len(e.parts[w]), tc)
	return rand.New(rand.NewPCG(0x7a5c, key)).Float64() * e.taskSeconds(w, steps*tc.BatchSize, key)
}

// encode encodes worker w's delta as the worker would (error feedback for
// lossy codecs).
func (e *env) encode(w int, d tensor.Set) ([]byte, error) {
	if e.lossy {
		payload, next, err := e.codec.(codec.ResidualCodec).EncodeResidual(d, e.residuals[w])
		e.residuals[w] = next
		return payload, err
	}
	return e.codec.Encode(d)
}

// evaluate scores the model into res every evalEvery results, at the end,
// and once it diverged (recorded at chance accuracy).
func (e *env) evaluate(res *RoundResult, global tensor.Set, last bool) error {
	e.evals++
	if e.evalEvery > 1 && e.evals%e.evalEvery != 0 && !last && global.CheckFinite() == nil {
		return nil
	}
	ev, err := e.ev.Evaluate(global, e.test)
	if err != nil {
		return err
	}
	res.Accuracy, res.Loss = ev.Accuracy, ev.Loss
	if global.CheckFinite() != nil {
		res.Accuracy, res.Loss = 0.1, math.Inf(1)
		return nil
	}
	for _, g := range e.groups {
		ev, err := e.ev.Evaluate(global, g)
		if err != nil {
			return err
		}
		res.GroupAccuracy = append(res.GroupAccuracy, ev.Accuracy)
	}
	return nil
}

// byGroup splits a test set by its examples' groups, or returns nil when
// it has fewer than two.
func byGroup(test *dataset.Examples) []*dataset.Examples {
	if test.Group == nil {
		return nil
	}
	var idx [][]int
	for i, g := range test.Group {
		for int(g) >= len(idx) {
			idx = append(idx, nil)
		}
		idx[g] = append(idx[g], i)
	}
	if len(idx) < 2 {
		return nil
	}
	out := make([]*dataset.Examples, len(idx))
	for g, ix := range idx {
		out[g] = test.Subset(ix)
	}
	return out
}

// workerLabels are a simulated worker's labels, for fair_by: its speed
// tier's name (speed: tiers:NAME=FACTOR,…, dealt in turn) as "tier", and
// with partition: groups its group (language) index as "group" (of groups).
func workerLabels(cfg Config, groups, w int) map[string]string {
	labels := map[string]string{}
	if kind, arg, _ := strings.Cut(cfg.Speed, ":"); kind == "tiers" {
		tiers := strings.Split(arg, ",")
		name, _, _ := strings.Cut(tiers[w%len(tiers)], "=")
		labels["tier"] = name
	}
	if cfg.Partition.Kind == "groups" && groups > 0 {
		labels["group"] = strconv.Itoa(w % groups) // as dataset.SplitGroups deals them
	}
	return labels
}
