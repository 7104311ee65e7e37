package round

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	pb "github.com/fedtune/fedtune/protocol"
)

// Kinds of task failure a worker reports.
var FailureKinds = []string{"trainer", "timeout", "data", "malformed", "other"}

// MaxFailureReason bounds a failure's reason in the state.
const MaxFailureReason = 512

// NormalizeFailure checks a worker's failure report and trims its reason
// to MaxFailureReason bytes of valid UTF-8.
func NormalizeFailure(f *pb.TaskFailure) error {
	if f.GetWorker() == "" {
		return fmt.Errorf("failure report: no worker")
	}
	if !slices.Contains(FailureKinds, f.Kind) {
		return fmt.Errorf("failure report: kind %q: want one of %s", f.Kind, strings.Join(FailureKinds, ", "))
	}
	r := strings.ToValidUTF8(f.Reason, "?")
	for len(r) > MaxFailureReason {
		_, size := utf8.DecodeLastRuneInString(r)
		r = r[:len(r)-size]
	}
	f.Reason = r
	return nil
}

// RecordFailure adds a selected worker's failure to open round n (that
// attempt). A worker that reported an update, or a failure, in it already
// is refused (ErrDuplicate). The round goes on without it: it commits when
// the others have reported, or is planned again at its deadline.
func (j Job) RecordFailure(n, attempt uint32, f *pb.TaskFailure) error {
	r, err := j.Open(n)
	if err != nil {
		return err
	}
	if r.Attempt != attempt {
		return fmt.Errorf("failure of %s in round %d attempt %d, open attempt is %d: %w", f.GetWorker(), n, attempt, r.Attempt, ErrStaleRound)
	}
	if err := NormalizeFailure(f); err != nil {
		return err
	}
	if _, ok := slices.BinarySearch(r.Selected, f.Worker); !ok {
		return fmt.Errorf("failure of %s in round %d: %w", f.Worker, n, ErrNotSelected)
	}
	if slices.ContainsFunc(r.Updates, func(u *pb.AcceptedUpdate) bool { return u.Worker == f.Worker }) {
		return fmt.Errorf("failure of %s in round %d after its update: %w", f.Worker, n, ErrDuplicate)
	}
	i, found := slices.BinarySearchFunc(r.Failures, f.Worker, func(e *pb.TaskFailure, w string) int { return strings.Compare(e.Worker, w) })
	if found {
		return fmt.Errorf("failure of %s in round %d: %w", f.Worker, n, ErrDuplicate)
	}
	r.Failures = slices.Insert(r.Failures, i, f)
	return nil
}
