package lm

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/tokenizer"
)

// EndOfText is the special token separating documents in packed sequences.
const EndOfText = "<|endoftext|>"

// Corpus returns the documents a corpus name stands for: a text data set
// (man-<lang>, fortunes-<lang>; see dataset.Text) or a text file
// (documents separated by blank lines). maxBytes caps the text read (0: no
// cap).
func Corpus(name string, maxBytes int) ([]string, error) {
	if dataset.IsText(name) {
		return dataset.Text(name, maxBytes)
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("corpus %q is neither man-<lang>, fortunes-<lang> nor a readable file: %w", name, err)
	}
	if maxBytes > 0 && len(b) > maxBytes {
		b = b[:maxBytes]
	}
	var docs []string
	for _, d := range strings.Split(string(b), "\n\n") {
		if d = strings.TrimSpace(d); d != "" {
			docs = append(docs, d)
		}
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%s holds no text", name)
	}
	return docs, nil
}

// PackDocs tokenises docs and packs them, each followed by the end-of-text
// token, into sequences of seq tokens.
func PackDocs(tok *tokenizer.Tokenizer, docs []string, seq int) ([][]int, error) {
	eos := tok.Encode(EndOfText)
	if len(eos) != 1 {
		return nil, fmt.Errorf("the tokenizer has no special token %s", EndOfText)
	}
	enc := make([][]int, len(docs))
	for i, d := range docs {
		enc[i] = tok.Encode(d)
	}
	return dataset.Pack(enc, eos[0], seq-1), nil
}

// PretrainOptions is a run making a small base model from scratch.
type PretrainOptions struct {
	Config    hf.Config            // sizes (vocab_size is the tokenizer's)
	Tok       *tokenizer.Tokenizer // nil: train one on Docs with VocabSize tokens
	VocabSize int
	Docs      []string
	Seq       int // tokens per training sequence
	Train     model.TrainConfig
	Seed      uint64
	// TokenizerProgress, if set, reports tokenizer training.
	TokenizerProgress func(done, total int)
}

// Pretrain trains a tokenizer (unless given) and a Llama of o.Config from
// o.Seed's initialisation on o.Docs, and returns it as a checkpoint.
func Pretrain(ctx context.Context, o PretrainOptions) (*Checkpoint, model.TrainMetrics, error) {
	var met model.TrainMetrics
	tok := o.Tok
	if tok == nil {
		var err error
		if tok, err = tokenizer.Train(o.Docs, o.VocabSize, tokenizer.Llama3Pattern, []string{EndOfText}, o.TokenizerProgress); err != nil {
			return nil, met, err
		}
	}
	cfg := o.Config
	cfg.VocabSize = tok.VocabSize()
	if err := cfg.Check(); err != nil {
		return nil, met, err
	}
	seqs, err := PackDocs(tok, o.Docs, o.Seq)
	if err != nil {
		return nil, met, err
	}
	data, err := dataset.TokenExamples(seqs, cfg.VocabSize)
	if err != nil {
		return nil, met, fmt.Errorf("pretrain: %w", err)
	}
	m := model.Llama{Config: cfg}
	tr, err := m.NewTrainer()
	if err != nil {
		return nil, met, err
	}
	defer tr.Close()
	params, met, err := tr.Train(ctx, m.Init(o.Seed), data, o.Train)
	if err != nil {
		return nil, met, fmt.Errorf("pretrain: %w", err)
	}
	return &Checkpoint{Model: m, Params: params, Tok: tok}, met, nil
}
