package model

import (
	"fmt"

	"github.com/fedtune/fedtune/tensor"
)

// Predictor gives a Llama's next-token logits after a prefix, for
// generation. It runs the forward pass over a fixed window (the prefix's
// last window tokens; causal attention makes the padding after them
// irrelevant). It is used by one goroutine at a time.
type Predictor struct {
	m      Llama
	gr     *llamaGraph
	window int
}

// NewPredictor loads params into a forward pass over window tokens.
func (m Llama) NewPredictor(params tensor.Set, window int) (*Predictor, error) {
	if err := tensor.SameLayout(params, m.Layout()); err != nil {
		return nil, fmt.Errorf("predict: model does not fit %v: %w", m, err)
	}
	if window < 1 || window > m.Config.MaxPositionEmbeddings {
		return nil, fmt.Errorf("predict: window of %d tokens, want 1 to max_position_embeddings %d", window, m.Config.MaxPositionEmbeddings)
	}
	gr, err := newLlamaGraph(m, graphSpec{batch: 1, seq: window})
	if err != nil {
		return nil, err
	}
	gr.load(params)
	return &Predictor{m: m, gr: gr, window: window}, nil
}

// Next returns the logits (vocabulary-sized, aliasing the predictor's
// buffer until the next call) of the token following prefix.
func (p *Predictor) Next(prefix []int) ([]float32, error) {
	if len(prefix) == 0 {
		return nil, fmt.Errorf("predict: empty prefix")
	}
	if len(prefix) > p.window {
		prefix = prefix[len(prefix)-p.window:]
	}
	v := p.m.Config.VocabSize
	for i := range p.gr.ids {
		p.gr.ids[i], p.gr.targets[i] = 0, -1
		if i < len(prefix) {
			if prefix[i] < 0 || prefix[i] >= v {
				return nil, fmt.Errorf("predict: token %d outside the vocabulary of %d", prefix[i], v)
			}
			p.gr.ids[i] = int32(prefix[i])
		}
	}
	if err := p.gr.run(); err != nil {
		return nil, fmt.Errorf("predict: %w", err)
	}
	logits := p.gr.logits.Value().Data().([]float32)
	last := len(prefix) - 1
	return logits[last*v : (last+1)*v], nil
}

// Close releases the Gorgonia machine.
func (p *Predictor) Close() { p.gr.close() }
