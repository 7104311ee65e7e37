package testcluster

import (
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestRestartFromSnapshotAndLog runs a job, snapshots the FSM, commits more
// entries, stops the coordinator and starts it again on the same data
// directory: the restored state (snapshot + log after it) equals the state
// before the stop, and the blobs it names are all there.
func TestRestartFromSnapshotAndLog(t *testing.T) {
	train, _ := dataset.MNIST(dataset.Train)
	cfg := coordinator.Config{DataDir: t.TempDir(), GRPCAddr: freeAddrTB(t), RaftAddr: freeAddrTB(t), GossipAddr: freeAddrTB(t)}
	c := StartCoordinator(t, cfg)
	parts, _ := dataset.Partition{Kind: "iid", Seed: 1}.Split(train.Y, 10, 30)
	StartWorker(t, "w1", []string{c.GossipAddr()}, train.Subset(parts[0]), nil)
	StartWorker(t, "w2", []string{c.GossipAddr()}, train.Subset(parts[1]), nil)
	WaitFor(t, 10*time.Second, "2 workers", func() bool { return len(c.FSM().Workers()) == 2 })
	arch, _ := model.Lookup("mnist-mlp-small")
	pool := client.NewPool()
	defer pool.Close()
	spec := func(name string, rounds uint32) *pb.JobSpec {
		return &pb.JobSpec{Name: name, Model: "mnist-mlp-small", Dataset: "mnist", Rounds: rounds, ClientsPerRound: 2,
			RoundTimeoutSeconds: 60, Train: &pb.TrainConfig{LocalSteps: 20, BatchSize: 32, LearningRate: 0.1}}
	}
	SubmitJob(t, pool, c.GRPCAddr(), spec("first", 2), arch.Init(1))
	WaitFor(t, 60*time.Second, "first job done", func() bool {
		j, _ := c.FSM().Job("first")
		return j.Status == pb.JobStatus_JOB_STATUS_DONE
	})
	if err := c.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if snaps, _ := filepath.Glob(filepath.Join(cfg.DataDir, "raft", "snapshots", "*", "state.bin")); len(snaps) == 0 {
		t.Fatal("no snapshot on disk after Snapshot()")
	}
	// Entries after the snapshot: a second job with one committed round.
	SubmitJob(t, pool, c.GRPCAddr(), spec("second", 1), arch.Init(2))
	WaitFor(t, 60*time.Second, "second job done", func() bool {
		j, _ := c.FSM().Job("second")
		return j.Status == pb.JobStatus_JOB_STATUS_DONE
	})
	want := c.FSM().Jobs()
	wantWorkers := c.FSM().Workers()
	c.Close()

	c2 := StartCoordinator(t, cfg)
	WaitFor(t, 10*time.Second, "state restored", func() bool { return len(c2.FSM().Jobs()) == 2 })
	got := c2.FSM().Jobs()
	for i := range want {
		if !proto.Equal(want[i], got[i]) {
			t.Errorf("job %s differs after restart:\nbefore %v\nafter  %v", want[i].Spec.Name, want[i], got[i])
		}
	}
	if gw := c2.FSM().Workers(); len(gw) != len(wantWorkers) {
		t.Errorf("roster has %d workers after restart, had %d", len(gw), len(wantWorkers))
	}
	conn, _ := pool.Conn(c2.GRPCAddr())
	for _, j := range got {
		for _, r := range j.History {
			if _, err := client.ExportModel(t.Context(), conn, j.Spec.Name, r.Number, false); err != nil {
				t.Errorf("model of %s round %d not readable after restart: %v", j.Spec.Name, r.Number, err)
			}
		}
	}
}
