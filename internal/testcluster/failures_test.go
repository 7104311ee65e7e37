package testcluster

import (
	"fmt"
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

// TestFailuresVisible runs a job whose trainer fails on every worker (an
// external trainer that exits with an error) and one whose selector
// matches no worker, and checks that job status (the RPC behind `job
// status --output json`), /metrics and the dashboard in headless Chromium
// each state the reason.
func TestFailuresVisible(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{HTTPAddr: "127.0.0.1:0"})
	for i := range 2 {
		tr := &worker.ExecTrainer{Cmd: "echo 'CUDA error: out of memory' >&2; exit 3", Dir: t.TempDir(),
			Data: map[string]*dataset.Examples{"mnist": train.Subset([]int{i, i + 2, i + 4})}}
		StartWorkerWith(t, worker.Config{ID: fmt.Sprintf("gpu-%d", i), Join: []string{c.GossipAddr()}, Labels: map[string]string{"lang": "fr"}}, tr)
	}
	WaitFor(t, 10*time.Second, "2 workers in the roster", func() bool { return len(c.FSM().Workers()) == 2 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	spec := func(name string, sel map[string]string) *pb.JobSpec {
		return &pb.JobSpec{Name: name, Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 3, ClientsPerRound: 2, RoundTimeoutSeconds: 120,
			Selector: sel, Train: &pb.TrainConfig{LocalSteps: 2, BatchSize: 2}}
	}
	SubmitJob(t, pool, c.GRPCAddr(), spec("broken", nil), arch.Init(1))
	SubmitJob(t, pool, c.GRPCAddr(), spec("nobody", map[string]string{"lang": "sw"}), arch.Init(1))
	conn, err := pool.Conn(c.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	conditions := func(job string) string {
		st, err := rpcpb.NewAdminClient(conn).JobStatus(t.Context(), &pb.JobStatusRequest{Name: job})
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(st.Conditions, "\n")
	}
	WaitFor(t, time.Minute, "both workers' failures recorded", func() bool {
		j, _ := c.FSM().Job("broken")
		return j.OpenRound != nil && len(j.OpenRound.Failures) == 2
	})
	j, _ := c.FSM().Job("broken")
	for _, f := range j.OpenRound.Failures {
		if f.Kind != "trainer" || !strings.Contains(f.Reason, "exit status 3") {
			t.Errorf("failure of %s recorded as %s: %q", f.Worker, f.Kind, f.Reason)
		}
	}
	if got := conditions("broken"); !strings.Contains(got, "round 1: 2 of 2 selected workers failed: gpu-0 (trainer:") || !strings.Contains(got, "exit status 3") {
		t.Errorf("job status of the failing job says %q", got)
	}
	if got := conditions("nobody"); got != "no worker matches selector lang=sw; 2 workers alive" {
		t.Errorf("job status of the job no worker matches says %q", got)
	}

	_, metrics := get(t, "http://"+c.HTTPAddr()+"/metrics")
	if !strings.Contains(metrics, `fedtune_task_failures_total{job="broken",kind="trainer"} 2`) {
		t.Errorf("/metrics lacks the failures by job and kind")
	}

	bin := chromium()
	if bin == "" {
		t.Skip("no chromium on PATH (make chromium installs Debian's chromium): the dashboard part is skipped")
	}
	dom := string(headless(t, bin, "http://"+c.HTTPAddr()+"/", "--dump-dom"))
	for _, want := range []string{"no worker matches selector lang=sw; 2 workers alive", "2 of 2 selected workers failed", "exit status 3", "fedtune job pause broken"} {
		if !strings.Contains(dom, want) {
			t.Errorf("the dashboard does not show %q", want)
		}
	}
}
