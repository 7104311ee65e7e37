package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"text/tabwriter"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/lora"
	"github.com/fedtune/fedtune/model"
)

// llmConfig is the regional-llm example's base (and torch_ref.py's LLM).
var llmConfig = hf.Config{ModelType: "llama", VocabSize: 2048, HiddenSize: 128, IntermediateSize: 384, NumHiddenLayers: 4,
	NumAttentionHeads: 4, NumKeyValueHeads: 2, MaxPositionEmbeddings: 128, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true}

// llmBench measures local training of the example's Llama — AdamW on
// batches of 16 sequences of 128 tokens, every weight and rank-8 LoRA on
// every projection — in tokens/s, beside PyTorch-CPU training the same
// model (model/testdata/llama_ref.py's semantics, float32) with the same
// threads, alternating the two.
func llmBench(tw *tabwriter.Writer) {
	m := model.Llama{Config: llmConfig}
	r := rand.New(rand.NewPCG(1, 1))
	seqs := make([][]int, 64)
	for i := range seqs {
		seqs[i] = make([]int, 128)
		for j := range seqs[i] {
			seqs[i][j] = r.IntN(llmConfig.VocabSize)
		}
	}
	data, err := dataset.TokenExamples(seqs, llmConfig.VocabSize)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kinds := []string{"full", "lora"}
	ours, theirs := map[string][]float64{}, map[string][]float64{}
	var ref torchRef
	for range rounds {
		for _, k := range kinds {
			ours[k] = append(ours[k], llmRate(m, data, k == "lora"))
		}
		if ref = pytorch(3, "llm"); ref.err == nil {
			for _, k := range kinds {
				theirs[k] = append(theirs[k], ref.LLM[k])
			}
		}
	}
	fmt.Fprintf(tw, "training %v (%d parameters), AdamW, 16×128 tokens per step, %d threads (medians of %d alternating runs)\ttrained\tfedtune tokens/s\tPyTorch tokens/s\tx PyTorch\t\n",
		m, m.Params(), runtime.GOMAXPROCS(0), rounds)
	for _, k := range kinds {
		what := "every weight"
		if k == "lora" {
			what = "LoRA r=8, all projections"
		}
		rate := median(ours[k])
		torchCol, ratio := "-", "-"
		if len(theirs[k]) > 0 {
			t := median(theirs[k])
			torchCol, ratio = fmt.Sprintf("%.0f", t), fmt.Sprintf("%.2f", rate/t)
		}
		fmt.Fprintf(tw, "local training\t%s\t%.0f\t%s\t%s\t\n", what, rate, torchCol, ratio)
	}
	tw.Flush()
	describeTorch(ref)
}

// llmRate returns fedtune's tokens/s training m on data: tasks of 4 steps
// on a warm trainer, for about three seconds.
func llmRate(m model.Llama, data *dataset.Examples, adapt bool) float64 {
	tr, err := m.NewTrainer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer tr.Close()
	base := m.Init(1)
	l := lora.Config{Rank: 8, Alpha: 16}
	targets, _ := model.Targets(m, []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
	adapter, _ := l.Init(lora.Static{Params: m.Layout(), Targets: targets}, 1)
	cfg := model.TrainConfig{Epochs: 100, Steps: 4, BatchSize: 16, LR: 1e-3, Optimizer: model.AdamW}
	task := func() {
		var err error
		if adapt {
			_, _, err = tr.TrainAdapter(context.Background(), l, base, adapter, data, cfg)
		} else {
			_, _, err = tr.Train(context.Background(), base, data, cfg)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	task() // warm: graph built, buffers touched
	var n int
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		task()
		n++
	}
	return float64(n*cfg.Steps*cfg.BatchSize*data.Dim) / time.Since(start).Seconds()
}
