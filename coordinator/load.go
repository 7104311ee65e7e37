package coordinator

import (
	"slices"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"google.golang.org/protobuf/proto"
)

// load is which workers are training for which running job (an open
// round's selected workers yet to report, an async job's assignments),
// read once per tick and kept current as the tick starts rounds and
// assigns tasks.
type load map[string]map[string]bool // worker -> jobs

func newLoad(jobs []*pb.Job) load {
	l := load{}
	for _, j := range jobs {
		for _, a := range j.Async.GetAssignments() {
			l.add(a.Worker, j.Spec.Name)
		}
		if r := j.OpenRound; r != nil {
			for _, id := range r.Selected {
				if !slices.ContainsFunc(r.Updates, func(u *pb.AcceptedUpdate) bool { return u.Worker == id }) {
					l.add(id, j.Spec.Name)
				}
			}
		}
	}
	return l
}

func (l load) add(worker, job string) {
	if l[worker] == nil {
		l[worker] = map[string]bool{}
	}
	l[worker][job] = true
}

// set replaces the workers training for job.
func (l load) set(job string, workers []string) {
	for _, jobs := range l {
		delete(jobs, job)
	}
	for _, w := range workers {
		l.add(w, job)
	}
}

// elsewhere reports whether worker trains for a job other than job.
func (l load) elsewhere(worker, job string) bool {
	jobs := l[worker]
	return len(jobs) > 1 || len(jobs) == 1 && !jobs[job]
}

// withLoad returns the live workers with idle=false on those still
// training for another job, so that planning prefers workers with nothing
// to do.
func (s *scheduler) withLoad(job string, alive map[string]*pb.WorkerInfo) []*pb.WorkerInfo {
	live := make([]*pb.WorkerInfo, 0, len(alive))
	for id, w := range alive {
		if s.load.elsewhere(id, job) && !round.Busy(w.Labels) {
			w = proto.Clone(w).(*pb.WorkerInfo)
			if w.Labels == nil {
				w.Labels = map[string]string{}
			}
			w.Labels["idle"] = "false"
		}
		live = append(live, w)
	}
	return live
}
