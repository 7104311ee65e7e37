package worker

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// failureKind sorts a training error for the coordinator's record and
// metrics: timeout, data (none held for the data set), malformed (output
// that is not a usable update), trainer (it failed or diverged), other.
func failureKind(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrNoData):
		return "data"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrExternal), errors.Is(err, model.ErrDiverged):
		return "trainer"
	}
	return "other"
}

// reportFailure tells the leader that task t failed, once and best effort:
// the round goes on without this worker either way, and the report only
// makes the failure visible where operators look (job status, dashboard,
// metrics).
func (w *Worker) reportFailure(ctx context.Context, t *pb.Task, err error) {
	reason := err.Error()
	if i := strings.IndexByte(reason, '\n'); i >= 0 {
		reason = reason[:i] // an external trainer's output follows its first line
	}
	conn, cerr := w.pool.Conn(w.target)
	if cerr != nil {
		return
	}
	cctx, cancel := w.callCtx(ctx, 10*time.Second)
	defer cancel()
	req := &pb.ReportFailureRequest{WorkerId: w.cfg.ID, Job: t.Job, Round: t.Round, Attempt: t.Attempt, Kind: failureKind(err), Reason: reason}
	resp, rerr := rpcpb.NewWorkerClient(conn).ReportFailure(cctx, req)
	if rerr == nil && resp.NotLeader && resp.LeaderAddr != "" {
		if conn, cerr = w.pool.Conn(resp.LeaderAddr); cerr == nil {
			_, rerr = rpcpb.NewWorkerClient(conn).ReportFailure(cctx, req)
		}
	}
	if rerr != nil {
		w.log.Warn("failure not reported to the coordinator", "job", t.Job, "round", t.Round, "err", rerr)
	}
}
