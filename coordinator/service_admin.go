package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/internal/blobstream"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

type blobService struct {
	rpcpb.UnimplementedBlobServer
	c *Coordinator
}

// Get streams a blob in chunks; the first carries its hash and size.
func (s *blobService) Get(req *pb.GetBlobRequest, stream rpcpb.Blob_GetServer) error {
	if id := callerIdentity(stream.Context()); id.Role == pki.RoleWorker && !s.c.workerMayFetch(id.Name, req.Hash) {
		s.c.metrics.authRefused.WithLabelValues("blob").Inc()
		return status.Errorf(codes.PermissionDenied, "worker %q may fetch only the base model of a round it is selected in", id.Name)
	}
	get := s.c.blob
	if req.LocalOnly {
		get = func(_ context.Context, h string) ([]byte, error) { return s.c.blobs.Get(h) }
	}
	b, err := get(stream.Context(), req.Hash)
	if err != nil {
		return toStatus(err)
	}
	to := callerIdentity(stream.Context()).Role
	if to == "" {
		to = "unauthenticated" // insecure mode
	}
	s.c.metrics.blobSent.WithLabelValues(to).Add(float64(len(b)))
	return blobstream.Send(stream, req.Hash, b)
}

// Put receives a blob; the first chunk must carry the hash and size, and
// the bytes must match both.
func (s *blobService) Put(stream rpcpb.Blob_PutServer) error {
	b, hash, err := blobstream.Recv(stream, "", s.c.cfg.MaxBlobBytes)
	switch {
	case errors.Is(err, blobstream.ErrTooLarge):
		return status.Errorf(codes.ResourceExhausted, "put blob: %v", err)
	case err != nil:
		return status.Errorf(codes.InvalidArgument, "put blob: %v", err)
	}
	if err := s.c.blobs.PutVerified(hash, b); err != nil {
		return toStatus(err)
	}
	return stream.SendAndClose(&pb.PutBlobResponse{Hash: hash, Size: uint64(len(b))})
}

// MaxTokenizerBytes bounds a text job's tokenizer.json (Llama 3's, with
// 128k tokens, is 9 MB).
const MaxTokenizerBytes = 64 << 20

type adminService struct {
	rpcpb.UnimplementedAdminServer
	c *Coordinator
}

// SubmitJob validates a job, checks its base model (uploaded beforehand
// with Blob.Put) fits the named architecture, evaluates it, and registers
// the job.
func (s *adminService) SubmitJob(ctx context.Context, req *pb.SubmitJobRequest) (*pb.SubmitJobResponse, error) {
	c := s.c
	if !c.IsLeader() {
		return nil, c.notLeader()
	}
	spec := req.Spec
	var checkDataset func(string) error
	if c.deps.Evaluator != nil {
		checkDataset = c.deps.Evaluator.CheckDataset
	}
	if err := round.NormalizeSpec(spec, c.deps.Models, checkDataset); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "submit job: %v", err)
	}
	if _, ok := c.fsm.Job(spec.Name); ok {
		return nil, status.Errorf(codes.AlreadyExists, "submit job: job %q already exists", spec.Name)
	}
	b, err := c.blob(ctx, spec.BaseModel)
	if err != nil {
		return nil, toStatus(fmt.Errorf("submit job: base model: %w (upload it with Blob.Put first)", err))
	}
	base, err := tensor.Unmarshal(b)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "submit job: base model: %v", err)
	}
	layout, err := c.deps.Models.Layout(spec.Model, spec.ModelConfig)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "submit job: %v", err)
	}
	if err := tensor.SameLayout(base, layout); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "submit job: base model does not fit %s: %v", spec.Model, err)
	}
	if err := base.CheckFinite(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "submit job: base model: %v", err)
	}
	if spec.Evaluate && c.deps.Evaluator == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "submit job: %v", errNoEvaluator)
	}
	first := base // the job's first model version: the base, or a LoRA job's adapters
	if spec.Lora != nil {
		if first, err = c.prepareAdapter(ctx, spec); err != nil {
			return nil, toStatus(fmt.Errorf("submit job: %w", err))
		}
	}
	metrics := map[string]float64{}
	if spec.Evaluate {
		ev, err := c.evaluate(ctx, spec, first)
		if err != nil {
			return nil, toStatus(err)
		}
		metrics["test_accuracy"], metrics["test_loss"] = ev.Accuracy, ev.Loss
	}
	if _, err := c.replicate(ctx, b); err != nil {
		return nil, status.Errorf(codes.Unavailable, "submit job: base model: %v", err)
	}
	if h := spec.Tokenizer; h != "" {
		tb, err := c.blob(ctx, h)
		if err != nil {
			return nil, toStatus(fmt.Errorf("submit job: tokenizer: %w (upload it with Blob.Put first)", err))
		}
		if len(tb) > MaxTokenizerBytes {
			return nil, status.Errorf(codes.InvalidArgument, "submit job: tokenizer of %d bytes exceeds %d", len(tb), MaxTokenizerBytes)
		}
		if _, err := c.replicate(ctx, tb); err != nil {
			return nil, status.Errorf(codes.Unavailable, "submit job: tokenizer: %v", err)
		}
	}
	if err := c.apply(pb.CommandType_COMMAND_TYPE_REGISTER_JOB, &pb.RegisterJob{Spec: spec, BaseMetrics: metrics}); err != nil {
		return nil, toStatus(err)
	}
	j, _ := c.fsm.Job(spec.Name)
	c.log.Info("job submitted", "job", spec.Name, "model", spec.Model, "rounds", spec.Rounds, "base_accuracy", metrics["test_accuracy"])
	return &pb.SubmitJobResponse{Job: j}, nil
}

// JobStatus returns a job from this node's replica.
func (s *adminService) JobStatus(ctx context.Context, req *pb.JobStatusRequest) (*pb.JobStatusResponse, error) {
	j, ok := s.c.fsm.Job(req.Name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "job %q: %v", req.Name, ErrUnknownJob)
	}
	total := uint32(len(j.History))
	from := HistoryPage(j, req.FromRound, HistoryPageBytes)
	return &pb.JobStatusResponse{Job: j, LeaderAddr: s.c.leaderGRPC(), HistoryFrom: from, HistoryTotal: total, Conditions: conditions(j, s.c.liveWorkers(), s.c.clock.Now())}, nil
}

// ListJobs returns a page of jobs, slim (see JobsPage).
func (s *adminService) ListJobs(ctx context.Context, req *pb.ListJobsRequest) (*pb.ListJobsResponse, error) {
	jobs, done, next := JobsPage(s.c.fsm.Jobs(), req.PageToken, req.PageSize)
	return &pb.ListJobsResponse{Jobs: jobs, RoundsDone: done, NextPageToken: next}, nil
}

// ListWorkers returns the roster and which workers gossip sees alive.
func (s *adminService) ListWorkers(ctx context.Context, _ *pb.ListWorkersRequest) (*pb.ListWorkersResponse, error) {
	resp := &pb.ListWorkersResponse{Workers: s.c.fsm.Workers()}
	for _, m := range s.c.gossip.WithRole(gossip.RoleWorker) {
		resp.Alive = append(resp.Alive, m.Name)
	}
	return resp, nil
}

// ExportModel streams a job's newest model, or that of a given round, as
// safetensors with the job and round in its metadata.
func (s *adminService) ExportModel(req *pb.ExportModelRequest, stream rpcpb.Admin_ExportModelServer) error {
	j, ok := s.c.fsm.Job(req.Job)
	if !ok {
		return status.Errorf(codes.NotFound, "job %q: %v", req.Job, ErrUnknownJob)
	}
	hash, round := j.CurrentModel, uint32(len(j.History))
	if req.Round > 0 {
		if int(req.Round) > len(j.History) {
			return status.Errorf(codes.NotFound, "job %q has %d committed rounds, no round %d", req.Job, len(j.History), req.Round)
		}
		hash, round = j.History[req.Round-1].Model, req.Round
	}
	b, err := s.c.blob(stream.Context(), hash)
	if err != nil {
		return toStatus(err)
	}
	set, err := tensor.Unmarshal(b)
	if err != nil {
		return toStatus(err)
	}
	meta := map[string]string{"format": "pt", "fedtune.job": req.Job, "fedtune.round": fmt.Sprint(round), "fedtune.model": j.Spec.Model, "fedtune.sha256": hash}
	if l := j.Spec.Lora; l != nil {
		if req.Merged {
			if set, err = s.c.usable(stream.Context(), j.Spec, set); err != nil {
				return toStatus(err)
			}
			meta["fedtune.lora_merged"] = "true"
		}
		meta["fedtune.base_sha256"] = j.Spec.BaseModel
		meta["fedtune.lora_rank"], meta["fedtune.lora_alpha"] = fmt.Sprint(l.Rank), fmt.Sprint(l.Alpha)
	} else if req.Merged {
		return status.Errorf(codes.InvalidArgument, "job %q is not a LoRA job: its model is already whole (drop --merged)", req.Job)
	}
	set.Metadata = meta
	out, err := tensor.Marshal(set, tensor.F32)
	if err != nil {
		return toStatus(err)
	}
	return blobstream.Send(stream, HashOf(out), out)
}

// ControlJob pauses, resumes, cancels or deletes a job, through the log,
// so that every coordinator and any later leader agree on it.
func (s *adminService) ControlJob(ctx context.Context, req *pb.ControlJobRequest) (*pb.ControlJobResponse, error) {
	c := s.c
	switch req.Action {
	case round.ActionPause, round.ActionResume, round.ActionCancel, round.ActionDelete:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "job %s: action %q: want pause, resume, cancel or delete", req.Name, req.Action)
	}
	if len(req.Reason) > round.MaxNote {
		return nil, status.Errorf(codes.InvalidArgument, "job %s: reason of %d bytes (at most %d)", req.Name, len(req.Reason), round.MaxNote)
	}
	if !c.IsLeader() {
		return nil, c.notLeader()
	}
	if _, ok := c.fsm.Job(req.Name); !ok {
		return nil, status.Errorf(codes.NotFound, "job %q: %v", req.Name, ErrUnknownJob)
	}
	err := c.apply(pb.CommandType_COMMAND_TYPE_CONTROL_JOB, &pb.ControlJob{Job: req.Name, Action: req.Action, Reason: req.Reason, Force: req.Force})
	switch {
	case errors.Is(err, round.ErrJobActive):
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	case err != nil:
		return nil, toStatus(err)
	}
	c.log.Info("job "+req.Action, "job", req.Name, "reason", req.Reason, "force", req.Force, "by", callerIdentity(ctx).Name)
	j, _ := c.fsm.Job(req.Name)
	return &pb.ControlJobResponse{Job: j}, nil
}

// RevokeWorker bars a worker cluster-wide, through the log.
func (s *adminService) RevokeWorker(ctx context.Context, req *pb.RevokeWorkerRequest) (*pb.RevokeWorkerResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "revoke worker: name is empty")
	}
	if !s.c.IsLeader() {
		return &pb.RevokeWorkerResponse{LeaderAddr: s.c.leaderGRPC()}, s.c.notLeader()
	}
	if err := s.c.apply(pb.CommandType_COMMAND_TYPE_REVOKE_WORKER, &pb.RevokeWorker{Name: req.Name, Reason: req.Reason}); err != nil {
		return nil, toStatus(err)
	}
	s.c.log.Warn("worker revoked", "worker", req.Name, "reason", req.Reason, "by", callerIdentity(ctx).Name)
	return &pb.RevokeWorkerResponse{}, nil
}

// Keyring changes the cluster's gossip keyring through the log; every
// coordinator applies it to its gossip node and workers get it with their
// next poll.
func (s *adminService) Keyring(ctx context.Context, req *pb.KeyringRequest) (*pb.KeyringResponse, error) {
	if req.Change == nil {
		// A listing: the keys this node's gossip uses, primary first.
		return &pb.KeyringResponse{Keys: s.c.gossip.Keys()}, nil
	}
	if !s.c.IsLeader() {
		return nil, s.c.notLeader()
	}
	change := &pb.Keyring{Op: req.Change.Op, Key: req.Change.Key, Current: s.c.gossip.Keys()}
	if err := s.c.apply(pb.CommandType_COMMAND_TYPE_KEYRING, change); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	s.c.log.Info("gossip keyring changed", "op", req.Change.Op, "by", callerIdentity(ctx).Name)
	return &pb.KeyringResponse{Keys: s.c.fsm.Keyring()}, nil
}

// TransferLeadership hands this node's leadership to another voter and
// answers with who leads then.
func (s *adminService) TransferLeadership(ctx context.Context, req *pb.TransferLeadershipRequest) (*pb.TransferLeadershipResponse, error) {
	if !s.c.IsLeader() {
		return nil, s.c.notLeader()
	}
	if err := s.c.TransferLeadership(req.To); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	var id raft.ServerID
	for id == "" || string(id) == s.c.cfg.NodeID {
		select {
		case <-ctx.Done():
			return nil, status.Errorf(codes.DeadlineExceeded, "leadership handed over, but no new leader seen yet: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		_, id = s.c.raft.LeaderWithID()
	}
	s.c.log.Info("leadership transferred", "to", string(id), "by", callerIdentity(ctx).Name)
	return &pb.TransferLeadershipResponse{LeaderId: string(id), LeaderGrpc: s.c.leaderGRPC()}, nil
}

// ClusterStatus describes this node's view of the cluster: Raft state,
// indexes and configuration, and gossip members.
func (s *adminService) ClusterStatus(ctx context.Context, _ *pb.ClusterStatusRequest) (*pb.ClusterStatusResponse, error) {
	return s.c.Status(), nil
}
