package testcluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/worker"
)

// chromium returns a headless-capable Chromium, or "".
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// headless runs Chromium on url with extra flags and returns its stdout.
func headless(t *testing.T, bin, url string, extra ...string) []byte {
	t.Helper()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--hide-scrollbars",
		"--window-size=1280,1400", "--timeout=4000", "--user-data-dir=" + t.TempDir()}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, stderr.Bytes())
	}
	return out
}

// TestDashboard serves the dashboard of a coordinator running a job with
// three workers and checks it end to end: the server-sent events carry new
// rounds as they commit, and headless Chromium renders the cluster, the
// workers, the job with its curve and ledger, connected live; the
// screenshot shows the header and the accuracy curve in their colours.
// FEDTUNE_UPDATE_SCREENSHOT=1 writes the screenshot to docs/dashboard.png.
func TestDashboard(t *testing.T) {
	bin := chromium()
	if bin == "" {
		t.Skip("no chromium on PATH (make chromium installs Debian's chromium; the dashboard's browser test needs it)")
	}
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{HTTPAddr: "127.0.0.1:0"})
	parts, _ := dataset.Partition{Kind: "dirichlet", Alpha: 0.5, Seed: 1}.Split(train.Y, 10, 20)
	for i, id := range []string{"eu-1", "eu-2", "us-1"} {
		region := strings.Split(id, "-")[0]
		StartWorkerWith(t, worker.Config{ID: id, Join: []string{c.GossipAddr()}, Labels: map[string]string{"region": region, "device": "cpu"}, SubmitDelay: 400 * time.Millisecond},
			worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset(parts[i])}, nil))
	}
	WaitFor(t, 10*time.Second, "3 workers in the roster", func() bool { return len(c.FSM().Workers()) == 3 })
	arch, _ := model.Lookup("mnist-mlp-small")
	pool := client.NewPool()
	defer pool.Close()
	SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{
		Name: "regional-digits", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 200, ClientsPerRound: 3, RoundTimeoutSeconds: 60, Evaluate: true,
		Aggregator: "trimmed-mean", Train: &pb.TrainConfig{LocalEpochs: 1, BatchSize: 32, LearningRate: 0.1, Momentum: 0.5},
	}, arch.Init(3))
	// An async job waiting for workers it selects (none match yet), with a
	// concurrency schedule and drift correction.
	SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{Name: "async-waiting", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 5, RoundTimeoutSeconds: 60,
		Mode: round.ModeAsync, Async: &pb.AsyncSpec{BufferSize: 4, FairWindow: 5, ConcurrencyFinal: 2, DriftCorrection: 0.5}, Selector: map[string]string{"region": "mars"}}, arch.Init(3))
	rounds := func() int { j, _ := c.FSM().Job("regional-digits"); return len(j.History) }
	WaitFor(t, 2*time.Minute, "8 committed rounds", func() bool { return rounds() >= 8 })
	base := "http://" + c.HTTPAddr()

	// Live updates: the event stream sends the state, then again when a
	// round commits.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events: content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	committed := func() int {
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var st struct {
				Jobs []struct {
					Spec struct {
						Name string `json:"name"`
					} `json:"spec"`
					History []json.RawMessage `json:"history"`
				} `json:"jobs"`
				Concurrency map[string]int `json:"concurrency"`
			}
			if err := json.Unmarshal([]byte(line), &st); err != nil || len(st.Jobs) != 2 {
				t.Fatalf("event is not the state: %v %.200s", err, line)
			}
			// The async job's current limit, from the server's schedule
			// (the page shows it): 8 at version 0; none for a sync job.
			if c, ok := st.Concurrency["async-waiting"]; !ok || c != 8 || len(st.Concurrency) != 1 {
				t.Fatalf("the state's concurrency limits are %v, want async-waiting 8 only", st.Concurrency)
			}
			for _, j := range st.Jobs {
				if j.Spec.Name == "regional-digits" {
					return len(j.History)
				}
			}
			t.Fatalf("the state lacks the job: %.300s", line)
		}
		t.Fatalf("event stream ended: %v", sc.Err())
		return 0
	}
	first := committed()
	for n := first; n == first; {
		n = committed()
		if n < first {
			t.Fatalf("rounds went backwards: %d after %d", n, first)
		}
	}

	// The page in a browser.
	dom := string(headless(t, bin, base+"/", "--dump-dom"))
	for _, want := range []string{
		"coord-1", `class="pill lead">leader`, // the cluster
		"eu-1", "eu-2", "us-1", "region=us", // the workers
		`data-job="regional-digits"`, "running", "trimmed-mean", // the job
		`<polyline class="acc"`, `<polyline class="loss"`, // its curves
		`class="ledger"`, // the ledger
		// an async job
		`data-job="async-waiting"`, "async, versions of 4, 8 → 2 training at once, polynomial staleness, ≤ 1 per worker in 5 versions, drift correction 0.5",
		"async: version <b>0</b>, buffer <b>0</b> of 4", "training now (0 of 8)",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("the rendered page lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("page:\n%s", dom)
	}
	shot := filepath.Join(t.TempDir(), "dashboard.png")
	headless(t, bin, base+"/", "--screenshot="+shot)
	// The page opened the event stream (whether its first event arrived
	// before Chromium took the DOM is a race, so the "live" badge is not
	// checked; the stream itself is, above).
	if m := scrapeMetric(t, base, "fedtune_dashboard_streams_total"); m < 2 { // this test's own stream + at least one of the browser's two
		t.Errorf("the page did not open the event stream: %v streams", m)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	header, curve := count(img, 0x11, 0x18, 0x27), count(img, 0x25, 0x63, 0xeb)
	t.Logf("screenshot %v: %d header pixels, %d accuracy-blue pixels", img.Bounds().Size(), header, curve)
	if header < 1280*30 || curve < 300 {
		t.Errorf("screenshot lacks the header (%d px) or the accuracy curve and bars (%d px)", header, curve)
	}
	if os.Getenv("FEDTUNE_UPDATE_SCREENSHOT") != "" {
		_, file, _, _ := runtime.Caller(0)
		b, _ := os.ReadFile(shot)
		if err := os.WriteFile(filepath.Join(filepath.Dir(file), "..", "..", "docs", "dashboard.png"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// scrapeMetric reads one unlabelled series from base's /metrics.
func scrapeMetric(t *testing.T, base, name string) float64 {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// count returns the pixels of img within 8 of colour (r, g, b).
func count(img image.Image, r, g, b uint8) int {
	n := 0
	bd := img.Bounds()
	near := func(a uint32, c uint8) bool { d := int(a>>8) - int(c); return d >= -8 && d <= 8 }
	for y := bd.Min.Y; y < bd.Max.Y; y++ {
		for x := bd.Min.X; x < bd.Max.X; x++ {
			pr, pg, pb, _ := img.At(x, y).RGBA()
			if near(pr, r) && near(pg, g) && near(pb, b) {
				n++
			}
		}
	}
	return n
}
