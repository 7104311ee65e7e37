package testcluster

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/internal/client"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// control sends a job command to the current leader.
func control(t *testing.T, cl *Cluster, pool *client.Pool, name, action string, force bool) (*pb.ControlJobResponse, error) {
	t.Helper()
	conn, err := pool.Conn(cl.WaitForLeader(20 * time.Second).C.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	return rpcpb.NewAdminClient(conn).ControlJob(t.Context(), &pb.ControlJobRequest{Name: name, Action: action, Reason: "test", Force: force})
}

// agree waits until every running coordinator holds the job with the status
// (or, want nil, no longer holds it).
func agree(t *testing.T, cl *Cluster, name string, want *pb.JobStatus) {
	t.Helper()
	WaitFor(t, 20*time.Second, "every coordinator agreeing on job "+name, func() bool {
		for _, nd := range cl.Up() {
			j, ok := nd.C.FSM().Job(name)
			if want == nil && ok || want != nil && (!ok || j.Status != *want) {
				return false
			}
		}
		return true
	})
}

func statusPtr(s pb.JobStatus) *pb.JobStatus { return &s }

// TestJobLifecycle pauses, resumes, cancels and deletes jobs on three
// coordinators with a leader kill between the commands: every coordinator
// agrees on each job's state, a paused job starts no round, a resumed one
// goes on, a cancelled one keeps its state for export, a running job is
// deleted only by force, and a deleted job's blobs are collected and its
// name used again.
func TestJobLifecycle(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{})
	startWorkers(t, cl.GossipAddrs(), 3)
	WaitFor(t, 15*time.Second, "workers in the roster", func() bool { return cl.RosterSize() == 3 })
	pool := client.NewPool()
	t.Cleanup(pool.Close)
	killLeader := func() {
		old := cl.Leader()
		cl.Crash(old)
		nl := cl.WaitForLeader(20 * time.Second)
		t.Logf("killed leader %s; %s leads", old.Name, nl.Name)
		cl.Start(old)
	}
	submit(t, cl, haJob("life", 40, 3))
	cl.WaitRound("life", 1, time.Minute)

	if _, err := control(t, cl, pool, "life", "pause", false); err != nil {
		t.Fatal(err)
	}
	agree(t, cl, "life", statusPtr(pb.JobStatus_JOB_STATUS_PAUSED))
	paused := len(cl.Job("life").History)
	killLeader()
	agree(t, cl, "life", statusPtr(pb.JobStatus_JOB_STATUS_PAUSED))
	time.Sleep(3 * time.Second) // a leader would have started and finished a round by now
	if j := cl.Job("life"); len(j.History) != paused || j.OpenRound != nil {
		t.Fatalf("paused job went on: %d rounds (paused at %d), open round %v", len(j.History), paused, j.OpenRound)
	}

	if _, err := control(t, cl, pool, "life", "resume", false); err != nil {
		t.Fatal(err)
	}
	agree(t, cl, "life", statusPtr(pb.JobStatus_JOB_STATUS_RUNNING))
	cl.WaitRound("life", paused+1, time.Minute)
	killLeader()

	if _, err := control(t, cl, pool, "life", "delete", false); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("delete of a running job without --force: %v, want FailedPrecondition", err)
	}
	if _, err := control(t, cl, pool, "life", "cancel", false); err != nil {
		t.Fatal(err)
	}
	agree(t, cl, "life", statusPtr(pb.JobStatus_JOB_STATUS_CANCELLED))
	killLeader()
	agree(t, cl, "life", statusPtr(pb.JobStatus_JOB_STATUS_CANCELLED))
	j := cl.Job("life")
	if j.OpenRound != nil || j.Note != "test" {
		t.Errorf("cancelled job: open round %v, note %q", j.OpenRound, j.Note)
	}
	conn, err := pool.Conn(cl.WaitForLeader(20 * time.Second).C.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.ExportModel(t.Context(), conn, "life", 0, false); err != nil {
		t.Errorf("a cancelled job's model cannot be exported: %v", err)
	}
	models := []string{}
	for _, r := range j.History {
		models = append(models, r.Model)
	}

	if _, err := control(t, cl, pool, "life", "delete", false); err != nil {
		t.Fatal(err)
	}
	agree(t, cl, "life", nil)
	for _, nd := range cl.Up() {
		nd.C.CollectGarbage(time.Now().Add(time.Hour))
		for _, m := range models {
			if nd.C.HasBlob(m) {
				t.Errorf("%s still holds model %.12s of the deleted job", nd.Name, m)
			}
		}
	}
	if _, err := control(t, cl, pool, "life", "resume", false); status.Code(err) != codes.NotFound {
		t.Errorf("a command on a deleted job: %v, want NotFound", err)
	}

	// The name is free again; a running job is deleted by force.
	submit(t, cl, haJob("life", 2, 3))
	if j := cl.WaitDone("life", 2*time.Minute); j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 2 {
		t.Fatalf("the job submitted again under the name ended %v after %d rounds", j.Status, len(j.History))
	}
	submit(t, cl, haJob("forced", 40, 3))
	cl.WaitRound("forced", 1, time.Minute)
	if _, err := control(t, cl, pool, "forced", "delete", true); err != nil {
		t.Fatal(err)
	}
	agree(t, cl, "forced", nil)
}
