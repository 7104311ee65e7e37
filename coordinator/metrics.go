package coordinator

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are a coordinator's Prometheus series, in a registry of its own
// (no package-level state: several coordinators can share a process).
type metrics struct {
	reg             *prometheus.Registry
	leaderChanges   prometheus.Counter
	isLeader        prometheus.Gauge
	failover        prometheus.Histogram
	replicationLag  prometheus.Histogram
	roundsCommitted prometheus.Counter
	roundsAborted   prometheus.Counter
	updatesAccepted prometheus.Counter
	updatesRejected *prometheus.CounterVec
	authRefused     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_raft_leader_changes_total",
			Help: "Times this node observed a change of Raft leader."}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedtune_raft_is_leader", Help: "1 while this node leads."}),
		failover: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedtune_failover_seconds",
			Help:    "Time from losing contact with the old leader to this node's scheduler running as the new leader.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 10)}),
		replicationLag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedtune_blob_replication_seconds",
			Help:    "Time for a blob to reach a quorum of coordinators.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		roundsCommitted: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_rounds_committed_total", Help: "Rounds this node committed as leader."}),
		roundsAborted:   prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_rounds_rescheduled_total", Help: "Rounds aborted at their deadline with too few updates and planned again."}),
		updatesAccepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_updates_accepted_total", Help: "Worker updates accepted."}),
		updatesRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_updates_rejected_total", Help: "Worker updates refused, by gRPC code."}, []string{"reason"}),
		authRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_auth_refused_total",
			Help: "Calls and Raft connections refused by mutual TLS checks, by reason (no-identity, role, impersonation, blob, raft, revoked)."}, []string{"reason"}),
	}
	m.reg.MustRegister(m.leaderChanges, m.isLeader, m.failover, m.replicationLag, m.roundsCommitted, m.roundsAborted, m.updatesAccepted, m.updatesRejected, m.authRefused,
		collectors.NewGoCollector())
	return m
}

func (m *metrics) replication(d time.Duration) { m.replicationLag.Observe(d.Seconds()) }

// Registry returns the coordinator's metrics registry (served on /metrics).
func (c *Coordinator) Registry() *prometheus.Registry { return c.metrics.reg }
