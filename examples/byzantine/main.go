// Command byzantine measures every aggregation rule under every attack on
// MNIST with 20 workers, 20% of them Byzantine, on IID and non-IID data,
// and prints the README's table. Run from the repository root:
//
//	go run ./examples/byzantine > /tmp/table.md
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/sim"
)

func main() {
	rounds := flag.Int("rounds", 15, "rounds per run")
	workers := flag.Int("workers", 20, "virtual workers")
	byz := flag.Float64("byzantine", 0.2, "fraction of Byzantine workers")
	only := flag.String("rules", "", "comma-separated rows to run (default: all)")
	beta := flag.Float64("worker-momentum", 0.5, "worker momentum β of the centered-clip+momentum row")
	tau := flag.Float64("tau", 1, "centered clipping radius τ")
	flag.Parse()
	train, err := dataset.MNIST(dataset.Train)
	check(err)
	test, err := dataset.MNIST(dataset.Test)
	check(err)
	// The last row is centered clipping as Karimireddy et al. (2021) run it:
	// every worker sends its momentum over rounds, not its raw update.
	rules := []string{"fedavg", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "geomedian", "centered-clip", "centered-clip+momentum"}
	if *only != "" {
		rules = strings.Split(*only, ",")
	}
	f := int(*byz * float64(*workers))
	params := aggregation.Params{F: f, TrimFraction: *byz, Tau: *tau}
	for _, part := range []struct {
		name string
		p    dataset.Partition
	}{{"IID", dataset.Partition{Kind: "iid", Seed: 1}}, {"non-IID (Dirichlet α = 0.5)", dataset.Partition{Kind: "dirichlet", Alpha: 0.5, Seed: 1}}} {
		fmt.Printf("\n### %s\n\n| rule | %s |\n|---|%s\n", part.name, strings.Join(sim.Attacks, " | "), strings.Repeat("---|", len(sim.Attacks)))
		for _, rule := range rules {
			row := []string{"`" + rule + "`"}
			name, momentum := rule, 0.0
			if r, ok := strings.CutSuffix(rule, "+momentum"); ok {
				name, momentum = r, *beta
			}
			for _, attack := range sim.Attacks {
				start := time.Now()
				res, err := sim.Run(context.Background(), sim.Config{
					Model: "mnist-mlp-small", Workers: *workers, Rounds: *rounds, Partition: part.p,
					Train: model.TrainConfig{Steps: 20, BatchSize: 32, LR: 0.1, Momentum: 0.5},
					Rule:  name, Params: params, Attack: attack, Byzantine: *byz, Seed: 7, EvalEvery: *rounds,
					WorkerMomentum: momentum,
				}, train, test, nil)
				cell := "error"
				if err == nil {
					cell = fmt.Sprintf("%.2f", 100*res[len(res)-1].Accuracy)
				} else {
					fmt.Fprintf(os.Stderr, "%s %s %s: %v\n", part.name, rule, attack, err)
				}
				row = append(row, cell)
				fmt.Fprintf(os.Stderr, "%s / %s / %s: %s%% (%.0fs)\n", part.name, rule, attack, cell, time.Since(start).Seconds())
			}
			fmt.Printf("| %s |\n", strings.Join(row, " | "))
		}
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
