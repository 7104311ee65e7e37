// Package sim runs federated training with many virtual workers in one
// process: the real models, aggregation rules, server optimizers and
// attacks, without a cluster, for experiments. Virtual workers are cheap:
// they share one copy of the data set (each holds index lists), and a pool
// of trainers sized to the cores does the training.
package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sort"
	"sync"
	"time"

	"gonum.org/v1/gonum/stat/distuv"
	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
)

// Attacks lists the Byzantine behaviours Run simulates.
var Attacks = []string{"none", "sign-flip", "gaussian", "alie", "ipm", "label-flip", "free-rider"}

// Config is one simulated federated run.
type Config struct {
	Model   string // architecture, e.g. "mnist-mlp-small"
	Workers int    // virtual workers
	// ClientsPerRound is how many workers are sampled (uniformly, without
	// replacement) each round; 0 means all of them.
	ClientsPerRound int
	Rounds          int               // rounds
	Partition       dataset.Partition // how the training set is split among workers
	Train           model.TrainConfig // local training (Seed is set per worker and round)
	Rule            string            // aggregation rule
	Params          aggregation.Params
	Server          aggregation.ServerOptimizer
	// Codec encodes every update as a worker would ("" means fp32); the
	// coordinator's decoder reads it back, and its size is counted.
	Codec string
	// NoErrorFeedback turns off error feedback for lossy codecs (on by
	// default, as on real workers; it keeps one residual per virtual worker
	// that has taken part).
	NoErrorFeedback bool
	// Attack is one of Attacks; workers 0 … ⌊Byzantine × Workers⌋ − 1 carry
	// it out whenever they are sampled.
	Attack    string
	Byzantine float64
	// Dropout is the probability that a sampled worker's update never
	// arrives (a straggler past the deadline, or a crash). In async mode
	// the worker vanishes mid-task and is back when the task would have
	// ended (see runAsync).
	Dropout float64
	// MinUpdates: a round in which fewer updates arrive is aborted and
	// planned again, as the coordinator does (default 1).
	MinUpdates int
	// OverSelect samples ClientsPerRound·(1+OverSelect) workers (rounded
	// up) and keeps the ClientsPerRound updates that arrive first in
	// simulated time, as the coordinator's --over-select does; the others
	// trained for nothing (counted in RoundResult.Trained).
	OverSelect float64
	Seed       uint64
	Base       tensor.Set // starting model; default: a fresh initialisation
	// EvalEvery evaluates every this many rounds (and always the last); 0: every round.
	EvalEvery int
	// WorkerMomentum β > 0: every worker sends m ← β·m + (1−β)·delta, its
	// momentum over rounds, instead of its delta (Karimireddy et al. 2021:
	// momentum shrinks the honest updates' spread, which is what lets
	// centered clipping tell attackers from honest workers). Each worker
	// that has taken part keeps one model-sized vector for it.
	WorkerMomentum float64
	// Mode is "sync" (rounds; the default) or "async" (FedBuff, scheduled
	// by the coordinator's PlanAssignments; Rounds then counts versions).
	Mode  string
	Async *pb.AsyncSpec // async parameters (defaults as the coordinator's)
	// Speed is the workers' slowness distribution (ParseSpeeds), and
	// SecondsPerExample the simulated time a worker of factor 1 spends on
	// one example (default 0.001).
	Speed             string
	SecondsPerExample float64
	// SpeedJitter varies each task's time around its worker's speed: a
	// task takes the worker's time times exp(σz − σ²/2), z standard normal
	// drawn per task from the seed (mean 1; 0: every task of a worker takes
	// the same time). Real stragglers are not the same workers every round.
	SpeedJitter float64
	// DetectSeconds is the simulated time the coordinator takes to notice
	// a worker that vanished (gossip's suspicion timeout; 0: at once): a
	// sync round waits for it, an async slot stays held that long.
	DetectSeconds float64
	// DP makes the run DP-FedAvg (sync rounds, fedavg): updates clipped to
	// DP.ClipNorm and averaged with equal weights, Gaussian noise on the
	// mean as the coordinator adds it, the ε spent after each round in
	// RoundResult.Epsilon, and the run stops before a round that would
	// pass DP.Epsilon (when set). nil: no DP.
	DP *pb.DPSpec
}

// RoundResult is the model after one round.
type RoundResult struct {
	Round        int
	Participants int     // updates aggregated (sampled minus dropped)
	Attempts     int     // plans it took (more than 1 when dropouts left fewer than MinUpdates)
	Trained      int     // local trainings the round cost (more than Participants with over-selection)
	Accuracy     float64 // on the test set; NaN when not evaluated this round
	Loss         float64
	Bytes        int64 // encoded updates received this round
	Seconds      float64
	// SimTime is the simulated time at the end of the round (or version):
	// rounds last as long as their slowest worker (see ParseSpeeds).
	SimTime float64
	// MeanStaleness is the mean staleness of an async version's updates.
	MeanStaleness float64
	// Epsilon is the privacy spent by a DP run after this round, at the
	// run's δ (0 without DP); BudgetReached says the next round would pass
	// the run's budget, so this round was its last.
	Epsilon       float64
	BudgetReached bool
	// Clip is the clipping norm an adaptive-clipping DP run used this round.
	Clip float64
	// Verified says a real cluster recomputed the round from its committed
	// updates and got the committed model (--transport grpc).
	Verified bool
	// Workers are the indexes of the workers whose updates were
	// aggregated (one entry per update).
	Workers []int
	// GroupAccuracy is the test accuracy on each group of a test set with
	// several (words: by language, in the order of the experiment's
	// languages key); nil when not evaluated.
	GroupAccuracy []float64
}

// Run simulates cfg on train and evaluates on test. progress, if set, is
// called after each round. Results are a function of cfg alone: the same
// config gives the same numbers, whatever the scheduling.
func Run(ctx context.Context, cfg Config, train, test *dataset.Examples, progress func(RoundResult)) ([]RoundResult, error) {
	arch, err := model.Lookup(cfg.Model)
	if err != nil {
		return nil, err
	}
	rule, err := aggregation.NewRule(cfg.Rule, cfg.Params)
	if err != nil {
		return nil, err
	}
	opt, err := aggregation.NewServerOptimizer(cfg.Server)
	if err != nil {
		return nil, err
	}
	cd, err := codec.New(cfg.Codec)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(Attacks, cfg.Attack) && cfg.Attack != "" {
		return nil, fmt.Errorf("sim: unknown attack %q (known: %v)", cfg.Attack, Attacks)
	}
	if cfg.Workers < 1 || cfg.Rounds < 1 {
		return nil, fmt.Errorf("sim: %d workers and %d rounds: want at least 1 each", cfg.Workers, cfg.Rounds)
	}
	if cfg.ClientsPerRound < 0 || cfg.ClientsPerRound > cfg.Workers {
		return nil, fmt.Errorf("sim: %d clients per round of %d workers", cfg.ClientsPerRound, cfg.Workers)
	}
	if cfg.WorkerMomentum < 0 || cfg.WorkerMomentum >= 1 {
		return nil, fmt.Errorf("sim: worker momentum %v, want [0, 1)", cfg.WorkerMomentum)
	}
	if cfg.Dropout < 0 || cfg.Dropout >= 1 || cfg.Byzantine < 0 || cfg.Byzantine > 1 {
		return nil, fmt.Errorf("sim: dropout %v and Byzantine fraction %v, want [0, 1)", cfg.Dropout, cfg.Byzantine)
	}
	if cfg.SecondsPerExample == 0 {
		cfg.SecondsPerExample = 0.001
	}
	speeds, err := ParseSpeeds(cfg.Speed, cfg.Workers, cfg.Seed)
	if err != nil {
		return nil, err
	}
	async := cfg.Mode == round.ModeAsync
	if async {
		if (cfg.Attack != "" && cfg.Attack != "none") || cfg.WorkerMomentum > 0 {
			return nil, fmt.Errorf("sim: async mode simulates no attack or worker momentum")
		}
		spec := &pb.JobSpec{Mode: round.ModeAsync, Async: cfg.Async, Aggregator: cfg.Rule, AggregatorParams: &pb.AggregatorParams{F: uint32(cfg.Params.F), TrimFraction: cfg.Params.TrimFraction}}
		if err := round.NormalizeAsync(spec); err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
		cfg.Async = spec.Async
	} else if cfg.Mode != "" && cfg.Mode != round.ModeSync {
		return nil, fmt.Errorf("sim: mode %q: want sync or async", cfg.Mode)
	}
	if cfg.DP != nil {
		if cfg, rule, err = withDP(cfg); err != nil {
			return nil, err
		}
	}
	// Workers hold index lists into the one shared training set; a
	// worker's examples are gathered only while it trains.
	var parts [][]int
	if cfg.Partition.Kind == "groups" {
		parts, err = dataset.SplitGroups(train.Group, cfg.Workers, cfg.Partition.Seed)
	} else {
		parts, err = cfg.Partition.Split(train.Y, train.Classes, cfg.Workers)
	}
	if err != nil {
		return nil, err
	}
	byz := 0
	if cfg.Attack != "" && cfg.Attack != "none" {
		byz = int(cfg.Byzantine * float64(cfg.Workers))
	}
	flipped := train
	if cfg.Attack == "label-flip" {
		flipped = flipLabels(train)
	}
	global := cfg.Base
	if len(global.Tensors) == 0 {
		global = arch.Init(cfg.Seed)
	}
	ev, err := arch.NewEvaluator(1000)
	if err != nil {
		return nil, err
	}
	defer ev.Close()
	pool := newTrainerPool(arch)
	defer pool.close()
	_, lossy := cd.(codec.ResidualCodec)
	e := &env{arch: arch, train: train, test: test, parts: parts, speeds: speeds, global: global, rule: rule, opt: opt, codec: cd,
		lossy: lossy && !cfg.NoErrorFeedback, residuals: map[int]tensor.Set{}, ev: ev, groups: byGroup(test), pool: pool, evalEvery: cfg.EvalEvery,
		secondsPerExample: cfg.SecondsPerExample, jitter: cfg.SpeedJitter}
	if async {
		return runAsync(ctx, cfg, e, progress)
	}
	var simTime float64
	var (
		state    tensor.Set
		results  []RoundResult
		momentum = map[int]tensor.Set{} // per worker that has taken part
	)
	// Rounds are planned by the coordinator's own scheduler functions:
	// PlanRound samples the workers (a seeded shuffle of the worker ids, so
	// the cluster path with the same seed picks the same workers), and
	// DecideRound aborts a round in which fewer than MinUpdates arrive (the
	// round is then planned again as a new attempt).
	sched := newScheduler(cfg)
	pipe := round.Pipeline{Rule: rule, Optimizer: opt, DP: cfg.DP, Seed: cfg.Seed}
	clip := cfg.DP.GetClipNorm() // adaptive clipping: this round's norm
	for number := 1; number <= cfg.Rounds; number++ {
		start := time.Now()
		if cfg.DP.GetAdaptiveClip() {
			if pipe, err = pipe.WithClip(cfg.Rule, cfg.Params, clip); err != nil {
				return results, err
			}
		}
		sampled, dropped, attempts, err := sched.plan(number)
		if err != nil {
			return results, err
		}
		res := RoundResult{Round: number, Participants: len(sampled), Attempts: attempts, Accuracy: math.NaN(), Loss: math.NaN()}
		if cfg.DP != nil {
			// The round is planned (its sampling rate known) but nothing
			// is trained or released yet: a round past the budget stops
			// the run here, as the coordinator stops the job.
			if res.Epsilon, err = round.DPEpsilon(sched.job.Job); err != nil {
				return results, fmt.Errorf("round %d: privacy accounting: %w", number, err)
			}
			if cfg.DP.Epsilon > 0 && res.Epsilon > cfg.DP.Epsilon {
				break // this round alone passes the budget
			}
			// Would the next round, sampled at this one's rate, pass it?
			// Then this is the last, and is evaluated.
			rec := sched.job.History[len(sched.job.History)-1]
			over, _, err := round.DPWouldExceed(sched.job.Job, int(rec.Selected), int(rec.Eligible))
			if err != nil {
				return results, fmt.Errorf("round %d: privacy accounting: %w", number, err)
			}
			res.BudgetReached = over
		}
		deltas := make([]tensor.Set, len(sampled))
		took := make([]float64, len(sampled)) // simulated seconds
		err = pool.run(ctx, len(sampled), func(tr model.Trainer, i int) error {
			w := sampled[i]
			if w < byz && cfg.Attack == "free-rider" {
				deltas[i] = tensor.ZerosLike(global) // claims its samples, trains nothing
				return nil
			}
			src := train
			if w < byz {
				src = flipped
			}
			tc := cfg.Train
			tc.Seed = cfg.Seed ^ uint64(number)<<32 ^ uint64(w)<<8
			trained, met, err := tr.Train(ctx, global, src.Subset(parts[w]), tc)
			if err != nil {
				return fmt.Errorf("worker %d round %d: %w", w, number, err)
			}
			took[i] = e.taskSeconds(w, met.Seen, cfg.Seed^uint64(number)<<32^uint64(w))
			deltas[i], err = tensor.Diff(trained, global)
			return err
		})
		if errors.Is(err, model.ErrDiverged) {
			// The global model is broken (an attack got through): record
			// it at chance accuracy and stop.
			res.Accuracy, res.Loss, res.Seconds = 0.1, math.Inf(1), time.Since(start).Seconds()
			results = append(results, res)
			break
		}
		if err != nil {
			return results, err
		}
		if cfg.WorkerMomentum > 0 {
			b := float32(cfg.WorkerMomentum)
			for i, w := range sampled {
				m, ok := momentum[w]
				if !ok {
					m = tensor.ZerosLike(deltas[i])
					momentum[w] = m
				}
				for t, mt := range m.Tensors {
					tensor.Scale(b, mt.Data)
					tensor.Axpy(1-b, deltas[i].Tensors[t].Data, mt.Data)
				}
				deltas[i] = m.Clone()
			}
		}
		res.Trained = len(sampled)
		if keep := cfg.ClientsPerRound; cfg.OverSelect > 0 && len(sampled) > keep {
			// Over-selection: the round commits with the first updates to
			// arrive; the stragglers' training is wasted.
			sampled, deltas, took = firstArrivals(sampled, deltas, took, keep)
			res.Participants = len(sampled)
		}
		res.Workers = slices.Clone(sampled)
		// The round waits for its slowest (kept) worker, and unless it
		// filled (over-selection), until every worker that vanished is
		// noticed gone: it was training, and so awaited, until it vanished.
		for _, s := range took {
			res.SimTime = max(res.SimTime, s)
		}
		if res.Participants < int(sched.job.Spec.ClientsPerRound) {
			for _, w := range dropped {
				res.SimTime = max(res.SimTime, e.vanish(w, cfg.Train, cfg.Seed^uint64(number)<<32^uint64(w))+cfg.DetectSeconds)
			}
		}
		simTime += res.SimTime
		res.SimTime = simTime
		nb := 0
		for nb < len(sampled) && sampled[nb] < byz {
			nb++
		}
		attack(cfg.Attack, deltas, nb, cfg.Seed^uint64(number))
		if cfg.DP.GetDistributed() {
			// each worker clips and adds its share of the noise, as
			// real workers do (seeded here, for reproducible runs)
			std := round.WorkerNoiseStd(cfg.DP, int(sched.job.History[len(sched.job.History)-1].Selected))
			for i, w := range sampled {
				r := rand.New(rand.NewPCG(cfg.Seed^0xd157, uint64(number)<<32|uint64(w)))
				if err := round.Privatize(deltas[i], cfg.DP.ClipNorm, std, r); err != nil {
					return results, err
				}
			}
		}
		ups := make([]*pb.AcceptedUpdate, len(sampled))
		payloads := make(map[uint64][]byte, len(sampled))
		for i, w := range sampled {
			payload, err := e.encode(w, deltas[i])
			if err != nil {
				return results, fmt.Errorf("round %d: worker %d: encode: %w", number, w, err)
			}
			res.Bytes += int64(len(payload))
			payloads[uint64(i)] = payload
			ups[i] = &pb.AcceptedUpdate{Worker: WorkerID(w), Task: uint64(i), Samples: uint64(len(parts[w]))}
		}
		out, err := pipe.Run(ctx, round.Inputs{Number: uint32(number), Base: global, State: state, Updates: ups}, memSource{codec: cd, payloads: payloads})
		if err != nil {
			return results, fmt.Errorf("round %d: %w", number, err)
		}
		global, state = out.Model, out.State
		if next, ok := out.Metrics["dp_clip_next"]; ok {
			clip, res.Clip = next, out.Metrics["dp_clip"]
		}
		if err := e.evaluate(&res, global, number == cfg.Rounds || res.BudgetReached); err != nil { // diverged: chance accuracy
			return results, err
		}
		res.Seconds = time.Since(start).Seconds()
		results = append(results, res)
		if progress != nil {
			progress(res)
		}
		if global.CheckFinite() != nil || res.BudgetReached {
			break // nothing more to learn from a diverged model, or no privacy left to spend
		}
	}
	return results, nil
}

// flipLabels returns train with every label y replaced by 9 − y (classes − 1 − y).
func flipLabels(train *dataset.Examples) *dataset.Examples {
	f := *train
	f.Y = make([]uint8, len(train.Y))
	for i, y := range train.Y {
		f.Y[i] = uint8(train.Classes-1) - y
	}
	return &f
}

// attack replaces the first byz deltas by the attack's updates. ALIE and
// IPM are omniscient: they use this round's honest updates. Label flipping
// and free riding happen in training.
func attack(kind string, deltas []tensor.Set, byz int, seed uint64) {
	if byz == 0 || (byz == len(deltas) && (kind == "alie" || kind == "ipm")) {
		return // ALIE and IPM need honest updates to hide among
	}
	honest := deltas[byz:]
	mean := tensor.ZerosLike(deltas[0])
	for _, d := range honest {
		mean.AddScaled(1/float32(len(honest)), d)
	}
	switch kind {
	case "sign-flip":
		for w := 0; w < byz; w++ {
			for _, t := range deltas[w].Tensors {
				tensor.Scale(-1, t.Data)
			}
		}
	case "gaussian":
		g := distuv.Normal{Mu: 0, Sigma: 1, Src: newSource(seed)}
		for w := 0; w < byz; w++ {
			for _, t := range deltas[w].Tensors {
				for i := range t.Data {
					t.Data[i] = float32(g.Rand())
				}
			}
		}
	case "alie":
		// Baruch et al. 2019: μ − z·σ per coordinate, z from the number of
		// workers the attacker needs on its side.
		n := len(deltas)
		s := n/2 + 1 - byz
		z := distuv.UnitNormal.Quantile(float64(n-s) / float64(n))
		for k, t := range mean.Tensors {
			for i, mu := range t.Data {
				var v float64
				for _, d := range honest {
					x := float64(d.Tensors[k].Data[i]) - float64(mu)
					v += x * x
				}
				val := float32(float64(mu) - z*math.Sqrt(v/float64(len(honest))))
				for w := 0; w < byz; w++ {
					deltas[w].Tensors[k].Data[i] = val
				}
			}
		}
	case "ipm":
		// Xie et al. 2020: −ε × the honest mean, ε large enough to flip FedAvg.
		const eps = 10
		for w := 0; w < byz; w++ {
			deltas[w] = mean.Clone()
			for _, t := range deltas[w].Tensors {
				tensor.Scale(-eps, t.Data)
			}
		}
	}
}

// firstArrivals keeps the k updates that took the least simulated time
// (ties to the lower worker), in worker order.
func firstArrivals(workers []int, deltas []tensor.Set, took []float64, k int) ([]int, []tensor.Set, []float64) {
	idx := make([]int, len(workers))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return took[idx[a]] < took[idx[b]] })
	idx = idx[:k]
	sort.Ints(idx)
	var (
		w []int
		d []tensor.Set
		t []float64
	)
	for _, i := range idx {
		w, d, t = append(w, workers[i]), append(d, deltas[i]), append(t, took[i])
	}
	return w, d, t
}

// withDP checks a DP run as the coordinator checks a DP job and returns
// it with the rule's clipping set to the DP clipping norm, and that rule.
func withDP(cfg Config) (Config, aggregation.Aggregator, error) {
	k := cfg.ClientsPerRound
	if k == 0 {
		k = cfg.Workers
	}
	spec := &pb.JobSpec{Aggregator: cfg.Rule, Mode: cfg.Mode, Dp: proto.Clone(cfg.DP).(*pb.DPSpec), ClientsPerRound: uint32(k),
		AggregatorParams: &pb.AggregatorParams{ClipNorm: cfg.Params.ClipNorm}}
	if cfg.Mode == "" {
		spec.Mode = round.ModeSync
	}
	if err := round.NormalizeDP(spec); err != nil {
		return cfg, nil, fmt.Errorf("sim: %w", err)
	}
	cfg.DP, cfg.Params.ClipNorm = spec.Dp, spec.AggregatorParams.ClipNorm
	rule, err := aggregation.NewRule(cfg.Rule, cfg.Params)
	return cfg, rule, err
}

// scheduler plans rounds with the round core's PlanRound and DecideRound,
// and records them through the job's transitions as the FSM does (a round
// started, its arrived updates accepted, then committed or aborted).
type scheduler struct {
	cfg   Config
	job   round.Job
	live  []*pb.WorkerInfo
	index map[string]int
}

func newScheduler(cfg Config) *scheduler {
	k := cfg.ClientsPerRound
	if k == 0 {
		k = cfg.Workers
	}
	s := &scheduler{cfg: cfg, index: make(map[string]int, cfg.Workers),
		job: round.Job{Job: &pb.Job{Status: pb.JobStatus_JOB_STATUS_RUNNING, Spec: &pb.JobSpec{Name: "sim", Seed: cfg.Seed, Rounds: uint32(cfg.Rounds),
			ClientsPerRound: uint32(k), MinUpdates: uint32(max(cfg.MinUpdates, 1)), OverSelect: cfg.OverSelect, RoundTimeoutSeconds: 1, Dp: cfg.DP}}}}
	for w := range cfg.Workers {
		id := WorkerID(w)
		s.live = append(s.live, &pb.WorkerInfo{Id: id})
		s.index[id] = w
	}
	return s
}

// WorkerID is virtual worker w's id (the cluster path uses the same ids).
func WorkerID(w int) string { return fmt.Sprintf("w%06d", w) }

// plan returns the workers whose updates arrive in round, sorted, those
// sampled whose updates never arrive (the attempt that committed), and the
// attempts it took.
func (s *scheduler) plan(number int) (arrived, dropped []int, attempts int, err error) {
	t0 := time.Unix(0, 0)
	for attempt := uint32(0); attempt < 100; attempt++ {
		r, err := round.PlanRound(s.job.Job, s.live, t0, attempt)
		if err != nil {
			return nil, nil, 0, err
		}
		if err := s.job.StartRound(r); err != nil {
			return nil, nil, 0, fmt.Errorf("sim: %w", err)
		}
		drop := rand.New(rand.NewPCG(s.cfg.Seed^0xd209, uint64(number)<<32|uint64(attempt)))
		arrived, dropped = nil, nil
		alive := map[string]bool{}
		for _, id := range r.Selected {
			alive[id] = true
			if drop.Float64() >= s.cfg.Dropout {
				arrived = append(arrived, s.index[id])
				if err := s.job.AcceptUpdate(r.Number, &pb.AcceptedUpdate{Worker: id}); err != nil {
					return nil, nil, 0, fmt.Errorf("sim: %w", err)
				}
			} else {
				dropped = append(dropped, s.index[id])
			}
		}
		// At the deadline (simulated time), with what arrived.
		if round.DecideRound(s.job.Spec, r, alive, time.Unix(0, r.DeadlineUnixNano)) == round.Commit {
			// The model itself lives in the simulator; the record names it.
			if err := s.job.CommitRound(&pb.CommitRound{Job: "sim", Round: r.Number, Model: fmt.Sprintf("r%d", r.Number)}, r.DeadlineUnixNano); err != nil {
				return nil, nil, 0, fmt.Errorf("sim: %w", err)
			}
			sort.Ints(arrived)
			return arrived, dropped, int(attempt) + 1, nil
		}
		if err := s.job.AbortRound(r.Number); err != nil {
			return nil, nil, 0, fmt.Errorf("sim: %w", err)
		}
	}
	return nil, nil, 0, fmt.Errorf("sim: round %d: fewer than %d updates arrived in 100 attempts (dropout %v)", number, s.cfg.MinUpdates, s.cfg.Dropout)
}

// trainerPool runs per-worker work on one model.Trainer per core.
type trainerPool struct {
	trainers []model.Trainer
}

func newTrainerPool(arch model.Architecture) *trainerPool {
	p := &trainerPool{}
	for range runtime.GOMAXPROCS(0) {
		tr, _ := arch.NewTrainer()
		p.trainers = append(p.trainers, tr)
	}
	return p
}

func (p *trainerPool) run(ctx context.Context, n int, f func(tr model.Trainer, w int) error) error {
	next := make(chan int, n)
	for w := 0; w < n; w++ {
		next <- w
	}
	close(next)
	errs := make(chan error, len(p.trainers))
	var wg sync.WaitGroup
	for _, tr := range p.trainers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range next {
				if err := ctx.Err(); err != nil {
					errs <- err
					return
				}
				if err := f(tr, w); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (p *trainerPool) close() {
	for _, t := range p.trainers {
		t.Close()
	}
}

func newSource(seed uint64) rand.Source { return rand.NewPCG(seed, 0xa77ac4) }
