package coordinator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
)

// benchFSM returns an FSM holding jobs running jobs of rounds committed
// rounds each (10 updates per round, with metrics and scores, as real
// rounds record them), none with an open round and each selecting workers
// no live worker matches — so a tick plans every job and starts none.
func benchFSM(jobs, rounds int) *FSM {
	f := NewFSM()
	for n := range jobs {
		name := fmt.Sprintf("job-%03d", n)
		j := &pb.Job{Status: pb.JobStatus_JOB_STATUS_RUNNING, CurrentModel: "m", Spec: &pb.JobSpec{Name: name, Model: "mnist-mlp", Dataset: "mnist",
			Rounds: uint32(rounds * 2), ClientsPerRound: 10, MinUpdates: 10, RoundTimeoutSeconds: 60, Selector: map[string]string{"lang": "none"}}}
		for r := 1; r <= rounds; r++ {
			rec := &pb.RoundRecord{Number: uint32(r), Model: fmt.Sprintf("%064d", r), Updates: 10, Samples: 6000, Metrics: map[string]float64{"test_accuracy": 0.9, "test_loss": 0.3, "train_loss": 0.3}}
			for w := range 10 {
				id := fmt.Sprintf("w%03d", w)
				rec.Workers = append(rec.Workers, id)
				rec.Accepted = append(rec.Accepted, &pb.AcceptedUpdate{Worker: id, Blob: fmt.Sprintf("%064d", w), Samples: 600, Metrics: map[string]float64{"loss": 0.3, "seconds": 1}})
				rec.Scores = append(rec.Scores, &pb.Score{Worker: id, Weight: 0.1, Norm: 1, Distance: 0.5, Cosine: 0.9})
			}
			j.History = append(j.History, rec)
		}
		f.jobs[name] = j
	}
	return f
}

// BenchmarkSchedulerTick measures the leader's per-tick scheduling of 100
// running jobs of 1,000 committed rounds each (what a tick does after
// reconciling gossip: read the running jobs, and for each plan a round
// with the other jobs' load), with 50 live workers.
func BenchmarkSchedulerTick(b *testing.B) {
	f := benchFSM(100, 1000)
	c := &Coordinator{cfg: Config{WorkerGrace: time.Minute}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), clock: systemClock{}, fsm: f, metrics: newMetrics()}
	s := &scheduler{c: c, log: c.log, attempts: map[string]uint32{}, waitLogged: map[string]bool{}}
	alive := map[string]*pb.WorkerInfo{}
	for w := range 50 {
		id := fmt.Sprintf("w%03d", w)
		alive[id] = &pb.WorkerInfo{Id: id, Labels: map[string]string{"lang": "fr"}}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s.schedule(ctx, alive)
	}
}
