package main

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/progress"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// coordinators is the set of coordinators a following command knows and
// moves between when the one it asks goes away: the one it was given, and
// the Raft servers that one reported.
type coordinators struct {
	pool  *client.Pool
	addrs []string
	cur   int
}

// newCoordinators starts from conn's coordinator and, to follow a job
// through failures, learns the others from it.
func newCoordinators(ctx context.Context, pool *client.Pool, conn *grpc.ClientConn, follow bool) *coordinators {
	cs := &coordinators{pool: pool, addrs: []string{conn.Target()}}
	if follow {
		cs.learn(ctx, conn)
	}
	return cs
}

// learn adds the coordinators conn's node knows of.
func (cs *coordinators) learn(ctx context.Context, conn grpc.ClientConnInterface) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := rpcpb.NewAdminClient(conn).ClusterStatus(ctx, &pb.ClusterStatusRequest{})
	if err != nil {
		return
	}
	for _, s := range st.Servers {
		if s.GrpcAddr != "" && !slices.Contains(cs.addrs, s.GrpcAddr) {
			cs.addrs = append(cs.addrs, s.GrpcAddr)
		}
	}
}

// jobStatus asks the current coordinator, and on a failure that is not
// the job's (the node is down, restarting, unreachable) each other one in
// turn; it returns the last error if none answered.
func (cs *coordinators) jobStatus(ctx context.Context, req *pb.JobStatusRequest) (*pb.JobStatusResponse, error) {
	var err error
	for range cs.addrs {
		var conn *grpc.ClientConn
		if conn, err = cs.pool.Conn(cs.addrs[cs.cur]); err == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			var resp *pb.JobStatusResponse
			resp, err = rpcpb.NewAdminClient(conn).JobStatus(cctx, req)
			cancel()
			if err == nil {
				return resp, nil
			}
			if c := status.Code(err); c == codes.NotFound || c == codes.InvalidArgument || c == codes.PermissionDenied || c == codes.Unauthenticated || ctx.Err() != nil {
				return nil, err
			}
		}
		cs.cur = (cs.cur + 1) % len(cs.addrs)
	}
	return nil, err
}

func (cs *coordinators) current() string { return cs.addrs[cs.cur] }

// watchJob prints a job's committed rounds, and with follow, keeps
// printing them, with the open round's progress, until the job ends. While
// following it survives its coordinator going away — it moves to another
// it knows of and says so — and says when the coordinator answering has no
// leader (its copy of the job may be behind).
// deadlineIn matches the countdown in a job's conditions.
var deadlineIn = regexp.MustCompile(`deadline in [0-9hms.]+`)

func watchJob(c *cli.Context, pool *client.Pool, conn *grpc.ClientConn, name string, follow bool) error {
	cs := newCoordinators(c.Context, pool, conn, follow)
	out := c.App.Writer
	tty := isTerminal(out)
	printed := 0
	var last *pb.RoundRecord
	header := false
	lost, leaderless := "", false
	conds := "" // the conditions last printed (follow mode prints a change once)
	for {
		resp, err := cs.jobStatus(c.Context, &pb.JobStatusRequest{Name: name, FromRound: uint32(printed) + 1})
		if err != nil {
			if !follow || !header || c.Context.Err() != nil || status.Code(err) == codes.NotFound {
				return err
			}
			if lost == "" {
				if tty {
					fmt.Fprint(out, "\r\033[K")
				}
				lost = fmt.Sprint(status.Convert(err).Message())
				fmt.Fprintf(out, "no coordinator answers (%s: %s); trying %s until one does\n", cs.current(), lost, strings.Join(cs.addrs, ", "))
			}
			select {
			case <-c.Context.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		if lost != "" {
			fmt.Fprintf(out, "following job %s on %s again\n", name, cs.current())
			lost = ""
		}
		if resp.LeaderAddr == "" && !leaderless {
			fmt.Fprintf(out, "the cluster has no leader (as %s sees it): no round can commit until a majority of coordinators is back; this copy of the job may be behind\n", cs.current())
		}
		if leaderless && resp.LeaderAddr != "" {
			fmt.Fprintf(out, "the cluster has a leader again (%s)\n", resp.LeaderAddr)
		}
		leaderless = resp.LeaderAddr == ""
		j := resp.Job
		if !header {
			fmt.Fprintf(out, "job %s: %s, model %s, %d rounds of %d workers", j.Spec.Name, progress.Status(j), j.Spec.Model, j.Spec.Rounds, j.Spec.ClientsPerRound)
			if l := j.Spec.GetLora(); l != nil {
				fmt.Fprintf(out, ", LoRA rank %d alpha %g (%s)", l.Rank, l.Alpha, l.Aggregation)
			}
			if acc, ok := j.BaseMetrics["test_accuracy"]; ok {
				fmt.Fprintf(out, ", base test accuracy %.2f%%", 100*acc)
			}
			fmt.Fprintln(out)
			fmt.Fprintln(out, progress.RoundHeader)
			header = true
		}
		if tty && follow {
			fmt.Fprint(out, "\r\033[K")
		}
		for _, rec := range j.History {
			fmt.Fprintln(out, progress.RoundLine(j, rec))
			printed++
			last = rec
		}
		if uint32(printed) < resp.HistoryTotal {
			continue // the next page of rounds
		}
		if len(j.History) == 0 && last != nil {
			j.History = []*pb.RoundRecord{last} // the open round's line reads the newest round
		}
		if j.Status != pb.JobStatus_JOB_STATUS_RUNNING || !follow {
			if j.OpenRound != nil && !follow {
				fmt.Fprintln(out, progress.OpenRoundLine(j, time.Now()))
			}
			if !follow {
				for _, cond := range resp.Conditions {
					fmt.Fprintln(out, "!", cond)
				}
			}
			if j.Error != "" {
				fmt.Fprintln(out, "error:", j.Error)
			}
			if j.Note != "" {
				fmt.Fprintf(out, "%s: %s\n", progress.Status(j), j.Note)
			}
			if line := progress.FedEvalLine(j, last); line != "" {
				fmt.Fprintln(out, line)
			}
			if follow {
				fmt.Fprintf(out, "job %s %s\n", name, progress.Status(j))
			}
			return nil
		}
		// printed again when they change, not as their deadlines count down
		if now := deadlineIn.ReplaceAllString(strings.Join(resp.Conditions, "\n"), ""); now != conds {
			conds = now
			if tty {
				fmt.Fprint(out, "\r\033[K")
			}
			for _, cond := range resp.Conditions {
				fmt.Fprintln(out, "!", cond)
			}
		}
		if tty {
			fmt.Fprint(out, progress.OpenRoundLine(j, time.Now()))
		}
		select {
		case <-c.Context.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}
