package coordinator

import (
	"strings"
	"testing"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// TestConditionsSecAgg: past training, a SecAgg round says which phase
// waits for whom, and by when.
func TestConditionsSecAgg(t *testing.T) {
	now := time.Unix(1000, 0)
	j := &pb.Job{Status: pb.JobStatus_JOB_STATUS_RUNNING, Spec: &pb.JobSpec{Name: "j", MinUpdates: 1},
		OpenRound: &pb.Round{Number: 3, Selected: []string{"a", "b"}, DeadlineUnixNano: now.Add(time.Minute).UnixNano(),
			Secagg: &pb.SecAggRound{Phase: round.PhaseShares, PhaseDeadlineUnixNano: now.Add(7 * time.Second).UnixNano(),
				Keys: []*pb.SecAggKeys{{Worker: "a"}, {Worker: "b"}}, Shares: []*pb.SecAggShare{{From: "a", To: "b"}}}}}
	live := []*pb.WorkerInfo{{Id: "a"}, {Id: "b"}}
	got := strings.Join(conditions(j, live, now), "; ")
	if got != "round 3, secure aggregation (shares), waiting for b; phase deadline in 7s" {
		t.Errorf("conditions: %q", got)
	}
}
