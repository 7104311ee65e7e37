package testcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/lm"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/worker"
)

// TestTransformerLoRAJob runs a LoRA job on a Llama-family model over a
// 3-coordinator cluster with four workers holding French and German text,
// kills the leader in the middle of a round, and checks that the job
// completes, every round verifies on the new leader, and federated
// evaluation recorded the first and the last model's held-out loss per
// language — with the fine-tuned adapters better than the base.
func TestTransformerLoRAJob(t *testing.T) {
	docs := map[string][]string{}
	for _, lang := range []string{"en", "fr", "de"} {
		d, err := dataset.Text("man-"+lang, 400_000)
		if err != nil {
			t.Skipf("manual pages in %s: %v (make testdeps installs them)", lang, err)
		}
		docs[lang] = d
	}
	// A small English base, pretrained here in seconds.
	cfg := hf.Config{ModelType: "llama", HiddenSize: 64, IntermediateSize: 160, NumHiddenLayers: 2, NumAttentionHeads: 4,
		NumKeyValueHeads: 2, MaxPositionEmbeddings: 64, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true}
	ck, _, err := lm.Pretrain(context.Background(), lm.PretrainOptions{Config: cfg, VocabSize: 512, Docs: docs["en"], Seq: 32, Seed: 1,
		Train: model.TrainConfig{Epochs: 100, Steps: 60, BatchSize: 8, LR: 3e-3, Optimizer: model.AdamW, ClipNorm: 1, Seed: 1}})
	if err != nil {
		t.Fatal(err)
	}
	config, err := json.Marshal(ck.Model.Config)
	if err != nil {
		t.Fatal(err)
	}
	tokJSON, err := ck.Tok.Marshal()
	if err != nil {
		t.Fatal(err)
	}

	cl := NewCluster(t, 3, ClusterOptions{})
	langs := []string{"fr", "fr", "de", "de"}
	for i, lang := range langs {
		share, err := dataset.ShareDocs(docs[lang], 2, i%2, 1)
		if err != nil {
			t.Fatal(err)
		}
		train, held := dataset.SplitHeldOut(share, 0.2, uint64(i))
		g := worker.NewGorgoniaTrainer(nil, nil)
		g.AddText("man-"+lang, worker.Text{Train: train, HeldOut: held})
		StartWorkerWith(t, worker.Config{ID: fmt.Sprintf("llm-%d", i), Join: cl.GossipAddrs(), Labels: map[string]string{"lang": lang}}, g)
	}
	leader := cl.WaitForLeader(20 * time.Second)
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == len(langs) })
	pool := client.NewPool()
	t.Cleanup(pool.Close)
	conn, err := pool.Conn(leader.C.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	tokHash, err := client.PutBlob(t.Context(), conn, tokJSON)
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 4
	SubmitJob(t, pool, leader.C.GRPCAddr(), &pb.JobSpec{
		Name: "llm", Model: "llama", ModelConfig: config, Dataset: "man", Tokenizer: tokHash, SeqLen: 32,
		Rounds: rounds, ClientsPerRound: 2, RoundTimeoutSeconds: 60, Evaluation: "federated", EvalGroupBy: "lang",
		Lora:  &pb.LoRASpec{Rank: 4, Alpha: 8, TargetModules: []string{"q_proj", "v_proj", "down_proj"}},
		Train: &pb.TrainConfig{LocalSteps: 8, BatchSize: 4, LearningRate: 1e-2, Optimizer: "adamw", ClipNorm: 1},
	}, ck.Params)

	// Kill the leader while round 2 is open.
	cl.WaitRound("llm", 1, 2*time.Minute)
	WaitFor(t, time.Minute, "round 2 open", func() bool { j := cl.Job("llm"); return j.OpenRound != nil || len(j.History) >= 2 })
	old := cl.Leader()
	cl.Crash(old)
	nl := cl.WaitForLeader(20 * time.Second)
	t.Logf("killed leader %s during round 2; %s leads", old.Name, nl.Name)
	cl.Start(old)

	j := cl.WaitDone("llm", 4*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	checkHistory(t, cl, j, rounds)
	nconn, err := pool.Conn(cl.WaitForLeader(20 * time.Second).C.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range j.History {
		v, err := rpcpb.NewAdminClient(nconn).VerifyRound(t.Context(), &pb.VerifyRoundRequest{Job: "llm", Round: r.Number})
		if err != nil || !v.Match {
			t.Errorf("round %d does not verify: %v %v", r.Number, v, err)
		}
	}
	// Every worker evaluates the first and the last model.
	deadline := time.Now().Add(2 * time.Minute)
	for j = cl.Job("llm"); len(j.BaseEvals) != len(langs) || len(j.History[rounds-1].Evals) != len(langs); j = cl.Job("llm") {
		if time.Now().After(deadline) {
			t.Fatalf("federated evaluation: %d reports on the base, %d on round %d; want %d each", len(j.BaseEvals), len(j.History[rounds-1].Evals), rounds, len(langs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	first, last := j.BaseMetrics, j.History[rounds-1].Metrics
	for _, k := range []string{"fed_loss", "fed_perplexity", "fed_loss/lang=fr", "fed_loss/lang=de", "fed_perplexity/lang=de"} {
		if _, ok := first[k]; !ok {
			t.Errorf("base metrics lack %s: %v", k, first)
		}
		if _, ok := last[k]; !ok {
			t.Errorf("round %d metrics lack %s: %v", rounds, k, last)
		}
	}
	for _, k := range []string{"fed_loss/lang=fr", "fed_loss/lang=de"} {
		if !(last[k] < first[k]) {
			t.Errorf("%s: %.4f after %d rounds, %.4f before", k, last[k], rounds, first[k])
		}
	}
	// All replicas hold the same reports.
	for _, nd := range cl.Up() {
		WaitFor(t, 15*time.Second, "replicas agree on the evaluations", func() bool {
			r, ok := nd.C.FSM().Job("llm")
			return ok && len(r.History) == rounds && len(r.History[rounds-1].Evals) == len(langs)
		})
	}
	var sizes []string
	for _, u := range j.History[0].Accepted {
		sizes = append(sizes, u.Worker)
	}
	t.Logf("perplexity fr %.1f -> %.1f, de %.1f -> %.1f; round 1 updates from %s",
		first["fed_perplexity/lang=fr"], last["fed_perplexity/lang=fr"], first["fed_perplexity/lang=de"], last["fed_perplexity/lang=de"], strings.Join(sizes, ", "))

	// The same model with exact adapter aggregation and a lossy codec, a
	// robust rule, and an async job: every committed version verifies.
	for _, v := range []struct {
		name string
		spec func(*pb.JobSpec)
	}{
		{"llm-exact-int8", func(s *pb.JobSpec) { s.Lora.Aggregation, s.Codec = "exact", "topk=0.5+int8" }},
		{"llm-median", func(s *pb.JobSpec) { s.Aggregator, s.ClientsPerRound = "median", 3 }},
		{"llm-async", func(s *pb.JobSpec) { s.Mode, s.Async = "async", &pb.AsyncSpec{BufferSize: 2, Concurrency: 2} }},
	} {
		spec := &pb.JobSpec{Name: v.name, Model: "llama", ModelConfig: config, Dataset: "man", Tokenizer: tokHash, SeqLen: 32,
			Rounds: 2, ClientsPerRound: 2, RoundTimeoutSeconds: 60, Evaluation: "none",
			Lora:  &pb.LoRASpec{Rank: 4, Alpha: 8, TargetModules: []string{"q_proj", "v_proj"}},
			Train: &pb.TrainConfig{LocalSteps: 4, BatchSize: 4, LearningRate: 1e-2, Optimizer: "adamw"}}
		v.spec(spec)
		addr := cl.WaitForLeader(20 * time.Second).C.GRPCAddr()
		SubmitJob(t, pool, addr, spec, ck.Params)
		vj := cl.WaitDone(v.name, 3*time.Minute)
		if vj.Status != pb.JobStatus_JOB_STATUS_DONE || len(vj.History) != 2 {
			t.Fatalf("%s ended %v after %d versions: %s", v.name, vj.Status, len(vj.History), vj.Error)
		}
		vconn, err := pool.Conn(addr)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range vj.History {
			res, err := rpcpb.NewAdminClient(vconn).VerifyRound(t.Context(), &pb.VerifyRoundRequest{Job: v.name, Round: r.Number})
			if err != nil || !res.Match {
				t.Errorf("%s: version %d does not verify: %v %v", v.name, r.Number, res, err)
			}
		}
	}
}
