package main

import (
	"fmt"
	"math"

	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/privacy"
)

// privacyCommand is fedtune privacy: (ε, δ) of a DP-FedAvg or DP-SGD plan.
func privacyCommand() *cli.Command {
	return &cli.Command{
		Name:  "privacy",
		Usage: "privacy accounting: ε spent by rounds of the subsampled Gaussian mechanism (DP-FedAvg, DP-SGD)",
		Subcommands: []*cli.Command{{
			Name: "epsilon",
			Usage: "ε at δ after --steps rounds sampling a fraction --q of clients (or examples) with noise multiplier --sigma " +
				"(Rényi DP of the Poisson-subsampled Gaussian, Mironov et al. 2019)",
			Flags: []cli.Flag{
				&cli.Float64Flag{Name: "q", Required: true, Usage: "sampling rate: clients selected per round / clients eligible", EnvVars: []string{"FEDTUNE_Q"}},
				&cli.Float64Flag{Name: "sigma", Required: true, Usage: "noise multiplier: the noise's standard deviation over the clipping norm", EnvVars: []string{"FEDTUNE_SIGMA"}},
				&cli.IntFlag{Name: "steps", Required: true, Usage: "rounds (or steps) composed", EnvVars: []string{"FEDTUNE_STEPS"}},
				&cli.Float64Flag{Name: "delta", Value: 1e-5, Usage: "δ of the (ε, δ) guarantee", EnvVars: []string{"FEDTUNE_DELTA"}},
			},
			Action: func(c *cli.Context) error {
				a := privacy.NewAccountant()
				if err := a.Compose(c.Float64("q"), c.Float64("sigma"), c.Int("steps")); err != nil {
					return err
				}
				eps, order, err := a.Epsilon(c.Float64("delta"))
				if err != nil {
					return err
				}
				if math.IsInf(eps, 1) {
					return fmt.Errorf("privacy epsilon: no finite ε at these settings")
				}
				fmt.Fprintf(c.App.Writer, "epsilon %.6f\ndelta %g\norder %g\n", eps, c.Float64("delta"), order)
				return nil
			},
		}},
	}
}
