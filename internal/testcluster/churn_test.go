package testcluster

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	pb "github.com/fedtune/fedtune/protocol"
)

// TestWorkerChurn crashes 30% of the workers (gone from gossip without a
// leave message, found dead by failure detection) at the start of each of 5
// rounds (restarting the ones killed before): every round must commit or be
// rescheduled by its deadline plus a margin, and the job must finish.
func TestWorkerChurn(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{})
	train, _ := dataset.MNIST(dataset.Train)
	parts, _ := dataset.Partition{Kind: "iid", Seed: 5}.Split(train.Y, 10, 60)
	const n = 10
	handles := make([]*WorkerHandle, n)
	data := make([]*dataset.Examples, n)
	for i := range n {
		data[i] = train.Subset(parts[i])
		handles[i] = StartCrashingWorker(t, fmt.Sprintf("w%02d", i), []string{c.GossipAddr()}, data[i])
	}
	WaitFor(t, 20*time.Second, "10 workers", func() bool { return len(c.FSM().Workers()) == n })
	const rounds, timeout = 5, 6 * time.Second
	spec := haJob("churn", rounds, n)
	spec.MinUpdates, spec.RoundTimeoutSeconds = 5, timeout.Seconds()
	submit(t, &Cluster{t: t, Nodes: []*Node{{Name: "coord-1", C: c}}}, spec)

	type attempt struct {
		number, try uint32
		deadline    time.Time
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var killed []int
	seen := map[attempt]bool{}
	var open *attempt
	deadline := time.Now().Add(3 * time.Minute)
	margin := 3 * time.Second
	for {
		j, _ := c.FSM().Job("churn")
		now := time.Now()
		if open != nil && (j.OpenRound == nil || j.OpenRound.Number != open.number || j.OpenRound.Attempt != open.try) {
			if now.After(open.deadline.Add(margin)) {
				t.Errorf("round %d (attempt %d) ended %v after its deadline", open.number, open.try, now.Sub(open.deadline))
			}
			open = nil
		}
		if j.Status != pb.JobStatus_JOB_STATUS_RUNNING {
			break
		}
		if r := j.OpenRound; r != nil && open == nil {
			a := attempt{r.Number, r.Attempt, time.Unix(0, r.DeadlineUnixNano)}
			open = &a
			if !seen[a] && len(seen) < rounds {
				seen[a] = true
				// Bring back the workers killed last round, kill 30% now.
				for _, i := range killed {
					handles[i] = StartCrashingWorker(t, fmt.Sprintf("w%02d", i), []string{c.GossipAddr()}, data[i])
				}
				killed = rng.Perm(n)[:3]
				for _, i := range killed {
					handles[i].Stop()
				}
				t.Logf("round %d attempt %d: killed workers %v", r.Number, r.Attempt, killed)
			}
		}
		if now.After(deadline) {
			t.Fatalf("job still running after 3 minutes: %v", j)
		}
		time.Sleep(20 * time.Millisecond)
	}
	j, _ := c.FSM().Job("churn")
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != rounds {
		t.Fatalf("job ended %v with %d rounds", j.Status, len(j.History))
	}
	for _, r := range j.History {
		if r.Updates < 5 {
			t.Errorf("round %d committed with %d updates, min is 5", r.Number, r.Updates)
		}
	}
}
