package coordinator

import (
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// jobCollector exposes every job's state from this node's replica at
// scrape time, with one label, job (never a worker), so that the series
// stay few: what an operator alerts on (a stalled job, a failing one) and
// graphs (accuracy, loss, rounds).
type jobCollector struct{ c *Coordinator }

var (
	jobStateDesc      = prometheus.NewDesc("fedtune_job_state", "1 for the job's state (running, paused, done, failed, cancelled), 0 for the others.", []string{"job", "state"}, nil)
	jobRoundsDesc     = prometheus.NewDesc("fedtune_job_rounds_committed", "Rounds (async: versions) the job has committed.", []string{"job"}, nil)
	jobPlannedDesc    = prometheus.NewDesc("fedtune_job_rounds_planned", "Rounds (async: versions) the job asks for.", []string{"job"}, nil)
	jobLastCommitDesc = prometheus.NewDesc("fedtune_job_last_commit_timestamp_seconds",
		"When the job last committed a round (its submission before the first); time() minus it is the time since progress.", []string{"job"}, nil)
	jobAccuracyDesc  = prometheus.NewDesc("fedtune_job_accuracy", "The last committed round's accuracy: central test accuracy, or the workers' held-out accuracy (federated evaluation).", []string{"job"}, nil)
	jobLossDesc      = prometheus.NewDesc("fedtune_job_loss", "The last committed round's evaluation loss (central test loss or federated held-out loss).", []string{"job"}, nil)
	jobSelectedDesc  = prometheus.NewDesc("fedtune_job_round_selected", "Workers selected for the job's open round (0 between rounds).", []string{"job"}, nil)
	jobRespondedDesc = prometheus.NewDesc("fedtune_job_round_responded", "Selected workers that have sent an update to the open round.", []string{"job"}, nil)
	jobFailedDesc    = prometheus.NewDesc("fedtune_job_round_failed", "Selected workers that reported their task in the open round failed.", []string{"job"}, nil)
	jobEpsilonDesc   = prometheus.NewDesc("fedtune_job_dp_epsilon", "DP jobs: the privacy spent over the committed rounds, ε at the job's δ.", []string{"job"}, nil)
	jobBudgetDesc    = prometheus.NewDesc("fedtune_job_dp_epsilon_budget", "DP jobs with a budget: the ε no round may take the job past.", []string{"job"}, nil)
	jobSecAggDesc    = prometheus.NewDesc("fedtune_job_secagg_phase", "Secure-aggregation jobs: the open round's phase (1 keys, 2 shares, 3 masked updates, 4 unmasking; 0 between rounds).", []string{"job"}, nil)
	buildInfoDesc    = prometheus.NewDesc("fedtune_build_info", "1, labelled with the build's version, VCS revision and Go version.", []string{"version", "revision", "goversion"}, nil)
)

var jobStates = map[pb.JobStatus]string{
	pb.JobStatus_JOB_STATUS_RUNNING: "running", pb.JobStatus_JOB_STATUS_PAUSED: "paused", pb.JobStatus_JOB_STATUS_DONE: "done",
	pb.JobStatus_JOB_STATUS_FAILED: "failed", pb.JobStatus_JOB_STATUS_CANCELLED: "cancelled",
}

// Describe sends the descriptors.
func (jc jobCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{jobStateDesc, jobRoundsDesc, jobPlannedDesc, jobLastCommitDesc, jobAccuracyDesc, jobLossDesc,
		jobSelectedDesc, jobRespondedDesc, jobFailedDesc, jobEpsilonDesc, jobBudgetDesc, jobSecAggDesc, buildInfoDesc} {
		ch <- d
	}
}

// Collect reads the jobs under the FSM's read lock.
func (jc jobCollector) Collect(ch chan<- prometheus.Metric) {
	version, revision := buildVersion()
	ch <- prometheus.MustNewConstMetric(buildInfoDesc, prometheus.GaugeValue, 1, version, revision, runtime.Version())
	jc.c.fsm.ReadJobs(func(j *pb.Job) {
		name := j.Spec.GetName()
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{name}, labels...)...)
		}
		for st, word := range jobStates {
			v := 0.0
			if j.Status == st {
				v = 1
			}
			gauge(jobStateDesc, v, word)
		}
		gauge(jobRoundsDesc, float64(len(j.History)))
		gauge(jobPlannedDesc, float64(j.Spec.GetRounds()))
		last := j.SubmittedUnixNano
		metrics := j.BaseMetrics
		if n := len(j.History); n > 0 {
			last, metrics = j.History[n-1].CommittedUnixNano, j.History[n-1].Metrics
		}
		gauge(jobLastCommitDesc, float64(last)/1e9)
		accKey, lossKey := round.EvalMetricKeys(j.Spec)
		if v, ok := metrics[accKey]; ok {
			gauge(jobAccuracyDesc, v)
		}
		if v, ok := metrics[lossKey]; ok {
			gauge(jobLossDesc, v)
		}
		r := j.OpenRound
		gauge(jobSelectedDesc, float64(len(r.GetSelected())))
		gauge(jobRespondedDesc, float64(len(r.GetUpdates())))
		gauge(jobFailedDesc, float64(len(r.GetFailures())))
		if dp := j.Spec.GetDp(); dp != nil {
			gauge(jobEpsilonDesc, metrics["dp_epsilon"])
			if dp.Epsilon > 0 {
				gauge(jobBudgetDesc, dp.Epsilon)
			}
		}
		if j.Spec.GetSecagg() != nil {
			gauge(jobSecAggDesc, float64(r.GetSecagg().GetPhase()))
		}
	})
}

// buildVersion returns the main module's version and VCS revision.
func buildVersion() (version, revision string) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown", ""
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			revision = s.Value
		}
	}
	return strings.TrimSpace(bi.Main.Version), revision
}
