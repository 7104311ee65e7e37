package model

import (
	"context"
	"testing"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
)

// benchLlama is the regional-LLM example's base size.
var benchLlama = hf.Config{ModelType: "llama", VocabSize: 2048, HiddenSize: 128, IntermediateSize: 384, NumHiddenLayers: 4,
	NumAttentionHeads: 4, NumKeyValueHeads: 2, MaxPositionEmbeddings: 128, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true}

// BenchmarkLlamaTrainStep times one AdamW step on 16 sequences of 128
// tokens; tokens/s is reported.
func BenchmarkLlamaTrainStep(b *testing.B) {
	m := Llama{Config: benchLlama}
	seqs := randomTokens(benchLlama.VocabSize, 16, 128, 1)
	data, err := dataset.TokenExamples(seqs, benchLlama.VocabSize)
	if err != nil {
		b.Fatal(err)
	}
	tr, err := m.NewTrainer()
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	params := m.Init(1)
	cfg := TrainConfig{Steps: 1, BatchSize: 16, LR: 1e-3, Optimizer: AdamW}
	if _, _, err := tr.Train(context.Background(), params, data, cfg); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := tr.Train(context.Background(), params, data, cfg); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*16*128)/b.Elapsed().Seconds(), "tokens/s")
}
