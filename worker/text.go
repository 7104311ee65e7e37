package worker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/lm"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tokenizer"
)

// Text data: a worker holds documents (its share of a corpus, split into a
// training and a held-out part) under a data set name, and a text job
// brings the tokenizer its model was made with. The worker tokenises and
// packs its documents into sequences of the job's length once per
// (data set, tokenizer, length).

// Text is a worker's documents of one data set.
type Text struct {
	Train, HeldOut []string
}

// EvalResult is a federated evaluation: summed loss over count predicted
// examples or tokens, correct of them predicted exactly.
type EvalResult struct {
	LossSum        float64
	Count, Correct uint64
}

// Evaluator is a trainer that can also evaluate a model on the worker's
// held-out data (federated evaluation). GorgoniaTrainer is one.
type Evaluator interface {
	Evaluate(in Input, task *pb.Task) (EvalResult, error)
}

// AddText makes the documents of data set name available to text jobs.
func (g *GorgoniaTrainer) AddText(name string, t Text) {
	if g.text == nil {
		g.text = map[string]Text{}
	}
	g.text[name] = t
}

// textFor returns the text serving a job's data set: held under its name,
// or under a name of the family the job names (a job on "man" trains on a
// worker's man-fr; "text" takes any text).
func (g *GorgoniaTrainer) textFor(name string) (Text, bool) {
	if t, ok := g.text[name]; ok {
		return t, true
	}
	for k, t := range g.text {
		if name == "text" || dataset.Family(k) == name {
			return t, true
		}
	}
	return Text{}, false
}

// tokens returns the training (heldOut false) or held-out sequences of the
// task's data set, tokenised with the task's tokenizer.
func (g *GorgoniaTrainer) tokens(in Input, task *pb.Task, heldOut bool) (*dataset.Examples, error) {
	t, ok := g.textFor(task.Dataset)
	if !ok {
		return nil, fmt.Errorf("this worker holds no text for dataset %q: %w", task.Dataset, ErrNoData)
	}
	if len(in.Tokenizer) == 0 {
		return nil, fmt.Errorf("text job without a tokenizer")
	}
	sum := sha256.Sum256(in.Tokenizer)
	key := fmt.Sprintf("%s/%s/%d/%v", task.Dataset, hex.EncodeToString(sum[:8]), task.SeqLen, heldOut)
	if e, ok := g.packed[key]; ok {
		return e, nil
	}
	tok, err := tokenizer.Parse(in.Tokenizer)
	if err != nil {
		return nil, fmt.Errorf("the job's tokenizer: %w", err)
	}
	docs := t.Train
	if heldOut {
		docs = t.HeldOut
	}
	seq := int(task.SeqLen)
	seqs, err := lm.PackDocs(tok, docs, seq)
	if err != nil {
		return nil, fmt.Errorf("the job's tokenizer: %w", err)
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("%d documents of %s make no sequence of %d tokens", len(docs), task.Dataset, seq)
	}
	e, err := dataset.TokenExamples(seqs, tok.VocabSize())
	if err != nil {
		return nil, err
	}
	if g.packed == nil || len(g.packed) >= 8 {
		g.packed = map[string]*dataset.Examples{}
	}
	g.packed[key] = e
	return e, nil
}

// Evaluate scores the task's model (a LoRA job's adapters on the frozen
// base) on the held-out part of the worker's text.
func (g *GorgoniaTrainer) Evaluate(in Input, task *pb.Task) (EvalResult, error) {
	if task.Tokenizer == "" {
		return EvalResult{}, fmt.Errorf("federated evaluation is for text jobs; this job's data set %q has no held-out part on workers", task.Dataset)
	}
	data, err := g.tokens(in, task, true)
	if err != nil {
		return EvalResult{}, err
	}
	arch, err := model.LookupConfig(task.Model, task.ModelConfig)
	if err != nil {
		return EvalResult{}, err
	}
	params := in.Base
	if l := task.Lora; l != nil {
		if params, err = merged(arch, l, in.Frozen, in.Base); err != nil {
			return EvalResult{}, err
		}
	}
	ev, err := arch.NewEvaluator(8)
	if err != nil {
		return EvalResult{}, err
	}
	defer ev.Close()
	res, err := ev.Evaluate(params, data)
	if err != nil {
		return EvalResult{}, err
	}
	return EvalResult{LossSum: res.Loss * float64(res.N), Count: uint64(res.N), Correct: uint64(res.Accuracy*float64(res.N) + 0.5)}, nil
}

// merged folds adapters into the frozen base.
func merged(arch model.Architecture, l *pb.LoRASpec, frozen, adapters tensor.Set) (tensor.Set, error) {
	targets, err := model.Targets(arch, l.TargetModules)
	if err != nil {
		return tensor.Set{}, err
	}
	cfg := loraConfig(l)
	return cfg.Merge(staticBase(arch, targets), frozen, adapters)
}
