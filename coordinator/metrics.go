package coordinator

import (
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fedtune/fedtune/internal/gossip"
)

// metrics are a coordinator's Prometheus series, in a registry of its own
// (no package-level state: several coordinators can share a process).
type metrics struct {
	reg              *prometheus.Registry
	leaderChanges    prometheus.Counter
	isLeader         prometheus.Gauge
	failover         prometheus.Histogram
	replicationLag   prometheus.Histogram
	roundsCommitted  prometheus.Counter
	roundsAborted    prometheus.Counter
	updatesAccepted  prometheus.Counter
	updatesRejected  *prometheus.CounterVec
	authRefused      *prometheus.CounterVec
	roundsStarted    prometheus.Counter
	updateBytes      *prometheus.CounterVec
	aggregation      *prometheus.HistogramVec
	roundDuration    prometheus.Histogram
	blobSent         *prometheus.CounterVec
	dashboardStreams prometheus.Counter
	asyncTasks       *prometheus.CounterVec
	samplesCapped    prometheus.Counter
	roundsRefused    prometheus.Counter
	taskFailures     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_raft_leader_changes_total",
			Help: "Times this node observed a change of Raft leader."}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedtune_raft_is_leader", Help: "1 while this node leads."}),
		failover: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedtune_failover_seconds",
			Help:    "Time from this node last hearing from the previous leader to its scheduler running as the new leader: detection (heartbeat timeout), election and barrier.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 10)}),
		replicationLag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedtune_blob_replication_seconds",
			Help:    "Time for a blob to reach a quorum of coordinators.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		roundsCommitted: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_rounds_committed_total", Help: "Rounds this node committed as leader."}),
		roundsAborted:   prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_rounds_rescheduled_total", Help: "Rounds aborted at their deadline with too few updates and planned again."}),
		updatesAccepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_updates_accepted_total", Help: "Worker updates accepted."}),
		updatesRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_updates_rejected_total", Help: "Worker updates refused, by gRPC code."}, []string{"reason"}),
		authRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_auth_refused_total",
			Help: "Calls and Raft connections refused by mutual TLS checks, by reason (no-identity, role, impersonation, blob, raft, revoked, gossip: a member claiming the coordinator role without proving it)."}, []string{"reason"}),
	}
	m.roundsStarted = prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_rounds_started_total", Help: "Rounds this node started as leader (attempts included)."})
	m.updateBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_update_bytes_total", Help: "Bytes of accepted updates received, by codec."}, []string{"codec"})
	m.aggregation = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "fedtune_aggregation_seconds", Help: "Time to turn a round's updates into its new model (reading, decoding, the rule, the server optimizer), by rule.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"rule"})
	m.roundDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedtune_round_duration_seconds", Help: "Time from a round's start to its commit (the attempt that committed).",
		Buckets: prometheus.ExponentialBuckets(0.1, 2, 14)})
	m.blobSent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_blob_sent_bytes_total", Help: "Bytes of models and updates sent from this node's blob store, by caller role (worker, coordinator, admin)."}, []string{"to"})
	m.dashboardStreams = prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_dashboard_streams_total", Help: "Dashboard event streams opened (browsers showing the live dashboard)."})
	m.asyncTasks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_async_tasks_total", Help: "Async jobs' tasks this node handed out as leader, or withdrawn (past the deadline or too stale)."}, []string{"event"})
	m.samplesCapped = prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_update_samples_capped_total", Help: "Accepted updates whose claimed example count (their FedAvg weight) exceeded the job's cap and was counted as the cap."})
	m.roundsRefused = prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_rounds_refused_total", Help: "Rounds (or async versions) whose aggregate was not finite: not committed; a sync round is planned again, an async job fails."})
	m.taskFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_task_failures_total",
		Help: "Tasks workers reported failed to this node as leader, by job and kind (trainer, timeout, data, malformed, other)."}, []string{"job", "kind"})
	m.reg.MustRegister(m.samplesCapped, m.roundsRefused, m.taskFailures)
	m.reg.MustRegister(m.roundsStarted, m.updateBytes, m.aggregation, m.roundDuration, m.blobSent, m.dashboardStreams, m.asyncTasks)
	m.reg.MustRegister(m.leaderChanges, m.isLeader, m.failover, m.replicationLag, m.roundsCommitted, m.roundsAborted, m.updatesAccepted, m.updatesRejected, m.authRefused,
		collectors.NewGoCollector())
	return m
}

func (m *metrics) replication(d time.Duration) { m.replicationLag.Observe(d.Seconds()) }

// Registry returns the coordinator's metrics registry (served on /metrics).
func (c *Coordinator) Registry() *prometheus.Registry { return c.metrics.reg }

// registerState adds series read from the node's state when scraped:
// Raft term, commit and applied index, gossip members by role, blob store
// size.
func (c *Coordinator) registerState() {
	gauge := func(name, help string, f func() float64) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	stat := func(key string) func() float64 {
		return func() float64 {
			v, _ := strconv.ParseFloat(c.raft.Stats()[key], 64)
			return v
		}
	}
	c.metrics.reg.MustRegister(jobCollector{c})
	c.metrics.reg.MustRegister(
		gauge("fedtune_raft_term", "Current Raft term.", stat("term")),
		gauge("fedtune_raft_commit_index", "Raft commit index.", stat("commit_index")),
		gauge("fedtune_raft_applied_index", "Raft index applied to the state machine.", stat("applied_index")),
		gauge("fedtune_blob_store_bytes", "Bytes held in this node's blob store.", func() float64 { return float64(c.blobs.Bytes()) }),
		gauge("fedtune_gossip_voters_seen", "Raft voters this node's gossip sees alive, itself included; below a majority a leader takes rostered workers as live (cut off from gossip).",
			func() float64 { seen, _, _ := c.votersInGossip(c.gossip.Members()); return float64(seen) }),
		gauge("fedtune_gossip_health_score", "memberlist's local health score (0 healthy, up to 7): probes of others going unanswered with nobody vouching they are down, the node's own network at fault.",
			func() float64 { return float64(c.gossip.HealthScore()) }),
	)
	for _, st := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		c.metrics.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedtune_raft_state", Help: "1 for this node's Raft state, 0 for the others.",
			ConstLabels: prometheus.Labels{"state": st.String()}}, func() float64 {
			if c.raft.State() == st {
				return 1
			}
			return 0
		}))
	}
	for _, state := range []string{"alive", "gone"} {
		c.metrics.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedtune_roster_workers", Help: "Workers in the replicated roster, by state: alive in gossip, or gone (within their grace period).",
			ConstLabels: prometheus.Labels{"state": state}}, func() float64 {
			alive := map[string]bool{}
			for _, m := range c.gossip.WithRole(gossip.RoleWorker) {
				alive[m.Name] = true
			}
			n := 0
			for _, w := range c.fsm.Workers() {
				if alive[w.Id] == (state == "alive") {
					n++
				}
			}
			return float64(n)
		}))
	}
	for _, role := range []string{gossip.RoleCoordinator, gossip.RoleWorker} {
		c.metrics.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fedtune_gossip_members", Help: "Alive gossip members, by role.",
			ConstLabels: prometheus.Labels{"role": role}}, func() float64 { return float64(len(c.gossip.WithRole(role))) }))
	}
}
