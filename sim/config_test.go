package sim

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fedtune/fedtune/dataset"
)

// TestBadExperiments: every impossible experiment is refused before
// anything runs, with the offending key named.
func TestBadExperiments(t *testing.T) {
	for _, tc := range []struct{ yaml, key string }{
		{"workerz: 10", `"workerz"`},
		{"workers: ten", `"workers"`},
		{"workers: 10\nclients_per_round: 11", `"clients_per_round"`},
		{"aggregator: [fedavg, mean]", `"aggregator"`},
		{"attack: [none, teleport]", `"attack"`},
		{"attack: ipm\nbyzantine: 0.6\naggregator: median", `"byzantine"`},
		{"attack: ipm\nbyzantine: 0.4\naggregator: krum\nworkers: 10", `"byzantine"`},
		{"attack: ipm\nbyzantine: 0.2\naggregator: trimmed-mean\ntrim_fraction: 0.1", `"trim_fraction"`},
		{"codec: zip", `"codec"`},
		{"partition: [iid, sorted]", `"partition"`},
		{"dropout: 1", `"dropout"`},
		{"workers: 10\nclients_per_round: 5\nmin_updates: 6", `"min_updates"`},
		{"lr: 0", `"lr"`},
		{"lr: .inf", `"lr"`},
		{"workers: 100000000", `"workers"`},
		{"rounds: 100000000", `"rounds"`},
		{"batch_size: 1000000000", `"batch_size"`},
		{"model: resnet", `"model"`},
		{"rounds: {a: 1}", `"rounds"`},
		{"dataset: words", `"model"`},
		{"dataset: words\nmodel: words-mlp\nlanguages: en+tlh", `"languages"`},
		{"partition: groups", `"partition"`},
		{"dataset: words\nmodel: words-mlp\npartition: groups\nworkers: 3", `"workers"`},
		{"over_select: 0.3", `"over_select"`},
		{"over_select: 0.3\nclients_per_round: 10\nmode: async", `"over_select"`},
		{"over_select: -1\nclients_per_round: 10", `"over_select"`},
		{"updates: 805\nclients_per_round: 10", `"updates"`},
		{"updates: 800\nmode: async\nbuffer_size: 7", `"updates"`},
		{"updates: -10\nclients_per_round: 10", `"updates"`},
		{"mode: async\nfair_window: 0", `"fair_window"`},
		{"mode: async\nfair_by: region", `"fair_by"`},
		{"detect_seconds: -1", `"detect_seconds"`},
		{"mode: async\nworkers: 10\nconcurrency_final: 11", `"concurrency_final"`},
		{"speed_jitter: -0.1", `"speed_jitter"`},
		{"mode: async\nstaleness: cubic", `"staleness"`},
		{"mode: async\nstaleness_a: -1", `"staleness_a"`},
		{"mode: async\ndrift_correction: 1.5", `"drift_correction"`},
		{"mode: async\nworkers: 10\nbuffer_size: 2\naggregator: krum\nf: 3", `"buffer_size"`},
		{"speed_jitter: 4", `"speed_jitter"`},
		{"mode: async\ndrift_correction: 1.5", `"drift_correction"`},
		{"dp_noise: 1\naggregator: median", `"aggregator"`},
		{"dp_noise: 1\nmode: async", `"mode"`},
		{"dp_noise: -1", `"dp_noise"`},
		{"dp_noise: 1\ndp_clip: 0", `"dp_clip"`},
		{"dp_noise: 1\ndp_delta: 1", `"dp_delta"`},
		{"dp_noise: 1\ndp_epsilon: -3", `"dp_epsilon"`},
		{"dp_noise: 1\nclip_norm: 2\ndp_clip: 1", `"clip_norm"`},
	} {
		e, err := ParseExperiment([]byte(tc.yaml))
		if err == nil {
			_, err = e.Points()
		}
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: err = %v, want it to name %s", tc.yaml, err, tc.key)
		}
	}
}

// TestUpdatesKey: updates sets the rounds of each mode from its
// aggregated updates per round, so one file compares sync and async at
// the same compute.
func TestUpdatesKey(t *testing.T) {
	_, ps := points(t, "workers: 50\nclients_per_round: 10\nbuffer_size: 5\nmode: [sync, async]\nupdates: 800\nrounds: 3")
	for i, want := range []int{80, 160} {
		c, err := ps[i].Config()
		if err != nil {
			t.Fatal(err)
		}
		if c.Rounds != want {
			t.Errorf("%s: %d rounds, want %d (800 updates)", c.Mode, c.Rounds, want)
		}
	}
}

func TestSweepGrid(t *testing.T) {
	e, ps := points(t, "aggregator: [fedavg, median, krum]\nattack: [none, ipm]\nbyzantine: 0.1\nworkers: 20")
	if len(ps) != 6 || strings.Join(e.Swept(), ",") != "aggregator,attack" {
		t.Fatalf("%d points swept over %v, want 6 over aggregator,attack", len(ps), e.Swept())
	}
	if ps[1]["aggregator"] != "fedavg" || ps[1]["attack"] != "ipm" || ps[5].Label(e.Swept()) != "aggregator=krum attack=ipm" {
		t.Errorf("grid order: %v, %v", ps[1], ps[5])
	}
}

// TestSweepCSVReproducible: the same experiment gives byte-identical CSVs,
// with client sampling, dropout, an attack and a lossy codec in play.
func TestSweepCSVReproducible(t *testing.T) {
	load := loader(t)
	exp := []byte("workers: 30\nclients_per_round: 10\nrounds: 3\nlocal_steps: 10\ndropout: 0.2\n" +
		"aggregator: [fedavg, trimmed-mean]\ntrim_fraction: 0.2\nattack: sign-flip\nbyzantine: 0.1\ncodec: topk=0.1+int8\n")
	var csvs [][]byte
	for i := range 2 {
		e, err := ParseExperiment(exp)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "out")
		sum, err := Sweep(context.Background(), e, SweepOptions{Out: dir, Data: load})
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "results.csv"))
		if err != nil {
			t.Fatal(err)
		}
		csvs = append(csvs, b)
		if i == 0 {
			if lines := bytes.Count(b, []byte("\n")); lines != 1+2*3 {
				t.Fatalf("%d CSV lines, want a header and 6 rows:\n%s", lines, b)
			}
			if sum.Runs[0].TotalBytes == 0 || sum.Runs[0].FinalAccuracy < 0.5 {
				t.Errorf("run 1: %+v", sum.Runs[0])
			}
		}
	}
	if !bytes.Equal(csvs[0], csvs[1]) {
		t.Fatalf("two runs of one experiment differ:\n%s\n---\n%s", csvs[0], csvs[1])
	}
}

// TestSweepProgressUpdates: with updates in place of rounds, each mode runs
// its own number of rounds, the sweep's ETA never runs out before the work
// does (it counts planned updates, not the rounds key), and the summary
// counts every aggregated update to its worker.
func TestSweepProgressUpdates(t *testing.T) {
	load := loader(t)
	e, ps := points(t, "workers: 10\nclients_per_round: 5\nbuffer_size: 2\nconcurrency: 4\nmode: [sync, async]\nrounds: 1\nupdates: 20\nlocal_steps: 2\ntest_examples: 200\nspeed: uniform:1,4\n")
	if n := plannedUpdates(ps); n != 40 {
		t.Errorf("planned work %d updates, want 40 (20 per run)", n)
	}
	var out bytes.Buffer
	sum, err := Sweep(context.Background(), e, SweepOptions{Out: filepath.Join(t.TempDir(), "out"), Data: load, Progress: &out})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Runs[0].Rounds != 4 || sum.Runs[1].Rounds != 10 {
		t.Errorf("rounds %d (sync) and %d (async), want 4 and 10 for 20 updates", sum.Runs[0].Rounds, sum.Runs[1].Rounds)
	}
	for _, r := range sum.Runs {
		total := 0
		for _, n := range r.UpdatesPerWorker {
			total += n
		}
		if len(r.UpdatesPerWorker) != 10 || len(r.Speeds) != 10 || total != 20 || r.Fairness != Jain(r.UpdatesPerWorker) || r.MaxUpdates < r.MinUpdates {
			t.Errorf("run %d: %d updates over %d workers (%d–%d, Jain %.3f), want 20 over 10", r.Run, total, len(r.UpdatesPerWorker), r.MinUpdates, r.MaxUpdates, r.Fairness)
		}
	}
	if strings.Contains(out.String(), "ETA -") {
		t.Errorf("negative ETA in the progress output:\n%s", out.String())
	}
}

// TestExampleExperiments: every committed experiment file parses and every
// run of it is valid, so the examples' commands do not fail on a key.
func TestExampleExperiments(t *testing.T) {
	files, err := filepath.Glob("../examples/*/*.yaml")
	if err != nil || len(files) < 5 {
		t.Fatalf("%d experiment files (%v), want the examples' five or more", len(files), err)
	}
	for _, f := range files {
		if filepath.Base(filepath.Dir(f)) == "kubernetes" {
			continue // deployment manifests (cmd/fedtune's TestKubernetesManifests checks them)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		e, err := ParseExperiment(b)
		if err == nil {
			_, err = e.Points()
		}
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// loader serves the test data set's two splits to Sweep.
func loader(t *testing.T) func(string, []string, dataset.Split) (*dataset.Examples, error) {
	train, test := data(t)
	return func(_ string, _ []string, split dataset.Split) (*dataset.Examples, error) {
		if split == dataset.Train {
			return train, nil
		}
		return test, nil
	}
}

// points parses a valid experiment and lists its runs.
func points(t *testing.T, yaml string) (*Experiment, []Point) {
	t.Helper()
	e, err := ParseExperiment([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := e.Points()
	if err != nil {
		t.Fatal(err)
	}
	return e, ps
}

// TestGroupAccuracy: a sweep on the words data set writes each language's
// test accuracy beside the overall one, and the overall accuracy is their
// mean weighted by each language's test examples.
func TestGroupAccuracy(t *testing.T) {
	langs := []string{"en", "fr"}
	test, err := dataset.Words(langs, dataset.Test)
	if errors.Is(err, dataset.ErrNoWordList) {
		t.Skipf("word lists not installed (make words installs them): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	sizes := make([]float64, len(langs))
	for _, g := range test.Group {
		sizes[g]++
	}
	e, _ := points(t, "dataset: words\nmodel: words-mlp\nlanguages: en+fr\nworkers: 4\nclients_per_round: 2\nrounds: 2\npartition: groups\nlocal_steps: 5\nlr: 0.5\n")
	dir := filepath.Join(t.TempDir(), "out")
	if _, err := Sweep(context.Background(), e, SweepOptions{Out: dir}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "results.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	if _, ok := col["accuracy_fr"]; !ok || len(rows) != 3 {
		t.Fatalf("header %v and %d rows, want accuracy_en and accuracy_fr columns and 2 rounds", rows[0], len(rows)-1)
	}
	for _, row := range rows[1:] {
		get := func(k string) float64 { v, _ := strconv.ParseFloat(row[col[k]], 64); return v }
		en, fr, all := get("accuracy_en"), get("accuracy_fr"), get("accuracy")
		if want := (en*sizes[0] + fr*sizes[1]) / (sizes[0] + sizes[1]); en <= 0 || fr <= 0 || math.Abs(all-want) > 1e-9 {
			t.Errorf("round %s: en %.4f fr %.4f, overall %.4f; the weighted mean is %.4f", row[col["round"]], en, fr, all, want)
		}
	}
}
