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

// TestQuorumLossSaysSo: with 2 of 3 coordinators dead, the survivor's
// answers say there is no leader and why: job status warns its copy may be
// behind, a submit names the voters reachable, cluster raft does not blame
// gossip, and a watch says so and keeps trying (it hung silently; errors
// said `leader is at ""`).
func TestQuorumLossSaysSo(t *testing.T) {
	pc := tc.NewProcCluster(t, binary, 3)
	leader := pc.WaitForLeader(10 * time.Second)
	run(t, submitArgs(leader.GRPC, "q", 2, 1)...) // no workers: it stays in round 1
	survivor := pc.Nodes[0]
	tc.WaitFor(t, 10*time.Second, "the job on the survivor", func() bool {
		_, err := pc.Run("--insecure", "job", "status", "q", "-c", survivor.GRPC)
		return err == nil // it may not have been in the majority that committed it
	})
	for _, nd := range pc.Nodes[1:] {
		pc.Kill(nd)
	}
	tc.WaitFor(t, 30*time.Second, "the survivor to lose its leader and see the others dead", func() bool {
		st, err := pc.Status(survivor, time.Second)
		if err != nil || st.LeaderId != "" {
			return false
		}
		alive := 0
		for _, s := range st.Servers {
			if s.Alive {
				alive++
			}
		}
		return alive == 1
	})
	if out := run(t, "--insecure", "job", "status", "q", "-c", survivor.GRPC); !strings.Contains(out, "no leader") {
		t.Errorf("job status on the survivor:\n%s", out)
	}
	out, err := pc.Run(append([]string{"--insecure"}, submitArgs(survivor.GRPC, "q2", 2, 1)...)...)
	if err == nil || !strings.Contains(out, "no leader: 1 of 3 voters reachable") {
		t.Errorf("submit without a leader: %v\n%s", err, out)
	}
	if out := run(t, "--insecure", "cluster", "raft", "-c", survivor.GRPC); !strings.Contains(out, "warning: no leader") || strings.Contains(out, "cut off from gossip") {
		t.Errorf("cluster raft:\n%s", out)
	}
	w := tc.StartProc(t, binary, "watch", "--insecure", "job", "status", "--watch", "q", "-c", survivor.GRPC)
	tc.WaitFor(t, 10*time.Second, "the watch to say there is no leader", func() bool { return strings.Contains(w.Output(), "no leader") })
	time.Sleep(2 * time.Second)
	if strings.Contains(w.Output(), "fedtune:") {
		t.Errorf("the watch gave up:\n%s", w.Output())
	}
}
