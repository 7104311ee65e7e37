package worker

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// evaluate runs a federated evaluation task: score the task's model on the
// held-out data and report to the leader. A trainer that cannot evaluate,
// or an evaluation that fails, marks the task done (it is not offered
// again) and logs why.
func (w *Worker) evaluate(ctx context.Context, in Input, t *pb.Task) error {
	log := w.log.With("job", t.Job, "round", t.Round)
	key := pb.EvalKey(t.Job, t.Round)
	ev, ok := w.trainer.(Evaluator)
	if !ok {
		log.Warn("federated evaluation asked, but this worker's trainer cannot evaluate; skipping")
		w.markDone(key)
		return nil
	}
	start := time.Now()
	res, err := ev.Evaluate(in, t)
	if err != nil {
		log.Error("federated evaluation failed; skipping", "err", err)
		w.metrics.tasks.WithLabelValues("eval_failed").Inc()
		w.markDone(key)
		return nil
	}
	conn, err := w.pool.Conn(w.target)
	if err != nil {
		return err
	}
	cctx, cancel := w.callCtx(ctx, time.Minute)
	defer cancel()
	resp, err := rpcpb.NewWorkerClient(conn).SubmitEval(cctx, &pb.SubmitEvalRequest{WorkerId: w.cfg.ID, Job: t.Job, Round: t.Round,
		LossSum: res.LossSum, Count: res.Count, Correct: res.Correct})
	switch status.Code(err) {
	case codes.OK:
	case codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition, codes.NotFound:
		log.Error("evaluation refused; not sending it again", "err", err)
		w.markDone(key)
		return nil
	default:
		return fmt.Errorf("evaluation of %s/%d to %s: %w", t.Job, t.Round, w.target, callErr(cctx, err))
	}
	if resp.NotLeader {
		return w.follow(resp.LeaderAddr) // the task is offered again by the leader
	}
	w.metrics.tasks.WithLabelValues("evaluated").Inc()
	w.markDone(key)
	log.Info("evaluated", "count", res.Count, "mean_loss", res.LossSum/float64(res.Count), "seconds", time.Since(start).Seconds(), "duplicate", resp.Duplicate)
	return nil
}
