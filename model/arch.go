package model

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/fedtune/fedtune/dataset"
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

// Catalog answers the coordinator's questions about registered
// architectures (its Models seam) without the coordinator importing this
// package: the binary passes Catalog{}.
type Catalog struct{}

// Layout returns the named architecture's zero-valued parameters.
func (Catalog) Layout(name string) (tensor.Set, error) {
	a, err := Lookup(name)
	if err != nil {
		return tensor.Set{}, err
	}
	return a.Layout(), nil
}

// LoRATargets returns the weights LoRA may adapt in the named architecture.
func (Catalog) LoRATargets(name string) ([]string, error) {
	a, err := Lookup(name)
	if err != nil {
		return nil, err
	}
	return a.LoRATargets(), nil
}
