package round

import (
	"errors"
	"fmt"
	"math"
	"regexp"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/lora"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
)

// Bounds on a job spec's numbers. They are far beyond any sensible job and
// exist so that an absurd value is refused at submit rather than leaving a
// job that waits forever, overflows a counter or diverges by construction.
const (
	MaxRounds          = 1_000_000
	MaxClientsPerRound = 10_000
	MaxBatchSize       = 1 << 16
	MaxLocalEpochs     = 1_000
	MaxLocalSteps      = 10_000_000
	MaxLearningRate    = 100.0
	MaxRoundTimeout    = 7 * 24 * 3600.0 // seconds: a week
	MaxOverSelect      = 10.0
	MaxSeqLen          = 1 << 15
	// MaxModelConfig bounds the model configuration a spec carries.
	MaxModelConfig = 64 << 10
	// DefaultSeqLen is a text job's tokens per sequence.
	DefaultSeqLen       = 128
	DefaultRoundTimeout = 300.0 // seconds
	// DefaultMaxUpdateRatio bounds an update's L2 norm by this multiple of
	// the norm of the model it was trained from (max_update_ratio 0).
	DefaultMaxUpdateRatio = 10.0
	// DefaultMaxSamples caps the example count an update may claim, and so
	// its FedAvg weight, in a job that caps neither local steps nor
	// max_samples; with local_steps S, the cap is S × batch_size.
	DefaultMaxSamples = 1_000_000
)

// FieldError is a job spec field NormalizeSpec refuses, named by its path
// in JobSpec (rounds, train.learning_rate, aggregator_params.tau), so that
// a front end can name its own flag or key for it.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns the reason.
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{field, fmt.Errorf(format, args...)}
}

// checkFloat refuses a NaN, an infinity, or a value outside [lo, hi].
func checkFloat(field string, v, lo, hi float64) error {
	if !math.IsNaN(v) && !math.IsInf(v, 0) && v >= lo && v <= hi {
		return nil
	}
	switch {
	case hi == math.MaxFloat64:
		return fieldErr(field, "%v: want a finite number ≥ %g", v, lo)
	case lo == math.SmallestNonzeroFloat64:
		return fieldErr(field, "%v: want a number > 0 and ≤ %g", v, hi)
	case hi == math.Nextafter(1, 0):
		return fieldErr(field, "%v: want a number ≥ %g and < 1", v, lo)
	}
	return fieldErr(field, "%v: want a number from %g to %g", v, lo, hi)
}

// checkUint refuses a value above hi.
func checkUint[T uint32 | uint64](field string, v, hi T) error {
	if v > hi {
		return fieldErr(field, "%d: want at most %d", v, hi)
	}
	return nil
}

var jobName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Models is what job spec normalisation (and the coordinator) needs to know
// of the model families a job may name: their parameter layout and the 2-D
// weights LoRA may adapt. The binary answers with the model registry
// (model.Catalog), so that neither this package nor the coordinator
// imports the models.
type Models interface {
	// Layout returns the named architecture's zero-valued parameters, or
	// an error naming the known architectures. config is a family's
	// configuration (llama: config.json), empty for a registered one.
	Layout(model string, config []byte) (tensor.Set, error)
	// LoRATargets names the weights LoRA adapts in the architecture for
	// PEFT-style target modules (none: the family's default).
	LoRATargets(model string, config []byte, modules []string) ([]string, error)
}

// NormalizeSpec fills a job spec's defaults and checks every field, naming
// the bad one in its error (a *FieldError for numbers, a *ParamError for
// async parameters). models answers for the model name; checkDataset, if
// not nil, refuses a data set name (a coordinator without an evaluator
// leaves data sets to its workers).
func NormalizeSpec(spec *pb.JobSpec, models Models, checkDataset func(string) error) error {
	if spec == nil {
		return errors.New("job spec is missing")
	}
	if !jobName.MatchString(spec.Name) {
		return fieldErr("name", "%q is not a valid job name: use 1-63 letters, digits, '.', '_' or '-'", spec.Name)
	}
	if len(spec.ModelConfig) > MaxModelConfig {
		return fieldErr("model_config", "%d bytes, at most %d", len(spec.ModelConfig), MaxModelConfig)
	}
	layout, err := models.Layout(spec.Model, spec.ModelConfig)
	if err != nil {
		return &FieldError{"model", err}
	}
	if spec.Dataset == "" {
		return fieldErr("dataset", "missing")
	}
	if checkDataset != nil {
		if err := checkDataset(spec.Dataset); err != nil {
			return &FieldError{"dataset", err}
		}
	}
	if spec.Rounds == 0 {
		return fieldErr("rounds", "must be at least 1")
	}
	if spec.ClientsPerRound == 0 {
		spec.ClientsPerRound = 1
	}
	if spec.MinUpdates == 0 {
		spec.MinUpdates = spec.ClientsPerRound
	}
	if spec.RoundTimeoutSeconds == 0 {
		spec.RoundTimeoutSeconds = DefaultRoundTimeout
	}
	for _, err := range []error{
		checkUint("rounds", spec.Rounds, MaxRounds),
		checkUint("clients_per_round", spec.ClientsPerRound, MaxClientsPerRound),
		checkFloat("round_timeout_seconds", spec.RoundTimeoutSeconds, 1, MaxRoundTimeout),
		checkFloat("over_select", spec.OverSelect, 0, MaxOverSelect),
		checkFloat("max_update_norm", spec.MaxUpdateNorm, 0, math.MaxFloat64),
		checkFloat("max_update_ratio", spec.MaxUpdateRatio, 0, math.MaxFloat64),
	} {
		if err != nil {
			return err
		}
	}
	if n := len(spec.Allow); n > 0 && uint32(n) < spec.MinUpdates {
		return fieldErr("allow", "lists %d workers, fewer than min_updates %d", n, spec.MinUpdates)
	}
	if spec.MinUpdates > spec.ClientsPerRound {
		return fieldErr("min_updates", "%d exceeds clients_per_round %d", spec.MinUpdates, spec.ClientsPerRound)
	}
	if spec.Aggregator == "" {
		spec.Aggregator = "fedavg"
	}
	if err := checkAggregatorParams(spec.AggregatorParams); err != nil {
		return err
	}
	if _, err := aggregation.NewRule(spec.Aggregator, RuleParams(spec.AggregatorParams)); err != nil {
		return &FieldError{"aggregator", err}
	}
	if err := checkServerOptimizer(spec.ServerOptimizer); err != nil {
		return err
	}
	if spec.Codec == "" {
		spec.Codec = "fp32"
	}
	if _, err := codec.New(spec.Codec); err != nil {
		return &FieldError{"codec", err}
	}
	if spec.Lora != nil {
		targets, err := models.LoRATargets(spec.Model, spec.ModelConfig, spec.Lora.TargetModules)
		if err != nil {
			return &FieldError{"model", err}
		}
		if err := normalizeLoRA(spec, lora.Static{Params: layout, Targets: targets}); err != nil {
			return err
		}
	}
	if err := NormalizeAsync(spec); err != nil {
		return err
	}
	if err := normalizeEval(spec); err != nil {
		return err
	}
	if err := normalizeSecAgg(spec); err != nil {
		return err
	}
	if err := NormalizeDP(spec); err != nil {
		return err
	}
	return normalizeTrain(spec)
}

// normalizeTrain fills the local training recipe's defaults and bounds it.
func normalizeTrain(spec *pb.JobSpec) error {
	if spec.Train == nil {
		spec.Train = &pb.TrainConfig{}
	}
	t := spec.Train
	if t.BatchSize == 0 {
		t.BatchSize = 64
	}
	if t.LocalEpochs == 0 && t.LocalSteps == 0 {
		t.LocalEpochs = 1
	}
	if t.LearningRate == 0 {
		t.LearningRate = 0.05
	}
	for _, err := range []error{
		checkUint("train.batch_size", t.BatchSize, MaxBatchSize),
		checkUint("train.local_epochs", t.LocalEpochs, MaxLocalEpochs),
		checkUint("train.local_steps", t.LocalSteps, MaxLocalSteps),
		checkFloat("train.learning_rate", t.LearningRate, math.SmallestNonzeroFloat64, MaxLearningRate),
		checkFloat("train.momentum", t.Momentum, 0, math.Nextafter(1, 0)),
		checkFloat("train.prox_mu", t.ProxMu, 0, 1e6),
		checkFloat("train.weight_decay", t.WeightDecay, 0, math.Nextafter(1, 0)),
		checkFloat("train.clip_norm", t.ClipNorm, 0, math.MaxFloat64),
		checkUint("train.accum", t.Accum, 1<<16),
	} {
		if err != nil {
			return err
		}
	}
	switch t.Optimizer {
	case "", "sgd":
	case "adamw":
		if t.Momentum != 0 {
			return fieldErr("train.momentum", "%v is SGD's; adamw keeps its own moments (set 0)", t.Momentum)
		}
	default:
		return fieldErr("train.optimizer", "%q: want sgd or adamw", t.Optimizer)
	}
	return nil
}

// Evaluation modes of a job.
const (
	EvalCentral   = "central"   // the coordinator scores each model on its own test data
	EvalFederated = "federated" // workers score each model on their held-out data
	EvalNone      = "none"
)

// normalizeEval settles how a job's models are evaluated (evaluate = true
// is the older spelling of central) and a text job's sequence length.
func normalizeEval(spec *pb.JobSpec) error {
	switch spec.Evaluation {
	case "":
		spec.Evaluation = EvalNone
		if spec.Evaluate {
			spec.Evaluation = EvalCentral
		}
	case EvalCentral:
		spec.Evaluate = true
	case EvalFederated, EvalNone:
		if spec.Evaluate {
			return fieldErr("evaluate", "true asks for central evaluation, evaluation says %q", spec.Evaluation)
		}
	default:
		return fieldErr("evaluation", "%q: want central, federated or none", spec.Evaluation)
	}
	if spec.Evaluation != EvalFederated && (spec.EvalClients != 0 || spec.EvalGroupBy != "") {
		return fieldErr("eval_clients", "eval_clients and eval_group_by are for federated evaluation")
	}
	if err := checkUint("eval_clients", spec.EvalClients, MaxClientsPerRound); err != nil {
		return err
	}
	if len(spec.EvalGroupBy) > 63 {
		return fieldErr("eval_group_by", "label name of %d bytes (at most 63)", len(spec.EvalGroupBy))
	}
	if spec.Tokenizer != "" && spec.SeqLen == 0 {
		spec.SeqLen = DefaultSeqLen
	}
	if spec.SeqLen != 0 && (spec.SeqLen < 2 || spec.SeqLen > MaxSeqLen) {
		return fieldErr("seq_len", "%d: want 2 to %d tokens", spec.SeqLen, MaxSeqLen)
	}
	return nil
}

// checkAggregatorParams refuses non-finite or negative rule parameters
// (each rule checks its own ranges in aggregation.NewRule).
func checkAggregatorParams(p *pb.AggregatorParams) error {
	for _, err := range []error{
		checkFloat("aggregator_params.trim_fraction", p.GetTrimFraction(), 0, 0.5),
		checkFloat("aggregator_params.clip_norm", p.GetClipNorm(), 0, math.MaxFloat64),
		checkFloat("aggregator_params.tau", p.GetTau(), 0, math.MaxFloat64),
		checkFloat("aggregator_params.smoothing", p.GetSmoothing(), 0, 1),
		checkUint("aggregator_params.f", p.GetF(), MaxClientsPerRound),
		checkUint("aggregator_params.m", p.GetM(), MaxClientsPerRound),
		checkUint("aggregator_params.iterations", p.GetIterations(), 10_000),
	} {
		if err != nil {
			return err
		}
	}
	return nil
}

// checkServerOptimizer refuses non-finite optimizer parameters and names
// the optimizer's own range errors.
func checkServerOptimizer(o *pb.ServerOptimizer) error {
	for _, err := range []error{
		checkFloat("server_optimizer.lr", o.GetLr(), 0, MaxLearningRate),
		checkFloat("server_optimizer.beta1", o.GetBeta1(), 0, 1),
		checkFloat("server_optimizer.beta2", o.GetBeta2(), 0, 1),
		checkFloat("server_optimizer.epsilon", o.GetEpsilon(), 0, 1e6),
	} {
		if err != nil {
			return err
		}
	}
	if _, err := NewOptimizer(o); err != nil {
		return &FieldError{"server_optimizer", err}
	}
	return nil
}

// UpdateNormBound returns the largest L2 norm an update to a model of norm
// modelNorm may have in a job: max_update_norm if set, and
// max_update_ratio (default DefaultMaxUpdateRatio) times the model's norm
// (at least 1, so that an all-zero model still takes updates), whichever
// is smaller.
func UpdateNormBound(spec *pb.JobSpec, modelNorm float64) float64 {
	ratio := spec.GetMaxUpdateRatio()
	if ratio == 0 {
		ratio = DefaultMaxUpdateRatio
	}
	b := ratio * max(modelNorm, 1)
	if n := spec.GetMaxUpdateNorm(); n > 0 {
		b = min(b, n)
	}
	return b
}

// SampleCap returns the largest example count an update may claim in a
// job (its FedAvg weight): max_samples if set, else local_steps ×
// batch_size when local steps are capped (a worker cannot have trained on
// more), else DefaultMaxSamples.
func SampleCap(spec *pb.JobSpec) uint64 {
	if n := spec.GetMaxSamples(); n > 0 {
		return n
	}
	if t := spec.GetTrain(); t.GetLocalSteps() > 0 {
		return uint64(t.LocalSteps) * uint64(max(t.BatchSize, 1))
	}
	return DefaultMaxSamples
}

// normalizeLoRA fills a LoRA spec's defaults and checks it against the
// architecture and the job's rule.
func normalizeLoRA(spec *pb.JobSpec, base lora.Base) error {
	l := spec.Lora
	if l == nil {
		return nil
	}
	if err := (lora.Config{Rank: int(l.Rank)}).Check(base); err != nil {
		return err
	}
	if l.Alpha == 0 {
		l.Alpha = 2 * float64(l.Rank)
	}
	if !(l.Alpha > 0) || math.IsInf(l.Alpha, 0) {
		return fieldErr("lora.alpha", "%v must be a positive finite number", l.Alpha)
	}
	switch l.Aggregation {
	case "":
		l.Aggregation = LoRANaive
	case LoRANaive:
	case LoRAExact:
		if spec.Aggregator != "fedavg" {
			return fmt.Errorf("lora: aggregation %q averages the workers' products B·A; it cannot be combined with aggregator %q (use lora aggregation %q for robust rules)", LoRAExact, spec.Aggregator, LoRANaive)
		}
		if n := spec.ServerOptimizer.GetName(); n != "" && n != "plain" {
			return fmt.Errorf("lora: aggregation %q sets the adapters directly; server optimizer %q needs %q", LoRAExact, n, LoRANaive)
		}
	default:
		return fmt.Errorf("lora: aggregation %q: want %s or %s", l.Aggregation, LoRANaive, LoRAExact)
	}
	return nil
}
