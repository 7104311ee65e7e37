package testcluster

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

// handWorkers joins gossip members with the worker role to c, to be driven
// by hand through gRPC; they leave when the test ends.
func handWorkers(t *testing.T, c *coordinator.Coordinator, ids ...string) {
	t.Helper()
	for _, id := range ids {
		g, err := gossip.Start(gossip.Config{Name: id, BindAddr: "127.0.0.1:0", Profile: "local", Meta: gossip.Meta{Role: gossip.RoleWorker}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Leave(time.Second) })
		if err := g.Join([]string{c.GossipAddr()}); err != nil {
			t.Fatal(err)
		}
	}
}

// handSession connects to c in plaintext (insecure mode) and uploads a
// fresh mnist-mlp-small model, for tests that drive the services by hand:
// the connection, its Admin and Worker clients, a context of a minute,
// the model and its blob hash.
func handSession(t *testing.T, c *coordinator.Coordinator) (*grpc.ClientConn, rpcpb.AdminClient, rpcpb.WorkerClient, context.Context, tensor.Set, string) {
	t.Helper()
	pool := client.NewPool()
	t.Cleanup(pool.Close)
	conn, err := pool.Conn(c.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	arch, _ := model.Lookup("mnist-mlp-small")
	base := arch.Init(1)
	b, _ := tensor.Marshal(base, tensor.F32)
	hash, err := client.PutBlob(ctx, conn, b)
	if err != nil {
		t.Fatal(err)
	}
	return conn, rpcpb.NewAdminClient(conn), rpcpb.NewWorkerClient(conn), ctx, base, hash
}

// TestHostileUpdates: one worker of a geomedian job sends what once broke
// the cluster — a finite delta of 1e19 (it committed a model with NaN
// norm), 33,000 metrics (the job's state outgrew gRPC's message limit),
// NaN metrics (every dashboard answered 500), and a claim of 1.8e19
// samples (FedAvg weight 1.000 against the honest workers' 0.000). The
// first three are refused with a reason, the claim counts as the job's cap,
// and the round commits a finite model with the honest worker's update.
func TestHostileUpdates(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{SubmitBurst: 1000})
	handWorkers(t, c, "w1", "w2")
	conn, admin, wk, ctx, base, hash := handSession(t, c)
	spec := &pb.JobSpec{Name: "j", Model: "mnist-mlp-small", Dataset: "mnist", BaseModel: hash, Rounds: 1, ClientsPerRound: 2, RoundTimeoutSeconds: 60,
		Aggregator: "geomedian", Train: &pb.TrainConfig{LocalSteps: 2, BatchSize: 64}}
	if _, err := admin.SubmitJob(ctx, &pb.SubmitJobRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 10*time.Second, "round 1 to open", func() bool {
		j, _ := c.FSM().Job("j")
		return j.OpenRound != nil && len(j.OpenRound.Selected) == 2
	})
	j, _ := c.FSM().Job("j")
	r := j.OpenRound
	honest := tensor.ZerosLike(base)
	for _, tt := range honest.Tensors {
		for i := range tt.Data {
			tt.Data[i] = 0.001
		}
	}
	huge := tensor.ZerosLike(base)
	for _, tt := range huge.Tensors {
		for i := range tt.Data {
			tt.Data[i] = 1e19
		}
	}
	payload := func(s tensor.Set) []byte {
		b, err := tensor.Marshal(s, tensor.F32)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	req := func(worker string, delta tensor.Set, samples uint64, metrics map[string]float64) *pb.SubmitUpdateRequest {
		return &pb.SubmitUpdateRequest{WorkerId: worker, Job: "j", Round: r.Number, BaseModel: r.BaseModel, Codec: "fp32", Payload: payload(delta), Samples: samples, Metrics: metrics}
	}
	many := map[string]float64{}
	for i := range 33000 {
		many[fmt.Sprintf("m%05d", i)] = 1
	}
	for _, bad := range []struct {
		name string
		req  *pb.SubmitUpdateRequest
		want string
	}{
		{"delta of 1e19", req("w1", huge, 100, nil), "exceeds the job's bound"},
		{"33000 metrics", req("w1", honest, 100, many), "33000 metrics"},
		{"NaN metric", req("w1", honest, 100, map[string]float64{"loss": math.NaN()}), "must be finite"},
		{"metric name with escapes", req("w1", honest, 100, map[string]float64{"\x1b[31mred": 1}), "metric name"},
	} {
		_, err := wk.SubmitUpdate(ctx, bad.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want InvalidArgument mentioning %q", bad.name, err, bad.want)
		}
	}
	if _, err := wk.SubmitUpdate(ctx, req("w1", honest, 18_000_000_000_000_000_000, map[string]float64{"loss": 1})); err != nil {
		t.Fatalf("update claiming 1.8e19 samples: %v (accepted, counted as the cap)", err)
	}
	if _, err := wk.SubmitUpdate(ctx, req("w2", honest, 100, map[string]float64{"loss": 1})); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 10*time.Second, "round 1 committed", func() bool {
		j, _ := c.FSM().Job("j")
		return len(j.History) == 1
	})
	j, _ = c.FSM().Job("j")
	rec := j.History[0]
	for _, u := range rec.Accepted {
		if u.Worker == "w1" && u.Samples != round.SampleCap(j.Spec) {
			t.Errorf("w1's claim of 1.8e19 samples counted as %d, want the cap %d (steps × batch)", u.Samples, round.SampleCap(j.Spec))
		}
	}
	if got := metric(t, c, "fedtune_update_samples_capped_total"); got != 1 {
		t.Errorf("fedtune_update_samples_capped_total = %v, want 1", got)
	}
	mb, err := client.GetBlob(ctx, conn, rec.Model, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	next, err := tensor.Unmarshal(mb)
	if err != nil {
		t.Fatal(err)
	}
	if err := next.CheckFinite(); err != nil {
		t.Fatalf("committed model: %v", err)
	}
	d, _ := tensor.Diff(next, base)
	if n, want := d.Norm(), honest.Norm(); math.Abs(n-want) > 1e-3*want {
		t.Errorf("committed model moved by %.6g, want the honest update's %.6g", n, want)
	}
}

// TestGossipNamesValidated: members whose names or labels could forge
// lines or escapes in `fedtune workers` (a newline, ANSI codes, markup)
// are not rostered; a valid one is.
func TestGossipNamesValidated(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{})
	handWorkers(t, c, "‹img src=x›", "evil\nw9")
	for name, labels := range map[string]map[string]string{"ok-1": {"device": "gpu"}, "colour": {"device": "\x1b[31mgpu"}} {
		g, err := gossip.Start(gossip.Config{Name: name, BindAddr: "127.0.0.1:0", Profile: "local", Meta: gossip.Meta{Role: gossip.RoleWorker, Labels: labels}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Leave(time.Second) })
		if err := g.Join([]string{c.GossipAddr()}); err != nil {
			t.Fatal(err)
		}
	}
	WaitFor(t, 10*time.Second, "ok-1 rostered", func() bool { return len(c.FSM().Workers()) > 0 })
	time.Sleep(2 * time.Second)
	for _, w := range c.FSM().Workers() {
		if w.Id != "ok-1" {
			t.Errorf("rostered %q %v", w.Id, w.Labels)
		}
	}
}

// TestPollFlood: one worker opening 60 long polls at once gets
// MaxPollsPerWorker of them and ResourceExhausted for the rest (10,000 from
// one certificate once made the leader step down); another worker polls as
// usual and the node stays leader.
func TestPollFlood(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{})
	pool := client.NewPool()
	defer pool.Close()
	conn, _ := pool.Conn(c.GRPCAddr())
	wk := rpcpb.NewWorkerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	codesSeen := map[codes.Code]int{}
	var wg sync.WaitGroup
	for range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := wk.PollTask(ctx, &pb.PollTaskRequest{WorkerId: "flooder", WaitSeconds: 3})
			mu.Lock()
			codesSeen[status.Code(err)]++
			mu.Unlock()
		}()
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := wk.PollTask(ctx, &pb.PollTaskRequest{WorkerId: "honest", WaitSeconds: 0.1}); err != nil {
		t.Errorf("another worker's poll during the flood: %v", err)
	}
	wg.Wait()
	if codesSeen[codes.OK] != coordinator.MaxPollsPerWorker || codesSeen[codes.ResourceExhausted] != 60-coordinator.MaxPollsPerWorker {
		t.Errorf("60 polls from one worker answered %v, want %d OK and the rest ResourceExhausted", codesSeen, coordinator.MaxPollsPerWorker)
	}
	if !c.IsLeader() {
		t.Error("the node lost its leadership")
	}
}
