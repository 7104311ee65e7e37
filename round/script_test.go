package round

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	pb "github.com/fedtune/fedtune/protocol"
)

// TestScripts runs the scripted scenarios of testdata/*.txt against the
// round core's transitions, as etcd-io/raft's datadriven tests drive its
// RawNode: each command applies one transition (or plans one) and prints
// the outcome and the job's state after it. Rewrite the expected output
// with `go test ./round -run TestScripts -rewrite` and read the diff.
//
//	job name=j [mode=async] rounds=N [clients=N min=N] [buffer=N concurrency=N max-staleness=N max-per-worker=N]
//	start round=N selected=a,b [attempt=N]
//	accept round=N worker=a [task=N samples=N]
//	commit round=N model=M [buffered=N]
//	abort round=N
//	finish status=failed reason=...
//	assign [tasks=1:a:0,2:b:0 (task:worker:version)] [release=1,2]
//	plan live=a,b,c [now=SECONDS]    (async: PlanAssignments, not applied)
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var j Job
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg := func(key, def string) string {
				for _, a := range d.CmdArgs {
					if a.Key == key {
						return strings.Join(a.Vals, ",")
					}
				}
				return def
			}
			num := func(key string, def uint64) uint64 {
				v, err := strconv.ParseUint(arg(key, fmt.Sprint(def)), 10, 64)
				if err != nil {
					d.Fatalf(t, "%s: %v", key, err)
				}
				return v
			}
			list := func(key string) []string {
				if v := arg(key, ""); v != "" {
					return strings.Split(v, ",")
				}
				return nil
			}
			var err error
			switch d.Cmd {
			case "job":
				spec := &pb.JobSpec{Name: arg("name", "j"), BaseModel: "m0", Rounds: uint32(num("rounds", 3)), ClientsPerRound: uint32(num("clients", 2)),
					MinUpdates: uint32(num("min", 2)), RoundTimeoutSeconds: 60, Mode: arg("mode", ModeSync)}
				if spec.Mode == ModeAsync {
					spec.Async = &pb.AsyncSpec{BufferSize: uint32(num("buffer", 2)), Concurrency: uint32(num("concurrency", 2)),
						MaxStaleness: uint32(num("max-staleness", 2)), MaxPerWorker: uint32(num("max-per-worker", 0)), FairWindow: 1}
					if err := NormalizeAsync(spec); err != nil {
						d.Fatalf(t, "%v", err)
					}
				}
				j, err = NewJob(spec, map[string]float64{"test_accuracy": 0.5}, 0)
			case "start":
				err = j.StartRound(&pb.Round{Number: uint32(num("round", 0)), Selected: list("selected"), Attempt: uint32(num("attempt", 0)), BaseModel: j.CurrentModel})
			case "accept":
				err = j.AcceptUpdate(uint32(num("round", 0)), &pb.AcceptedUpdate{Worker: arg("worker", ""), Task: num("task", 0), Samples: num("samples", 10)})
			case "commit":
				err = j.CommitRound(&pb.CommitRound{Job: j.Spec.Name, Round: uint32(num("round", 0)), Model: arg("model", ""), Buffered: uint32(num("buffered", 0))}, 1)
			case "abort":
				err = j.AbortRound(uint32(num("round", 0)))
			case "finish":
				err = j.Finish(pb.JobStatus_JOB_STATUS_FAILED, arg("reason", ""))
			case "assign":
				var as []*pb.Assignment
				for _, s := range list("tasks") {
					f := strings.Split(s, ":")
					task, _ := strconv.ParseUint(f[0], 10, 64)
					v, _ := strconv.ParseUint(f[2], 10, 32)
					as = append(as, &pb.Assignment{Task: task, Worker: f[1], Version: uint32(v), BaseModel: VersionModel(j.Job, uint32(v)), DeadlineUnixNano: t0.Add(time.Minute).UnixNano()})
				}
				var rel []uint64
				for _, s := range list("release") {
					v, _ := strconv.ParseUint(s, 10, 64)
					rel = append(rel, v)
				}
				err = j.AssignTasks(as, rel)
			case "plan":
				var live []*pb.WorkerInfo
				for _, id := range list("live") {
					live = append(live, &pb.WorkerInfo{Id: id})
				}
				assign, release := PlanAssignments(j.Job, live, t0.Add(timeSeconds(num("now", 0))))
				var b strings.Builder
				for _, a := range assign {
					fmt.Fprintf(&b, "assign task %d to %s from v%d\n", a.Task, a.Worker, a.Version)
				}
				for _, r := range release {
					fmt.Fprintf(&b, "release task %d\n", r)
				}
				if b.Len() == 0 {
					return "nothing to do\n"
				}
				return b.String()
			default:
				d.Fatalf(t, "unknown command %q", d.Cmd)
			}
			out := "ok\n"
			if err != nil {
				out = "error: " + err.Error() + "\n"
			}
			return out + dump(j)
		})
	})
}

// dump prints a job's state, one fact per line.
func dump(j Job) string {
	var b strings.Builder
	fmt.Fprintf(&b, "status %s, model %s\n", strings.TrimPrefix(j.Status.String(), "JOB_STATUS_"), j.CurrentModel)
	if j.Error != "" {
		fmt.Fprintf(&b, "error %q\n", j.Error)
	}
	for _, r := range j.History {
		fmt.Fprintf(&b, "history %d: %s from %s (%d samples)\n", r.Number, r.Model, strings.Join(r.Workers, ","), r.Samples)
	}
	if r := j.OpenRound; r != nil {
		var ups []string
		for _, u := range r.Updates {
			ups = append(ups, u.Worker)
		}
		fmt.Fprintf(&b, "open round %d attempt %d: selected %s, updates [%s]\n", r.Number, r.Attempt, strings.Join(r.Selected, ","), strings.Join(ups, ","))
	}
	if a := j.Async; a != nil {
		var as, buf []string
		for _, x := range a.Assignments {
			as = append(as, fmt.Sprintf("%d:%s@v%d", x.Task, x.Worker, x.Version))
		}
		for _, u := range a.Buffer {
			buf = append(buf, fmt.Sprintf("%s#%d@v%d", u.Worker, u.Task, u.BaseVersion))
		}
		slices.Sort(as)
		fmt.Fprintf(&b, "async: next task %d, assignments [%s], buffer [%s]\n", a.NextTask, strings.Join(as, " "), strings.Join(buf, " "))
	}
	return b.String()
}

func timeSeconds(s uint64) time.Duration { return time.Duration(s) * time.Second }
