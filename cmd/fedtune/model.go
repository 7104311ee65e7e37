package main

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/demo"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/tensor"
)

func modelCommand() *cli.Command {
	modelFlag := &cli.StringFlag{Name: "model", Value: "mnist-mlp", Usage: "architecture: " + strings.Join(model.Names(), ", "), EnvVars: []string{"FEDTUNE_MODEL"}}
	outFlag := &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "safetensors file to write (llama: a model directory)", EnvVars: []string{"FEDTUNE_MODEL_OUTPUT"}}
	return &cli.Command{
		Name:  "model",
		Usage: "make, export and inspect checkpoints (safetensors)",
		Subcommands: []*cli.Command{
			{
				Name:  "export",
				Usage: "download a job's model as safetensors, or, for a language model, as a Hugging Face directory (-o DIR: config.json, weights, tokenizer.json; LoRA adapters as a PEFT adapter directory)",
				Flags: []cli.Flag{coordinatorFlag(), jobFlag(),
					&cli.UintFlag{Name: "round", Usage: "committed round (0: newest)", EnvVars: []string{"FEDTUNE_ROUND"}},
					&cli.BoolFlag{Name: "merged", Usage: "LoRA jobs: the base with the adapters folded in (default: the adapters, PEFT names)", EnvVars: []string{"FEDTUNE_MERGED"}}, outFlag},
				Action: func(c *cli.Context) error {
					pool, conn, err := dial(c)
					if err != nil {
						return err
					}
					defer pool.Close()
					name, err := jobName(c)
					if err != nil {
						return err
					}
					b, err := client.ExportModel(c.Context, conn, name, uint32(c.Uint("round")), c.Bool("merged"))
					if err != nil {
						return err
					}
					if out := c.String("output"); !strings.HasSuffix(out, ".safetensors") {
						st, err := rpcpb.NewAdminClient(conn).JobStatus(c.Context, &pb.JobStatusRequest{Name: name})
						if err != nil {
							return err
						}
						if len(st.Job.Spec.ModelConfig) > 0 {
							return exportHF(c, conn, st.Job.Spec, b, out)
						}
					}
					if err := os.WriteFile(c.String("output"), b, 0o644); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "wrote %s (%d bytes, sha256 %.12s)\n", c.String("output"), len(b), client.HashOf(b))
					return nil
				},
			},
			{
				Name:  "init",
				Usage: "write a freshly initialised checkpoint",
				Flags: []cli.Flag{modelFlag, outFlag, &cli.Uint64Flag{Name: "seed", Value: 1, Usage: "initialisation seed", EnvVars: []string{"FEDTUNE_SEED"}}},
				Action: func(c *cli.Context) error {
					arch, err := model.Lookup(c.String("model"))
					if err != nil {
						return err
					}
					return tensor.WriteFile(c.String("output"), arch.Init(c.Uint64("seed")), tensor.F32)
				},
			},
			{
				Name:  "pretrain",
				Usage: "train a base checkpoint centrally: an MLP on MNIST (some digits only) or a words data set, or a small Llama (--model llama) on Debian's text",
				Flags: append([]cli.Flag{modelFlag, outFlag,
					&cli.StringFlag{Name: "dataset", Value: "mnist", Usage: "mnist, or a words data set such as words-en (with --model words-mlp)", EnvVars: []string{"FEDTUNE_DATASET"}},
					&cli.StringFlag{Name: "digits", Value: "0,1,2,3,4", Usage: "mnist: comma-separated digits to train on", EnvVars: []string{"FEDTUNE_DIGITS"}},
					&cli.IntFlag{Name: "epochs", Value: 1, Usage: "epochs", EnvVars: []string{"FEDTUNE_EPOCHS"}},
					&cli.Float64Flag{Name: "lr", Value: 0.05, Usage: "learning rate (SGD, momentum 0.9, batch 64)", EnvVars: []string{"FEDTUNE_LR"}},
					&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "initialisation and shuffling seed", EnvVars: []string{"FEDTUNE_SEED"}}},
					llamaPretrainFlags()...),
				Action: func(c *cli.Context) error {
					if c.String("model") == "llama" {
						return llamaPretrain(c)
					}
					arch, err := model.Lookup(c.String("model"))
					if err != nil {
						return err
					}
					name := c.String("dataset")
					train, err := dataset.Load(name, dataset.Train)
					if err != nil {
						return err
					}
					test, err := dataset.Load(name, dataset.Test)
					if err != nil {
						return err
					}
					if name == "mnist" {
						var digits []uint8
						for _, d := range strings.Split(c.String("digits"), ",") {
							v, err := strconv.Atoi(strings.TrimSpace(d))
							if err != nil || v < 0 || v > 9 {
								return fmt.Errorf("--digits: %q is not a digit 0-9", d)
							}
							digits = append(digits, uint8(v))
						}
						train = train.Subset(train.WithLabels(digits...))
					}
					if err := arch.CheckData(train.Dim, train.Classes); err != nil {
						return fmt.Errorf("model %s on data set %s: %w", c.String("model"), name, err)
					}
					params, err := demo.Pretrain(c.Context, arch, train, c.Int("epochs"), c.Float64("lr"), c.Uint64("seed"), c.App.Writer)
					if err != nil {
						return err
					}
					ev, err := arch.NewEvaluator(1000)
					if err != nil {
						return err
					}
					defer ev.Close()
					res, err := ev.Evaluate(params, test)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "test accuracy on %s: %.2f%% (loss %.4f)\n", name, 100*res.Accuracy, res.Loss)
					return tensor.WriteFile(c.String("output"), params, tensor.F32)
				},
			},
			{
				Name:      "eval",
				Usage:     "score a checkpoint: an MLP's safetensors FILE on a data set's test split (accuracy, loss, bits per example), or a language model's DIR on token ids or text (loss in nats, perplexity)",
				ArgsUsage: "FILE | DIR",
				Flags: append([]cli.Flag{modelFlag,
					&cli.StringFlag{Name: "dataset", Value: "mnist", Usage: "mnist, words, or words-<lang>[+<lang>…]", EnvVars: []string{"FEDTUNE_DATASET"}},
					&cli.IntFlag{Name: "batch-size", Value: 8, Usage: "language models: sequences per forward pass", EnvVars: []string{"FEDTUNE_BATCH_SIZE"}}},
					lmDataFlags()...),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("model eval: give one safetensors file (a LoRA job's: model export --merged) or model directory")
					}
					if st, err := os.Stat(c.Args().First()); err == nil && st.IsDir() {
						return lmEval(c, c.Args().First())
					}
					arch, err := model.Lookup(c.String("model"))
					if err != nil {
						return err
					}
					params, err := tensor.ReadFile(c.Args().First())
					if err != nil {
						return err
					}
					if err := tensor.SameLayout(params, arch.Layout()); err != nil {
						return fmt.Errorf("model eval: %s does not fit %s (adapters? export the job with --merged): %w", c.Args().First(), c.String("model"), err)
					}
					test, err := dataset.Load(c.String("dataset"), dataset.Test)
					if err != nil {
						return err
					}
					ev, err := arch.NewEvaluator(1000)
					if err != nil {
						return err
					}
					defer ev.Close()
					res, err := ev.Evaluate(params, test)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "%s on %s (%d test examples): accuracy %.2f%%, loss %.4f nats = %.3f bits per example\n",
						c.Args().First(), c.String("dataset"), test.Len(), 100*res.Accuracy, res.Loss, res.Loss/math.Ln2)
					return nil
				},
			},
			lmTrainCommand(),
			lmGenerateCommand(),
			{
				Name:      "inspect",
				Usage:     "list a safetensors file's tensors",
				ArgsUsage: "FILE",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("model inspect: give one file")
					}
					s, err := tensor.ReadFile(c.Args().First())
					if err != nil {
						return err
					}
					for _, t := range s.Tensors {
						fmt.Fprintf(c.App.Writer, "%-24s %v\n", t.Name, t.Shape)
					}
					for k, v := range s.Metadata {
						fmt.Fprintf(c.App.Writer, "metadata %s = %s\n", k, v)
					}
					fmt.Fprintf(c.App.Writer, "%d tensors, %d parameters, L2 norm %.4f\n", len(s.Tensors), s.Len(), s.Norm())
					return nil
				},
			},
		},
	}
}

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "fine-tune a digits-0-4 MNIST model federatedly with 4 workers on this machine",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Value: "demo-out", Usage: "directory for the base and final models and the nodes' log", EnvVars: []string{"FEDTUNE_DEMO_OUT"}},
			&cli.IntFlag{Name: "workers", Value: 4, Usage: "number of workers", EnvVars: []string{"FEDTUNE_DEMO_WORKERS"}},
			&cli.IntFlag{Name: "rounds", Value: 10, Usage: "federated rounds", EnvVars: []string{"FEDTUNE_DEMO_ROUNDS"}},
			&cli.Float64Flag{Name: "alpha", Value: 1, Usage: "Dirichlet concentration of the workers' data (smaller: more non-IID)", EnvVars: []string{"FEDTUNE_DEMO_ALPHA"}},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed", EnvVars: []string{"FEDTUNE_DEMO_SEED"}},
			&cli.StringFlag{Name: "codec", Value: "fp32", Usage: "update codec: fp32, fp16, int8, topk=<fraction>+fp32|fp16|int8", EnvVars: []string{"FEDTUNE_DEMO_CODEC"}},
			&cli.BoolFlag{Name: "no-error-feedback", Usage: "send lossy updates without error feedback (to measure what it buys)", EnvVars: []string{"FEDTUNE_DEMO_NO_ERROR_FEEDBACK"}},
			&cli.Float64Flag{Name: "min-accuracy", Usage: "exit non-zero if the final test accuracy is below this fraction", EnvVars: []string{"FEDTUNE_DEMO_MIN_ACCURACY"}},
		},
		Action: func(c *cli.Context) error {
			res, err := demo.Run(c.Context, demo.Config{OutDir: c.String("out"), Workers: c.Int("workers"), Rounds: c.Int("rounds"),
				Alpha: c.Float64("alpha"), Seed: c.Uint64("seed"), Codec: c.String("codec"), NoEF: c.Bool("no-error-feedback"), Out: c.App.Writer})
			if err != nil {
				return err
			}
			if m := c.Float64("min-accuracy"); res.FinalAccuracy < m {
				return fmt.Errorf("%w: %.4f < %.4f", demo.ErrBelowTarget, res.FinalAccuracy, m)
			}
			return nil
		},
	}
}
