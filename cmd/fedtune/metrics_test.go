package main

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
	pb "github.com/fedtune/fedtune/protocol"
)

// scrape reads a /metrics page into series name{labels} -> value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// TestMetricsThreeCoordinators scrapes /metrics of a 3-coordinator cluster
// and of its workers (all processes) during a job, kills the leader with
// SIGKILL, and checks the series move as they should: one leader at a
// time, rounds, durations, aggregation and update bytes counted by the
// leader, leader changes, term and failover time after the kill, and the
// workers' training throughput. Every log line of every node names the
// node, and the lines about a round name its job and round.
func TestMetricsThreeCoordinators(t *testing.T) {
	pc := tc.NewProcCluster(t, binary, 3)
	workerHTTP := []string{tc.FreeAddr(t), tc.FreeAddr(t), tc.FreeAddr(t)}
	workers := startWorkers(pc, 3, 2000, []string{"--http-addr", workerHTTP[0]}, []string{"--http-addr", workerHTTP[1]}, []string{"--http-addr", workerHTTP[2]})
	waitWorkers(t, pc, 3)
	leader := pc.Leader()
	run(t, submitArgs(leader.GRPC, "metered", 10, 3)...)
	waitJob(t, pc, "metered", time.Minute, func(j *pb.Job) bool { return len(j.History) >= 2 })

	before := map[string]map[string]float64{}
	leaders := 0
	for _, n := range pc.Nodes {
		m := scrape(t, n.HTTP)
		before[n.Name] = m
		if m["fedtune_raft_is_leader"] == 1 {
			leaders++
			if n != leader || m[`fedtune_raft_state{state="Leader"}`] != 1 {
				t.Errorf("%s leads by its metrics; the cluster says %s", n.Name, leader.Name)
			}
		} else if m[`fedtune_raft_state{state="Follower"}`] != 1 {
			t.Errorf("%s is neither leader nor follower by its metrics", n.Name)
		}
		if m[`fedtune_gossip_members{role="coordinator"}`] != 3 || m[`fedtune_gossip_members{role="worker"}`] != 3 || m[`fedtune_roster_workers{state="alive"}`] != 3 {
			t.Errorf("%s: gossip %v coordinators, %v workers, roster %v alive", n.Name, m[`fedtune_gossip_members{role="coordinator"}`],
				m[`fedtune_gossip_members{role="worker"}`], m[`fedtune_roster_workers{state="alive"}`])
		}
	}
	lm := before[leader.Name]
	if leaders != 1 {
		t.Errorf("%d nodes report fedtune_raft_is_leader 1", leaders)
	}
	for _, s := range []string{"fedtune_rounds_committed_total", "fedtune_round_duration_seconds_count", `fedtune_aggregation_seconds_count{rule="fedavg"}`} {
		if lm[s] < 2 {
			t.Errorf("leader %s: %s = %v after 2 committed rounds", leader.Name, s, lm[s])
		}
	}
	if lm["fedtune_updates_accepted_total"] < 6 || lm[`fedtune_update_bytes_total{codec="fp32"}`] < 6*200000 || lm[`fedtune_blob_sent_bytes_total{to="unauthenticated"}`] < 200000 {
		t.Errorf("leader %s: %v updates, %v update bytes in, %v blob bytes out", leader.Name, lm["fedtune_updates_accepted_total"],
			lm[`fedtune_update_bytes_total{codec="fp32"}`], lm[`fedtune_blob_sent_bytes_total{to="unauthenticated"}`])
	}

	start := time.Now()
	pc.Kill(leader)
	next := pc.WaitForLeader(30 * time.Second)
	t.Logf("killed %s; %s leads after %v", leader.Name, next.Name, time.Since(start).Round(time.Millisecond))
	committed := len(pc.Job("metered").History)
	waitJob(t, pc, "metered", time.Minute, func(j *pb.Job) bool { return len(j.History) >= committed+2 })
	for _, n := range pc.Up() {
		m, was := scrape(t, n.HTTP), before[n.Name]
		if m["fedtune_raft_leader_changes_total"] <= was["fedtune_raft_leader_changes_total"] {
			t.Errorf("%s: leader changes %v -> %v across a leader kill", n.Name, was["fedtune_raft_leader_changes_total"], m["fedtune_raft_leader_changes_total"])
		}
		if m["fedtune_raft_term"] <= was["fedtune_raft_term"] || m["fedtune_raft_applied_index"] <= was["fedtune_raft_applied_index"] {
			t.Errorf("%s: term %v -> %v, applied index %v -> %v", n.Name, was["fedtune_raft_term"], m["fedtune_raft_term"], was["fedtune_raft_applied_index"], m["fedtune_raft_applied_index"])
		}
		if n == next {
			if m["fedtune_raft_is_leader"] != 1 || m["fedtune_rounds_committed_total"] < 1 || m["fedtune_failover_seconds_count"] < 1 {
				t.Errorf("new leader %s: is_leader %v, rounds committed %v, failovers timed %v", n.Name, m["fedtune_raft_is_leader"],
					m["fedtune_rounds_committed_total"], m["fedtune_failover_seconds_count"])
			}
			// The failover it timed starts when it last heard from the old
			// leader, so it includes noticing the loss (a heartbeat timeout,
			// 300 ms with --fast).
			if f := m["fedtune_failover_seconds_sum"]; f < 0.3 || f > 30 {
				t.Errorf("new leader timed its failover at %.3fs: want the heartbeat timeout (0.3 s) at least", f)
			}
			t.Logf("new leader: %v rounds committed, failover %.2fs", m["fedtune_rounds_committed_total"], m["fedtune_failover_seconds_sum"])
		}
	}
	for i, addr := range workerHTTP {
		m := scrape(t, addr)
		if m[`fedtune_worker_tasks_total{result="trained"}`] < 1 || m["fedtune_worker_training_samples_per_second"] <= 0 ||
			m[`fedtune_worker_update_bytes_total{codec="fp32"}`] <= 0 || m[`fedtune_worker_updates_total{outcome="accepted"}`] < 1 {
			t.Errorf("worker w%d: tasks %v, samples/s %v, bytes %v, accepted %v", i+1, m[`fedtune_worker_tasks_total{result="trained"}`],
				m["fedtune_worker_training_samples_per_second"], m[`fedtune_worker_update_bytes_total{codec="fp32"}`], m[`fedtune_worker_updates_total{outcome="accepted"}`])
		}
		if i == 0 {
			t.Logf("worker w1: %v tasks, %.0f samples/s", m[`fedtune_worker_tasks_total{result="trained"}`], m["fedtune_worker_training_samples_per_second"])
		}
	}

	procs := workers
	for _, n := range pc.Up() {
		procs = append(procs, n.P)
	}
	for _, p := range procs {
		lines := 0
		for line := range strings.Lines(p.Output()) {
			if !strings.HasPrefix(line, "time=") {
				continue // not a log line (the start-up banner)
			}
			lines++
			if !strings.Contains(line, " node="+p.Name) {
				t.Errorf("%s logged a line without node=%s: %s", p.Name, p.Name, line)
			}
			for _, msg := range []string{`msg="round committed"`, `msg="round started"`, `msg="update accepted"`, `msg=trained`, `msg=training`} {
				if strings.Contains(line, msg) && (!strings.Contains(line, " job=") || !strings.Contains(line, " round=")) {
					t.Errorf("%s: a %s line without job and round: %s", p.Name, msg, line)
				}
			}
		}
		if lines == 0 {
			t.Errorf("%s logged nothing", p.Name)
		}
	}
}
