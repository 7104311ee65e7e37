package round

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/fedtune/fedtune/aggregation"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// Asynchronous jobs (spec.mode "async") aggregate as updates arrive, not
// in rounds (FedBuff, Nguyen et al. 2022): the leader keeps up to
// concurrency workers training, each on the newest model version when it
// was assigned; accepted updates go to a replicated buffer, and every
// buffer_size of them make the next version, each weighted by its
// staleness. Versions are the job's history records, so everything built
// on rounds — verification, the ledger, exports, the dashboard — works on
// versions unchanged.

// Job modes.
const (
	ModeSync  = "sync"
	ModeAsync = "async"
)

// Staleness weightings.
const (
	StalenessPolynomial = "polynomial"
	StalenessConstant   = "constant"
	StalenessHinge      = "hinge"
)

// ErrTooStale refuses an async update trained from a version older than
// the job's max_staleness allows.
var ErrTooStale = errors.New("update is too stale")

// IsAsync reports whether a job runs in async mode.
func IsAsync(spec *pb.JobSpec) bool { return spec.GetMode() == ModeAsync }

// NormalizeAsync fills an async spec's defaults and checks it, including
// that the job's rule can aggregate a buffer of its size.
func NormalizeAsync(spec *pb.JobSpec) error {
	switch spec.Mode {
	case "":
		spec.Mode = ModeSync
	case ModeSync:
	case ModeAsync:
	default:
		return fmt.Errorf("mode %q: want %s or %s", spec.Mode, ModeSync, ModeAsync)
	}
	if spec.Mode == ModeSync {
		if spec.Async != nil {
			return fmt.Errorf("async parameters given for a %s job (set mode %s)", ModeSync, ModeAsync)
		}
		return nil
	}
	if spec.Async == nil {
		spec.Async = &pb.AsyncSpec{}
	}
	a := spec.Async
	if a.BufferSize == 0 {
		a.BufferSize = 10
	}
	if a.Concurrency == 0 {
		a.Concurrency = 2 * a.BufferSize
	}
	if a.MaxPerWorker == 0 {
		a.MaxPerWorker = 1
	}
	if a.FairWindow == 0 {
		a.FairWindow = 1
	}
	if a.MaxStaleness == 0 {
		a.MaxStaleness = 20
	}
	switch a.Staleness {
	case "":
		a.Staleness = StalenessPolynomial
		fallthrough
	case StalenessPolynomial:
		if a.StalenessA == 0 {
			a.StalenessA = 0.5
		}
	case StalenessHinge:
		if a.StalenessA == 0 {
			a.StalenessA = 10
		}
		if a.StalenessB == 0 {
			a.StalenessB = 4
		}
	case StalenessConstant:
	default:
		return &ParamError{"staleness", fmt.Errorf("%q: want %s, %s or %s", a.Staleness, StalenessPolynomial, StalenessConstant, StalenessHinge)}
	}
	if a.StalenessA < 0 || math.IsNaN(a.StalenessA) || math.IsInf(a.StalenessA, 0) {
		return &ParamError{"staleness_a", fmt.Errorf("%v: want a finite value ≥ 0", a.StalenessA)}
	}
	if !(a.DriftCorrection >= 0 && a.DriftCorrection <= 1) {
		return &ParamError{"drift_correction", fmt.Errorf("%v: want 0 (off) to 1", a.DriftCorrection)}
	}
	// A dry run of the rule on a buffer of zero updates: Krum, Bulyan and
	// the like refuse a buffer too small for their f.
	rule, err := aggregation.NewRule(spec.Aggregator, RuleParams(spec.AggregatorParams))
	if err != nil {
		return err
	}
	ups := make([]aggregation.Update, a.BufferSize)
	for i := range ups {
		ups[i] = aggregation.Update{Worker: fmt.Sprint(i), Delta: tensor.MustNew(tensor.Tensor{Name: "x", Shape: []int{1}, Data: []float32{0}}), Samples: 1}
	}
	if _, _, err := rule.Aggregate(ups); err != nil {
		return &ParamError{"buffer_size", fmt.Errorf("%d: %w", a.BufferSize, err)}
	}
	if spec.Lora.GetAggregation() == LoRAExact {
		return fmt.Errorf("async: lora aggregation %q replaces the adapters; async versions add weighted deltas (use %q)", LoRAExact, LoRANaive)
	}
	return nil
}

// ParamError is an async parameter NormalizeAsync refuses, named as the
// AsyncSpec field (and the simulator's key) is: staleness, staleness_a,
// drift_correction, buffer_size.
type ParamError struct {
	Param string
	Err   error
}

func (e *ParamError) Error() string { return "async: " + e.Param + " " + e.Err.Error() }

// Unwrap returns the reason.
func (e *ParamError) Unwrap() error { return e.Err }

// StalenessWeight is s(τ), the weight of an update τ versions stale.
func StalenessWeight(a *pb.AsyncSpec, tau uint32) float64 {
	t := float64(tau)
	switch a.GetStaleness() {
	case StalenessConstant:
		return 1
	case StalenessHinge:
		if tau <= a.StalenessB {
			return 1
		}
		return 1 / (a.StalenessA*(t-float64(a.StalenessB)) + 1)
	}
	return math.Pow(1+t, -a.GetStalenessA())
}

// ConcurrencyAt is how many workers an async job may have training while it
// builds version+1: concurrency, or with concurrency_final a limit that
// moves linearly from concurrency at version 0 to concurrency_final at the
// job's last version (rounded to the nearest worker, at least 1). Many
// workers at once make versions quickly but stale; few make them slowly but
// fresh, which is what the end of a job needs — so a schedule from many to
// few buys speed early without the staleness at the end.
func ConcurrencyAt(j *pb.Job) int {
	a := j.GetSpec().GetAsync()
	c0, cf, last := float64(a.GetConcurrency()), float64(a.GetConcurrencyFinal()), j.GetSpec().GetRounds()
	if cf == 0 || last <= 1 {
		return int(c0)
	}
	f := min(float64(Version(j))/float64(last-1), 1)
	return max(int(math.Round(c0+f*(cf-c0))), 1)
}

// Version is an async job's current model version: its committed records.
func Version(j *pb.Job) uint32 { return uint32(len(j.History)) }

// PlanAssignments is the async leader's scheduling step, a pure function of
// its arguments (tested, and used by the simulator): it withdraws
// assignments past their deadline, already too stale to be accepted, or
// held by a worker no longer live (it left, or gossip lost it: its slot
// goes to someone else now rather than at the deadline, as a sync round
// stops waiting for it), and assigns the newest version to as many free
// workers as the concurrency limit (ConcurrencyAt) allows. A worker is free when it
// matches the job, has no assignment in it, and has fewer than
// max_per_worker updates in the fairness window — the buffer and the last
// fair_window−1 versions — so that fast workers cannot fill versions
// alone. Among free workers: idle
// ones first; then, with fair_by (a worker label such as region; workers
// without it make one group), those of the group with the fewest updates in
// the window; then those with the fewest updates of their own in it; then a
// seeded shuffle. The window never stalls a job: when it would leave no one
// training, only the buffer counts.
func PlanAssignments(j *pb.Job, live []*pb.WorkerInfo, now time.Time) (assign []*pb.Assignment, release []uint64) {
	spec, st := j.GetSpec(), j.GetAsync()
	a := spec.GetAsync()
	version := Version(j)
	isLive := make(map[string]bool, len(live))
	for _, w := range live {
		isLive[w.Id] = true
	}
	for _, as := range st.GetAssignments() {
		if now.UnixNano() >= as.DeadlineUnixNano || version-min(as.Version, version) > a.GetMaxStaleness() || !isLive[as.Worker] {
			release = append(release, as.Task)
		}
	}
	inFlight := len(st.GetAssignments()) - len(release)
	free := ConcurrencyAt(j) - inFlight
	if free <= 0 {
		return nil, release
	}
	assigned := map[string]bool{}
	for _, as := range st.GetAssignments() {
		if !slices.Contains(release, as.Task) {
			assigned[as.Worker] = true
		}
	}
	counts := WindowCounts(j, a.GetFairWindow())
	eligible := func(w *pb.WorkerInfo) bool {
		return Matches(spec.Selector, w.Labels) && Allowed(spec, w.Id) && !assigned[w.Id]
	}
	capped := func(w *pb.WorkerInfo) bool { return counts[w.Id] >= int(max(a.GetMaxPerWorker(), 1)) }
	if inFlight == 0 && a.GetFairWindow() > 1 && !slices.ContainsFunc(live, func(w *pb.WorkerInfo) bool { return eligible(w) && !capped(w) }) {
		counts = WindowCounts(j, 1)
	}
	type cand struct {
		id, group string
		busy      bool
	}
	var cands []cand
	for _, w := range live {
		if eligible(w) && !capped(w) {
			cands = append(cands, cand{w.Id, w.Labels[a.GetFairBy()], Busy(w.Labels)})
		}
	}
	groups := groupCounts(live, counts, a.GetFairBy())
	sort.Slice(cands, func(x, y int) bool { return cands[x].id < cands[y].id })
	r := rand.New(rand.NewPCG(spec.Seed, st.GetNextTask()))
	r.Shuffle(len(cands), func(x, y int) { cands[x], cands[y] = cands[y], cands[x] })
	order := func(x, y int) bool {
		if cands[x].busy != cands[y].busy {
			return !cands[x].busy
		}
		if gx, gy := groups[cands[x].group], groups[cands[y].group]; gx != gy {
			return gx < gy
		}
		return counts[cands[x].id] < counts[cands[y].id]
	}
	deadline := now.Add(time.Duration(spec.RoundTimeoutSeconds * float64(time.Second))).UnixNano()
	next := max(st.GetNextTask(), 1)
	sort.SliceStable(cands, order)
	for range min(free, len(cands)) {
		c := cands[0]
		cands = cands[1:]
		if groups != nil { // its group now counts one more: order again
			groups[c.group]++
			sort.SliceStable(cands, order)
		}
		assign = append(assign, &pb.Assignment{Worker: c.id, Task: next, Version: version, BaseModel: j.CurrentModel, DeadlineUnixNano: deadline})
		next++
	}
	return assign, release
}

// groupCounts sums the window's updates by the workers' value of label (nil
// without one). This plan's assignments are added as it makes them, so that
// it spreads its slots over the groups; tasks in flight are not counted: a
// slow group always has more of them, and counting them would favour the
// fast groups this is meant to balance.
func groupCounts(live []*pb.WorkerInfo, counts map[string]int, label string) map[string]int {
	if label == "" {
		return nil
	}
	groups := map[string]int{}
	for _, w := range live {
		groups[w.Labels[label]] += counts[w.Id]
	}
	return groups
}

// WindowCounts counts each worker's updates in an async job's fairness
// window of the given number of versions: the buffer (the version being
// built) and the updates of the last window−1 committed versions.
func WindowCounts(j *pb.Job, window uint32) map[string]int {
	counts := map[string]int{}
	for _, u := range j.GetAsync().GetBuffer() {
		counts[u.Worker]++
	}
	h := j.GetHistory()
	for _, r := range h[len(h)-min(len(h), int(max(window, 1))-1):] {
		for _, w := range r.Workers {
			counts[w]++
		}
	}
	return counts
}

// Assignment returns the job's open assignment with this task id.
func Assignment(j *pb.Job, task uint64) (*pb.Assignment, bool) {
	for _, a := range j.GetAsync().GetAssignments() {
		if a.Task == task {
			return a, true
		}
	}
	return nil, false
}

// AsyncKey names an async update in an aggregation: one worker may have
// several updates in a buffer.
func AsyncKey(u *pb.AcceptedUpdate) string { return fmt.Sprintf("%s#%d", u.Worker, u.Task) }

// AsyncTaskSeed is the training seed of an async job's task: the job's
// seed with the task number mixed in (the coordinator sends it with the
// task; the simulator derives its virtual workers' seeds from it).
func AsyncTaskSeed(seed, task uint64) uint64 { return seed ^ task<<20 }

// TaskSeed is the training seed of a sync round's attempt.
func TaskSeed(seed uint64, number, attempt uint32) uint64 {
	return seed ^ uint64(number)<<20 ^ uint64(attempt)
}
