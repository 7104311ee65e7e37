// Package progress renders a job's progress for terminals: a bar and one
// line per committed round.
package progress

import (
	"fmt"
	"slices"
	"strings"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
)

// Bar renders done/total as a fixed-width bar, e.g. "[#####-----]".
func Bar(done, total, width int) string {
	if total <= 0 {
		total = 1
	}
	n := min(max(done*width/total, 0), width)
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}

// RoundHeader is the header above RoundLine rows.
const RoundHeader = "round  progress              updates  samples  test_acc  test_loss  train_loss  seconds  train/s"

// RoundLine renders one committed round of a job. A federatedly
// evaluated job shows its workers' held-out accuracy and loss in the test
// columns, and the perplexity after them (the reports of a round's model
// may arrive after the round is first shown).
func RoundLine(j *pb.Job, r *pb.RoundRecord) string {
	secs := time.Duration(r.CommittedUnixNano - r.StartedUnixNano).Seconds()
	acc, loss := round.EvalMetricKeys(j.Spec)
	line := fmt.Sprintf("%5d  %s %3d%%  %7d  %7d  %8s  %9s  %10s  %7.1f  %7s",
		r.Number, Bar(int(r.Number), int(j.Spec.Rounds), 12), 100*int(r.Number)/int(max(j.Spec.Rounds, 1)),
		r.Updates, r.Samples, pct(r.Metrics, acc), num(r.Metrics, loss), num(r.Metrics, "train_loss"), secs, trainRate(r))
	if p, ok := r.Metrics["fed_perplexity"]; ok {
		line += fmt.Sprintf("  perplexity %.2f (%d workers)", p, len(r.Evals))
	}
	if e, ok := r.Metrics["dp_epsilon"]; ok {
		line += fmt.Sprintf("  ε %.3f", e)
	}
	return line
}

// trainRate is the workers' mean local training speed in a round, in
// samples per second (the samples_per_second each update reports), or "-".
func trainRate(r *pb.RoundRecord) string {
	var sum float64
	var n int
	for _, u := range r.Accepted {
		if v, ok := u.Metrics["samples_per_second"]; ok {
			sum += v
			n++
		}
	}
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f", sum/float64(n))
}

// OpenRoundLine describes a round in progress: updates in, a bar of the
// time to its deadline, and the newest committed test accuracy. It reads
// the newest round from the last record of j.History (which may be a page
// of the history ending with it).
func OpenRoundLine(j *pb.Job, now time.Time) string {
	key, _ := round.EvalMetricKeys(j.Spec)
	acc, done := pct(j.BaseMetrics, key), uint32(0)
	if n := len(j.History); n > 0 {
		acc, done = pct(j.History[n-1].Metrics, key), j.History[n-1].Number
	}
	if a := j.Spec.GetAsync(); a != nil && j.Async != nil && j.Status == pb.JobStatus_JOB_STATUS_RUNNING {
		k := int(max(a.BufferSize, 1))
		return fmt.Sprintf("version %d: buffer %s %d/%d updates, %d training, test accuracy %s", done, Bar(len(j.Async.Buffer), k, 10),
			len(j.Async.Buffer), k, len(j.Async.Assignments), acc)
	}
	r := j.OpenRound
	if r == nil {
		return fmt.Sprintf("job %s: %s, %d/%d rounds committed", j.Spec.Name, status(j), done, j.Spec.Rounds)
	}
	total := time.Duration(r.DeadlineUnixNano - r.StartedUnixNano)
	elapsed := now.Sub(time.Unix(0, r.StartedUnixNano))
	if sa := r.Secagg; sa != nil && sa.Phase > round.PhaseKeys {
		// past training: the phase and its own deadline
		left := time.Unix(0, sa.PhaseDeadlineUnixNano).Sub(now)
		return fmt.Sprintf("round %d: secure aggregation, %s: %d keys, %d shared, %d masked updates, %.0fs to the phase's deadline, test accuracy %s",
			r.Number, round.SecAggPhaseNames[sa.Phase], len(sa.Keys), len(sa.Shared), len(r.Updates), max(0, left.Seconds()), acc)
	}
	return fmt.Sprintf("round %d: %d/%d updates, %s %.0fs to deadline, test accuracy %s", r.Number, len(r.Updates), len(r.Selected),
		Bar(int(elapsed), int(total), 20), max(0, (total-elapsed).Seconds()), acc)
}

func status(j *pb.Job) string {
	return strings.ToLower(strings.TrimPrefix(j.Status.String(), "JOB_STATUS_"))
}

// Status returns a job's status word: running, done or failed.
func Status(j *pb.Job) string { return status(j) }

func pct(m map[string]float64, k string) string {
	v, ok := m[k]
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", 100*v)
}

func num(m map[string]float64, k string) string {
	v, ok := m[k]
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.4f", v)
}

// FedEvalLine summarises a federatedly evaluated job: the workers'
// held-out perplexity of the first version and of round last (overall and
// per group), or "" when neither has a report yet.
func FedEvalLine(j *pb.Job, last *pb.RoundRecord) string {
	if j.Spec.GetEvaluation() != round.EvalFederated {
		return ""
	}
	describe := func(m map[string]float64, n int) string {
		p, ok := m["fed_perplexity"]
		if !ok {
			return "-"
		}
		s := fmt.Sprintf("perplexity %.2f (%d workers", p, n)
		var groups []string
		for k, v := range m {
			if g, ok := strings.CutPrefix(k, "fed_perplexity/"); ok {
				groups = append(groups, fmt.Sprintf("%s %.2f", g, v))
			}
		}
		slices.Sort(groups)
		if len(groups) > 0 {
			s += "; " + strings.Join(groups, ", ")
		}
		return s + ")"
	}
	base := describe(j.BaseMetrics, len(j.BaseEvals))
	if last == nil {
		return "federated evaluation: first version " + base
	}
	return fmt.Sprintf("federated evaluation: first version %s; round %d %s", base, last.Number, describe(last.Metrics, len(last.Evals)))
}
