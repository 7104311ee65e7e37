package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestGPUWorkers: with a fake nvidia-smi on PATH, workers started with
// --device auto advertise their GPU in gossip, idle or busy by its
// utilisation; one forced to --device cpu does not; a job that requires
// device=gpu is scheduled on GPU workers only, and on the idle one when
// one worker is enough.
func TestGPUWorkers(t *testing.T) {
	fake := t.TempDir()
	// The GPU of the worker whose command line names gpu-busy is 93% used.
	smi := "#!/bin/sh\nif tr '\\0' ' ' < /proc/$PPID/cmdline | grep -q gpu-busy; then echo 'NVIDIA Fake GPU, 8192, 93'; else echo 'NVIDIA Fake GPU, 8192, 4'; fi\n"
	if err := os.WriteFile(filepath.Join(fake, "nvidia-smi"), []byte(smi), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", fake+string(os.PathListSeparator)+os.Getenv("PATH")) // inherited by the processes
	pc := tc.NewProcCluster(t, binary, 1)
	n := pc.Nodes[0]
	pc.StartWorker("gpu-busy", "--device", "auto", "--max-examples", "2000")
	pc.StartWorker("gpu-1", "--device", "auto", "--max-examples", "2000")
	pc.StartWorker("cpu-1", "--device", "cpu", "--max-examples", "2000")
	waitWorkers(t, pc, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := pc.Admin(n).ListWorkers(ctx, &pb.ListWorkersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]map[string]string{}
	for _, w := range resp.Workers {
		labels[w.Id] = w.Labels
	}
	if l := labels["gpu-1"]; l["device"] != "gpu" || l["gpu"] != "NVIDIA-Fake-GPU" || l["gpu_free_mb"] != "8192" || l["idle"] != "true" {
		t.Errorf("gpu-1 advertises %v", l)
	}
	if l := labels["gpu-busy"]; l["device"] != "gpu" || l["idle"] != "false" {
		t.Errorf("gpu-busy advertises %v", l)
	}
	if l := labels["cpu-1"]; l["device"] != "cpu" || l["gpu"] != "" {
		t.Errorf("cpu-1 advertises %v", l)
	}
	run(t, submitArgs(n.GRPC, "gpu-job", 2, 1, "--require", "device=gpu", "--steps", "10")...)
	j := waitJob(t, pc, "gpu-job", 2*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	for _, r := range j.History {
		if !slices.Equal(r.Workers, []string{"gpu-1"}) {
			t.Errorf("round %d ran on %v, want the idle GPU worker only", r.Number, r.Workers)
		}
	}
}
