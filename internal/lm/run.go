package lm

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/tensor"
)

// Eval returns the mean next-token cross-entropy (nats) of params over
// every predicted token of seqs, cut into windows of at most seq tokens
// (each window predicts its tokens after the first), and the top-1
// accuracy and number of tokens predicted.
func (c *Checkpoint) Eval(params tensor.Set, seqs [][]int, seq, batch int) (model.Eval, error) {
	if seq < 2 || seq > c.Model.Config.MaxPositionEmbeddings {
		return model.Eval{}, fmt.Errorf("sequence length %d: want 2 to max_position_embeddings %d", seq, c.Model.Config.MaxPositionEmbeddings)
	}
	groups, err := byLength(Windows(seqs, seq), c.Model.Config.VocabSize)
	if err != nil {
		return model.Eval{}, err
	}
	if len(groups) == 0 {
		return model.Eval{}, fmt.Errorf("no sequence of two tokens or more to evaluate")
	}
	ev, err := c.Model.NewEvaluator(batch)
	if err != nil {
		return model.Eval{}, err
	}
	defer ev.Close()
	var total model.Eval
	var loss, acc float64
	for _, g := range groups {
		e, err := ev.Evaluate(params, g)
		if err != nil {
			return model.Eval{}, err
		}
		loss += e.Loss * float64(e.N)
		acc += e.Accuracy * float64(e.N)
		total.N += e.N
	}
	total.Loss, total.Accuracy = loss/float64(total.N), acc/float64(total.N)
	return total, nil
}

// TrainOptions is a local fine-tuning run.
type TrainOptions struct {
	Train model.TrainConfig
	Seq   int               // tokens per training sequence
	LoRA  *hf.AdapterConfig // nil: fine-tune every weight
	Seed  uint64            // adapter initialisation
}

// Train fine-tunes the checkpoint on seqs cut into windows of exactly
// o.Seq tokens (tails dropped). It returns the trained weights, or with
// o.LoRA the trained adapters (named as package lora names them).
func (c *Checkpoint) Train(ctx context.Context, seqs [][]int, o TrainOptions) (tensor.Set, model.TrainMetrics, error) {
	var met model.TrainMetrics
	var windows [][]int
	for _, w := range Windows(seqs, o.Seq) {
		if len(w) == o.Seq {
			windows = append(windows, w)
		}
	}
	if len(windows) == 0 {
		return tensor.Set{}, met, fmt.Errorf("no window of %d tokens in the data (lower --seq-len)", o.Seq)
	}
	data, err := dataset.TokenExamples(windows, c.Model.Config.VocabSize)
	if err != nil {
		return tensor.Set{}, met, err
	}
	tr, err := c.Model.NewTrainer()
	if err != nil {
		return tensor.Set{}, met, err
	}
	defer tr.Close()
	if o.LoRA == nil {
		return tr.Train(ctx, c.Params, data, o.Train)
	}
	targets, err := hf.Targets(c.Model.Config, o.LoRA.TargetModules)
	if err != nil {
		return tensor.Set{}, met, err
	}
	l := o.LoRA.LoRA()
	base := lora.Static{Params: c.Model.Layout(), Targets: targets}
	if err := l.Check(base); err != nil {
		return tensor.Set{}, met, err
	}
	adapter, err := l.Init(base, o.Seed)
	if err != nil {
		return tensor.Set{}, met, err
	}
	return tr.TrainAdapter(ctx, l, c.Params, adapter, data, o.Train)
}

// Sampling says how Generate picks tokens.
type Sampling struct {
	Temperature float64 // 0: greedy
	TopK        int     // 0: the whole vocabulary
	Seed        uint64
	Stop        []int // tokens that end generation (e.g. end of text)
}

// Generate continues prompt by up to n tokens sampled from params and
// returns the new tokens.
func (c *Checkpoint) Generate(params tensor.Set, prompt []int, n int, s Sampling) ([]int, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("generate: empty prompt")
	}
	if s.Temperature < 0 || math.IsNaN(s.Temperature) || s.TopK < 0 {
		return nil, fmt.Errorf("generate: temperature %v and top-k %d must not be negative", s.Temperature, s.TopK)
	}
	window := min(len(prompt)+n, c.Model.Config.MaxPositionEmbeddings)
	p, err := c.Model.NewPredictor(params, window)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	r := rand.New(rand.NewPCG(s.Seed, 0x9e4))
	ids := append([]int{}, prompt...)
	var out []int
	for len(out) < n {
		logits, err := p.Next(ids)
		if err != nil {
			return nil, err
		}
		next := sample(logits, s, r)
		out, ids = append(out, next), append(ids, next)
		for _, st := range s.Stop {
			if next == st {
				return out, nil
			}
		}
	}
	return out, nil
}

// sample picks a token from logits: the most likely at temperature 0,
// else from the softmax of logits/temperature over the top k.
func sample(logits []float32, s Sampling, r *rand.Rand) int {
	idx := make([]int, len(logits))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return logits[idx[a]] > logits[idx[b]] })
	if s.Temperature == 0 {
		return idx[0]
	}
	if s.TopK > 0 && s.TopK < len(idx) {
		idx = idx[:s.TopK]
	}
	w := make([]float64, len(idx))
	var sum float64
	for i, j := range idx {
		w[i] = math.Exp(float64(logits[j]-logits[idx[0]]) / s.Temperature)
		sum += w[i]
	}
	u := r.Float64() * sum
	for i, wi := range w {
		if u -= wi; u <= 0 {
			return idx[i]
		}
	}
	return idx[len(idx)-1]
}
