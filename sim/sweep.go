package sim

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/progress"
)

// SweepOptions says where a sweep writes and how it reports.
type SweepOptions struct {
	Out      string    // directory for results.csv and summary.json
	Timings  bool      // add a seconds column to the CSV (which then differs run to run)
	Progress io.Writer // live progress (a terminal); nil: none
	// Runner runs one point; default Run (the simulation). The CLI's
	// --transport grpc passes sim/cluster.Run, the real cluster path.
	Runner func(ctx context.Context, cfg Config, train, test *dataset.Examples, progress func(RoundResult)) ([]RoundResult, error)
	// Data loads a data set split by name (and languages, for words);
	// default: the embedded MNIST, or dataset.Words.
	Data func(name string, langs []string, split dataset.Split) (*dataset.Examples, error)
}

// RunSummary is one run's line in summary.json.
type RunSummary struct {
	Run            int               `json:"run"`
	Label          string            `json:"label"`
	Params         map[string]string `json:"params"`
	FinalAccuracy  float64           `json:"final_accuracy"`
	BestAccuracy   float64           `json:"best_accuracy"`
	Rounds         int               `json:"rounds"`
	TotalBytes     int64             `json:"total_bytes"`
	Seconds        float64           `json:"seconds"`
	RoundsPerMin   float64           `json:"rounds_per_minute"`
	MeanPerRound   int               `json:"mean_participants"`
	DivergedAtDone bool              `json:"diverged"`
	SimTime        float64           `json:"sim_time"` // simulated seconds at the end
	// Fairness is Jain's index of the workers' aggregated updates, from
	// 1/workers (one worker did everything) to 1 (all the same); MinUpdates
	// and MaxUpdates are the fewest and most of one worker.
	Fairness   float64 `json:"fairness"`
	MinUpdates int     `json:"min_updates_per_worker"`
	MaxUpdates int     `json:"max_updates_per_worker"`
	// UpdatesPerWorker is each worker's aggregated updates, by index, and
	// Speeds each worker's slowness factor (see ParseSpeeds).
	UpdatesPerWorker []int     `json:"updates_per_worker"`
	Speeds           []float64 `json:"speeds"`
	// Epsilon is the privacy a DP run spent (at its dp_delta), and
	// Budget says it stopped before its rounds were done because the next
	// round would have passed dp_epsilon (or the first round alone would:
	// then it ran none, and Rounds is 0).
	Epsilon float64 `json:"epsilon,omitempty"`
	Budget  bool    `json:"stopped_at_budget,omitempty"`
	// Verified counts the rounds a real cluster verified (--transport grpc).
	Verified int `json:"verified_rounds,omitempty"`
}

// Summary is summary.json.
type Summary struct {
	Swept   []string     `json:"swept"`
	Runs    []RunSummary `json:"runs"`
	Seconds float64      `json:"seconds"`
}

// Sweep runs every run of e and writes one tidy CSV (a row per run per
// round) and a JSON summary to opts.Out. The CSV is a function of the
// experiment alone: the same file and seed give the same bytes.
func Sweep(ctx context.Context, e *Experiment, opts SweepOptions) (*Summary, error) {
	runs, err := e.Points()
	if err != nil {
		return nil, err
	}
	if opts.Data == nil {
		opts.Data = Load
	}
	if opts.Runner == nil {
		opts.Runner = Run
	}
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(opts.Out, "results.csv"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	w := csv.NewWriter(f)
	swept := e.Swept()
	header := append(append([]string{"run"}, swept...), "round", "participants", "attempts", "accuracy", "loss", "bytes", "cum_bytes", "sim_time", "mean_staleness", "trained")
	if opts.Timings {
		header = append(header, "seconds")
	}
	langs := groupColumns(runs)
	for _, l := range langs {
		header = append(header, "accuracy_"+l)
	}
	dp := slices.ContainsFunc(runs, func(r Point) bool { return r.float("dp_noise") != 0 })
	if dp {
		header = append(header, "epsilon")
	}
	w.Write(header)

	type data struct{ train, test *dataset.Examples }
	loaded := map[string]data{}
	totalWork, doneWork := plannedUpdates(runs), 0
	start := time.Now()
	sum := &Summary{Swept: swept}
	for i, r := range runs {
		cfg, _ := r.Config() // validated by Points
		dkey := r["dataset"] + "/" + r["languages"]
		d, ok := loaded[dkey]
		if !ok {
			if d.train, err = opts.Data(r["dataset"], r.Languages(), dataset.Train); err != nil {
				return nil, err
			}
			if d.test, err = opts.Data(r["dataset"], r.Languages(), dataset.Test); err != nil {
				return nil, err
			}
			loaded[dkey] = d
		}
		test := d.test
		if n := r.int("test_examples"); n > 0 && n < test.Len() {
			idx := make([]int, n)
			for j := range idx {
				idx[j] = j
			}
			test = test.Subset(idx)
		}
		label := r.Label(swept)
		runStart := time.Now()
		var cum int64
		rs := RunSummary{Run: i + 1, Label: label, Params: r}
		participants := 0
		perWorker := make([]int, cfg.Workers)
		groupOf := make([]int, len(langs)) // each language column's group in this run, or −1
		for k, l := range langs {
			groupOf[k] = -1
			if r["dataset"] == "words" {
				groupOf[k] = slices.Index(r.Languages(), l)
			}
		}
		report := func(res RoundResult) {
			doneWork += updatesPerRound(cfg)
			for _, w := range res.Workers {
				perWorker[w]++
			}
			cum += res.Bytes
			participants += res.Participants
			row := []string{strconv.Itoa(i + 1)}
			for _, k := range swept {
				row = append(row, r[k])
			}
			row = append(row, strconv.Itoa(res.Round), strconv.Itoa(res.Participants), strconv.Itoa(res.Attempts), num(res.Accuracy), num(res.Loss),
				strconv.FormatInt(res.Bytes, 10), strconv.FormatInt(cum, 10), strconv.FormatFloat(res.SimTime, 'f', 3, 64), strconv.FormatFloat(res.MeanStaleness, 'f', 3, 64), strconv.Itoa(res.Trained))
			if opts.Timings {
				row = append(row, strconv.FormatFloat(res.Seconds, 'f', 3, 64))
			}
			for _, g := range groupOf {
				acc := ""
				if g >= 0 && g < len(res.GroupAccuracy) {
					acc = num(res.GroupAccuracy[g])
				}
				row = append(row, acc)
			}
			if dp {
				eps := ""
				if cfg.DP != nil {
					eps = num(res.Epsilon)
				}
				row = append(row, eps)
			}
			w.Write(row)
			rs.Epsilon = res.Epsilon
			rs.SimTime = res.SimTime
			if !math.IsNaN(res.Accuracy) {
				rs.FinalAccuracy = res.Accuracy
				rs.BestAccuracy = max(rs.BestAccuracy, res.Accuracy)
			}
			if opts.Progress != nil {
				elapsed := time.Since(start)
				eta := time.Duration(float64(elapsed) / float64(doneWork) * float64(totalWork-doneWork))
				acc := "-"
				if !math.IsNaN(res.Accuracy) {
					acc = fmt.Sprintf("%.2f%%", 100*res.Accuracy)
				}
				fmt.Fprintf(opts.Progress, "\rrun %d/%d %s %s round %d/%d  acc %s  ETA %s   ",
					i+1, len(runs), label, progress.Bar(res.Round, cfg.Rounds, 16), res.Round, cfg.Rounds, acc, eta.Round(time.Second))
			}
		}
		results, err := opts.Runner(ctx, cfg, d.train, test, report)
		if err != nil {
			return nil, fmt.Errorf("run %d (%s): %w", i+1, label, err)
		}
		// A run that diverged, or spent its privacy budget, stops early:
		// the remaining rounds count as done.
		if left := cfg.Rounds - len(results); left > 0 {
			doneWork += left * updatesPerRound(cfg)
			if cfg.DP != nil && cfg.DP.Epsilon > 0 && (len(results) == 0 || results[len(results)-1].BudgetReached) {
				rs.Budget = true
			} else {
				rs.DivergedAtDone = true
			}
		}
		for _, r := range results {
			if r.Verified {
				rs.Verified++
			}
		}
		rs.Rounds, rs.TotalBytes = len(results), cum
		rs.Seconds = time.Since(runStart).Seconds()
		rs.RoundsPerMin = float64(len(results)) / rs.Seconds * 60
		rs.MeanPerRound = participants / max(len(results), 1)
		rs.Fairness, rs.MinUpdates, rs.MaxUpdates, rs.UpdatesPerWorker = Jain(perWorker), slices.Min(perWorker), slices.Max(perWorker), perWorker
		rs.Speeds, _ = ParseSpeeds(cfg.Speed, cfg.Workers, cfg.Seed) // validated by Points
		sum.Runs = append(sum.Runs, rs)
		w.Flush()
		if err := w.Error(); err != nil {
			return nil, err
		}
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "\rrun %d/%d %s: final accuracy %.2f%%, %.1f rounds/min, updates per worker %d–%d (fairness %.2f)%s\n", i+1, len(runs), label,
				100*rs.FinalAccuracy, rs.RoundsPerMin, rs.MinUpdates, rs.MaxUpdates, rs.Fairness, strings.Repeat(" ", 20))
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	b, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(opts.Out, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	return sum, f.Close()
}

// Load returns a data set split for a sweep: MNIST, or the words data set
// in the given languages.
func Load(name string, langs []string, split dataset.Split) (*dataset.Examples, error) {
	if name == "words" {
		return dataset.Words(langs, split)
	}
	return dataset.Load(name, split)
}

// num formats a metric exactly (shortest round-trip form); "" for NaN.
func num(x float64) string {
	if math.IsNaN(x) {
		return ""
	}
	return strconv.FormatFloat(x, 'g', -1, 64)
}

// plannedUpdates is the work of a sweep for its progress and ETA: the
// updates its runs' rounds or versions aggregate as planned, so runs of
// both modes weigh by their training work.
func plannedUpdates(runs []Point) int {
	n := 0
	for _, r := range runs {
		cfg, _ := r.Config() // validated by Points
		n += cfg.Rounds * updatesPerRound(cfg)
	}
	return n
}

// Jain is Jain's fairness index of per-worker counts, (Σx)² / (n·Σx²): 1
// when all are equal, 1/n when one worker has them all (1 for no counts).
func Jain(counts []int) float64 {
	var sum, sq float64
	for _, c := range counts {
		sum += float64(c)
		sq += float64(c) * float64(c)
	}
	if sq == 0 {
		return 1
	}
	return sum * sum / (float64(len(counts)) * sq)
}

// groupColumns lists the languages of a sweep's words runs, in order of
// first appearance: the CSV has a column of test accuracy for each.
func groupColumns(runs []Point) []string {
	var langs []string
	for _, r := range runs {
		if r["dataset"] != "words" || len(r.Languages()) < 2 {
			continue
		}
		for _, l := range r.Languages() {
			if !slices.Contains(langs, l) {
				langs = append(langs, l)
			}
		}
	}
	return langs
}
