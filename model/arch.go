package model

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/tensor"
)

// Architecture is a model family at one size: everything the rest of
// fedtune needs to know about a model. Adding a family is a type that
// implements it, in new files of this package, and one Register call.
type Architecture interface {
	// Layout returns zero-valued parameters with the model's names and
	// shapes; checkpoints and updates are checked against it.
	Layout() tensor.Set
	// Init returns freshly initialised parameters drawn from seed.
	Init(seed uint64) tensor.Set
	// LoRATargets names the 2-D weights LoRA adapters may adapt, in the
	// order their adapters are laid out (lora.Base).
	LoRATargets() []string
	// CheckData says whether examples with dim features and classes
	// labels fit the model's input and output.
	CheckData(dim, classes int) error
	// NewTrainer returns a trainer, used by one goroutine at a time.
	NewTrainer() (Trainer, error)
	// NewEvaluator returns an evaluator running batches of up to batch
	// examples, used by one goroutine at a time.
	NewEvaluator(batch int) (Evaluator, error)
	// String describes the size, for logs ("[784 256 10]").
	String() string
}

// Trainer runs local training of one architecture. It may keep state
// (graphs, buffers) between calls; Close releases it.
type Trainer interface {
	// Train runs local training from base on data and returns the trained
	// parameters.
	Train(ctx context.Context, base tensor.Set, data *dataset.Examples, cfg TrainConfig) (tensor.Set, TrainMetrics, error)
	// TrainAdapter trains LoRA adapters (starting from adapter) on the
	// frozen model frozen and returns the trained adapters.
	TrainAdapter(ctx context.Context, l lora.Config, frozen, adapter tensor.Set, data *dataset.Examples, cfg TrainConfig) (tensor.Set, TrainMetrics, error)
	Close()
}

// Evaluator scores parameters of one architecture on a data set.
type Evaluator interface {
	// Evaluate returns the accuracy and mean loss of params on every
	// example of data, refusing parameters that are not all finite.
	Evaluate(params tensor.Set, data *dataset.Examples) (Eval, error)
	Close()
}

// Eval is a model's quality on a data set.
type Eval struct {
	Accuracy float64 // fraction of examples classified correctly
	Loss     float64 // mean cross-entropy
	N        int
}

var registry = struct {
	sync.RWMutex
	by map[string]Architecture
}{by: map[string]Architecture{}}

// Register makes an architecture available under name (to jobs, the CLI
// and the simulator). It panics if the name is taken: registrations are
// made once, from init functions.
func Register(name string, a Architecture) {
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.by[name]; dup {
		panic(fmt.Sprintf("model: architecture %q registered twice", name))
	}
	registry.by[name] = a
}

// Lookup returns the architecture a job spec names.
func Lookup(name string) (Architecture, error) {
	registry.RLock()
	a, ok := registry.by[name]
	registry.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown model %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	return a, nil
}

// Names lists the registered architectures, sorted.
func Names() []string {
	registry.RLock()
	defer registry.RUnlock()
	ns := make([]string, 0, len(registry.by))
	for n := range registry.by {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// families are the model families configured by a checkpoint's
// configuration rather than registered at one size: a job names the family
// and carries its base's configuration (for llama, config.json).
var families = map[string]func(config []byte) (Architecture, error){
	"llama": func(config []byte) (Architecture, error) {
		c, err := hf.ParseConfig(config)
		if err != nil {
			return nil, err
		}
		return Llama{Config: c}, nil
	},
}

// MaxConfigBytes bounds a model configuration carried in a job spec.
const MaxConfigBytes = 64 << 10

// LookupConfig returns the architecture a job names: a registered one
// (config empty), or a family built from config.
func LookupConfig(name string, config []byte) (Architecture, error) {
	build, isFamily := families[name]
	if !isFamily {
		if len(config) > 0 {
			return nil, fmt.Errorf("model %q takes no configuration (families configured by one: %s)", name, strings.Join(familyNames(), ", "))
		}
		return Lookup(name)
	}
	if len(config) == 0 {
		return nil, fmt.Errorf("model %q needs its configuration (the base checkpoint's config.json: submit a Hugging Face directory as the base)", name)
	}
	if len(config) > MaxConfigBytes {
		return nil, fmt.Errorf("model %q: configuration of %d bytes exceeds %d", name, len(config), MaxConfigBytes)
	}
	return build(config)
}

func familyNames() []string {
	ns := make([]string, 0, len(families))
	for n := range families {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// Targets returns the weights of a that LoRA adapts for PEFT-style
// target_modules (a weight matches when its module's name ends with
// ".<module>"); no modules means Llama's default (q_proj, v_proj) or every
// weight an MLP may adapt.
func Targets(a Architecture, modules []string) ([]string, error) {
	all := a.LoRATargets()
	if _, ok := a.(Llama); !ok {
		if len(modules) > 0 {
			return nil, fmt.Errorf("target modules %v: %v adapts every layer (target modules are for transformer families)", modules, a)
		}
		return all, nil
	}
	if len(modules) == 0 {
		modules = DefaultLoRAModules
	}
	out, unmatched := lora.SelectTargets(all, modules)
	if unmatched != "" {
		return nil, fmt.Errorf("target module %q matches no weight LoRA may adapt in %v", unmatched, a)
	}
	return out, nil
}

// Catalog answers the coordinator's questions about architectures (its
// Models seam) without the coordinator importing this package: the binary
// passes Catalog{}.
type Catalog struct{}

// Layout returns the architecture's zero-valued parameters.
func (Catalog) Layout(name string, config []byte) (tensor.Set, error) {
	a, err := LookupConfig(name, config)
	if err != nil {
		return tensor.Set{}, err
	}
	return a.Layout(), nil
}

// LoRATargets returns the weights LoRA adapts in the architecture for the
// given target modules.
func (Catalog) LoRATargets(name string, config []byte, modules []string) ([]string, error) {
	a, err := LookupConfig(name, config)
	if err != nil {
		return nil, err
	}
	return Targets(a, modules)
}
