package coordinator

import (
	"sort"

	"google.golang.org/protobuf/proto"

	pb "github.com/fedtune/fedtune/protocol"
)

// Paging keeps every Admin answer far below gRPC's message limit, however
// many jobs and rounds the state holds.
const (
	// HistoryPageBytes is about the most history JobStatus sends at once.
	HistoryPageBytes = 8 << 20
	// DefaultJobsPage and MaxJobsPage bound ListJobs' pages.
	DefaultJobsPage = 100
	MaxJobsPage     = 1000
)

// HistoryPage cuts the history of j (the caller's copy, as FSM.Job
// returns) to the records that fit in about budget bytes (at least one):
// from round from on, or, with from 0, the newest ones. It returns the
// round number of the first record kept.
func HistoryPage(j *pb.Job, from uint32, budget int) uint32 {
	all := j.History
	if len(all) == 0 {
		return 1
	}
	lo, hi := 0, len(all)
	if from == 0 {
		size := 0
		for lo = len(all); lo > 0; lo-- {
			if size += proto.Size(all[lo-1]); size > budget && lo < len(all) {
				break
			}
		}
	} else {
		lo = min(int(from)-1, len(all))
		size := 0
		for hi = lo; hi < len(all); hi++ {
			if size += proto.Size(all[hi]); size > budget && hi > lo {
				break
			}
		}
	}
	j.History = all[lo:hi]
	return uint32(lo) + 1
}

// JobsPage returns the jobs (copies, sorted or not) after token in name
// order, at most size of them, each made slim (its newest round's record
// only, without updates and scores; no open round or async state), with
// how many rounds each has committed, and the token of the next page (""
// after the last).
func JobsPage(jobs []*pb.Job, token string, size uint32) ([]*pb.Job, []uint32, string) {
	if size == 0 {
		size = DefaultJobsPage
	}
	size = min(size, MaxJobsPage)
	sort.Slice(jobs, func(a, b int) bool { return jobs[a].Spec.GetName() < jobs[b].Spec.GetName() })
	i := sort.Search(len(jobs), func(i int) bool { return jobs[i].Spec.GetName() > token })
	var out []*pb.Job
	var done []uint32
	for ; i < len(jobs) && len(out) < int(size); i++ {
		j := jobs[i]
		done = append(done, uint32(len(j.History)))
		if n := len(j.History); n > 0 {
			last := j.History[n-1]
			last.Accepted, last.Scores = nil, nil
			j.History = j.History[n-1:]
		}
		j.OpenRound, j.Async = nil, nil
		out = append(out, j)
	}
	next := ""
	if i < len(jobs) && len(out) > 0 {
		next = out[len(out)-1].Spec.GetName()
	}
	return out, done, next
}
