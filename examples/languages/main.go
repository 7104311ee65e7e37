// Command languages measures LoRA adapters for regional languages: a base
// next-character model trained on English words, then federated adapter
// fine-tuning by worker groups speaking French, German and Spanish, and
// prints the README's table of bits per character (BPC) on each language's
// held-out words. Run from the repository root (needs the word lists:
// make words):
//
//	go run ./examples/languages > table.md
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/model"
	"github.com/fedtune/fedtune/tensor"
)

var langs = []string{"fr", "de", "es"}

func main() {
	rounds := flag.Int("rounds", 10, "federated rounds")
	perLang := flag.Int("workers", 3, "workers per language")
	rank := flag.Int("rank", 2, "LoRA rank")
	alpha := flag.Float64("alpha", 4, "LoRA alpha")
	flag.Parse()
	ctx := context.Background()
	arch, _ := model.Lookup("words-mlp")
	en, err := dataset.Words([]string{"en"}, dataset.Train)
	check(err)
	train, err := dataset.Words(langs, dataset.Train)
	check(err)
	test, err := dataset.Words(langs, dataset.Test)
	check(err)

	// 1. The base: central training on English words only.
	tr, _ := arch.NewTrainer()
	base, _, err := tr.Train(ctx, arch.Init(1), en, model.TrainConfig{Epochs: 4, BatchSize: 64, LR: 0.5, Momentum: 0.9, Seed: 1})
	check(err)
	tr.Close()
	ev, _ := arch.NewEvaluator(1000)
	defer ev.Close()
	bpc := func(params tensor.Set, g int) float64 {
		e, err := ev.Evaluate(params, byGroup(test, g))
		check(err)
		return e.Loss / math.Ln2
	}

	// Workers: perLang per language, each with an IID share of its language.
	type worker struct {
		lang int
		data *dataset.Examples
	}
	var workers []worker
	for g := range langs {
		d := byGroup(train, g)
		parts, _ := dataset.Partition{Kind: "iid", Seed: 7}.Split(d.Y, d.Classes, *perLang)
		for _, p := range parts {
			workers = append(workers, worker{g, d.Subset(p)})
		}
	}
	l := lora.Config{Rank: *rank, Alpha: *alpha}
	cfg := model.TrainConfig{Epochs: 1, BatchSize: 32, LR: 0.1, Momentum: 0.9}
	// federate trains one adapter over rounds with the given workers.
	federate := func(members []worker, exact bool) tensor.Set {
		ad, err := l.Init(arch, 5)
		check(err)
		for r := 0; r < *rounds; r++ {
			ups := make([]aggregation.Update, len(members))
			for i, w := range members {
				c := cfg
				c.Seed = uint64(r*100 + i)
				next, met, err := tr.TrainAdapter(ctx, l, base, ad, w.data, c)
				check(err)
				ups[i] = aggregation.Update{Worker: fmt.Sprintf("w%02d", i), Delta: next, Samples: uint64(met.Samples)}
			}
			if exact {
				ad, err = aggregation.LoRAExact(ups)
			} else {
				ad, _, err = aggregation.FedAvg{}.Aggregate(ups)
			}
			check(err)
		}
		return ad
	}
	merge := func(ad tensor.Set) tensor.Set {
		m, err := l.Merge(arch, base, ad)
		check(err)
		return m
	}
	fmt.Fprintln(os.Stderr, "training the shared adapters (naive and exact aggregation)…")
	sharedNaive := merge(federate(workers, false))
	sharedExact := merge(federate(workers, true))
	fmt.Fprintln(os.Stderr, "training one adapter per language…")
	per := make([]tensor.Set, len(langs))
	for g := range langs {
		var members []worker
		for _, w := range workers {
			if w.lang == g {
				members = append(members, w)
			}
		}
		per[g] = merge(federate(members, false))
	}

	adLayout, err := l.Layout(arch)
	check(err)
	adapterBytes, modelBytes := 4*adLayout.Len(), 4*arch.Layout().Len()
	fmt.Printf("| model | %s |\n|---|---|---|---|\n", join(langs))
	row := func(name string, f func(g int) float64) {
		fmt.Printf("| %s |", name)
		for g := range langs {
			fmt.Printf(" %.3f |", f(g))
		}
		fmt.Println()
	}
	row("base (English only)", func(g int) float64 { return bpc(base, g) })
	row("shared adapter, naive average of A and B", func(g int) float64 { return bpc(sharedNaive, g) })
	row("shared adapter, exact (SVD of averaged B·A)", func(g int) float64 { return bpc(sharedExact, g) })
	row("per-language adapter", func(g int) float64 { return bpc(per[g], g) })
	fmt.Printf("\nBPC reduction of the per-language adapters against the base:")
	for g := range langs {
		fmt.Printf(" %s %.1f%%", langs[g], 100*(1-bpc(per[g], g)/bpc(base, g)))
	}
	fmt.Printf("\nadapter (rank %d, alpha %g): %d bytes per update = %.1f%% of the full model's %d bytes\n",
		*rank, *alpha, adapterBytes, 100*float64(adapterBytes)/float64(modelBytes), modelBytes)
}

// byGroup returns the examples of group g.
func byGroup(e *dataset.Examples, g int) *dataset.Examples {
	var idx []int
	for i, x := range e.Group {
		if int(x) == g {
			idx = append(idx, i)
		}
	}
	return e.Subset(idx)
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " | "
		}
		out += x
	}
	return out
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
