package round

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "github.com/fedtune/fedtune/protocol"
)

// Federated evaluation: a worker scores a committed model (round 0: the
// job's first version) on its held-out data and reports summed loss and
// counts; the job keeps each worker's report with that round and the
// count-weighted means as metrics: fed_loss, fed_perplexity (e^fed_loss),
// fed_accuracy, fed_count, and per group of the job's eval_group_by label
// fed_loss/<label>=<value> and fed_perplexity/<label>=<value>.

// ErrEvalDone means the worker has already reported on that model.
var ErrEvalDone = fmt.Errorf("evaluation already reported")

// MaxEvalCount bounds the examples or tokens one report may claim.
const MaxEvalCount = 1 << 40

// CheckEvalReport refuses a report whose numbers are not a loss sum and
// counts.
func CheckEvalReport(r *pb.EvalReport) error {
	switch {
	case r.GetWorker() == "":
		return fmt.Errorf("evaluation report: no worker")
	case r.Count == 0 || r.Count > MaxEvalCount:
		return fmt.Errorf("evaluation report: count %d, want 1 to %d", r.Count, uint64(MaxEvalCount))
	case r.Correct > r.Count:
		return fmt.Errorf("evaluation report: %d correct of %d", r.Correct, r.Count)
	case !(r.LossSum >= 0) || math.IsInf(r.LossSum, 0):
		return fmt.Errorf("evaluation report: loss sum %v is not a finite non-negative number", r.LossSum)
	case r.LossSum/float64(r.Count) > 1e4:
		return fmt.Errorf("evaluation report: mean loss %v is absurd", r.LossSum/float64(r.Count))
	case len(r.Group) > 256:
		return fmt.Errorf("evaluation report: group of %d bytes", len(r.Group))
	}
	return nil
}

// EvalReports returns the reports on round n's model (0: the first
// version), or false if the job has no such committed round.
func (j Job) EvalReports(n uint32) ([]*pb.EvalReport, bool) {
	if n == 0 {
		return j.BaseEvals, true
	}
	if int(n) > len(j.History) {
		return nil, false
	}
	return j.History[n-1].Evals, true
}

// RecordEval adds a worker's report on round n's model and recomputes that
// round's federated metrics. It applies to finished jobs too (their last
// model is evaluated after the last round).
func (j Job) RecordEval(n uint32, r *pb.EvalReport) error {
	if j.Spec.GetEvaluation() != EvalFederated {
		return fmt.Errorf("job %q does not evaluate federatedly", j.Spec.GetName())
	}
	if err := CheckEvalReport(r); err != nil {
		return err
	}
	reports, ok := j.EvalReports(n)
	if !ok {
		return fmt.Errorf("evaluation of round %d of %q: no such committed round: %w", n, j.Spec.GetName(), ErrStaleRound)
	}
	i, found := slices.BinarySearchFunc(reports, r.Worker, func(e *pb.EvalReport, w string) int { return strings.Compare(e.Worker, w) })
	if found {
		return fmt.Errorf("worker %s on round %d of %q: %w", r.Worker, n, j.Spec.GetName(), ErrEvalDone)
	}
	reports = slices.Insert(reports, i, r)
	metrics := j.BaseMetrics
	if n == 0 {
		j.BaseEvals = reports
		if metrics == nil {
			metrics = map[string]float64{}
			j.BaseMetrics = metrics
		}
	} else {
		// A committed record is shared with readers that hold the
		// history without a lock (the FSM's RunningJobs): replace it and
		// the history slice instead of changing them.
		rec := proto.Clone(j.History[n-1]).(*pb.RoundRecord)
		rec.Evals = reports
		if rec.Metrics == nil {
			rec.Metrics = map[string]float64{}
		}
		metrics = rec.Metrics
		hist := slices.Clone(j.History)
		hist[n-1] = rec
		j.History = hist
	}
	setEvalMetrics(metrics, reports, j.Spec.GetEvalGroupBy())
	return nil
}

// setEvalMetrics writes the count-weighted means of reports into m, in
// the reports' (worker) order so that every replica sums alike.
func setEvalMetrics(m map[string]float64, reports []*pb.EvalReport, groupBy string) {
	type acc struct {
		loss           float64
		count, correct uint64
	}
	var all acc
	groups := map[string]*acc{}
	for _, r := range reports {
		all.loss, all.count, all.correct = all.loss+r.LossSum, all.count+r.Count, all.correct+r.Correct
		if groupBy != "" && r.Group != "" {
			g := groups[r.Group]
			if g == nil {
				g = &acc{}
				groups[r.Group] = g
			}
			g.loss, g.count = g.loss+r.LossSum, g.count+r.Count
		}
	}
	mean := all.loss / float64(all.count)
	m["fed_loss"], m["fed_accuracy"], m["fed_count"] = mean, float64(all.correct)/float64(all.count), float64(all.count)
	setFinite(m, "fed_perplexity", math.Exp(mean))
	for name, g := range groups {
		gm := g.loss / float64(g.count)
		m["fed_loss/"+groupBy+"="+name] = gm
		setFinite(m, "fed_perplexity/"+groupBy+"="+name, math.Exp(gm))
	}
}

// EvalMetricKeys names the metrics of a job's evaluation: the
// coordinator's test split (central), or the workers' held-out data
// (federated).
func EvalMetricKeys(spec *pb.JobSpec) (accuracy, loss string) {
	if spec.GetEvaluation() == EvalFederated {
		return "fed_accuracy", "fed_loss"
	}
	return "test_accuracy", "test_loss"
}

// EvalModel returns the model a federated evaluation of round n scores:
// round n's committed model (0: the job's first version).
func (j Job) EvalModel(n uint32) string {
	if n == 0 {
		return InitialModel(j.Spec)
	}
	return j.History[n-1].Model
}

// setFinite sets m[k] = v if v is finite (a perplexity overflows for
// losses above about 709 nats).
func setFinite(m map[string]float64, k string, v float64) {
	if !math.IsInf(v, 0) && !math.IsNaN(v) {
		m[k] = v
	}
}
