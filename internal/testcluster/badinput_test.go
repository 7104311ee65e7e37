package testcluster

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/worker"
)

// TestBadInputChangesNothing submits hostile jobs and updates to a real
// coordinator and checks each gets a clear error and leaves the replicated
// state as it was.
func TestBadInputChangesNothing(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{SubmitBurst: 1000} /* validation, not rate limits (TestSubmitRateLimit) */)
	handWorkers(t, c, "w1")
	conn, admin, wk, ctx, base, hash := handSession(t, c)
	good := func() *pb.JobSpec {
		return &pb.JobSpec{Name: "j", Model: "mnist-mlp-small", Dataset: "mnist", BaseModel: hash, Rounds: 2, ClientsPerRound: 1, RoundTimeoutSeconds: 60, MaxUpdateNorm: 10}
	}

	// Bad jobs.
	badJobs := []struct {
		name string
		edit func(*pb.JobSpec)
		want string
	}{
		{"unknown model", func(s *pb.JobSpec) { s.Model = "gpt-17" }, "unknown model"},
		{"unknown dataset", func(s *pb.JobSpec) { s.Dataset = "imagenet" }, "unknown dataset"},
		{"base not uploaded", func(s *pb.JobSpec) { s.BaseModel = strings.Repeat("ab", 32) }, "blob not found"},
		{"base of another model", func(s *pb.JobSpec) { s.Model = "mnist-mlp" }, "does not fit"},
		{"zero rounds", func(s *pb.JobSpec) { s.Rounds = 0 }, "rounds"},
		{"negative norm bound", func(s *pb.JobSpec) { s.MaxUpdateNorm = -1 }, "max_update_norm"},
		{"unknown rule", func(s *pb.JobSpec) { s.Aggregator = "mean-ish" }, "unknown rule"},
		{"impossible codec", func(s *pb.JobSpec) { s.Codec = "topk=3+int8" }, "top-k fraction"},
		{"unknown server optimizer", func(s *pb.JobSpec) { s.ServerOptimizer = &pb.ServerOptimizer{Name: "sgdx"} }, "server optimizer"},
		{"bad name", func(s *pb.JobSpec) { s.Name = "../etc" }, "job name"},
		{"infinite learning rate", func(s *pb.JobSpec) { s.Train = &pb.TrainConfig{LearningRate: math.Inf(1)} }, "train.learning_rate"},
		{"NaN momentum", func(s *pb.JobSpec) { s.Train = &pb.TrainConfig{Momentum: math.NaN()} }, "train.momentum"},
		{"absurd batch", func(s *pb.JobSpec) { s.Train = &pb.TrainConfig{BatchSize: 1e9} }, "train.batch_size"},
		{"absurd rounds", func(s *pb.JobSpec) { s.Rounds = math.MaxUint32 }, "rounds"},
		{"absurd clients", func(s *pb.JobSpec) { s.ClientsPerRound = 100000 }, "clients_per_round"},
		{"negative timeout", func(s *pb.JobSpec) { s.RoundTimeoutSeconds = -1 }, "round_timeout_seconds"},
		{"NaN norm bound", func(s *pb.JobSpec) { s.MaxUpdateNorm = math.NaN() }, "max_update_norm"},
	}
	for _, bj := range badJobs {
		s := good()
		bj.edit(s)
		_, err := admin.SubmitJob(ctx, &pb.SubmitJobRequest{Spec: s})
		if err == nil || !strings.Contains(err.Error(), bj.want) {
			t.Errorf("%s: err %v, want one mentioning %q", bj.name, err, bj.want)
		}
	}
	if n := len(c.FSM().Jobs()); n != 0 {
		t.Fatalf("bad jobs registered %d jobs", n)
	}
	// A corrupt blob upload is refused.
	stream, _ := rpcpb.NewBlobClient(conn).Put(ctx)
	_ = stream.Send(&pb.BlobChunk{Hash: strings.Repeat("00", 32), Size: 5, Data: []byte("hello")})
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("blob with wrong hash: %v, want InvalidArgument", err)
	}

	if _, err := admin.SubmitJob(ctx, &pb.SubmitJobRequest{Spec: good()}); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 10*time.Second, "round 1 to open", func() bool {
		j, _ := c.FSM().Job("j")
		return j.OpenRound != nil
	})
	poll, err := wk.PollTask(ctx, &pb.PollTaskRequest{WorkerId: "w1", WaitSeconds: 5})
	if err != nil || poll.Task == nil {
		t.Fatalf("poll: %v %v", poll, err)
	}
	task := poll.Task
	encode := func(s tensor.Set) []byte {
		b, err := tensor.Marshal(s, tensor.F32)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	delta := tensor.ZerosLike(base)
	delta.Tensors[0].Data[0] = 0.01
	nan := delta.Clone()
	nan.Tensors[1].Data[3] = float32(math.NaN())
	inf := delta.Clone()
	inf.Tensors[2].Data[0] = float32(math.Inf(-1))
	wrongShape := tensor.ZerosLike(model.MLP{Sizes: []int{784, 32, 10}}.Layout())
	huge := delta.Clone()
	huge.Tensors[0].Data[1] = 100
	req := func(edit func(*pb.SubmitUpdateRequest)) *pb.SubmitUpdateRequest {
		r := &pb.SubmitUpdateRequest{WorkerId: "w1", Job: "j", Round: task.Round, BaseModel: task.Base.Hash, Codec: "fp32", Payload: encode(delta), Samples: 100}
		edit(r)
		return r
	}
	badUpdates := []struct {
		name string
		req  *pb.SubmitUpdateRequest
		code codes.Code
		want string
	}{
		{"wrong shapes", req(func(r *pb.SubmitUpdateRequest) { r.Payload = encode(wrongShape) }), codes.InvalidArgument, "shape"},
		{"NaN", req(func(r *pb.SubmitUpdateRequest) { r.Payload = encode(nan) }), codes.InvalidArgument, "not finite"},
		{"Inf", req(func(r *pb.SubmitUpdateRequest) { r.Payload = encode(inf) }), codes.InvalidArgument, "not finite"},
		{"corrupt payload", req(func(r *pb.SubmitUpdateRequest) {
			r.Payload = []byte("\x10\x00\x00\x00\x00\x00\x00\x00{bad json}      ")
		}), codes.InvalidArgument, "invalid safetensors"},
		{"stale round", req(func(r *pb.SubmitUpdateRequest) { r.Round = task.Round + 5 }), codes.FailedPrecondition, "not open"},
		{"unknown job", req(func(r *pb.SubmitUpdateRequest) { r.Job = "nope" }), codes.NotFound, "unknown job"},
		{"unselected worker", req(func(r *pb.SubmitUpdateRequest) { r.WorkerId = "w9" }), codes.PermissionDenied, "not selected"},
		{"other base", req(func(r *pb.SubmitUpdateRequest) { r.BaseModel = strings.Repeat("cd", 32) }), codes.FailedPrecondition, "trained from model"},
		{"wrong codec", req(func(r *pb.SubmitUpdateRequest) { r.Codec = "fp16" }), codes.InvalidArgument, "codec"},
		{"no samples", req(func(r *pb.SubmitUpdateRequest) { r.Samples = 0 }), codes.InvalidArgument, "samples"},
		{"norm over the bound", req(func(r *pb.SubmitUpdateRequest) { r.Payload = encode(huge) }), codes.InvalidArgument, "exceeds the job's bound"},
		{"garbage bytes", req(func(r *pb.SubmitUpdateRequest) { r.Payload = []byte("\xff\x00garbage, not an update") }), codes.InvalidArgument, "invalid safetensors"},
		{"truncated payload", req(func(r *pb.SubmitUpdateRequest) { r.Payload = encode(delta)[:1000] }), codes.InvalidArgument, "invalid safetensors"},
		{"oversized payload", req(func(r *pb.SubmitUpdateRequest) { r.Payload = make([]byte, 2*len(encode(delta))) }), codes.ResourceExhausted, "larger than any"},
	}
	before, _ := c.FSM().Job("j")
	blobsBefore, err := c.BlobHashes()
	if err != nil {
		t.Fatal(err)
	}
	for _, bu := range badUpdates {
		rejected := metric(t, c, "fedtune_updates_rejected_total")
		_, err := wk.SubmitUpdate(ctx, bu.req)
		if status.Code(err) != bu.code || !strings.Contains(err.Error(), bu.want) {
			t.Errorf("%s: err %v, want %v mentioning %q", bu.name, err, bu.code, bu.want)
		}
		if got := metric(t, c, "fedtune_updates_rejected_total"); got != rejected+1 {
			t.Errorf("%s: fedtune_updates_rejected_total went %v -> %v, want +1", bu.name, rejected, got)
		}
	}
	after, _ := c.FSM().Job("j")
	if !proto.Equal(before, after) {
		t.Fatalf("refused updates changed the job:\nbefore %v\nafter  %v", before, after)
	}
	if blobsAfter, _ := c.BlobHashes(); !slices.Equal(blobsBefore, blobsAfter) {
		t.Errorf("refused updates changed the blob store: %d blobs before, %d after", len(blobsBefore), len(blobsAfter))
	}
	// The good update is accepted once; a resubmission is a duplicate,
	// counted once.
	r1, err := wk.SubmitUpdate(ctx, req(func(*pb.SubmitUpdateRequest) {}))
	if err != nil || !r1.Accepted || r1.Duplicate {
		t.Fatalf("good update: %v %v", r1, err)
	}
	WaitFor(t, 10*time.Second, "round 1 committed", func() bool {
		j, _ := c.FSM().Job("j")
		return len(j.History) == 1
	})
	r2, err := wk.SubmitUpdate(ctx, req(func(*pb.SubmitUpdateRequest) {}))
	if err != nil || !r2.Accepted || !r2.Duplicate {
		t.Fatalf("resubmitted update: %v %v, want accepted duplicate", r2, err)
	}
	j, _ := c.FSM().Job("j")
	if j.History[0].Updates != 1 || j.History[0].Samples != 100 {
		t.Errorf("round 1 counted %d updates / %d samples, want 1 / 100", j.History[0].Updates, j.History[0].Samples)
	}
}

// TestWorkerWithoutCluster: a worker that cannot reach any node stops with
// a clear error instead of hanging.
func TestWorkerWithoutCluster(t *testing.T) {
	train, _ := dataset.MNIST(dataset.Test)
	w, err := worker.New(worker.Config{ID: "lonely", Join: []string{"127.0.0.1:1"}, JoinTimeout: 2 * time.Second, Profile: "local"},
		worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train}, nil))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = w.Run(context.Background())
	if !errors.Is(err, worker.ErrNoCluster) || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("err %v, want ErrNoCluster naming the address", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("gave up after %v, join timeout was 2s", d)
	}
}
