package main

import (
	"fmt"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestExternalTrainer runs jobs on a real coordinator process whose two
// worker processes train with the reference external trainer
// (examples/external-trainer/train.py, NumPy), and checks the model learned:
// a full fine-tuning job, then a LoRA job (the script trains adapters on
// the frozen base), whose merged export `model eval` scores as the last
// round recorded.
func TestExternalTrainer(t *testing.T) {
	py := "/usr/bin/python3"
	if osexec.Command(py, "-c", "import numpy").Run() != nil {
		t.Skip("no /usr/bin/python3 with numpy (make pydeps installs Debian's python3-numpy)")
	}
	script, _ := filepath.Abs(filepath.Join("..", "..", "examples", "external-trainer", "train.py"))
	pc := tc.NewProcCluster(t, binary, 1)
	n := pc.Nodes[0]
	for i := range 2 {
		pc.StartWorker(fmt.Sprintf("w%d", i+1), "--num-partitions", "2", "--partition-index", fmt.Sprint(i), "--partition", "iid",
			"--max-examples", "2000", "--trainer", "exec", "--trainer-cmd", py+" "+script, "--trainer-timeout", "60s")
	}
	waitWorkers(t, pc, 2)
	run(t, submitArgs(n.GRPC, "ext", 2, 2, "--min-updates", "2", "--steps", "40")...)
	j := waitJob(t, pc, "ext", 2*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 2 {
		t.Fatalf("job ended %v after %d rounds: %s", j.Status, len(j.History), j.Error)
	}
	base, final := j.BaseMetrics["test_accuracy"], j.History[1].Metrics["test_accuracy"]
	t.Logf("test accuracy %.3f -> %.3f with the external NumPy trainer", base, final)
	if final < base+0.4 {
		t.Errorf("accuracy %.3f -> %.3f: the external trainer's updates did not help", base, final)
	}
	out, err := osexec.Command(binary, "model", "export", "--coordinator", n.GRPC, "--job", "ext", "--merged", "-o", filepath.Join(t.TempDir(), "x")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a LoRA job") {
		t.Errorf("export --merged of a full fine-tuning job: %v %s", err, out)
	}

	sub := run(t, submitArgs(n.GRPC, "ext-lora", 3, 2, "--min-updates", "2", "--steps", "60", "--lora-rank", "4", "--lora-alpha", "8")...)
	if !strings.Contains(sub, "LoRA rank 4 alpha 8 (naive aggregation)") {
		t.Errorf("job submit output: %s", sub)
	}
	j = waitJob(t, pc, "ext-lora", 2*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 3 {
		t.Fatalf("LoRA job ended %v after %d rounds: %s", j.Status, len(j.History), j.Error)
	}
	base, final = j.BaseMetrics["test_accuracy"], j.History[2].Metrics["test_accuracy"]
	t.Logf("LoRA job: test accuracy %.3f -> %.3f with the external NumPy trainer training adapters", base, final)
	if final < base+0.3 {
		t.Errorf("LoRA accuracy %.3f -> %.3f: the external trainer's adapters did not help", base, final)
	}
	merged := filepath.Join(t.TempDir(), "merged.safetensors")
	run(t, "model", "export", "--coordinator", n.GRPC, "--job", "ext-lora", "--merged", "-o", merged)
	eval := run(t, "model", "eval", "--model", "mnist-mlp-small", merged)
	if want := fmt.Sprintf("accuracy %.2f%%", 100*final); !strings.Contains(eval, want) {
		t.Errorf("model eval of the merged export: %s; want %s as the round recorded", eval, want)
	}
}
