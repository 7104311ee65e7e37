package main

import (
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/fedtune/fedtune/sim"
	"github.com/fedtune/fedtune/sim/cluster"
)

func simCommand() *cli.Command {
	return &cli.Command{
		Name:      "sim",
		ArgsUsage: "[EXPERIMENT.yaml]",
		Usage:     "simulate federated training with many virtual workers in one process (research mode)",
		Description: `Runs the coordinator's aggregation rules, server optimizers and codecs against
virtual workers that share one copy of the data set, with a pool of trainers
sized to the cores. An experiment file is a flat YAML map of keys (fedtune sim
--keys lists them); any key may hold a list of values, and the experiment is
then the grid of all combinations. Writes OUT/results.csv (a row per run per
round; the same file and seed give the same bytes) and OUT/summary.json.

  fedtune sim --config examples/sim/byzantine-sweep.yaml --out results
  fedtune sim --set workers=1000 --set clients_per_round=100 --set rounds=10
  fedtune plot results/results.csv -o results/plots`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "experiment file (YAML); default: every key at its default", EnvVars: []string{"FEDTUNE_SIM_CONFIG"}},
			&cli.StringSliceFlag{Name: "set", Usage: "override a key: --set key=value or key=v1,v2 (a sweep); repeatable", EnvVars: []string{"FEDTUNE_SIM_SET"}},
			&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Value: "sim-out", Usage: "directory for results.csv and summary.json", EnvVars: []string{"FEDTUNE_SIM_OUT"}},
			&cli.BoolFlag{Name: "timings", Usage: "add each round's wall-clock seconds to the CSV (then it differs run to run)", EnvVars: []string{"FEDTUNE_SIM_TIMINGS"}},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress output", EnvVars: []string{"FEDTUNE_SIM_QUIET"}},
			&cli.StringFlag{Name: "transport", Value: "sim", Usage: "sim (virtual workers), or grpc: the same job on a real in-process cluster (a coordinator and a worker node per virtual worker, gossip and gRPC on 127.0.0.1), to measure what simulating saves", EnvVars: []string{"FEDTUNE_SIM_TRANSPORT"}},
			&cli.BoolFlag{Name: "dry-run", Usage: "validate the experiment and list its runs without running them", EnvVars: []string{"FEDTUNE_SIM_DRY_RUN"}},
			&cli.BoolFlag{Name: "keys", Usage: "list the experiment keys with their defaults and exit", EnvVars: []string{"FEDTUNE_SIM_KEYS"}},
		},
		Action: func(c *cli.Context) error {
			if c.Bool("keys") {
				tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY\tDEFAULT\tMEANING")
				for _, k := range sim.Keys {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Name, k.Def, k.Help)
				}
				return tw.Flush()
			}
			config := c.String("config")
			switch {
			case c.NArg() == 1 && config == "":
				config = c.Args().First() // fedtune sim EXPERIMENT.yaml
			case c.NArg() > 0:
				return fmt.Errorf("sim: unexpected arguments %q: give the experiment as --config FILE or as the one argument, after the flags", c.Args().Slice())
			}
			e, err := sim.LoadExperiment(config)
			if err != nil {
				return err
			}
			for _, kv := range joinSets(c.StringSlice("set")) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--set %q: want key=value", kv)
				}
				if err := e.Set(strings.TrimSpace(k), strings.Split(v, ",")...); err != nil {
					return err
				}
			}
			points, err := e.Points()
			if err != nil {
				return err
			}
			opts := sim.SweepOptions{Out: c.String("out"), Timings: c.Bool("timings")}
			switch c.String("transport") {
			case "sim":
			case "grpc":
				opts.Runner = cluster.Run
				for _, p := range points {
					if s := p["speed"]; s != "1" && s != "" {
						return fmt.Errorf("--transport grpc runs in real time: key \"speed\" (%s) only shapes simulated time (--transport sim)", s)
					}
				}
			default:
				return fmt.Errorf("--transport %q: want sim or grpc", c.String("transport"))
			}
			if c.Bool("dry-run") {
				for i, p := range points {
					fmt.Fprintf(c.App.Writer, "run %d: %s\n", i+1, orDash(p.Label(e.Swept())))
				}
				fmt.Fprintf(c.App.Writer, "%d runs, valid\n", len(points))
				return nil
			}
			if !c.Bool("quiet") {
				opts.Progress = c.App.ErrWriter
				fmt.Fprintf(c.App.ErrWriter, "%d runs (swept: %s), writing %s\n", len(points), strings.Join(orNone(e.Swept()), ", "), opts.Out)
			}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt)
			defer stop()
			sum, err := sim.Sweep(ctx, e, opts)
			if err != nil {
				return err
			}
			dp := slices.ContainsFunc(sum.Runs, func(r sim.RunSummary) bool { return r.Epsilon > 0 })
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			head := "RUN\tPARAMETERS\tFINAL ACC\tBEST ACC\tMB ON WIRE\tROUNDS/MIN"
			if dp {
				head += "\tROUNDS\tε"
			}
			fmt.Fprintln(tw, head)
			for _, r := range sum.Runs {
				fmt.Fprintf(tw, "%d\t%s\t%.2f%%\t%.2f%%\t%.1f\t%.1f", r.Run, orDash(r.Label), 100*r.FinalAccuracy, 100*r.BestAccuracy, float64(r.TotalBytes)/1e6, r.RoundsPerMin)
				if dp {
					budget := ""
					if r.Budget {
						budget = " (budget reached)"
					}
					fmt.Fprintf(tw, "\t%d%s\t%.3f", r.Rounds, budget, r.Epsilon)
				}
				fmt.Fprintln(tw)
			}
			tw.Flush()
			if c.String("transport") == "grpc" {
				verified, rounds := 0, 0
				for _, r := range sum.Runs {
					verified, rounds = verified+r.Verified, rounds+r.Rounds
				}
				fmt.Fprintf(c.App.Writer, "%d of %d rounds verified on the cluster (recomputed from their committed updates)\n", verified, rounds)
			}
			fmt.Fprintf(c.App.Writer, "wrote %s/results.csv and %s/summary.json in %.0fs\n", opts.Out, opts.Out, sum.Seconds)
			return nil
		},
	}
}

// joinSets undoes the comma splitting of slice flags: "key=a,b" arrives as
// "key=a", "b".
func joinSets(items []string) []string {
	var out []string
	for _, it := range items {
		if !strings.Contains(it, "=") && len(out) > 0 {
			out[len(out)-1] += "," + it
			continue
		}
		out = append(out, it)
	}
	return out
}

func orNone(s []string) []string {
	if len(s) == 0 {
		return []string{"none"}
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
