package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/internal/client"
	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
)

// `make test` runs the chaos tests short; `make chaos` runs them long:
//
//	go test ./cmd/fedtune -run Chaos -v -chaos.kills 20 -chaos.baseline
var (
	chaosKills    = flag.Int("chaos.kills", 3, "leader kills in TestChaosLeaderKills")
	chaosBaseline = flag.Bool("chaos.baseline", false, "also run the job without faults and compare final accuracy")
	chaosLANKills = flag.Int("chaos.lan-kills", 0, "leader kills in TestChaosFailoverLAN (0: skip)")
)

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// chaosJob is the job both runs use: 6 workers, small model, short rounds.
func chaosJob(addr, name string, rounds int) []string {
	return submitArgs(addr, name, rounds, 6, "--min-updates", "4", "--steps", "30", "--round-timeout", "20s", "--seed", "7")
}

// runJobWithoutFaults runs the chaos job on a fresh cluster and returns its
// final accuracy.
func runJobWithoutFaults(t *testing.T, rounds int) float64 {
	pc := tc.NewProcCluster(t, binary, 3)
	startWorkers(pc, 6, 3000)
	waitWorkers(t, pc, 6)
	run(t, chaosJob(pc.WaitForLeader(10*time.Second).GRPC, "baseline", rounds)...)
	j := waitJob(t, pc, "baseline", 5*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	for _, nd := range pc.Nodes {
		pc.Kill(nd)
	}
	return j.History[len(j.History)-1].Metrics["test_accuracy"]
}

// TestChaosLeaderKills kill -9s the leader of 3 coordinator processes
// again and again at chosen points of rounds (a random moment; with the
// last updates arriving; while the round is being aggregated and its model
// replicated), restarting each victim, over one job with 6 worker
// processes. The job must finish with no round lost, none repeated, no
// update counted twice, and every model on every coordinator.
func TestChaosLeaderKills(t *testing.T) {
	kills := *chaosKills
	rounds := kills + 4
	baseline := -1.0
	if *chaosBaseline {
		baseline = runJobWithoutFaults(t, rounds)
	}
	pc := tc.NewProcCluster(t, binary, 3)
	startWorkers(pc, 6, 3000)
	waitWorkers(t, pc, 6)
	run(t, chaosJob(pc.WaitForLeader(10*time.Second).GRPC, "chaos", rounds)...)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var toLeader, toCommit []time.Duration
	var snapshots []*pb.Job
	points := []string{"random moment", "last updates arriving", "aggregating/replicating"}
	for k := range kills {
		// Wait for a round opened after the previous kill.
		last := 0
		if len(snapshots) > 0 {
			last = len(snapshots[len(snapshots)-1].History)
		}
		waitJob(t, pc, "chaos", 2*time.Minute, func(j *pb.Job) bool { return len(j.History) > last && j.OpenRound != nil })
		point := points[k%3]
		switch k % 3 {
		case 0:
			time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
		case 1:
			waitJob(t, pc, "chaos", time.Minute, func(j *pb.Job) bool {
				return j.OpenRound == nil || len(j.OpenRound.Updates) >= 3
			})
		case 2:
			waitJob(t, pc, "chaos", time.Minute, func(j *pb.Job) bool {
				return j.OpenRound == nil || len(j.OpenRound.Updates) >= 4
			})
		}
		leader := pc.Leader()
		if leader == nil {
			leader = pc.WaitForLeader(10 * time.Second)
		}
		snap := pc.Job("chaos")
		committed := len(snap.History)
		start := time.Now()
		pc.Kill(leader)
		snapshots = append(snapshots, snap)
		var nl *tc.ProcNode
		tc.WaitFor(t, 20*time.Second, "a new leader", func() bool {
			for _, nd := range pc.Up() {
				if st, err := pc.Status(nd, 200*time.Millisecond); err == nil && st.State == "Leader" {
					nl = nd
					return true
				}
			}
			return false
		})
		dl := time.Since(start)
		pc.Start(leader)
		waitJob(t, pc, "chaos", 2*time.Minute, func(j *pb.Job) bool {
			return len(j.History) > committed || j.Status != pb.JobStatus_JOB_STATUS_RUNNING
		})
		dc := time.Since(start)
		toLeader, toCommit = append(toLeader, dl), append(toCommit, dc)
		t.Logf("kill %2d (%s, round %d, %d updates in): %s -> %s leads after %v, next round committed after %v",
			k+1, point, committed+1, len(snap.GetOpenRound().GetUpdates()), leader.Name, nl.Name, dl.Round(time.Millisecond), dc.Round(time.Millisecond))
	}
	j := waitJob(t, pc, "chaos", 5*time.Minute, func(j *pb.Job) bool { return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	lost, doubled := 0, 0
	for i, r := range j.History {
		if r.Number != uint32(i+1) {
			lost++
		}
		seen := map[string]bool{}
		for _, w := range r.Workers {
			if seen[w] {
				doubled++
			}
			seen[w] = true
		}
		if int(r.Updates) != len(r.Workers) || len(r.Accepted) != len(r.Workers) {
			doubled++
		}
	}
	if len(j.History) != rounds {
		lost += rounds - len(j.History)
	}
	for _, s := range snapshots {
		for i, r := range s.History {
			if i >= len(j.History) || j.History[i].Model != r.Model {
				lost++
			}
		}
	}
	// Every committed model is held by every coordinator under its hash.
	tc.WaitFor(t, 30*time.Second, "every model on every coordinator", func() bool {
		for _, nd := range pc.Up() {
			conn, _ := pc.Conn(nd)
			for _, r := range j.History {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := client.GetLocalBlob(ctx, conn, r.Model, 1<<30)
				cancel()
				if err != nil {
					return false
				}
			}
		}
		return true
	})
	final := j.History[len(j.History)-1].Metrics["test_accuracy"]
	summary := fmt.Sprintf("chaos: %d leader kills over %d rounds (3 coordinators, 6 workers)\n"+
		"  kill -> new leader:          median %v, max %v\n"+
		"  kill -> next committed round: median %v, max %v\n"+
		"  rounds lost: %d, updates double-counted: %d\n"+
		"  final test accuracy %.2f%%", kills, rounds,
		median(toLeader).Round(time.Millisecond), slices.Max(toLeader).Round(time.Millisecond),
		median(toCommit).Round(time.Millisecond), slices.Max(toCommit).Round(time.Millisecond), lost, doubled, 100*final)
	if baseline >= 0 {
		summary += fmt.Sprintf(" (same job without faults: %.2f%%)", 100*baseline)
	}
	fmt.Fprintln(os.Stdout, summary)
	t.Log(summary)
	if lost != 0 || doubled != 0 {
		t.Errorf("rounds lost %d, updates double-counted %d: both must be 0", lost, doubled)
	}
	if baseline >= 0 && (final < baseline-0.01) {
		t.Errorf("final accuracy %.4f is more than 1 pt below the fault-free run's %.4f", final, baseline)
	}
	if final < j.BaseMetrics["test_accuracy"]+0.3 {
		t.Errorf("accuracy %.3f -> %.3f", j.BaseMetrics["test_accuracy"], final)
	}
	// The failover metrics moved on the leader.
	leader := pc.WaitForLeader(10 * time.Second)
	resp, err := http.Get("http://" + leader.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, series := range []string{"fedtune_raft_leader_changes_total", "fedtune_failover_seconds_count", "fedtune_blob_replication_seconds_count"} {
		m := regexp.MustCompile(`(?m)^` + series + ` (\S+)`).FindStringSubmatch(string(body))
		if m == nil || m[1] == "0" {
			t.Errorf("metric %s on the leader: %v", series, m)
		}
	}
	if out := run(t, "cluster", "raft", "--coordinator", leader.GRPC); strings.Count(out, "Voter") != 3 {
		t.Errorf("cluster raft after the kills:\n%s", out)
	}
}

// TestChaosFailoverLAN measures leader failover with the LAN timing
// defaults (no job): kill -9 of the leader to a new leader.
func TestChaosFailoverLAN(t *testing.T) {
	if *chaosLANKills == 0 {
		t.Skip("run with -chaos.lan-kills N (make chaos)")
	}
	pc := tc.NewProcCluster(t, binary, 3, "--profile", "lan")
	var ds []time.Duration
	for k := range *chaosLANKills {
		leader := pc.WaitForLeader(30 * time.Second)
		time.Sleep(time.Duration(500+rand.IntN(1000)) * time.Millisecond)
		start := time.Now()
		pc.Kill(leader)
		tc.WaitFor(t, 30*time.Second, "a new leader", func() bool {
			for _, nd := range pc.Up() {
				if st, err := pc.Status(nd, 200*time.Millisecond); err == nil && st.State == "Leader" {
					return true
				}
			}
			return false
		})
		ds = append(ds, time.Since(start))
		t.Logf("LAN kill %d: new leader after %v", k+1, ds[len(ds)-1].Round(time.Millisecond))
		pc.Start(leader)
	}
	summary := fmt.Sprintf("chaos (LAN profile): %d leader kills, kill -> new leader median %v, max %v",
		len(ds), median(ds).Round(time.Millisecond), slices.Max(ds).Round(time.Millisecond))
	fmt.Fprintln(os.Stdout, summary)
	t.Log(summary)
	if median(ds) >= 2*time.Second {
		t.Errorf("median failover %v with LAN defaults, want < 2s", median(ds))
	}
}
