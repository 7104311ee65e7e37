package main

import (
	"strings"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestWatchSurvivesRestart: `job status --watch` on a follower that is
// killed and restarted mid-job goes on through another coordinator and
// prints the job to its end (it died with a raw gRPC error on the live
// line). Its flags come after the job name.
func TestWatchSurvivesRestart(t *testing.T) {
	pc := tc.NewProcCluster(t, binary, 3)
	startWorkers(pc, 3, 2000)
	waitWorkers(t, pc, 3)
	leader := pc.WaitForLeader(10 * time.Second)
	run(t, submitArgs(leader.GRPC, "watched", 6, 3, "--steps", "20", "--round-timeout", "20s")...)
	var follower *tc.ProcNode
	for _, nd := range pc.Nodes {
		if nd != leader {
			follower = nd
			break
		}
	}
	w := tc.StartProc(t, binary, "watch", "--insecure", "job", "status", "watched", "--watch", "-c", follower.GRPC)
	waitJob(t, pc, "watched", time.Minute, func(j *pb.Job) bool { return len(j.History) >= 1 })
	pc.Kill(follower)
	time.Sleep(2 * time.Second)
	pc.Start(follower)
	waitJob(t, pc, "watched", 2*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	tc.WaitFor(t, 20*time.Second, "the watch to end", func() bool { return strings.Contains(w.Output(), "job watched done") })
	out := w.Output()
	if strings.Contains(out, "fedtune:") || strings.Contains(out, "rpc error") {
		t.Errorf("the watch printed an error:\n%s", out)
	}
	for r := 1; r <= 6; r++ {
		if !strings.Contains(out, "\n"+strings.Repeat(" ", 4)+string(rune('0'+r))+"  ") {
			t.Errorf("round %d missing from the watch:\n%s", r, out)
		}
	}
	t.Logf("watch output:\n%s", out)
}
