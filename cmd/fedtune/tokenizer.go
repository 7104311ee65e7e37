package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/tokenizer"
)

// tokenizerCommand trains, and encodes and decodes with, byte-level BPE
// tokenizers in Hugging Face's tokenizer.json format.
func tokenizerCommand() *cli.Command {
	tokFlag := &cli.StringFlag{Name: "tokenizer", Aliases: []string{"t"}, Usage: "a Hugging Face `tokenizer.json` (byte-level BPE)", Required: true, EnvVars: []string{"FEDTUNE_TOKENIZER"}}
	return &cli.Command{
		Name:  "tokenizer",
		Usage: "train byte-level BPE tokenizers; encode and decode text with them",
		Subcommands: []*cli.Command{
			{
				Name:      "train",
				Usage:     "learn a byte-level BPE on text files and write it as tokenizer.json",
				ArgsUsage: "FILE...",
				Flags: []cli.Flag{
					&cli.IntFlag{Name: "vocab-size", Value: 4096, Usage: "tokens in all: 256 bytes, the merges, the special tokens", EnvVars: []string{"FEDTUNE_TOKENIZER_VOCAB_SIZE"}},
					&cli.StringFlag{Name: "pattern", Value: "llama3", Usage: "split expression: llama3 (also cl100k, SmolLM2), gpt2, or a regular expression", EnvVars: []string{"FEDTUNE_TOKENIZER_PATTERN"}},
					&cli.StringSliceFlag{Name: "special", Value: cli.NewStringSlice("<|endoftext|>"), Usage: "special tokens, given the last ids", EnvVars: []string{"FEDTUNE_TOKENIZER_SPECIAL"}},
					&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "tokenizer.json", Usage: "where to write it", EnvVars: []string{"FEDTUNE_TOKENIZER_OUTPUT"}},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return fmt.Errorf("tokenizer train: name at least one text file")
					}
					var corpus []string
					var size int
					for _, p := range c.Args().Slice() {
						b, err := os.ReadFile(p)
						if err != nil {
							return fmt.Errorf("tokenizer train: %w", err)
						}
						corpus, size = append(corpus, string(b)), size+len(b)
					}
					pattern := c.String("pattern")
					switch pattern {
					case "llama3", "cl100k":
						pattern = tokenizer.Llama3Pattern
					case "gpt2":
						pattern = tokenizer.GPT2Pattern
					}
					next := 0
					tok, err := tokenizer.Train(corpus, c.Int("vocab-size"), pattern, c.StringSlice("special"), func(done, total int) {
						if pct := 100 * done / total; pct >= next {
							fmt.Fprintf(c.App.ErrWriter, "\rtraining: %d of %d tokens", done, total)
							next = pct + 10
						}
					})
					fmt.Fprintln(c.App.ErrWriter)
					if err != nil {
						return fmt.Errorf("tokenizer train: %w", err)
					}
					b, err := tok.Marshal()
					if err != nil {
						return err
					}
					if err := os.WriteFile(c.String("output"), b, 0o644); err != nil {
						return fmt.Errorf("tokenizer train: %w", err)
					}
					var tokens int
					for _, s := range corpus {
						tokens += len(tok.Encode(s))
					}
					fmt.Fprintf(c.App.Writer, "wrote %s: %d tokens; the corpus (%d bytes) is %d tokens, %.2f bytes per token\n",
						c.String("output"), tok.VocabSize(), size, tokens, float64(size)/float64(max(tokens, 1)))
					return nil
				},
			},
			{
				Name:      "encode",
				Usage:     "print the ids of TEXT (or of standard input with -)",
				ArgsUsage: "TEXT|-",
				Flags:     []cli.Flag{tokFlag},
				Action: func(c *cli.Context) error {
					tok, err := tokenizer.Load(c.String("tokenizer"))
					if err != nil {
						return err
					}
					text := strings.Join(c.Args().Slice(), " ")
					if text == "-" {
						b, err := io.ReadAll(c.App.Reader)
						if err != nil {
							return err
						}
						text = string(b)
					}
					ids := tok.Encode(text)
					parts := make([]string, len(ids))
					for i, id := range ids {
						parts[i] = strconv.Itoa(id)
					}
					fmt.Fprintln(c.App.Writer, strings.Join(parts, " "))
					return nil
				},
			},
			{
				Name:      "decode",
				Usage:     "print the text of ids",
				ArgsUsage: "ID...",
				Flags:     []cli.Flag{tokFlag},
				Action: func(c *cli.Context) error {
					tok, err := tokenizer.Load(c.String("tokenizer"))
					if err != nil {
						return err
					}
					var ids []int
					for _, a := range c.Args().Slice() {
						for _, f := range strings.Fields(a) {
							id, err := strconv.Atoi(f)
							if err != nil {
								return fmt.Errorf("tokenizer decode: %q is not an id", f)
							}
							ids = append(ids, id)
						}
					}
					b, err := tok.Decode(ids)
					if err != nil {
						return err
					}
					_, err = c.App.Writer.Write(append(b, '\n'))
					return err
				},
			},
		},
	}
}
