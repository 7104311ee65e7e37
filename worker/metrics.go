package worker

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are a worker's Prometheus series, in a registry of its own.
type metrics struct {
	reg           *prometheus.Registry
	tasks         *prometheus.CounterVec
	updates       *prometheus.CounterVec
	updateBytes   *prometheus.CounterVec
	trainSeconds  prometheus.Histogram
	samplesPerSec prometheus.Gauge
	samples       prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_worker_tasks_total",
			Help: "Tasks this worker took, by result (trained, failed)."}, []string{"result"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_worker_updates_total",
			Help: "Updates this worker sent, by outcome (accepted, duplicate, refused, deferred: rate-limited, sent again later)."}, []string{"outcome"}),
		updateBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fedtune_worker_update_bytes_total",
			Help: "Bytes of encoded updates sent, by codec."}, []string{"codec"}),
		trainSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fedtune_worker_training_seconds",
			Help: "Local training time per task.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}),
		samplesPerSec: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fedtune_worker_training_samples_per_second",
			Help: "Examples processed per second of local training, in the last task."}),
		samples: prometheus.NewCounter(prometheus.CounterOpts{Name: "fedtune_worker_trained_samples_total",
			Help: "Examples trained on, summed over tasks (the FedAvg weights reported)."}),
	}
	m.reg.MustRegister(m.tasks, m.updates, m.updateBytes, m.trainSeconds, m.samplesPerSec, m.samples, collectors.NewGoCollector())
	return m
}

// Registry returns the worker's metrics registry (served on /metrics by
// `fedtune worker --http-addr`).
func (w *Worker) Registry() *prometheus.Registry { return w.metrics.reg }
