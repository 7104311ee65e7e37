package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/internal/client"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

func ledgerCommand() *cli.Command {
	return &cli.Command{
		Name:      "ledger",
		Usage:     "show each worker's contribution to a job (from the committed rounds' scores)",
		ArgsUsage: "JOB",
		Flags:     []cli.Flag{coordinatorFlag(), jobFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			name, err := jobName(c)
			if err != nil {
				return err
			}
			asJSON, err := wantJSON(c)
			if err != nil {
				return err
			}
			var job *pb.Job
			err = withAdmin(c, func(a rpcpb.AdminClient) (err error) {
				job, err = client.JobHistory(c.Context, a, name)
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, coordinator.Ledger(job))
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "job %s: %d committed rounds, rule %s\n", job.Spec.Name, len(job.History), job.Spec.Aggregator)
			if dp := job.Spec.Dp; dp != nil {
				eps := 0.0
				if n := len(job.History); n > 0 {
					eps = job.History[n-1].Metrics["dp_epsilon"]
				}
				fmt.Fprintf(tw, "privacy spent: ε %.4f at δ %g (DP-FedAvg σ %g, clip %g)", eps, dp.Delta, dp.NoiseMultiplier, dp.ClipNorm)
				if dp.Epsilon > 0 {
					fmt.Fprintf(tw, ", budget %g", dp.Epsilon)
				}
				fmt.Fprintln(tw)
			}
			if job.Spec.Secagg != nil {
				fmt.Fprintln(tw, "secure aggregation: updates are masked, so no contribution is scored (rounds and samples only)")
			}
			fmt.Fprintln(tw, "WORKER\tROUNDS\tKEPT\tSAMPLES\tTOTAL WEIGHT\tMEAN COSINE\tMEAN DISTANCE")
			for _, w := range coordinator.Ledger(job) {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.3f\t%.3f\t%.4f\n", terminalSafe(w.Worker), w.Rounds, w.Kept, w.Samples, w.Weight, w.MeanCosine, w.MeanDistance)
			}
			return tw.Flush()
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "recompute a committed round from its accepted updates and check the model hash",
		Flags: []cli.Flag{coordinatorFlag(),
			jobFlag(),
			&cli.UintFlag{Name: "round", Usage: "committed round (0: every round whose updates are still stored)", EnvVars: []string{"FEDTUNE_ROUND"}},
			outputFlag()},
		ArgsUsage: "JOB",
		Action: func(c *cli.Context) error {
			name, err := jobName(c)
			if err != nil {
				return err
			}
			asJSON, err := wantJSON(c)
			if err != nil {
				return err
			}
			type result struct {
				Round  uint32                  `json:"round"`
				Result *pb.VerifyRoundResponse `json:"result,omitempty"`
				Note   string                  `json:"note,omitempty"`
			}
			var results []result
			pool, conn, err := dial(c)
			if err != nil {
				return err
			}
			defer pool.Close()
			admin := rpcpb.NewAdminClient(conn)
			rounds := []uint32{uint32(c.Uint("round"))}
			if rounds[0] == 0 {
				job, err := client.JobHistory(c.Context, admin, name)
				if err != nil {
					return err
				}
				rounds = rounds[:0]
				for _, r := range job.History {
					rounds = append(rounds, r.Number)
				}
			}
			bad := 0
			for _, r := range rounds {
				v, err := admin.VerifyRound(c.Context, &pb.VerifyRoundRequest{Job: name, Round: r})
				if err != nil {
					if c.Uint("round") == 0 && status.Code(err) == codes.FailedPrecondition {
						results = append(results, result{Round: r, Note: "skipped (updates no longer stored)"})
						if !asJSON {
							fmt.Fprintf(c.App.Writer, "round %d: skipped (updates no longer stored)\n", r)
						}
						continue
					}
					return err
				}
				verdict := "OK"
				if !v.Match {
					verdict, bad = "MISMATCH", bad+1
				}
				results = append(results, result{Round: r, Result: v})
				if !asJSON {
					fmt.Fprintf(c.App.Writer, "round %d: %s (%s of %d updates): log %.12s, recomputed %.12s\n", r, verdict, v.Rule, v.Updates, v.CommittedModel, v.RecomputedModel)
				}
			}
			if asJSON {
				if err := printJSON(c, results); err != nil {
					return err
				}
			}
			if bad > 0 {
				return fmt.Errorf("verify: %d rounds do not match their committed model", bad)
			}
			return nil
		},
	}
}

func aggregateCommand() *cli.Command {
	return &cli.Command{
		Name:      "aggregate",
		Usage:     "aggregate update files (safetensors, from any framework) offline with any rule",
		ArgsUsage: "UPDATE.safetensors...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "aggregator", Aliases: []string{"rule"}, Value: "fedavg", Usage: "aggregation rule: " + strings.Join(aggregation.Rules, ", "), EnvVars: []string{"FEDTUNE_AGGREGATOR", "FEDTUNE_RULE"}},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "safetensors file to write", EnvVars: []string{"FEDTUNE_AGGREGATE_OUTPUT"}},
			&cli.StringFlag{Name: "weights", Usage: "comma-separated sample counts, one per file (default: equal)", EnvVars: []string{"FEDTUNE_WEIGHTS"}},
			&cli.Float64Flag{Name: "trim-fraction", Usage: "trimmed-mean: fraction cut from each end (default 0.1)", EnvVars: []string{"FEDTUNE_TRIM_FRACTION"}},
			&cli.UintFlag{Name: "byzantine", Aliases: []string{"f"}, Usage: "krum/multi-krum/bulyan: Byzantine updates tolerated", EnvVars: []string{"FEDTUNE_BYZANTINE", "FEDTUNE_F"}},
			&cli.UintFlag{Name: "multi-krum-m", Aliases: []string{"m"}, Usage: "multi-krum: updates averaged", EnvVars: []string{"FEDTUNE_MULTI_KRUM_M", "FEDTUNE_M"}},
			&cli.Float64Flag{Name: "clip-norm", Usage: "clip every update to this L2 norm first (0: off)", EnvVars: []string{"FEDTUNE_CLIP_NORM"}},
			&cli.Float64Flag{Name: "tau", Usage: "centered-clip radius", EnvVars: []string{"FEDTUNE_TAU"}},
			&cli.UintFlag{Name: "agg-iterations", Aliases: []string{"iterations"}, Usage: "centered-clip / geomedian iterations", EnvVars: []string{"FEDTUNE_AGG_ITERATIONS", "FEDTUNE_ITERATIONS"}},
			&cli.StringFlag{Name: "lora", Usage: "exact: the files are LoRA adapters (PEFT names …lora_A.weight/…lora_B.weight); average the products B·A and factorise back to rank r by truncated SVD instead of averaging A and B apart (other tensors: weighted mean)", EnvVars: []string{"FEDTUNE_LORA"}},
		},
		Action: func(c *cli.Context) error {
			files := c.Args().Slice()
			if len(files) == 0 {
				return fmt.Errorf("aggregate: give the update files to aggregate")
			}
			var weights []uint64
			if w := c.String("weights"); w != "" {
				for _, p := range strings.Split(w, ",") {
					var v uint64
					if _, err := fmt.Sscan(strings.TrimSpace(p), &v); err != nil {
						return fmt.Errorf("--weights: %q is not a count", p)
					}
					weights = append(weights, v)
				}
				if len(weights) != len(files) {
					return fmt.Errorf("--weights has %d values for %d files", len(weights), len(files))
				}
			}
			params := round.RuleParams(&pb.AggregatorParams{TrimFraction: c.Float64("trim-fraction"), F: uint32(c.Uint("byzantine")), M: uint32(c.Uint("multi-krum-m")),
				ClipNorm: c.Float64("clip-norm"), Tau: c.Float64("tau"), Iterations: uint32(c.Uint("agg-iterations"))})
			rule, err := aggregation.NewRule(c.String("aggregator"), params)
			if err != nil {
				return err
			}
			// Updates are streamed from their files block by block (finite
			// values checked as they are read): memory is the aggregate plus
			// a block per update, whatever the number of files.
			var ups []aggregation.Update
			var layout tensor.Layout
			for i, f := range files {
				v, err := tensor.OpenVector(f)
				if err != nil {
					return err
				}
				defer v.Close()
				u := aggregation.Update{Worker: fmt.Sprintf("%03d:%s", i, f), Source: v, Samples: 1}
				if weights != nil {
					u.Samples = weights[i]
				}
				if i == 0 {
					layout = v.Layout()
				} else if err := v.Layout().Check(layout); err != nil {
					return fmt.Errorf("%s does not match %s: %w", f, files[0], err)
				}
				ups = append(ups, u)
			}
			if mode := c.String("lora"); mode != "" {
				if mode != "exact" {
					return fmt.Errorf("--lora %q: want exact (the naive average of A and B is --rule fedavg)", mode)
				}
				out, err := aggregation.LoRAExact(ups)
				if err != nil {
					return err
				}
				if err := out.CheckFinite(); err != nil {
					return fmt.Errorf("aggregate: the exact LoRA aggregate is not finite (%w); %s not written", err, c.String("output"))
				}
				out.Metadata = map[string]string{"fedtune.rule": "lora-exact", "fedtune.updates": fmt.Sprint(len(ups))}
				if err := tensor.WriteFile(c.String("output"), out, tensor.F32); err != nil {
					return err
				}
				fmt.Fprintf(c.App.Writer, "wrote %s: exact LoRA aggregate (SVD of the averaged B·A products) of %d adapters\n", c.String("output"), len(ups))
				return nil
			}
			out, scores, err := rule.Aggregate(ups)
			if err != nil {
				return err
			}
			if err := out.CheckFinite(); err != nil {
				return fmt.Errorf("aggregate: the %s aggregate is not finite (%w); %s not written", rule.Name(), err, c.String("output"))
			}
			out.Metadata = map[string]string{"fedtune.rule": rule.Name(), "fedtune.updates": fmt.Sprint(len(ups))}
			if err := tensor.WriteFile(c.String("output"), out, tensor.F32); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "UPDATE\tKEPT\tWEIGHT\tNORM\tDISTANCE\tCOSINE")
			for _, s := range scores {
				fmt.Fprintf(tw, "%s\t%v\t%.4f\t%.4f\t%.4f\t%.4f\n", strings.SplitN(s.Worker, ":", 2)[1], s.Kept, s.Weight, s.Norm, s.Distance, s.Cosine)
			}
			tw.Flush()
			fmt.Fprintf(c.App.Writer, "wrote %s: %s of %d updates, L2 norm %.4f\n", c.String("output"), rule.Name(), len(ups), out.Norm())
			return nil
		},
	}
}
