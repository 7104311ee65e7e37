package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/tensor"
)

// TestNoEvaluator: a coordinator given no evaluator refuses a job that asks
// for evaluation, saying why, and takes the same job without it; New
// refuses Deps without Models.
func TestNoEvaluator(t *testing.T) {
	if _, err := New(Config{DataDir: t.TempDir()}, Deps{}); err == nil || !strings.Contains(err.Error(), "Deps.Models is required") {
		t.Errorf("New without Models: %v", err)
	}
	c, err := New(Config{DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0",
		Bootstrap: true, Profile: "local"}, Deps{Models: model.Catalog{}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	arch, _ := model.Lookup("mnist-mlp-small")
	b, _ := tensor.Marshal(arch.Init(1), tensor.F32)
	hash, err := c.blobs.Put(b)
	if err != nil {
		t.Fatal(err)
	}
	spec := func(evaluate bool) *pb.JobSpec {
		return &pb.JobSpec{Name: "j", Model: "mnist-mlp-small", Dataset: "any-name", BaseModel: hash, Rounds: 1, Evaluate: evaluate}
	}
	admin := &adminService{c: c}
	_, err = admin.SubmitJob(ctx, &pb.SubmitJobRequest{Spec: spec(true)})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no evaluator") {
		t.Errorf("evaluation asked of a coordinator without evaluator: %v", err)
	}
	// Without an evaluator the data set is the workers' business: any name.
	if _, err := admin.SubmitJob(ctx, &pb.SubmitJobRequest{Spec: spec(false)}); err != nil {
		t.Errorf("a job without evaluation: %v", err)
	}
}
