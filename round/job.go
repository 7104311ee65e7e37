package round

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	pb "github.com/fedtune/fedtune/protocol"
)

// Errors a transition may be refused with. The FSM returns them as the
// apply response (the log entry is kept, the state unchanged), and the
// gRPC layer maps them to status codes.
var (
	ErrJobNotActive = errors.New("job is not running")
	ErrStaleRound   = errors.New("round is not open")
	ErrNotSelected  = errors.New("worker is not selected for this round")
	ErrDuplicate    = errors.New("update already accepted")
	ErrRoundOpen    = errors.New("a round is already open")
)

// Job is one job's replicated state with its transitions: the FSM holds
// one per job and applies committed commands through these methods, and
// the simulator drives the same methods in memory. A transition either
// applies whole or refuses with an error and changes nothing. Time comes
// in as an argument (the command's proposal time), never from a clock.
type Job struct{ *pb.Job }

// NewJob returns the state of a job just registered at time at (Unix ns).
func NewJob(spec *pb.JobSpec, baseMetrics map[string]float64, at int64) (Job, error) {
	if spec.GetName() == "" {
		return Job{}, errors.New("register job: no spec or no name") // found by FuzzFSMCommands: a nil spec panicked
	}
	dropNonFinite(baseMetrics)
	j := &pb.Job{
		Spec:              spec,
		Status:            pb.JobStatus_JOB_STATUS_RUNNING,
		CurrentModel:      InitialModel(spec),
		SubmittedUnixNano: at,
		BaseMetrics:       baseMetrics,
	}
	if IsAsync(spec) {
		j.Async = &pb.AsyncState{NextTask: 1, VersionStartedUnixNano: at}
	}
	return Job{j}, nil
}

// Running refuses a job that is no longer running.
func (j Job) Running() error {
	if j.Status != pb.JobStatus_JOB_STATUS_RUNNING {
		return fmt.Errorf("job %q is %s: %w", j.Spec.GetName(), j.Status, ErrJobNotActive)
	}
	return nil
}

// StartRound opens a sync job's next round.
func (j Job) StartRound(r *pb.Round) error {
	name := j.Spec.GetName()
	if err := j.Running(); err != nil {
		return err
	}
	if IsAsync(j.Spec) {
		return fmt.Errorf("start round of %q: an async job has no rounds: %w", name, ErrStaleRound)
	}
	if j.OpenRound != nil {
		return fmt.Errorf("start round %d of %q: round %d: %w", r.GetNumber(), name, j.OpenRound.Number, ErrRoundOpen)
	}
	if want := uint32(len(j.History)) + 1; r.GetNumber() != want {
		return fmt.Errorf("start round %d of %q, next is %d: %w", r.GetNumber(), name, want, ErrStaleRound)
	}
	j.OpenRound = r
	return nil
}

// Open returns the job's open round if it is number n.
func (j Job) Open(n uint32) (*pb.Round, error) {
	if err := j.Running(); err != nil {
		return nil, err
	}
	r := j.OpenRound
	if r == nil || r.Number != n {
		open := "none"
		if r != nil {
			open = fmt.Sprint(r.Number)
		}
		return nil, fmt.Errorf("job %q round %d (open: %s): %w", j.Spec.GetName(), n, open, ErrStaleRound)
	}
	return r, nil
}

// AcceptUpdate records an update: in a sync job's open round n (from a
// selected worker, once per worker, kept sorted by worker), or in an async
// job's buffer (n is then the version it was trained from).
func (j Job) AcceptUpdate(n uint32, u *pb.AcceptedUpdate) error {
	dropNonFinite(u.GetMetrics())
	if IsAsync(j.Spec) && j.Status == pb.JobStatus_JOB_STATUS_RUNNING {
		return j.acceptAsync(n, u)
	}
	r, err := j.Open(n)
	if err != nil {
		return err
	}
	name := j.Spec.GetName()
	if _, ok := slices.BinarySearch(r.Selected, u.GetWorker()); !ok {
		return fmt.Errorf("worker %q, job %q round %d: %w", u.GetWorker(), name, n, ErrNotSelected)
	}
	i, found := slices.BinarySearchFunc(r.Updates, u.GetWorker(), func(a *pb.AcceptedUpdate, w string) int { return strings.Compare(a.Worker, w) })
	if found {
		return fmt.Errorf("worker %q, job %q round %d: %w", u.GetWorker(), name, n, ErrDuplicate)
	}
	r.Updates = slices.Insert(r.Updates, i, u)
	return nil
}

// CommitRound closes a sync job's open round with its new model (or makes
// an async job's next version from the buffer's oldest c.Buffered
// updates), recording it in the history; the job is done after its last.
// Non-finite metrics are dropped and non-finite scores zeroed: the state
// holds finite numbers only, whatever a command says.
func (j Job) CommitRound(c *pb.CommitRound, at int64) error {
	dropNonFinite(c.Metrics)
	for _, sc := range c.Scores {
		sc.Weight, sc.Norm, sc.Distance, sc.Cosine = finiteOr0(sc.Weight), finiteOr0(sc.Norm), finiteOr0(sc.Distance), finiteOr0(sc.Cosine)
	}
	if IsAsync(j.Spec) && j.Status == pb.JobStatus_JOB_STATUS_RUNNING {
		return j.commitAsync(c, at)
	}
	r, err := j.Open(c.Round)
	if err != nil {
		return err
	}
	rec := &pb.RoundRecord{
		Number:            r.Number,
		Model:             c.Model,
		Updates:           uint32(len(r.Updates)),
		Metrics:           c.Metrics,
		StartedUnixNano:   r.StartedUnixNano,
		CommittedUnixNano: at,
		Accepted:          r.Updates,
		Failures:          r.Failures,
		Selected:          uint32(len(r.Selected)),
		Eligible:          r.Eligible,
		Scores:            c.Scores,
		OptimizerState:    c.OptimizerState,
	}
	if sa := r.Secagg; sa != nil {
		// Kept for verification; the sealed shares are of no more use.
		rec.Secagg = &pb.SecAggRound{Phase: sa.Phase, Keys: sa.Keys, Shared: sa.Shared, Reveals: sa.Reveals, Revealed: sa.Revealed, FracBits: sa.FracBits, Attempt: r.Attempt}
	}
	for _, u := range r.Updates {
		rec.Samples += u.Samples
		rec.Workers = append(rec.Workers, u.Worker)
	}
	j.History = append(j.History, rec)
	j.CurrentModel = c.Model
	j.OpenRound = nil
	j.NextAttempt = 0
	if j.Spec.GetDp() != nil {
		// the privacy spent so far, in the replicated history
		if eps, err := DPEpsilon(j.Job); err == nil && !math.IsInf(eps, 0) {
			if rec.Metrics == nil {
				rec.Metrics = map[string]float64{}
			}
			rec.Metrics["dp_epsilon"] = eps
		}
	}
	if uint32(len(j.History)) >= j.Spec.GetRounds() {
		j.Status = pb.JobStatus_JOB_STATUS_DONE
	}
	return nil
}

// AbortRound closes open round n without a new model (it is planned again
// as a new attempt).
func (j Job) AbortRound(n uint32) error {
	if _, err := j.Open(n); err != nil {
		return err
	}
	j.OpenRound = nil
	return nil
}

// Finish ends a running job with a final status and reason.
func (j Job) Finish(status pb.JobStatus, reason string) error {
	if err := j.Running(); err != nil {
		return err
	}
	j.Status, j.Error, j.OpenRound = status, reason, nil
	return nil
}

// finiteOr0 returns v, or 0 for a NaN or an infinity: a score is a
// description of an update (its cosine with an aggregate of zero norm is
// undefined), and the replicated state holds finite numbers only.
func finiteOr0(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// dropNonFinite deletes NaN and infinite values from m. The leader never
// proposes them (updates with them are refused, aggregates checked); this
// keeps the rule in the state even for a log written before, or by a
// faulty leader, the same way on every node.
func dropNonFinite(m map[string]float64) {
	for k, v := range m {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			delete(m, k)
		}
	}
}
