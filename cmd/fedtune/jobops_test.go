package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	tc "github.com/fedtune/fedtune/internal/testcluster"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/worker"
)

// TestJobOpsCLI: `job status --output json` states why a job is stuck (its
// trainer fails on every worker; its selector matches no worker), and `job pause`, `resume`, `cancel`,
// `delete` drive a job from the command line.
func TestJobOpsCLI(t *testing.T) {
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	c := tc.StartCoordinator(t, coordinator.Config{})
	tc.StartWorkerWith(t, worker.Config{ID: "w1", Join: []string{c.GossipAddr()}, Labels: map[string]string{"lang": "fr"}},
		worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset([]int{0, 1, 2, 3})}, nil))
	tc.StartWorkerWith(t, worker.Config{ID: "gpu-1", Join: []string{c.GossipAddr()}, Labels: map[string]string{"lang": "de"}},
		&worker.ExecTrainer{Cmd: "echo 'CUDA error: out of memory' >&2; exit 3", Dir: t.TempDir(), Data: map[string]*dataset.Examples{"mnist": train.Subset([]int{0, 1})}})
	tc.WaitFor(t, 10*time.Second, "the workers in the roster", func() bool { return len(c.FSM().Workers()) == 2 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	tc.SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{Name: "sw", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 2, RoundTimeoutSeconds: 60,
		Selector: map[string]string{"lang": "sw"}, Train: &pb.TrainConfig{LocalSteps: 1, BatchSize: 2}}, arch.Init(1))

	tc.SubmitJob(t, pool, c.GRPCAddr(), &pb.JobSpec{Name: "broken", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 2, RoundTimeoutSeconds: 60,
		Selector: map[string]string{"lang": "de"}, Train: &pb.TrainConfig{LocalSteps: 1, BatchSize: 2}}, arch.Init(1))
	tc.WaitFor(t, time.Minute, "the failure recorded", func() bool {
		j, _ := c.FSM().Job("broken")
		return j.OpenRound != nil && len(j.OpenRound.Failures) == 1
	})
	var broken struct{ Conditions []string }
	if err := json.Unmarshal([]byte(run(t, "job", "status", "broken", "--coordinator", c.GRPCAddr(), "--output", "json")), &broken); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(broken.Conditions, "\n"); !strings.Contains(got, "1 of 1 selected workers failed: gpu-1 (trainer:") || !strings.Contains(got, "exit status 3") {
		t.Errorf("job status --output json of the failing job: %q", got)
	}
	var st struct {
		Job        struct{ Status string }
		Conditions []string
	}
	if err := json.Unmarshal([]byte(run(t, "job", "status", "--coordinator", c.GRPCAddr(), "--output", "json", "sw")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Job.Status != "JOB_STATUS_RUNNING" || len(st.Conditions) != 1 || st.Conditions[0] != "no worker matches selector lang=sw; 2 workers alive" {
		t.Errorf("job status --output json: %+v", st)
	}
	// The other read commands' JSON.
	for _, cmd := range []struct {
		args []string
		key  string
	}{{[]string{"workers"}, "workers"}, {[]string{"job", "list"}, "jobs"}, {[]string{"cluster", "raft"}, "servers"}, {[]string{"cluster", "members"}, "members"}} {
		var v map[string]any
		out := run(t, append(cmd.args, "--coordinator", c.GRPCAddr(), "--output", "json")...)
		if err := json.Unmarshal([]byte(out), &v); err != nil || v[cmd.key] == nil {
			t.Errorf("%v --output json: %v, no %q in %s", cmd.args, err, cmd.key, out)
		}
	}
	if out := run(t, "job", "status", "--coordinator", c.GRPCAddr(), "sw"); !strings.Contains(out, "! no worker matches selector lang=sw") {
		t.Errorf("job status (text) does not say why the job waits:\n%s", out)
	}
	for _, step := range []struct{ args []string }{
		{[]string{"pause", "--reason", "maintenance", "sw"}},
		{[]string{"resume", "sw"}},
		{[]string{"cancel", "sw"}},
	} {
		out := run(t, append(append([]string{"job"}, step.args...), "--coordinator", c.GRPCAddr())...)
		t.Log(strings.TrimSpace(out))
	}
	if j, _ := c.FSM().Job("sw"); j.Status != pb.JobStatus_JOB_STATUS_CANCELLED {
		t.Fatalf("after pause, resume, cancel: %v", j.Status)
	}
	if out := run(t, "job", "delete", "--coordinator", c.GRPCAddr(), "sw"); !strings.Contains(out, "deleted on every coordinator") {
		t.Errorf("job delete said %q", out)
	}
	if _, ok := c.FSM().Job("sw"); ok {
		t.Error("the job is still there after job delete")
	}
}
