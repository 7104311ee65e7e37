package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/lm"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tokenizer"
)

// Language-model commands: model eval/train/generate on a Hugging Face
// directory, and model pretrain --model llama.

// lmDataFlags choose the token sequences a command reads.
func lmDataFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "tokens", Usage: "language models: token ids in a NumPy file (int32/int64, shape [T] or [batch, T])", EnvVars: []string{"FEDTUNE_TOKENS"}},
		&cli.StringFlag{Name: "text", Usage: "language models: a text file, tokenised with the model's tokenizer.json", EnvVars: []string{"FEDTUNE_TEXT"}},
		&cli.StringSliceFlag{Name: "corpus", Usage: "language models: text data sets man-<lang> or fortunes-<lang> (Debian's text in en, fr, de, es, it, pl, pt, ru; repeatable), documents packed with end-of-text tokens", EnvVars: []string{"FEDTUNE_CORPUS"}},
		&cli.IntFlag{Name: "max-bytes", Value: 4 << 20, Usage: "language models: cap on the text read from each --corpus (as the workers' --max-bytes)", EnvVars: []string{"FEDTUNE_MAX_BYTES"}},
		&cli.StringFlag{Name: "split", Value: "all", Usage: "language models: with --corpus, the documents of --num-partitions workers' shares to use: train (their training parts), held-out, or all", EnvVars: []string{"FEDTUNE_SPLIT"}},
		&cli.IntFlag{Name: "num-partitions", Value: 1, Usage: "language models: --split follows the shares of this many workers (as theirs)", EnvVars: []string{"FEDTUNE_NUM_PARTITIONS"}},
		&cli.Float64Flag{Name: "held-out", Value: 0.1, Usage: "language models: --split's held-out share (as the workers' --held-out)", EnvVars: []string{"FEDTUNE_HELD_OUT"}},
		&cli.Uint64Flag{Name: "partition-seed", Value: 1, Usage: "language models: --split's seed (as the workers' --partition-seed)", EnvVars: []string{"FEDTUNE_PARTITION_SEED"}},
		&cli.IntFlag{Name: "seq-len", Value: 128, Usage: "language models: tokens per sequence (longer inputs are cut into windows)", EnvVars: []string{"FEDTUNE_SEQ_LEN"}},
		&cli.StringFlag{Name: "adapter", Usage: "language models: a PEFT LoRA adapter directory applied to the model", EnvVars: []string{"FEDTUNE_ADAPTER"}},
	}
}

// lmSequences reads the token sequences --tokens, --text or --corpus name.
func lmSequences(c *cli.Context, ck *lm.Checkpoint) ([][]int, error) {
	given := 0
	for _, f := range []string{"tokens", "text", "corpus"} {
		if c.IsSet(f) {
			given++
		}
	}
	if given != 1 {
		return nil, fmt.Errorf("give one of --tokens ids.npy, --text FILE or --corpus NAME")
	}
	switch {
	case c.String("tokens") != "":
		return lm.ReadTokens(c.String("tokens"))
	case c.String("text") != "":
		b, err := os.ReadFile(c.String("text"))
		if err != nil {
			return nil, err
		}
		ids, err := ck.Encode(string(b))
		return [][]int{ids}, err
	}
	if ck.Tok == nil {
		return nil, fmt.Errorf("%s has no %s to tokenise --corpus with", ck.Dir, lm.TokenizerFile)
	}
	var docs []string
	for _, name := range c.StringSlice("corpus") {
		d, err := corpusSplit(c, name)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d...)
	}
	return lm.PackDocs(ck.Tok, docs, c.Int("seq-len"))
}

// corpusSplit reads one --corpus, or --split's part of the shares of
// --num-partitions workers.
func corpusSplit(c *cli.Context, name string) ([]string, error) {
	split := c.String("split")
	if split == "all" && !c.IsSet("num-partitions") {
		return lm.Corpus(name, c.Int("max-bytes"))
	}
	train, held, err := dataset.TextUnion(name, c.Int("max-bytes"), c.Int("num-partitions"), c.Float64("held-out"), c.Uint64("partition-seed"))
	switch {
	case err != nil:
		return nil, fmt.Errorf("--corpus %s: %w", name, err)
	case split == "train":
		return train, nil
	case split == "held-out":
		return held, nil
	case split == "all":
		return append(train, held...), nil
	}
	return nil, fmt.Errorf("--split %q: want train, held-out or all", split)
}

// lmWeights are the checkpoint's weights, with --adapter merged in.
func lmWeights(c *cli.Context, ck *lm.Checkpoint) (tensor.Set, error) {
	if c.String("adapter") == "" {
		return ck.Params, nil
	}
	p, _, err := ck.WithAdapter(c.String("adapter"))
	return p, err
}

// lmEval is model eval on a model directory.
func lmEval(c *cli.Context, dir string) error {
	ck, err := lm.Load(dir)
	if err != nil {
		return err
	}
	seqs, err := lmSequences(c, ck)
	if err != nil {
		return fmt.Errorf("model eval: %w", err)
	}
	params, err := lmWeights(c, ck)
	if err != nil {
		return err
	}
	res, err := ck.Eval(params, seqs, min(c.Int("seq-len"), ck.Model.Config.MaxPositionEmbeddings), c.Int("batch-size"))
	if err != nil {
		return fmt.Errorf("model eval: %w", err)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "loss %.6f\n", res.Loss)
	fmt.Fprintf(w, "perplexity %.4f\n", math.Exp(res.Loss))
	fmt.Fprintf(w, "tokens %d\n", res.N)
	fmt.Fprintf(w, "top-1 accuracy %.2f%%\n", 100*res.Accuracy)
	return nil
}

// lmTrainFlags are local training's flags.
func lmTrainFlags() []cli.Flag {
	return append(lmDataFlags(),
		&cli.IntFlag{Name: "steps", Value: 100, Usage: "optimizer steps", EnvVars: []string{"FEDTUNE_STEPS"}},
		&cli.IntFlag{Name: "epochs", Value: 100, Usage: "cap on passes over the data (--steps usually ends first)", EnvVars: []string{"FEDTUNE_EPOCHS"}},
		&cli.IntFlag{Name: "batch-size", Value: 8, Usage: "sequences per micro-batch", EnvVars: []string{"FEDTUNE_BATCH_SIZE"}},
		&cli.IntFlag{Name: "accum", Value: 1, Usage: "micro-batches per optimizer step (gradient accumulation)", EnvVars: []string{"FEDTUNE_ACCUM"}},
		&cli.Float64Flag{Name: "lr", Value: 1e-3, Usage: "learning rate", EnvVars: []string{"FEDTUNE_LR"}},
		&cli.StringFlag{Name: "optimizer", Value: model.AdamW, Usage: "sgd or adamw", EnvVars: []string{"FEDTUNE_OPTIMIZER"}},
		&cli.Float64Flag{Name: "momentum", Usage: "sgd: heavy-ball momentum", EnvVars: []string{"FEDTUNE_MOMENTUM"}},
		&cli.Float64Flag{Name: "weight-decay", Usage: "sgd: L2 penalty; adamw: decoupled decay", EnvVars: []string{"FEDTUNE_WEIGHT_DECAY"}},
		&cli.Float64Flag{Name: "clip-norm", Value: 1, Usage: "clip each step's gradient to this global L2 norm (0: off)", EnvVars: []string{"FEDTUNE_CLIP_NORM"}},
		&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "shuffling and initialisation seed", EnvVars: []string{"FEDTUNE_SEED"}},
	)
}

func trainConfig(c *cli.Context, progress func(done, total int, loss float64)) model.TrainConfig {
	return model.TrainConfig{Epochs: c.Int("epochs"), Steps: c.Int("steps"), BatchSize: c.Int("batch-size"), Accum: c.Int("accum"),
		LR: c.Float64("lr"), Optimizer: c.String("optimizer"), Momentum: c.Float64("momentum"), WeightDecay: c.Float64("weight-decay"),
		ClipNorm: c.Float64("clip-norm"), Seed: c.Uint64("seed"), Progress: progress}
}

// stepProgress prints a training line about every tenth of the run.
func stepProgress(c *cli.Context) func(done, total int, loss float64) {
	start, next := time.Now(), 0
	var sum float64
	var n int
	return func(done, total int, loss float64) {
		sum, n = sum+loss, n+1
		if done >= next || done == total {
			fmt.Fprintf(c.App.ErrWriter, "step %d/%d  loss %.4f  (%.0fs)\n", done, total, sum/float64(n), time.Since(start).Seconds())
			sum, n, next = 0, 0, done+max(total/10, 1)
		}
	}
}

func lmTrainCommand() *cli.Command {
	return &cli.Command{
		Name:      "train",
		Usage:     "fine-tune a language model locally (fully, or a LoRA adapter with --lora-rank): the centralised baseline of a federated job",
		ArgsUsage: "DIR",
		Flags: append(lmTrainFlags(),
			&cli.IntFlag{Name: "lora-rank", Usage: "train a LoRA adapter of this rank instead of every weight (0: full fine-tuning)", EnvVars: []string{"FEDTUNE_LORA_RANK"}},
			&cli.Float64Flag{Name: "lora-alpha", Value: 16, Usage: "LoRA scale numerator", EnvVars: []string{"FEDTUNE_LORA_ALPHA"}},
			&cli.StringSliceFlag{Name: "lora-targets", Value: cli.NewStringSlice(model.DefaultLoRAModules...), Usage: "modules LoRA adapts: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj", EnvVars: []string{"FEDTUNE_LORA_TARGETS"}},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "directory to write: the model (config.json, model.safetensors, tokenizer.json), or the PEFT adapter", EnvVars: []string{"FEDTUNE_MODEL_OUTPUT"}}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("model train: give one model directory")
			}
			ck, err := lm.Load(c.Args().First())
			if err != nil {
				return err
			}
			if c.String("adapter") != "" {
				return fmt.Errorf("model train: --adapter is for eval and generate; merge it first (or train a new one with --lora-rank)")
			}
			seqs, err := lmSequences(c, ck)
			if err != nil {
				return fmt.Errorf("model train: %w", err)
			}
			o := lm.TrainOptions{Train: trainConfig(c, stepProgress(c)), Seq: c.Int("seq-len"), Seed: c.Uint64("seed")}
			if r := c.Int("lora-rank"); r > 0 {
				o.LoRA = &hf.AdapterConfig{R: r, LoraAlpha: c.Float64("lora-alpha"), TargetModules: c.StringSlice("lora-targets"), BaseModel: c.Args().First()}
			}
			out, met, err := ck.Train(c.Context, seqs, o)
			if err != nil {
				return fmt.Errorf("model train: %w", err)
			}
			if o.LoRA != nil {
				err = hf.WriteAdapter(c.String("output"), ck.Model.Config, *o.LoRA, out)
			} else {
				err = ck.Save(c.String("output"), out, tensor.F32)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "trained %d steps on %d sequences of %d tokens (%d tokens seen, %.0f tokens/s); mean loss %.4f\nwrote %s (%d parameters)\n",
				met.Steps, met.Samples, o.Seq, met.Seen*o.Seq, float64(met.Seen*o.Seq)/met.Seconds, met.Loss, c.String("output"), out.Len())
			return nil
		},
	}
}

func lmGenerateCommand() *cli.Command {
	return &cli.Command{
		Name:      "generate",
		Usage:     "continue a prompt with a language model",
		ArgsUsage: "DIR",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "prompt", Required: true, Usage: "text to continue", EnvVars: []string{"FEDTUNE_PROMPT"}},
			&cli.IntFlag{Name: "max-tokens", Value: 64, Usage: "tokens to generate at most", EnvVars: []string{"FEDTUNE_MAX_TOKENS"}},
			&cli.Float64Flag{Name: "temperature", Value: 0.8, Usage: "sampling temperature (0: greedy)", EnvVars: []string{"FEDTUNE_TEMPERATURE"}},
			&cli.IntFlag{Name: "top-k", Value: 40, Usage: "sample among the k most likely tokens (0: all)", EnvVars: []string{"FEDTUNE_TOP_K"}},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "sampling seed", EnvVars: []string{"FEDTUNE_SEED"}},
			&cli.StringFlag{Name: "adapter", Usage: "a PEFT LoRA adapter directory applied to the model", EnvVars: []string{"FEDTUNE_ADAPTER"}},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("model generate: give one model directory")
			}
			ck, err := lm.Load(c.Args().First())
			if err != nil {
				return err
			}
			prompt, err := ck.Encode(c.String("prompt"))
			if err != nil {
				return fmt.Errorf("model generate: %w", err)
			}
			params, err := lmWeights(c, ck)
			if err != nil {
				return err
			}
			s := lm.Sampling{Temperature: c.Float64("temperature"), TopK: c.Int("top-k"), Seed: c.Uint64("seed")}
			if eos := ck.Tok.Encode(lm.EndOfText); len(eos) == 1 {
				s.Stop = eos
			}
			out, err := ck.Generate(params, prompt, c.Int("max-tokens"), s)
			if err != nil {
				return fmt.Errorf("model generate: %w", err)
			}
			text, err := ck.Tok.Decode(append(prompt, out...))
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, strings.TrimSuffix(string(text), lm.EndOfText))
			return nil
		},
	}
}

// llamaPretrainFlags are model pretrain's flags for --model llama.
func llamaPretrainFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "corpus", Value: "man-en", Usage: "llama: man-<lang>, fortunes-<lang> or a text file", EnvVars: []string{"FEDTUNE_CORPUS"}},
		&cli.IntFlag{Name: "max-bytes", Value: 4 << 20, Usage: "llama: cap on the text read", EnvVars: []string{"FEDTUNE_MAX_BYTES"}},
		&cli.StringFlag{Name: "tokenizer", Usage: "llama: a tokenizer.json to use (default: train a byte-level BPE on the corpus)", EnvVars: []string{"FEDTUNE_TOKENIZER"}},
		&cli.IntFlag{Name: "vocab-size", Value: 2048, Usage: "llama: tokens of the tokenizer trained", EnvVars: []string{"FEDTUNE_VOCAB_SIZE"}},
		&cli.IntFlag{Name: "layers", Value: 4, Usage: "llama: decoder layers", EnvVars: []string{"FEDTUNE_LAYERS"}},
		&cli.IntFlag{Name: "hidden", Value: 128, Usage: "llama: hidden size", EnvVars: []string{"FEDTUNE_HIDDEN"}},
		&cli.IntFlag{Name: "heads", Value: 4, Usage: "llama: attention heads", EnvVars: []string{"FEDTUNE_HEADS"}},
		&cli.IntFlag{Name: "kv-heads", Value: 2, Usage: "llama: key/value heads (grouped-query attention)", EnvVars: []string{"FEDTUNE_KV_HEADS"}},
		&cli.IntFlag{Name: "ffn", Value: 384, Usage: "llama: MLP intermediate size", EnvVars: []string{"FEDTUNE_FFN"}},
		&cli.IntFlag{Name: "seq-len", Value: 128, Usage: "llama: tokens per training sequence (also max_position_embeddings)", EnvVars: []string{"FEDTUNE_SEQ_LEN"}},
		&cli.IntFlag{Name: "steps", Value: 600, Usage: "llama: optimizer steps (AdamW)", EnvVars: []string{"FEDTUNE_STEPS"}},
		&cli.IntFlag{Name: "batch-size", Value: 16, Usage: "llama: sequences per step", EnvVars: []string{"FEDTUNE_BATCH_SIZE"}},
	}
}

// llamaPretrain is model pretrain --model llama.
func llamaPretrain(c *cli.Context) error {
	docs, err := lm.Corpus(c.String("corpus"), c.Int("max-bytes"))
	if err != nil {
		return err
	}
	var tok *tokenizer.Tokenizer
	if p := c.String("tokenizer"); p != "" {
		if tok, err = tokenizer.Load(p); err != nil {
			return err
		}
	}
	seq := c.Int("seq-len")
	hidden, heads := c.Int("hidden"), c.Int("heads")
	cfg := hf.Config{ModelType: "llama", Architectures: []string{"LlamaForCausalLM"}, HiddenSize: hidden, IntermediateSize: c.Int("ffn"),
		NumHiddenLayers: c.Int("layers"), NumAttentionHeads: heads, NumKeyValueHeads: c.Int("kv-heads"), MaxPositionEmbeddings: seq,
		RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true}
	fmt.Fprintf(c.App.ErrWriter, "corpus %s: %d documents\n", c.String("corpus"), len(docs))
	lr := c.Float64("lr")
	if !c.IsSet("lr") {
		lr = 3e-3
	}
	o := lm.PretrainOptions{Config: cfg, Tok: tok, VocabSize: c.Int("vocab-size"), Docs: docs, Seq: seq, Seed: c.Uint64("seed"),
		Train: model.TrainConfig{Epochs: 1000, Steps: c.Int("steps"), BatchSize: c.Int("batch-size"), LR: lr, Optimizer: model.AdamW,
			WeightDecay: 0.01, ClipNorm: 1, Seed: c.Uint64("seed"), Progress: stepProgress(c)}}
	ck, met, err := lm.Pretrain(c.Context, o)
	if err != nil {
		return err
	}
	out := c.String("output")
	if filepath.Ext(out) == ".safetensors" {
		return fmt.Errorf("model pretrain --model llama writes a model directory; -o %s names a file", out)
	}
	if err := ck.Save(out, ck.Params, tensor.F32); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "pretrained %v (%d parameters) for %d steps, final mean loss %.4f (%.0f tokens/s)\nwrote %s\n",
		ck.Model, ck.Model.Params(), met.Steps, met.Loss, float64(met.Seen*seq)/met.Seconds, out)
	return nil
}

// exportHF writes an exported language model (b, safetensors) as a
// Hugging Face directory: the model with the job's config.json and
// tokenizer.json, or a LoRA job's adapters as a PEFT adapter directory.
func exportHF(c *cli.Context, conn grpc.ClientConnInterface, spec *pb.JobSpec, b []byte, dir string) error {
	params, err := tensor.Unmarshal(b)
	if err != nil {
		return err
	}
	cfg, err := hf.ParseConfig(spec.ModelConfig)
	if err != nil {
		return err
	}
	if l := spec.Lora; l != nil && !c.Bool("merged") {
		modules := l.TargetModules
		if len(modules) == 0 {
			modules = model.DefaultLoRAModules
		}
		params.Metadata = nil
		ac := hf.AdapterConfig{R: int(l.Rank), LoraAlpha: l.Alpha, TargetModules: modules, BaseModel: spec.Name}
		if err := hf.WriteAdapter(dir, cfg, ac, params); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "wrote PEFT adapter directory %s (rank %d on %s, %d parameters)\n", dir, l.Rank, strings.Join(modules, ", "), params.Len())
		return nil
	}
	ck := &lm.Checkpoint{Model: model.Llama{Config: cfg}}
	if spec.Tokenizer != "" {
		tb, err := client.GetBlob(c.Context, conn, spec.Tokenizer, client.MaxMessage)
		if err != nil {
			return fmt.Errorf("tokenizer: %w", err)
		}
		if ck.Tok, err = tokenizer.Parse(tb); err != nil {
			return err
		}
	}
	params.Metadata = nil
	if err := ck.Save(dir, params, tensor.F32); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "wrote Hugging Face model directory %s (%v, %d parameters)\n", dir, ck.Model, params.Len())
	return nil
}
