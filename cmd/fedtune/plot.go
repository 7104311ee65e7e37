package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/internal/plots"
)

func plotCommand() *cli.Command {
	return &cli.Command{
		Name:        "plot",
		Usage:       "draw PNG plots from a fedtune sim results.csv",
		ArgsUsage:   "RESULTS.csv",
		Description: "Draws " + plots.Plots,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "plots", Usage: "directory for the PNGs", EnvVars: []string{"FEDTUNE_PLOT_OUTPUT"}},
		},
		Action: func(c *cli.Context) error {
			// Flags may also follow the file (fedtune plot results.csv -o out).
			out := c.String("output")
			var files []string
			args := c.Args().Slice()
			for i := 0; i < len(args); i++ {
				switch a := args[i]; {
				case a == "-o" || a == "--output" || a == "-output":
					if i+1 == len(args) {
						return fmt.Errorf("plot: %s needs a directory", a)
					}
					out = args[i+1]
					i++
				case strings.HasPrefix(a, "-o=") || strings.HasPrefix(a, "--output="):
					out = a[strings.Index(a, "=")+1:]
				default:
					files = append(files, a)
				}
			}
			if len(files) != 1 {
				return fmt.Errorf("plot: give one results.csv (written by fedtune sim)")
			}
			f, err := os.Open(files[0])
			if err != nil {
				return err
			}
			defer f.Close()
			res, err := plots.Read(f)
			if err != nil {
				return fmt.Errorf("%s: %w", files[0], err)
			}
			written, err := plots.Draw(res, out)
			if err != nil {
				return err
			}
			for _, p := range written {
				fmt.Fprintln(c.App.Writer, "wrote", p)
			}
			return nil
		},
	}
}
