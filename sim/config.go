package sim

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor/codec"
)

// Bounds on a simulation's size: beyond them a configuration is a typo
// (workers: 100000000 once spent 25 s and 4 GB validating), and MNIST's
// 60,000 training images cannot give more workers a batch each.
const (
	MaxWorkers = 60_000
	MaxRounds  = 1_000_000
)

// An experiment file is a flat YAML map of the keys below. Any key may be
// given a list of values instead of one: the experiment is then the grid of
// every combination (a sweep), run in the order of Keys, the last key
// varying fastest. Unknown keys and impossible values are refused before
// anything runs, with the key named.

// Key describes one experiment key.
type Key struct {
	Name string
	Kind string // "int", "float", "string" or "bool"
	Def  string // default value
	Help string
}

// Keys lists every experiment key, in sweep order.
var Keys = []Key{
	{"dataset", "string", "mnist", "training data: mnist, or words (next-character prediction on per-language word lists)"},
	{"languages", "string", "en+fr+de+es", "words: languages joined by +, one worker group each (en, fr, de, es)"},
	{"model", "string", "mnist-mlp-small", "architecture (" + strings.Join(model.Names(), ", ") + ")"},
	{"workers", "int", "100", "virtual workers"},
	{"clients_per_round", "int", "0", "workers sampled each round (0: all)"},
	{"rounds", "int", "20", "rounds"},
	{"updates", "int", "0", "aggregated updates per run instead of rounds: sync runs updates / clients_per_round rounds, async updates / buffer_size versions (0: use rounds), so runs of both modes compare at the same compute"},
	{"partition", "string", "iid", "iid, shards, dirichlet, or groups (words: one language per worker group)"},
	{"alpha", "float", "0.5", "dirichlet concentration"},
	{"shards", "int", "2", "label shards per worker (partition: shards)"},
	{"local_epochs", "int", "1", "local epochs per round"},
	{"local_steps", "int", "0", "cap on local SGD steps per round (0: none)"},
	{"batch_size", "int", "32", "local batch size"},
	{"lr", "float", "0.1", "local learning rate"},
	{"momentum", "float", "0.5", "local SGD momentum"},
	{"prox_mu", "float", "0", "FedProx proximal term"},
	{"aggregator", "string", "fedavg", "aggregation rule (" + strings.Join(aggregation.Rules, ", ") + ")"},
	{"trim_fraction", "float", "0.1", "trimmed mean: fraction cut from each end"},
	{"f", "int", "0", "Krum, Multi-Krum, Bulyan: Byzantine updates tolerated (0: the most n allows)"},
	{"multi_krum_m", "int", "0", "Multi-Krum: updates averaged (0: n - f)"},
	{"clip_norm", "float", "0", "scale updates to at most this L2 norm before the rule (0: off)"},
	{"tau", "float", "10", "centered clipping radius"},
	{"agg_iterations", "int", "0", "centered clipping / geometric median iterations (0: default)"},
	{"server_optimizer", "string", "plain", "plain, fedavgm, fedadam or fedyogi"},
	{"server_lr", "float", "1", "server learning rate"},
	{"server_beta1", "float", "0.9", "server momentum / first moment"},
	{"server_beta2", "float", "0.99", "server second moment"},
	{"server_epsilon", "float", "0.001", "server optimizer epsilon"},
	{"codec", "string", "fp32", "update encoding (fp32, fp16, int8, topk=<fraction>+fp32|fp16|int8)"},
	{"error_feedback", "bool", "true", "error feedback for lossy codecs"},
	{"attack", "string", "none", "Byzantine behaviour (" + strings.Join(Attacks, ", ") + ")"},
	{"byzantine", "float", "0", "fraction of workers that attack"},
	{"dropout", "float", "0", "probability that a sampled worker's update never arrives (async: the worker vanishes mid-task, its slot is freed, and it is back when the task would have ended)"},
	{"min_updates", "int", "1", "a round with fewer updates is aborted and planned again (as the coordinator does)"},
	{"over_select", "float", "0", "sync: fraction of extra workers sampled; a round keeps the first clients_per_round updates to arrive and the others' training is wasted (the coordinator's --over-select)"},
	{"worker_momentum", "float", "0", "workers send their momentum over rounds (centered clipping's companion)"},
	{"mode", "string", "sync", "sync (rounds wait for their slowest worker) or async (FedBuff: versions of buffer_size updates; rounds counts versions)"},
	{"buffer_size", "int", "10", "async: updates aggregated into each version"},
	{"concurrency", "int", "0", "async: workers training at once (0: 2 × buffer_size)"},
	{"concurrency_final", "int", "0", "async: concurrency schedule: the limit moves linearly from concurrency at the first version to this at the last (0: constant)"},
	{"drift_correction", "float", "0", "async: β in [0, 1]: a stale update loses the share β of its component along the model's drift since its base version (0: off)"},
	{"staleness", "string", "polynomial", "async: staleness weighting: polynomial ((1+τ)^-a), constant or hinge"},
	{"staleness_a", "float", "0", "async: polynomial exponent or hinge slope (0: 0.5 / 10)"},
	{"staleness_b", "int", "0", "async: hinge: staleness weighted fully (0: 4)"},
	{"max_staleness", "int", "0", "async: updates staler than this are refused (0: 20)"},
	{"max_per_worker", "int", "1", "async: updates one worker may have in the fairness window"},
	{"fair_window", "int", "1", "async: versions max_per_worker counts over: the buffer and the last fair_window−1 versions"},
	{"fair_by", "string", "", "async: fairness between groups of workers: tier (the speed tier's name) or group (partition: groups); free workers of the group with the fewest updates in the window go first"},
	{"speed", "string", "1", "workers' slowness: 1 (all equal), uniform:LO,HI, lognormal:SIGMA or tiers:NAME=FACTOR,…"},
	{"seconds_per_example", "float", "0.001", "simulated seconds a worker of speed 1 spends per example"},
	{"speed_jitter", "float", "0", "σ of each task's time around its worker's speed: time × exp(σz − σ²/2), z normal per task (mean 1); 0: a worker's tasks all take the same time"},
	{"detect_seconds", "float", "0", "simulated seconds until the coordinator notices a worker that vanished (dropout; gossip's suspicion timeout): a sync round waits that long for it, an async slot stays held"},
	{"dp_noise", "float", "0", "DP-FedAvg noise multiplier σ: Gaussian noise of σ·dp_clip/n on the mean of n clipped updates (sync fedavg only; 0: no DP)"},
	{"dp_clip", "float", "1", "DP-FedAvg: every update is clipped to this L2 norm (replaces clip_norm)"},
	{"dp_delta", "float", "0.00001", "DP-FedAvg: δ of the (ε, δ) guarantee"},
	{"dp_epsilon", "float", "0", "DP-FedAvg: privacy budget; the run stops before a round that would pass it (0: none)"},
	{"dp_adaptive_clip", "bool", "false", "DP-FedAvg: adapt dp_clip each round toward the median update norm (Andrew et al. 2021; its privacy cost counted)"},
	{"dp_distributed", "bool", "false", "DP-FedAvg: each worker clips and adds its share of the noise (σ·dp_clip/√n) instead of the coordinator"},
	{"seed", "int", "1", "seed of everything random"},
	{"eval_every", "int", "1", "evaluate on the test set every this many rounds"},
	{"test_examples", "int", "0", "evaluate on the first n test examples (0: all)"},
}

// Experiment is a parsed experiment file: each key's values (one, or
// several for a sweep).
type Experiment struct {
	Values map[string][]string
}

func keyByName(name string) (Key, bool) {
	for _, k := range Keys {
		if k.Name == name {
			return k, true
		}
	}
	return Key{}, false
}

// ParseExperiment reads an experiment from YAML.
func ParseExperiment(b []byte) (*Experiment, error) {
	var raw map[string]yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&raw); err != nil && err.Error() != "EOF" {
		return nil, fmt.Errorf("experiment: %w", err)
	}
	e := &Experiment{Values: map[string][]string{}}
	names := make([]string, 0, len(raw))
	for name := range raw {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		node := raw[name]
		var vals []string
		switch node.Kind {
		case yaml.ScalarNode:
			vals = []string{node.Value}
		case yaml.SequenceNode:
			for _, c := range node.Content {
				if c.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("experiment: key %q (line %d): list items must be plain values", name, c.Line)
				}
				vals = append(vals, c.Value)
			}
			if len(vals) == 0 {
				return nil, fmt.Errorf("experiment: key %q (line %d): empty list", name, node.Line)
			}
		default:
			return nil, fmt.Errorf("experiment: key %q (line %d): want a value or a list of values", name, node.Line)
		}
		if err := e.Set(name, vals...); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// LoadExperiment reads an experiment file; an empty path gives the defaults.
func LoadExperiment(path string) (*Experiment, error) {
	if path == "" {
		return &Experiment{Values: map[string][]string{}}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	e, err := ParseExperiment(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

// Set gives key one or more values (overriding the file), checking each
// parses as the key's kind.
func (e *Experiment) Set(name string, vals ...string) error {
	k, ok := keyByName(name)
	if !ok {
		return fmt.Errorf("experiment: unknown key %q (known: %s)", name, strings.Join(keyNames(), ", "))
	}
	for _, v := range vals {
		if err := checkKind(k, v); err != nil {
			return err
		}
	}
	e.Values[name] = vals
	return nil
}

func keyNames() []string {
	out := make([]string, len(Keys))
	for i, k := range Keys {
		out[i] = k.Name
	}
	return out
}

func checkKind(k Key, v string) error {
	var err error
	switch k.Kind {
	case "int":
		_, err = strconv.Atoi(v)
	case "float":
		_, err = strconv.ParseFloat(v, 64)
	case "bool":
		_, err = strconv.ParseBool(v)
	}
	if err != nil {
		return fmt.Errorf("experiment: key %q: %q is not a%s %s", k.Name, v, map[bool]string{true: "n", false: ""}[k.Kind == "int"], k.Kind)
	}
	return nil
}

// Swept returns the keys given more than one value, in sweep order.
func (e *Experiment) Swept() []string {
	var out []string
	for _, k := range Keys {
		if len(e.Values[k.Name]) > 1 {
			out = append(out, k.Name)
		}
	}
	return out
}

// Point is one point of an experiment's grid: a value for every key.
type Point map[string]string

// Label names a run by its swept keys, e.g. "aggregator=median attack=ipm".
func (r Point) Label(swept []string) string {
	parts := make([]string, len(swept))
	for i, k := range swept {
		parts[i] = k + "=" + r[k]
	}
	return strings.Join(parts, " ")
}

// Points returns the grid, each run validated (Config) before any is run.
func (e *Experiment) Points() ([]Point, error) {
	runs := []Point{{}}
	for _, k := range Keys {
		vals := e.Values[k.Name]
		if len(vals) == 0 {
			vals = []string{k.Def}
		}
		next := make([]Point, 0, len(runs)*len(vals))
		for _, r := range runs {
			for _, v := range vals {
				c := Point{}
				for kk, vv := range r {
					c[kk] = vv
				}
				c[k.Name] = v
				next = append(next, c)
			}
		}
		runs = next
	}
	for _, r := range runs {
		if _, err := r.Config(); err != nil {
			if label := r.Label(e.Swept()); label != "" {
				return nil, fmt.Errorf("experiment run %s: %w", label, err)
			}
			return nil, err
		}
	}
	return runs, nil
}

// Languages returns the words data set's languages.
func (r Point) Languages() []string { return strings.Split(r["languages"], "+") }

func (r Point) int(k string) int       { v, _ := strconv.Atoi(r[k]); return v }
func (r Point) float(k string) float64 { v, _ := strconv.ParseFloat(r[k], 64); return v }
func (r Point) bool(k string) bool     { v, _ := strconv.ParseBool(r[k]); return v }

// perRound is how many workers a round samples.
func perRound(c Config) int {
	if c.ClientsPerRound == 0 {
		return c.Workers
	}
	return c.ClientsPerRound
}

// updatesPerRound is how many updates a round (sync) or version (async)
// aggregates as planned.
func updatesPerRound(c Config) int {
	if c.Mode == "async" && c.Async != nil {
		return int(c.Async.BufferSize)
	}
	return perRound(c)
}

func keyErr(k, format string, a ...any) error {
	return fmt.Errorf("key %q: %s", k, fmt.Sprintf(format, a...))
}

// dpKeys names the experiment key of each job spec field NormalizeDP may
// refuse.
var dpKeys = map[string]string{"dp.adaptive_clip": "dp_adaptive_clip", "dp.count_noise": "clients_per_round", "dp.noise_multiplier": "dp_noise", "dp.clip_norm": "dp_clip", "dp.delta": "dp_delta", "dp.epsilon": "dp_epsilon",
	"aggregator": "aggregator", "mode": "mode", "aggregator_params.clip_norm": "clip_norm"}

// Config turns a run into a sim Config, refusing impossible values with
// the key named.
func (r Point) Config() (Config, error) {
	c := Config{
		Model: r["model"], Workers: r.int("workers"), ClientsPerRound: r.int("clients_per_round"), Rounds: r.int("rounds"),
		Partition: dataset.Partition{Kind: r["partition"], Alpha: r.float("alpha"), Shards: r.int("shards"), Seed: uint64(r.int("seed"))},
		Train: model.TrainConfig{Epochs: r.int("local_epochs"), Steps: r.int("local_steps"), BatchSize: r.int("batch_size"),
			LR: r.float("lr"), Momentum: r.float("momentum"), ProxMu: r.float("prox_mu")},
		Rule: r["aggregator"],
		Params: aggregation.Params{TrimFraction: r.float("trim_fraction"), F: r.int("f"), M: r.int("multi_krum_m"),
			ClipNorm: r.float("clip_norm"), Tau: r.float("tau"), Iterations: r.int("agg_iterations")},
		Server: aggregation.ServerOptimizer{Name: r["server_optimizer"], LR: r.float("server_lr"), Beta1: r.float("server_beta1"),
			Beta2: r.float("server_beta2"), Eps: r.float("server_epsilon")},
		Codec: r["codec"], NoErrorFeedback: !r.bool("error_feedback"), Attack: r["attack"], Byzantine: r.float("byzantine"),
		Dropout: r.float("dropout"), MinUpdates: r.int("min_updates"), OverSelect: r.float("over_select"), WorkerMomentum: r.float("worker_momentum"), Seed: uint64(r.int("seed")), EvalEvery: r.int("eval_every"),
		Mode: r["mode"], Speed: r["speed"], SecondsPerExample: r.float("seconds_per_example"), SpeedJitter: r.float("speed_jitter"), DetectSeconds: r.float("detect_seconds"),
	}
	if c.Mode == "async" {
		c.Async = &pb.AsyncSpec{BufferSize: uint32(r.int("buffer_size")), Concurrency: uint32(r.int("concurrency")), Staleness: r["staleness"],
			StalenessA: r.float("staleness_a"), StalenessB: uint32(r.int("staleness_b")), MaxStaleness: uint32(r.int("max_staleness")), MaxPerWorker: uint32(r.int("max_per_worker")),
			FairWindow: uint32(r.int("fair_window")), FairBy: r["fair_by"], ConcurrencyFinal: uint32(r.int("concurrency_final")),
			DriftCorrection: r.float("drift_correction")}
	}
	if r.float("dp_noise") != 0 {
		c.DP = &pb.DPSpec{NoiseMultiplier: r.float("dp_noise"), ClipNorm: r.float("dp_clip"), Delta: r.float("dp_delta"), Epsilon: r.float("dp_epsilon"), Distributed: r.bool("dp_distributed"),
			AdaptiveClip: r.bool("dp_adaptive_clip")}
		if c.Params.ClipNorm == 0 && !c.DP.Distributed {
			c.Params.ClipNorm = c.DP.ClipNorm
		}
	}
	if u := r.int("updates"); u != 0 {
		per := updatesPerRound(c)
		if u < 0 || per < 1 || u%per != 0 {
			return c, keyErr("updates", "%d is not a whole number of rounds of %d updates", u, per)
		}
		c.Rounds = u / per
	}
	switch {
	case r["dataset"] != "mnist" && r["dataset"] != "words":
		return c, keyErr("dataset", "unknown data set %q (known: mnist, words)", r["dataset"])
	case c.Workers < 1 || c.Workers > MaxWorkers:
		return c, keyErr("workers", "%d, want 1 to %d", c.Workers, MaxWorkers)
	case c.Rounds < 1 || c.Rounds > MaxRounds:
		return c, keyErr("rounds", "%d, want 1 to %d", c.Rounds, MaxRounds)
	case c.ClientsPerRound < 0 || c.ClientsPerRound > c.Workers:
		return c, keyErr("clients_per_round", "%d clients per round of %d workers", c.ClientsPerRound, c.Workers)
	case c.Train.BatchSize < 1:
		return c, keyErr("batch_size", "%d, want at least 1", c.Train.BatchSize)
	case c.Train.BatchSize > 1<<16:
		return c, keyErr("batch_size", "%d, want at most %d", c.Train.BatchSize, 1<<16)
	case !(c.Train.LR > 0) || c.Train.LR > 100:
		return c, keyErr("lr", "%v, want > 0 and ≤ 100", c.Train.LR)
	case c.Byzantine < 0 || c.Byzantine >= 1:
		return c, keyErr("byzantine", "fraction %v, want [0, 1)", c.Byzantine)
	case c.Dropout < 0 || c.Dropout >= 1:
		return c, keyErr("dropout", "probability %v, want [0, 1)", c.Dropout)
	case c.WorkerMomentum < 0 || c.WorkerMomentum >= 1:
		return c, keyErr("worker_momentum", "%v, want [0, 1)", c.WorkerMomentum)
	case c.MinUpdates < 1 || c.MinUpdates > perRound(c):
		return c, keyErr("min_updates", "%d, want 1 to the %d clients per round", c.MinUpdates, perRound(c))
	case c.OverSelect < 0 || c.OverSelect > 10:
		return c, keyErr("over_select", "%v, want 0 to 10", c.OverSelect)
	case c.OverSelect > 0 && (c.ClientsPerRound == 0 || c.Mode == "async"):
		return c, keyErr("over_select", "over-selection needs sync rounds with clients_per_round set")
	case c.EvalEvery < 1:
		return c, keyErr("eval_every", "%d, want at least 1", c.EvalEvery)
	case c.Mode != "sync" && c.Mode != "async":
		return c, keyErr("mode", "%q, want sync or async", c.Mode)
	case !(c.SecondsPerExample > 0):
		return c, keyErr("seconds_per_example", "%v, want > 0", c.SecondsPerExample)
	case !(c.SpeedJitter >= 0 && c.SpeedJitter <= 3):
		return c, keyErr("speed_jitter", "%v, want 0 (none) to 3", c.SpeedJitter)
	case !(c.DetectSeconds >= 0) || math.IsInf(c.DetectSeconds, 0):
		return c, keyErr("detect_seconds", "%v, want a finite value ≥ 0", c.DetectSeconds)
	}
	if c.DP != nil {
		if _, _, err := withDP(c); err != nil {
			key := "dp_noise"
			if fe, ok := errors.AsType[*round.FieldError](err); ok {
				if k, ok := dpKeys[fe.Field]; ok {
					key = k
				}
			}
			return c, keyErr(key, "%v", err)
		}
	}
	if _, err := ParseSpeeds(c.Speed, c.Workers, c.Seed); err != nil {
		return c, keyErr("speed", "%v", err)
	}
	if c.Mode == "async" {
		switch {
		case r.int("buffer_size") < 1 || r.int("buffer_size") > c.Workers:
			return c, keyErr("buffer_size", "%d, want 1 to the %d workers", r.int("buffer_size"), c.Workers)
		case r.int("concurrency") < 0 || r.int("concurrency") > c.Workers:
			return c, keyErr("concurrency", "%d, want 0 (default) to the %d workers", r.int("concurrency"), c.Workers)
		case r.int("concurrency_final") < 0 || r.int("concurrency_final") > c.Workers:
			return c, keyErr("concurrency_final", "%d, want 0 (constant) to the %d workers", r.int("concurrency_final"), c.Workers)
		case r.int("max_per_worker") < 1:
			return c, keyErr("max_per_worker", "%d, want at least 1", r.int("max_per_worker"))
		case r.int("fair_window") < 1:
			return c, keyErr("fair_window", "%d, want at least 1", r.int("fair_window"))
		case r["fair_by"] != "" && r["fair_by"] != "tier" && r["fair_by"] != "group":
			return c, keyErr("fair_by", "%q, want tier or group (the simulated workers' labels)", r["fair_by"])
		case c.Attack != "none" || c.WorkerMomentum > 0:
			return c, keyErr("mode", "async simulates no attack or worker momentum")
		}
		spec := &pb.JobSpec{Mode: "async", Async: proto.Clone(c.Async).(*pb.AsyncSpec), Aggregator: c.Rule, AggregatorParams: &pb.AggregatorParams{F: uint32(c.Params.F), TrimFraction: c.Params.TrimFraction}}
		if err := round.NormalizeAsync(spec); err != nil {
			key := "buffer_size" // the rule's dry run on a buffer of that size
			if pe, ok := errors.AsType[*round.ParamError](err); ok {
				key = pe.Param
			}
			return c, keyErr(key, "%v", err)
		}
		if spec.Async.Concurrency > uint32(c.Workers) {
			c.Async.Concurrency = uint32(c.Workers) // the default 2 × buffer_size, capped
		}
	}
	arch, err := model.Lookup(c.Model)
	if err != nil {
		return c, keyErr("model", "%v", err)
	}
	dim, classes := 784, 10
	if r["dataset"] == "words" {
		dim, classes = dataset.WordsDim, dataset.WordsClasses
		langs := r.Languages()
		for _, l := range langs {
			if _, ok := dataset.Languages[l]; !ok {
				return c, keyErr("languages", "unknown language %q (known: de, en, es, fr)", l)
			}
		}
		if r["partition"] == "groups" && c.Workers < len(langs) {
			return c, keyErr("workers", "%d workers for %d language groups", c.Workers, len(langs))
		}
	} else if r["partition"] == "groups" {
		return c, keyErr("partition", "groups needs dataset: words (one language per group)")
	}
	if err := arch.CheckData(dim, classes); err != nil {
		return c, keyErr("model", "%s does not fit data set %s: %v (words needs words-mlp)", c.Model, r["dataset"], err)
	}
	if _, err := codec.New(c.Codec); err != nil {
		return c, keyErr("codec", "%v", err)
	}
	if !slices.Contains(Attacks, c.Attack) {
		return c, keyErr("attack", "unknown attack %q (known: %s)", c.Attack, strings.Join(Attacks, ", "))
	}
	if _, err := aggregation.NewServerOptimizer(c.Server); err != nil {
		return c, keyErr("server_optimizer", "%v", err)
	}
	if _, err := aggregation.NewRule(c.Rule, c.Params); err != nil {
		return c, keyErr("aggregator", "%v", err)
	}
	if r["partition"] != "groups" {
		if _, err := c.Partition.Split(make([]uint8, c.Workers), 1, c.Workers); err != nil {
			return c, keyErr("partition", "%v", err)
		}
	}
	// Can the rule tolerate the attackers it will meet? A round has k
	// updates of which about byzantine × k attack.
	k := perRound(c)
	if c.Attack != "none" && c.Byzantine > 0 {
		bad := int(c.Byzantine * float64(k))
		switch c.Rule {
		case "median", "geomedian", "centered-clip":
			if c.Byzantine >= 0.5 {
				return c, keyErr("byzantine", "fraction %v: %s tolerates fewer than half the updates", c.Byzantine, c.Rule)
			}
		case "trimmed-mean":
			if c.Params.TrimFraction < c.Byzantine {
				return c, keyErr("trim_fraction", "%v cuts fewer values than the Byzantine fraction %v", c.Params.TrimFraction, c.Byzantine)
			}
		case "krum", "multi-krum":
			if k < 2*bad+3 {
				return c, keyErr("byzantine", "fraction %v: %d attackers among %d updates, Krum needs n ≥ 2f+3", c.Byzantine, bad, k)
			}
		case "bulyan":
			if k < 4*bad+3 {
				return c, keyErr("byzantine", "fraction %v: %d attackers among %d updates, Bulyan needs n ≥ 4f+3", c.Byzantine, bad, k)
			}
		}
	}
	return c, nil
}
