package round

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"time"

	pb "github.com/fedtune/fedtune/protocol"
)

// ErrNotEnoughWorkers means fewer live workers match a job than its round
// needs; the scheduler waits for more.
var ErrNotEnoughWorkers = errors.New("not enough live workers match the job")

// Matches reports whether labels satisfy every key=value of selector.
func Matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// Allowed reports whether a job's allow-list (if any) names worker.
func Allowed(spec *pb.JobSpec, worker string) bool {
	if len(spec.GetAllow()) == 0 {
		return true
	}
	for _, a := range spec.GetAllow() {
		if a == worker {
			return true
		}
	}
	return false
}

// Busy reports whether a worker's labels say it has no idle capacity
// (idle=false: its GPU is in use, or it is training for another job).
func Busy(labels map[string]string) bool { return labels["idle"] == "false" }

// PlanRound chooses job's next round: which workers (a seeded sample of the
// live workers matching the job's selector, over-selected by spec.OverSelect,
// idle workers first: busy ones only when too few are idle) and when it ends. It is a pure function of its arguments, so a round's
// plan can be tested, and recomputed, without a cluster.
func PlanRound(job *pb.Job, live []*pb.WorkerInfo, now time.Time, attempt uint32) (*pb.Round, error) {
	spec := job.GetSpec()
	var ids []string
	busy := map[string]bool{}
	for _, w := range live {
		if Matches(spec.Selector, w.Labels) && Allowed(spec, w.Id) {
			ids = append(ids, w.Id)
			busy[w.Id] = Busy(w.Labels)
		}
	}
	sort.Strings(ids)
	need := max(int(spec.MinUpdates), 1)
	if len(ids) < need {
		return nil, fmt.Errorf("job %q: %d live workers match %v, round needs %d: %w", spec.Name, len(ids), spec.Selector, need, ErrNotEnoughWorkers)
	}
	number := uint32(len(job.History)) + 1
	r := rand.New(rand.NewPCG(spec.Seed, uint64(number)<<32|uint64(attempt)))
	r.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	sort.SliceStable(ids, func(i, j int) bool { return !busy[ids[i]] && busy[ids[j]] })
	k := int(math.Ceil(float64(max(spec.ClientsPerRound, 1)) * (1 + spec.OverSelect)))
	selected := ids[:min(k, len(ids))]
	sort.Strings(selected)
	timeout := time.Duration(spec.RoundTimeoutSeconds * float64(time.Second))
	round := &pb.Round{
		Number:           number,
		BaseModel:        job.CurrentModel,
		Selected:         selected,
		StartedUnixNano:  now.UnixNano(),
		DeadlineUnixNano: now.Add(timeout).UnixNano(),
		Attempt:          attempt,
		Eligible:         uint32(len(ids)),
	}
	startSecAgg(spec, round)
	return round, nil
}

// RoundDecision is what the scheduler does with an open round.
type RoundDecision int

// Decisions for an open round.
const (
	Wait   RoundDecision = iota // keep collecting updates
	Commit                      // aggregate what arrived
	Abort                       // too few updates by the deadline: start over
)

// DecideRound tells whether an open round is complete. It commits as soon
// as every selected worker that is still alive has reported an update or a
// failure (and at least min_updates updates came), or at the deadline with
// at least min_updates; it aborts at the deadline with fewer (also when
// failures already left too few: waiting for the deadline bounds how often
// a job whose training fails everywhere is planned again).
func DecideRound(spec *pb.JobSpec, r *pb.Round, alive map[string]bool, now time.Time) RoundDecision {
	got := len(r.Updates)
	need := max(int(spec.GetMinUpdates()), 1)
	reported := make(map[string]bool, got)
	for _, u := range r.Updates {
		reported[u.Worker] = true
	}
	for _, f := range r.Failures {
		reported[f.Worker] = true
	}
	waiting := 0
	for _, w := range r.Selected {
		if !reported[w] && alive[w] {
			waiting++
		}
	}
	switch {
	case got >= need && (waiting == 0 || got >= int(spec.GetClientsPerRound())):
		return Commit
	case now.UnixNano() < r.DeadlineUnixNano:
		return Wait
	case got >= need:
		return Commit
	}
	return Abort
}
