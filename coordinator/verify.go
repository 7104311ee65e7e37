package coordinator

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

// VerifyRound recomputes a committed round from its base model and accepted
// updates (aggregation is deterministic) and compares the result's hash
// with the model hash the log names.
func (s *adminService) VerifyRound(ctx context.Context, req *pb.VerifyRoundRequest) (*pb.VerifyRoundResponse, error) {
	j, ok := s.c.fsm.Job(req.Job)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "job %q: %v", req.Job, ErrUnknownJob)
	}
	if req.Round == 0 || int(req.Round) > len(j.History) {
		return nil, status.Errorf(codes.NotFound, "job %q has %d committed rounds, no round %d", req.Job, len(j.History), req.Round)
	}
	rec := j.History[req.Round-1]
	for _, u := range rec.Accepted {
		if _, err := s.c.blob(ctx, u.Blob); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "round %d: update of %s is no longer stored (kept for the last rounds only): %v", req.Round, u.Worker, err)
		}
	}
	model, _, _, _, err := s.c.aggregateRound(ctx, j, &pb.Round{Number: rec.Number, BaseModel: round.VersionModel(j, req.Round-1), Updates: rec.Accepted,
		Secagg: rec.Secagg, Attempt: rec.Secagg.GetAttempt()})
	if err != nil {
		return nil, toStatus(fmt.Errorf("recompute round %d: %w", req.Round, err))
	}
	b, err := tensor.Marshal(model, tensor.F32)
	if err != nil {
		return nil, toStatus(err)
	}
	h := HashOf(b)
	return &pb.VerifyRoundResponse{CommittedModel: rec.Model, RecomputedModel: h, Match: h == rec.Model, Updates: uint32(len(rec.Accepted)), Rule: j.Spec.Aggregator}, nil
}
