package testcluster

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/worker"
)

// TestMonitoringExamples checks a coordinator's /metrics with `promtool
// check metrics` while it runs a job, one failing job and a refused
// update; the example alerting rules with `promtool check rules`; and that
// every metric the example Grafana dashboard and the rules query is one
// the coordinator serves, with per-job series labelled by job only.
func TestMonitoringExamples(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH (make testdeps installs Debian's prometheus)")
	}
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{HTTPAddr: "127.0.0.1:0"})
	StartWorker(t, "good", []string{c.GossipAddr()}, train.Subset([]int{0, 1, 2, 3, 4, 5, 6, 7}), map[string]string{"site": "a"})
	StartWorkerWith(t, worker.Config{ID: "bad", Join: []string{c.GossipAddr()}, Labels: map[string]string{"site": "b"}},
		&worker.ExecTrainer{Cmd: "exit 1", Dir: t.TempDir(), Data: map[string]*dataset.Examples{"mnist": train.Subset([]int{0, 1})}})
	WaitFor(t, 10*time.Second, "2 workers in the roster", func() bool { return len(c.FSM().Workers()) == 2 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	for _, j := range []struct{ name, site string }{{"ok", "a"}, {"broken", "b"}} {
		SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{Name: j.name, Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 2, RoundTimeoutSeconds: 60,
			Evaluate: true, Selector: map[string]string{"site": j.site}, Train: &pb.TrainConfig{LocalSteps: 2, BatchSize: 4}}, arch.Init(1))
	}
	conn, err := pool.Conn(c.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rpcpb.NewWorkerClient(conn).SubmitUpdate(t.Context(), &pb.SubmitUpdateRequest{WorkerId: "good", Job: "nope", Round: 1}); err == nil {
		t.Fatal("an update for an unknown job was accepted")
	}
	WaitFor(t, time.Minute, "job ok done and job broken's failure recorded", func() bool {
		okJob, _ := c.FSM().Job("ok")
		bad, _ := c.FSM().Job("broken")
		return okJob.Status == pb.JobStatus_JOB_STATUS_DONE && bad.OpenRound != nil && len(bad.OpenRound.Failures) == 1
	})
	_, metrics := get(t, "http://"+c.HTTPAddr()+"/metrics")

	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = strings.NewReader(metrics)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	root := filepath.Join("..", "..", "examples", "monitoring")
	if out, err := exec.Command(promtool, "check", "rules", filepath.Join(root, "alerts.yml")).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	for _, want := range []string{`fedtune_job_state{job="ok",state="done"} 1`, `fedtune_job_rounds_committed{job="ok"} 2`, `fedtune_job_round_failed{job="broken"} 1`,
		`fedtune_task_failures_total{job="broken",kind="trainer"} 1`, "fedtune_build_info{"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "fedtune_job_") && strings.Contains(line, "worker=") {
			t.Errorf("a per-job series has a worker label: %s", line)
		}
	}

	// Every metric the dashboard and the rules query is served.
	served := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+)`).FindAllStringSubmatch(metrics, -1) {
		served[m[1]] = true
	}
	var queries []string
	b, err := os.ReadFile(filepath.Join(root, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if len(dash.Panels) == 0 {
		t.Fatal("grafana-dashboard.json has no panels")
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			queries = append(queries, q.Expr)
		}
	}
	rules, err := os.ReadFile(filepath.Join(root, "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	queries = append(queries, string(rules))
	name := regexp.MustCompile(`fedtune_[a-z_]+`)
	for _, q := range queries {
		for _, n := range name.FindAllString(q, -1) {
			family := strings.TrimSuffix(n, "_bucket")
			if !served[family] {
				t.Errorf("%q is queried but not served on /metrics", n)
			}
		}
	}
}
