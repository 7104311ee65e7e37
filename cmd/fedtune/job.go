package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	"github.com/fedtune/fedtune/aggregation"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/hf"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/lm"
	"github.com/fedtune/fedtune/internal/pki"
	"github.com/fedtune/fedtune/internal/progress"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

func coordinatorFlag() cli.Flag {
	return &cli.StringFlag{Name: "coordinator", Aliases: []string{"c"}, Value: "127.0.0.1:7070", Usage: "gRPC address of a coordinator", EnvVars: []string{"FEDTUNE_COORDINATOR"}}
}

// dialLeader returns a connection to the leader, found by asking
// --coordinator; changes (a job, its base model) go to the leader.
func dialLeader(c *cli.Context) (*client.Pool, *grpc.ClientConn, error) {
	pool, conn, err := dial(c)
	if err != nil {
		return nil, nil, err
	}
	st, err := rpcpb.NewAdminClient(conn).ClusterStatus(c.Context, &pb.ClusterStatusRequest{})
	if err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("ask %s for the leader: %w", c.String("coordinator"), err)
	}
	if st.State == "Leader" || st.LeaderGrpc == "" {
		return pool, conn, nil
	}
	if conn, err = pool.Conn(st.LeaderGrpc); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, conn, nil
}

// withAdmin calls f with an Admin client on --coordinator.
func withAdmin(c *cli.Context, f func(rpcpb.AdminClient) error) error {
	pool, conn, err := dial(c)
	if err != nil {
		return err
	}
	defer pool.Close()
	return f(rpcpb.NewAdminClient(conn))
}

// dial returns a connection to --coordinator; the caller closes the pool.
// It authenticates with the admin certificate --cert-name in --cert-dir,
// or, with --insecure, connects in plaintext.
func dial(c *cli.Context) (*client.Pool, *grpc.ClientConn, error) {
	pool := client.NewPool()
	if !c.Bool("insecure") {
		n, err := pki.Load(c.String("cert-dir"), c.String("cert-name"))
		if err != nil {
			return nil, nil, fmt.Errorf("%w (or pass --insecure for a cluster running without TLS)", err)
		}
		pool = client.NewPoolTLS(n.ClientTLS())
	}
	conn, err := pool.Conn(c.String("coordinator"))
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, conn, nil
}

func jobCommand() *cli.Command {
	return &cli.Command{
		Name:  "job",
		Usage: "submit, list and follow federated jobs",
		Subcommands: []*cli.Command{
			{
				Name:      "submit",
				Usage:     "submit a job that fine-tunes a base checkpoint",
				ArgsUsage: " ",
				Flags: []cli.Flag{
					coordinatorFlag(),
					&cli.StringFlag{Name: "name", Required: true, Usage: "job name (unique)", EnvVars: []string{"FEDTUNE_JOB"}},
					&cli.StringFlag{Name: "model", Value: "mnist-mlp", Usage: "architecture: " + strings.Join(model.Names(), ", "), EnvVars: []string{"FEDTUNE_MODEL"}},
					&cli.StringFlag{Name: "dataset", Value: "mnist", Usage: "data set the workers train on", EnvVars: []string{"FEDTUNE_DATASET"}},
					&cli.StringFlag{Name: "base", Usage: "base checkpoint: a safetensors file, or a Hugging Face directory (config.json, weights, tokenizer.json) for --model llama; default: a fresh initialisation from --seed", EnvVars: []string{"FEDTUNE_BASE"}},
					&cli.UintFlag{Name: "seq-len", Usage: "text jobs: tokens per sequence (default 128)", EnvVars: []string{"FEDTUNE_SEQ_LEN"}},
					&cli.StringFlag{Name: "evaluation", Usage: "central (the coordinator, on the data set's test split), federated (the workers, on their held-out text) or none (default: central if --evaluate, else none)", EnvVars: []string{"FEDTUNE_EVALUATION"}},
					&cli.UintFlag{Name: "eval-clients", Usage: "federated evaluation: workers that evaluate each model (default: every matching worker)", EnvVars: []string{"FEDTUNE_EVAL_CLIENTS"}},
					&cli.StringFlag{Name: "eval-group-by", Usage: "federated evaluation: a worker label (e.g. lang) whose values get their own mean loss and perplexity", EnvVars: []string{"FEDTUNE_EVAL_GROUP_BY"}},
					&cli.StringSliceFlag{Name: "lora-targets", Usage: "LoRA on transformers: modules adapted (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; default q_proj, v_proj)", EnvVars: []string{"FEDTUNE_LORA_TARGETS"}},
					&cli.StringFlag{Name: "optimizer", Usage: "local optimizer: sgd (default) or adamw", EnvVars: []string{"FEDTUNE_OPTIMIZER"}},
					&cli.Float64Flag{Name: "weight-decay", Usage: "local weight decay (sgd: L2; adamw: decoupled)", EnvVars: []string{"FEDTUNE_WEIGHT_DECAY"}},
					&cli.Float64Flag{Name: "grad-clip", Usage: "clip each local step's gradient to this global L2 norm (0: off)", EnvVars: []string{"FEDTUNE_GRAD_CLIP"}},
					&cli.UintFlag{Name: "accum", Usage: "micro-batches whose gradients one local step averages (gradient accumulation)", EnvVars: []string{"FEDTUNE_ACCUM"}},
					&cli.Float64Flag{Name: "dp-noise", Usage: "DP-FedAvg: noise multiplier σ (the mean of the clipped updates gets Gaussian noise σ·clip/n; 0: no DP)", EnvVars: []string{"FEDTUNE_DP_NOISE"}},
					&cli.Float64Flag{Name: "dp-clip", Usage: "DP-FedAvg: L2 bound of one client's update", EnvVars: []string{"FEDTUNE_DP_CLIP"}},
					&cli.Float64Flag{Name: "dp-delta", Usage: "DP-FedAvg: δ of the (ε, δ) reported (default 1e-5)", EnvVars: []string{"FEDTUNE_DP_DELTA"}},
					&cli.Float64Flag{Name: "dp-epsilon", Usage: "DP-FedAvg: budget; no round starts that would spend more (0: none)", EnvVars: []string{"FEDTUNE_DP_EPSILON"}},
					&cli.BoolFlag{Name: "dp-adaptive-clip", Usage: "DP-FedAvg: adapt the clip each round toward a quantile of the update norms, starting at --dp-clip (Andrew et al. 2021; its privacy cost counted)", EnvVars: []string{"FEDTUNE_DP_ADAPTIVE_CLIP"}},
					&cli.Float64Flag{Name: "dp-target-quantile", Usage: "DP-FedAvg adaptive clipping: fraction of updates left unclipped (0: 0.5)", EnvVars: []string{"FEDTUNE_DP_TARGET_QUANTILE"}},
					&cli.Float64Flag{Name: "dp-clip-lr", Usage: "DP-FedAvg adaptive clipping: geometric step of the clip (0: 0.2)", EnvVars: []string{"FEDTUNE_DP_CLIP_LR"}},
					&cli.Float64Flag{Name: "dp-count-noise", Usage: "DP-FedAvg adaptive clipping: noise σ_b on the count of unclipped updates, > σ/2 (0: clients per round / 20)", EnvVars: []string{"FEDTUNE_DP_COUNT_NOISE"}},
					&cli.BoolFlag{Name: "dp-distributed", Usage: "DP-FedAvg: each worker clips its update and adds its share of the noise (σ·clip/√n); the coordinators add none and never see an unnoised update", EnvVars: []string{"FEDTUNE_DP_DISTRIBUTED"}},
					&cli.BoolFlag{Name: "secagg", Usage: "secure aggregation (SecAgg+): coordinators see masked updates and their sum only (fedavg, sync rounds)", EnvVars: []string{"FEDTUNE_SECAGG"}},
					&cli.UintFlag{Name: "secagg-neighbors", Usage: "secagg: each worker's neighbours in the masking graph (0: all up to 17 workers, else about 2·log2 n)", EnvVars: []string{"FEDTUNE_SECAGG_NEIGHBORS"}},
					&cli.Float64Flag{Name: "secagg-threshold", Usage: "secagg: fraction of a worker's neighbours whose shares recover its secrets, t = ⌊k·f⌋+1 (0: 0.5); lower survives more dropouts, higher resists more colluding workers", EnvVars: []string{"FEDTUNE_SECAGG_THRESHOLD"}},
					&cli.Float64Flag{Name: "secagg-clip-range", Usage: "secagg: each update value is clamped to ±this before fixed-point encoding (0: 1)", EnvVars: []string{"FEDTUNE_SECAGG_CLIP_RANGE"}},
					&cli.UintFlag{Name: "secagg-phase-timeout", Usage: "secagg: seconds each key, share, masking and unmasking phase waits for slow workers (0: 30)", EnvVars: []string{"FEDTUNE_SECAGG_PHASE_TIMEOUT"}},
					&cli.UintFlag{Name: "rounds", Value: 10, Usage: "federated rounds", EnvVars: []string{"FEDTUNE_ROUNDS"}},
					&cli.UintFlag{Name: "clients", Value: 3, Usage: "workers per round", EnvVars: []string{"FEDTUNE_CLIENTS"}},
					&cli.UintFlag{Name: "min-updates", Usage: "updates needed to commit a round at its deadline (default: --clients)", EnvVars: []string{"FEDTUNE_MIN_UPDATES"}},
					&cli.Float64Flag{Name: "over-select", Usage: "fraction of extra workers selected to absorb stragglers", EnvVars: []string{"FEDTUNE_OVER_SELECT"}},
					&cli.DurationFlag{Name: "round-timeout", Value: 5 * time.Minute, Usage: "round deadline", EnvVars: []string{"FEDTUNE_ROUND_TIMEOUT"}},
					&cli.StringSliceFlag{Name: "selector", Aliases: []string{"require"}, Usage: "only workers with this label, key=value (repeatable), e.g. --require device=gpu", EnvVars: []string{"FEDTUNE_SELECTOR"}},
					&cli.StringSliceFlag{Name: "allow", Usage: "only these workers (certificate names; repeatable); default: any that match --selector", EnvVars: []string{"FEDTUNE_ALLOW"}},
					&cli.UintFlag{Name: "epochs", Value: 1, Usage: "local epochs per round", EnvVars: []string{"FEDTUNE_EPOCHS"}},
					&cli.UintFlag{Name: "steps", Usage: "cap on local steps per round (0: none)", EnvVars: []string{"FEDTUNE_STEPS"}},
					&cli.UintFlag{Name: "batch-size", Value: 64, Usage: "local batch size", EnvVars: []string{"FEDTUNE_BATCH_SIZE"}},
					&cli.Float64Flag{Name: "lr", Value: 0.05, Usage: "local learning rate", EnvVars: []string{"FEDTUNE_LR"}},
					&cli.Float64Flag{Name: "momentum", Value: 0.9, Usage: "local SGD momentum", EnvVars: []string{"FEDTUNE_MOMENTUM"}},
					&cli.Float64Flag{Name: "prox-mu", Usage: "FedProx proximal weight (0: plain FedAvg)", EnvVars: []string{"FEDTUNE_PROX_MU"}},
					&cli.StringFlag{Name: "aggregator", Value: "fedavg", Usage: "aggregation rule: " + strings.Join(aggregation.Rules, ", "), EnvVars: []string{"FEDTUNE_AGGREGATOR"}},
					&cli.Float64Flag{Name: "trim-fraction", Usage: "trimmed-mean: fraction cut from each end (default 0.1)", EnvVars: []string{"FEDTUNE_TRIM_FRACTION"}},
					&cli.UintFlag{Name: "byzantine", Aliases: []string{"f"}, Usage: "krum/multi-krum/bulyan: Byzantine updates tolerated (default: the most n allows)", EnvVars: []string{"FEDTUNE_BYZANTINE"}},
					&cli.UintFlag{Name: "multi-krum-m", Usage: "multi-krum: updates averaged (default n - f)", EnvVars: []string{"FEDTUNE_MULTI_KRUM_M"}},
					&cli.Float64Flag{Name: "max-update-norm", Usage: "refuse updates whose L2 norm exceeds this (0: no bound)", EnvVars: []string{"FEDTUNE_MAX_UPDATE_NORM"}},
					&cli.Float64Flag{Name: "max-update-ratio", Usage: "refuse updates whose L2 norm exceeds this multiple of their base model's (default 10)", EnvVars: []string{"FEDTUNE_MAX_UPDATE_RATIO"}},
					&cli.Uint64Flag{Name: "max-samples", Usage: "cap on the examples one update may claim, its FedAvg weight; larger claims count as this (default: --steps × --batch-size, or 1000000 without --steps)", EnvVars: []string{"FEDTUNE_MAX_SAMPLES"}},
					&cli.Float64Flag{Name: "clip-norm", Usage: "clip every update to this L2 norm before aggregating (0: off)", EnvVars: []string{"FEDTUNE_CLIP_NORM"}},
					&cli.Float64Flag{Name: "tau", Usage: "centered-clip radius (default 10)", EnvVars: []string{"FEDTUNE_TAU"}},
					&cli.StringFlag{Name: "server-optimizer", Value: "plain", Usage: "server optimizer: " + strings.Join(aggregation.Optimizers, ", "), EnvVars: []string{"FEDTUNE_SERVER_OPTIMIZER"}},
					&cli.Float64Flag{Name: "server-lr", Usage: "server learning rate (default 1 for plain/fedavgm, 0.01 for fedadam/fedyogi)", EnvVars: []string{"FEDTUNE_SERVER_LR"}},
					&cli.Float64Flag{Name: "server-beta1", Usage: "server momentum / first-moment decay (default 0.9)", EnvVars: []string{"FEDTUNE_SERVER_BETA1"}},
					&cli.Float64Flag{Name: "server-beta2", Usage: "second-moment decay for fedadam/fedyogi (default 0.99)", EnvVars: []string{"FEDTUNE_SERVER_BETA2"}},
					&cli.Float64Flag{Name: "server-epsilon", Usage: "adaptivity τ for fedadam/fedyogi (default 1e-3)", EnvVars: []string{"FEDTUNE_SERVER_EPSILON"}},
					&cli.UintFlag{Name: "agg-iterations", Usage: "centered-clip / geomedian iterations (default 3 / 10)", EnvVars: []string{"FEDTUNE_AGG_ITERATIONS"}},
					&cli.StringFlag{Name: "mode", Value: "sync", Usage: "sync (rounds: wait for the selected workers) or async (FedBuff: workers train whenever free, every --buffer-size updates make a version; --rounds counts versions)", EnvVars: []string{"FEDTUNE_MODE"}},
					&cli.UintFlag{Name: "buffer-size", Usage: "async: updates aggregated into each new model version (default 10)", EnvVars: []string{"FEDTUNE_BUFFER_SIZE"}},
					&cli.UintFlag{Name: "concurrency", Usage: "async: workers training at once (default 2 × --buffer-size)", EnvVars: []string{"FEDTUNE_CONCURRENCY"}},
					&cli.UintFlag{Name: "concurrency-final", Usage: "async: concurrency schedule: the limit moves linearly from --concurrency at the first version to this at the last, e.g. many early for speed, few late for fresh updates (default: constant)", EnvVars: []string{"FEDTUNE_CONCURRENCY_FINAL"}},
					&cli.Float64Flag{Name: "drift-correction", Usage: "async: β in [0, 1]: a stale update loses the share β of its component along the model's drift since its base version, the progress other updates already made (default 0: off)", EnvVars: []string{"FEDTUNE_DRIFT_CORRECTION"}},
					&cli.StringFlag{Name: "staleness", Usage: "async: weight of an update τ versions stale: polynomial ((1+τ)^-a, default), constant or hinge", EnvVars: []string{"FEDTUNE_STALENESS"}},
					&cli.Float64Flag{Name: "staleness-a", Usage: "async: polynomial exponent or hinge slope (default 0.5 / 10)", EnvVars: []string{"FEDTUNE_STALENESS_A"}},
					&cli.UintFlag{Name: "staleness-b", Usage: "async: hinge: staleness weighted fully (default 4)", EnvVars: []string{"FEDTUNE_STALENESS_B"}},
					&cli.UintFlag{Name: "max-staleness", Usage: "async: refuse updates more than this many versions old (default 20)", EnvVars: []string{"FEDTUNE_MAX_STALENESS"}},
					&cli.UintFlag{Name: "max-per-worker", Usage: "async: updates one worker may have in the fairness window, so fast workers do not drown out slow ones (default 1)", EnvVars: []string{"FEDTUNE_MAX_PER_WORKER"}},
					&cli.UintFlag{Name: "fair-window", Usage: "async: versions --max-per-worker counts over: the buffer and the last N−1 versions (default 1: the buffer)", EnvVars: []string{"FEDTUNE_FAIR_WINDOW"}},
					&cli.StringFlag{Name: "fair-by", Usage: "async: fairness between groups of workers: a worker label (e.g. region); free workers of the group with the fewest updates in the fairness window go first", EnvVars: []string{"FEDTUNE_FAIR_BY"}},
					&cli.UintFlag{Name: "lora-rank", Usage: "train LoRA adapters of this rank on the frozen --base instead of the whole model (0: full fine-tuning)", EnvVars: []string{"FEDTUNE_LORA_RANK"}},
					&cli.Float64Flag{Name: "lora-alpha", Usage: "LoRA scale numerator: adapters apply as (alpha/rank)·B·A (default 2·rank)", EnvVars: []string{"FEDTUNE_LORA_ALPHA"}},
					&cli.StringFlag{Name: "lora-aggregation", Value: "naive", Usage: "LoRA: naive (the --aggregator on A and B apart) or exact (rank-r SVD of the mean B·A; fedavg only)", EnvVars: []string{"FEDTUNE_LORA_AGGREGATION"}},
					&cli.StringFlag{Name: "lora-adapter", Usage: "LoRA: initial adapters (safetensors, PEFT names); default: fresh (A random, B = 0)", EnvVars: []string{"FEDTUNE_LORA_ADAPTER"}},
					&cli.StringFlag{Name: "codec", Value: "fp32", Usage: "update codec: fp32, fp16, int8, or top-k with one of them (topk=0.1+int8: the largest 10% of entries, int8-quantised, with error feedback)", EnvVars: []string{"FEDTUNE_CODEC"}},
					&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed for worker sampling and initialisation", EnvVars: []string{"FEDTUNE_SEED"}},
					&cli.BoolFlag{Name: "evaluate", Value: true, Usage: "evaluate each round's model on the data set's test split", EnvVars: []string{"FEDTUNE_EVALUATE"}},
					&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "follow the job until it ends", EnvVars: []string{"FEDTUNE_WATCH"}},
				},
				Action: submitJob,
			},
			jobControlCommand(round.ActionPause, "stop starting rounds (the open round is abandoned; workers are told at their next poll) until job resume"),
			jobControlCommand(round.ActionResume, "start rounds again after job pause"),
			jobControlCommand(round.ActionCancel, "stop a job for good; its state stays for job status, ledger, verify and model export"),
			jobControlCommand(round.ActionDelete, "remove a job's state (its blobs are collected, its name is free again); a running or paused job only with --force"),
			{
				Name:      "status",
				Usage:     "show a job's rounds",
				ArgsUsage: "[--watch] NAME",
				Flags: []cli.Flag{coordinatorFlag(), jobFlag(), &cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "follow the job until it ends", EnvVars: []string{"FEDTUNE_WATCH"}},
					outputFlag()},
				Action: func(c *cli.Context) error {
					name, err := jobName(c)
					if err != nil {
						return err
					}
					pool, conn, err := dial(c)
					if err != nil {
						return err
					}
					defer pool.Close()
					if j, err := wantJSON(c); err != nil || j {
						if err != nil {
							return err
						}
						resp, err := rpcpb.NewAdminClient(conn).JobStatus(c.Context, &pb.JobStatusRequest{Name: name})
						if err != nil {
							return err
						}
						return printJSON(c, resp)
					}
					return watchJob(c, pool, conn, name, c.Bool("watch"))
				},
			},
			{
				Name:  "list",
				Usage: "list jobs",
				Flags: []cli.Flag{coordinatorFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					asJSON, err := wantJSON(c)
					if err != nil {
						return err
					}
					all := &pb.ListJobsResponse{}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tSTATUS\tMODEL\tROUNDS\tTEST ACC")
					err = withAdmin(c, func(a rpcpb.AdminClient) error {
						for token := ""; ; {
							resp, err := a.ListJobs(c.Context, &pb.ListJobsRequest{PageToken: token})
							if err != nil {
								return err
							}
							all.Jobs, all.RoundsDone = append(all.Jobs, resp.Jobs...), append(all.RoundsDone, resp.RoundsDone...)
							for i, j := range resp.Jobs {
								acc := "-"
								if n := len(j.History); n > 0 {
									if v, ok := j.History[n-1].Metrics["test_accuracy"]; ok {
										acc = fmt.Sprintf("%.2f%%", 100*v)
									}
								}
								fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\n", terminalSafe(j.Spec.Name), progress.Status(j), j.Spec.Model, resp.RoundsDone[i], j.Spec.Rounds, acc)
							}
							if token = resp.NextPageToken; token == "" {
								return nil
							}
						}
					})
					if err != nil {
						return err
					}
					if asJSON {
						return printJSON(c, all)
					}
					return tw.Flush()
				},
			},
		},
	}
}

func submitJob(c *cli.Context) error {
	selector, err := parseLabels("selector", c.StringSlice("selector"))
	if err != nil {
		return err
	}
	flags := &uint32Flags{c: c}
	u32 := flags.get
	spec := &pb.JobSpec{
		Name: c.String("name"), Model: c.String("model"), Dataset: c.String("dataset"), Rounds: u32("rounds"),
		ClientsPerRound: u32("clients"), MinUpdates: u32("min-updates"), OverSelect: c.Float64("over-select"),
		RoundTimeoutSeconds: c.Duration("round-timeout").Seconds(), Selector: selector, Allow: c.StringSlice("allow"), Aggregator: c.String("aggregator"),
		Codec: c.String("codec"), Seed: c.Uint64("seed"), Evaluate: c.Bool("evaluate"), MaxUpdateNorm: c.Float64("max-update-norm"),
		MaxUpdateRatio: c.Float64("max-update-ratio"), MaxSamples: c.Uint64("max-samples"),
		AggregatorParams: &pb.AggregatorParams{TrimFraction: c.Float64("trim-fraction"), F: u32("byzantine"), M: u32("multi-krum-m"),
			ClipNorm: c.Float64("clip-norm"), Tau: c.Float64("tau"), Iterations: u32("agg-iterations")},
		ServerOptimizer: &pb.ServerOptimizer{Name: c.String("server-optimizer"), Lr: c.Float64("server-lr"), Beta1: c.Float64("server-beta1"),
			Beta2: c.Float64("server-beta2"), Epsilon: c.Float64("server-epsilon")},
		Train: &pb.TrainConfig{LocalEpochs: u32("epochs"), LocalSteps: u32("steps"), BatchSize: u32("batch-size"),
			LearningRate: c.Float64("lr"), Momentum: c.Float64("momentum"), ProxMu: c.Float64("prox-mu"),
			Optimizer: c.String("optimizer"), WeightDecay: c.Float64("weight-decay"), ClipNorm: c.Float64("grad-clip"), Accum: u32("accum")},
		SeqLen: u32("seq-len"), Evaluation: c.String("evaluation"), EvalClients: u32("eval-clients"), EvalGroupBy: c.String("eval-group-by"),
	}
	if spec.Evaluation != "" && !c.IsSet("evaluate") {
		spec.Evaluate = false // --evaluation decides; --evaluate's default is central
	}
	if spec.Train.Optimizer == "adamw" && !c.IsSet("momentum") {
		spec.Train.Momentum = 0 // --momentum's default is SGD's
	}
	var hfBase *lm.Checkpoint
	if p := c.String("base"); p != "" {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			if hfBase, err = lm.Load(p); err != nil {
				return fmt.Errorf("job submit: --base: %w", err)
			}
			if spec.ModelConfig, err = os.ReadFile(filepath.Join(p, hf.ConfigFile)); err != nil {
				return fmt.Errorf("job submit: --base: %w", err)
			}
		}
	}
	spec.Mode = c.String("mode")
	if spec.Mode == "async" {
		spec.Async = &pb.AsyncSpec{BufferSize: u32("buffer-size"), Concurrency: u32("concurrency"), Staleness: c.String("staleness"),
			StalenessA: c.Float64("staleness-a"), StalenessB: u32("staleness-b"), MaxStaleness: u32("max-staleness"), MaxPerWorker: u32("max-per-worker"),
			FairWindow: u32("fair-window"), FairBy: c.String("fair-by"), ConcurrencyFinal: u32("concurrency-final"),
			DriftCorrection: c.Float64("drift-correction")}
	} else {
		for _, f := range []string{"buffer-size", "concurrency", "concurrency-final", "drift-correction", "staleness", "staleness-a", "staleness-b", "max-staleness", "max-per-worker", "fair-window", "fair-by"} {
			if c.IsSet(f) {
				return fmt.Errorf("job submit: --%s is for --mode async", f)
			}
		}
	}
	if c.Bool("secagg") || c.IsSet("secagg-neighbors") || c.IsSet("secagg-threshold") || c.IsSet("secagg-clip-range") || c.IsSet("secagg-phase-timeout") {
		spec.Secagg = &pb.SecAggSpec{Neighbors: uint32(c.Uint("secagg-neighbors")), Threshold: c.Float64("secagg-threshold"),
			ClipRange: c.Float64("secagg-clip-range"), PhaseTimeoutSeconds: uint32(c.Uint("secagg-phase-timeout"))}
	}
	if c.Float64("dp-noise") > 0 || c.IsSet("dp-clip") || c.IsSet("dp-epsilon") || c.IsSet("dp-delta") || c.Bool("dp-distributed") || c.Bool("dp-adaptive-clip") {
		spec.Dp = &pb.DPSpec{NoiseMultiplier: c.Float64("dp-noise"), ClipNorm: c.Float64("dp-clip"), Delta: c.Float64("dp-delta"), Epsilon: c.Float64("dp-epsilon"), Distributed: c.Bool("dp-distributed"),
			AdaptiveClip: c.Bool("dp-adaptive-clip"), TargetQuantile: c.Float64("dp-target-quantile"), ClipLr: c.Float64("dp-clip-lr"), CountNoise: c.Float64("dp-count-noise")}
	}
	if r := u32("lora-rank"); r > 0 {
		spec.Lora = &pb.LoRASpec{Rank: r, Alpha: c.Float64("lora-alpha"), Aggregation: c.String("lora-aggregation"), TargetModules: c.StringSlice("lora-targets")}
	} else if c.IsSet("lora-alpha") || c.IsSet("lora-aggregation") || c.IsSet("lora-adapter") || c.IsSet("lora-targets") {
		return fmt.Errorf("job submit: --lora-alpha, --lora-aggregation, --lora-adapter and --lora-targets need --lora-rank")
	}
	if flags.err != nil {
		return fmt.Errorf("job submit: %w", flags.err)
	}
	if err := checkExplicitFlags(c); err != nil {
		return fmt.Errorf("job submit: %w", err)
	}
	if dataset.IsText(spec.Dataset) && spec.Evaluation == "" && !c.IsSet("evaluate") {
		spec.Evaluation, spec.Evaluate = round.EvalFederated, false // the coordinator holds no text
	}
	if hfBase != nil && hfBase.Tok != nil && dataset.IsText(spec.Dataset) {
		spec.Tokenizer = "pending" // uploaded below; set so that normalisation fills seq_len
	}
	if err := round.NormalizeSpec(spec, model.Catalog{}, dataset.Check); err != nil {
		return fmt.Errorf("job submit: %w", specFlagError(err))
	}
	if dataset.IsText(spec.Dataset) && (hfBase == nil || hfBase.Tok == nil) {
		return fmt.Errorf("job submit: --dataset %s is text: give --base a model directory with its tokenizer.json", spec.Dataset)
	}
	var base tensor.Set
	switch p := c.String("base"); {
	case hfBase != nil:
		base = hfBase.Params
	case p != "":
		if base, err = tensor.ReadFile(p); err != nil {
			return fmt.Errorf("job submit: --base: %w", err)
		}
	default:
		arch, err := model.LookupConfig(spec.Model, spec.ModelConfig)
		if err != nil {
			return fmt.Errorf("job submit: %w", err)
		}
		base = arch.Init(spec.Seed)
	}
	b, err := tensor.Marshal(base, tensor.F32)
	if err != nil {
		return err
	}
	pool, conn, err := dialLeader(c)
	if err != nil {
		return err
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(c.Context, 5*time.Minute)
	defer cancel()
	if spec.BaseModel, err = client.PutBlob(ctx, conn, b); err != nil {
		return fmt.Errorf("job submit: upload base model: %w", err)
	}
	if spec.Tokenizer != "" {
		tb, err := hfBase.Tok.Marshal()
		if err != nil {
			return err
		}
		if spec.Tokenizer, err = client.PutBlob(ctx, conn, tb); err != nil {
			return fmt.Errorf("job submit: upload tokenizer: %w", err)
		}
	}
	if p := c.String("lora-adapter"); p != "" {
		ad, err := tensor.ReadFile(p)
		if err != nil {
			return fmt.Errorf("job submit: --lora-adapter: %w", err)
		}
		ab, err := tensor.Marshal(ad, tensor.F32)
		if err != nil {
			return err
		}
		if spec.Lora.Adapter, err = client.PutBlob(ctx, conn, ab); err != nil {
			return fmt.Errorf("job submit: upload adapters: %w", err)
		}
	}
	resp, err := rpcpb.NewAdminClient(conn).SubmitJob(ctx, &pb.SubmitJobRequest{Spec: spec})
	if err != nil {
		return fmt.Errorf("job submit: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "job %s submitted: %d rounds of %d workers, base model %.12s", spec.Name, spec.Rounds, spec.ClientsPerRound, spec.BaseModel)
	if l := resp.Job.Spec.GetLora(); l != nil {
		fmt.Fprintf(c.App.Writer, ", LoRA rank %d alpha %g (%s aggregation)", l.Rank, l.Alpha, l.Aggregation)
	}
	if a := resp.Job.Spec.GetAsync(); a != nil {
		window := "a buffer"
		if a.FairWindow > 1 {
			window = fmt.Sprintf("%d versions", a.FairWindow)
		}
		training := fmt.Sprint(a.Concurrency)
		if a.ConcurrencyFinal != 0 {
			training = fmt.Sprintf("%d → %d", a.Concurrency, a.ConcurrencyFinal)
		}
		fmt.Fprintf(c.App.Writer, ", async: versions of %d updates, %s training at once, %s staleness weighting, max staleness %d, at most %d per worker in %s",
			a.BufferSize, training, a.Staleness, a.MaxStaleness, a.MaxPerWorker, window)
		if a.FairBy != "" {
			fmt.Fprintf(c.App.Writer, ", fair by %s", a.FairBy)
		}
		if a.DriftCorrection > 0 {
			fmt.Fprintf(c.App.Writer, ", drift correction %g", a.DriftCorrection)
		}
	}
	if acc, ok := resp.Job.BaseMetrics["test_accuracy"]; ok {
		fmt.Fprintf(c.App.Writer, " (test accuracy %.2f%%)", 100*acc)
	}
	fmt.Fprintln(c.App.Writer)
	if c.Bool("watch") {
		return watchJob(c, pool, conn, spec.Name, true)
	}
	return nil
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func workersCommand() *cli.Command {
	return &cli.Command{
		Name:  "workers",
		Usage: "list the worker roster",
		Flags: []cli.Flag{coordinatorFlag(), outputFlag()},
		Action: func(c *cli.Context) error {
			asJSON, err := wantJSON(c)
			if err != nil {
				return err
			}
			var resp *pb.ListWorkersResponse
			err = withAdmin(c, func(a rpcpb.AdminClient) (err error) {
				resp, err = a.ListWorkers(c.Context, &pb.ListWorkersRequest{})
				return err
			})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c, resp)
			}
			alive := map[string]bool{}
			for _, a := range resp.Alive {
				alive[a] = true
			}
			tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tLABELS")
			for _, w := range resp.Workers {
				state := "gone"
				if alive[w.Id] {
					state = "alive"
				}
				var ls []string
				for k, v := range w.Labels {
					ls = append(ls, k+"="+v)
				}
				sort.Strings(ls)
				fmt.Fprintf(tw, "%s\t%s\t%s\n", terminalSafe(w.Id), state, terminalSafe(strings.Join(ls, ",")))
			}
			return tw.Flush()
		},
	}
}

// jobControlCommand is job pause, resume, cancel or delete: a command
// committed through the leader's log.
func jobControlCommand(action, usage string) *cli.Command {
	flags := []cli.Flag{coordinatorFlag(), jobFlag()}
	if action != round.ActionResume {
		flags = append(flags, &cli.StringFlag{Name: "reason", Usage: "why, recorded with the job", EnvVars: []string{"FEDTUNE_REASON"}})
	}
	if action == round.ActionDelete {
		flags = append(flags, &cli.BoolFlag{Name: "force", Usage: "delete a running or paused job too", EnvVars: []string{"FEDTUNE_FORCE"}})
	}
	return &cli.Command{
		Name:      action,
		Usage:     usage,
		ArgsUsage: "NAME",
		Flags:     flags,
		Action: func(c *cli.Context) error {
			name, err := jobName(c)
			if err != nil {
				return err
			}
			pool, conn, err := dialLeader(c)
			if err != nil {
				return err
			}
			defer pool.Close()
			resp, err := rpcpb.NewAdminClient(conn).ControlJob(c.Context, &pb.ControlJobRequest{Name: name, Action: action, Reason: c.String("reason"), Force: c.Bool("force")})
			if err != nil {
				return fmt.Errorf("job %s %s: %w", action, name, err)
			}
			if resp.Job == nil {
				fmt.Fprintf(c.App.Writer, "job %s deleted on every coordinator\n", name)
				return nil
			}
			fmt.Fprintf(c.App.Writer, "job %s: %s after %d rounds\n", name, progress.Status(resp.Job), len(resp.Job.History))
			return nil
		},
	}
}

// jobFlag is --job, the job a command is about; every such command also
// takes the name as its argument (jobName).
func jobFlag() cli.Flag {
	return &cli.StringFlag{Name: "job", Usage: "job name (or give it as the argument)", EnvVars: []string{"FEDTUNE_JOB"}}
}

// jobName returns the job a command names, by --job or as its one
// argument (both accepted everywhere, and they must agree).
func jobName(c *cli.Context) (string, error) {
	flag, arg := c.String("job"), ""
	if c.NArg() > 1 {
		return "", fmt.Errorf("%s: give one job name", c.Command.FullName())
	}
	if c.NArg() == 1 {
		arg = c.Args().First()
	}
	switch {
	case flag != "" && arg != "" && flag != arg:
		return "", fmt.Errorf("%s: --job %s and argument %s name different jobs", c.Command.FullName(), flag, arg)
	case flag == "" && arg == "":
		return "", fmt.Errorf("%s: name the job (as the argument or --job)", c.Command.FullName())
	}
	return cmp.Or(flag, arg), nil
}
