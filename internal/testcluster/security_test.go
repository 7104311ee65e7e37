package testcluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/gossip"
	"github.com/fedtune/fedtune/internal/pki"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/worker"
)

func node(t *testing.T, caDir, role, name string, notBefore time.Time) *pki.Node {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := pki.Issue(caDir, dir, role, name, 24*time.Hour, notBefore); err != nil {
		t.Fatal(err)
	}
	n, err := pki.Load(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMutualTLS runs a coordinator with mutual TLS and checks who gets in:
// a worker with a certificate of the cluster's CA trains a job; callers with
// no certificate, another CA's, or an expired one are refused at gRPC; a
// worker certificate cannot use the admin service, store blobs, fetch a
// blob it was not given, submit under another worker's id, or speak Raft.
func TestMutualTLS(t *testing.T) {
	ca := t.TempDir()
	if err := pki.InitCA(ca, "test", time.Hour); err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{TLS: node(t, ca, pki.RoleCoordinator, "coord-1", time.Time{})})
	train, _ := dataset.MNIST(dataset.Train)
	parts, _ := dataset.Partition{Kind: "iid", Seed: 1}.Split(train.Y, 10, 20)
	for i, id := range []string{"w1", "w2"} {
		tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset(parts[i])}, nil)
		StartWorkerWith(t, worker.Config{ID: id, Join: []string{c.GossipAddr()}, TLS: node(t, ca, pki.RoleWorker, id, time.Time{})}, tr)
	}
	WaitFor(t, 10*time.Second, "2 workers", func() bool { return len(c.FSM().Workers()) == 2 })

	admin := client.NewPoolTLS(node(t, ca, pki.RoleAdmin, "alice", time.Time{}).ClientTLS())
	defer admin.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	SubmitJob(t, admin, c.GRPCAddr(), &pb.JobSpec{
		Name: "secure", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 2, ClientsPerRound: 2, MinUpdates: 2, RoundTimeoutSeconds: 60,
		Train: &pb.TrainConfig{LocalSteps: 10, BatchSize: 32, LearningRate: 0.1},
	}, arch.Init(1))
	WaitFor(t, 60*time.Second, "secure job done", func() bool {
		j, _ := c.FSM().Job("secure")
		return j.Status == pb.JobStatus_JOB_STATUS_DONE
	})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	other := t.TempDir()
	pki.InitCA(other, "other", time.Hour)
	for name, pool := range map[string]*client.Pool{
		"no certificate": client.NewPool(),
		"another CA's":   client.NewPoolTLS(node(t, other, pki.RoleAdmin, "mallory", time.Time{}).ClientTLS()),
		"an expired":     client.NewPoolTLS(node(t, ca, pki.RoleAdmin, "old", time.Now().Add(-48*time.Hour)).ClientTLS()),
		"no cert, TLS":   client.NewPoolTLS(&tls.Config{RootCAs: node(t, ca, pki.RoleAdmin, "x", time.Time{}).Pool, ServerName: pki.CoordinatorServerName}),
	} {
		conn, _ := pool.Conn(c.GRPCAddr())
		_, err := rpcpb.NewAdminClient(conn).ListJobs(ctx, &pb.ListJobsRequest{})
		if code := status.Code(err); code != codes.Unavailable && code != codes.Unauthenticated {
			t.Errorf("%s: ListJobs err %v (code %v), want refused", name, err, code)
		}
		pool.Close()
	}

	w1 := client.NewPoolTLS(node(t, ca, pki.RoleWorker, "w1", time.Time{}).ClientTLS())
	defer w1.Close()
	conn, err := w1.Conn(c.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	j, _ := c.FSM().Job("secure")
	denied := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s with a worker certificate: err %v, want PermissionDenied", what, err)
		}
	}
	_, err = rpcpb.NewAdminClient(conn).ListJobs(ctx, &pb.ListJobsRequest{})
	denied("Admin.ListJobs", err)
	_, err = client.PutBlob(ctx, conn, []byte("not a model"))
	denied("Blob.Put", err)
	_, err = client.GetBlob(ctx, conn, j.CurrentModel, 1<<30)
	denied("Blob.Get of a model of no open round", err)
	_, err = rpcpb.NewWorkerClient(conn).SubmitUpdate(ctx, &pb.SubmitUpdateRequest{WorkerId: "w2", Job: "secure", Round: 3})
	denied("SubmitUpdate as w2", err)
	_, err = rpcpb.NewWorkerClient(conn).PollTask(ctx, &pb.PollTaskRequest{WorkerId: "w2"})
	denied("PollTask as w2", err)

	// The Raft transport accepts coordinator certificates only.
	raftAddr := c.RaftAddr()
	wn := node(t, ca, pki.RoleWorker, "w9", time.Time{})
	rc, err := tls.Dial("tcp", raftAddr, wn.ClientTLS())
	if err == nil {
		rc.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = rc.Read(make([]byte, 1))
		rc.Close()
	}
	if err == nil {
		t.Error("a worker certificate held a Raft connection open")
	}
	if got := metric(t, c, "fedtune_auth_refused_total"); got < 6 {
		t.Errorf("fedtune_auth_refused_total = %v, want every refusal counted", got)
	}
}

// metric sums a counter or gauge family of c's registry, over the series
// with every one of labelValues among their label values (all without any).
func metric(t *testing.T, c *coordinator.Coordinator, name string, labelValues ...string) float64 {
	t.Helper()
	mfs, err := c.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var values []string
			for _, l := range m.GetLabel() {
				values = append(values, l.GetValue())
			}
			if !slices.ContainsFunc(labelValues, func(v string) bool { return !slices.Contains(values, v) }) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() // the other is nil: 0
			}
		}
	}
	return sum
}

// TestGossipEncryption: with a gossip key, a worker holding the key joins
// and is seen; a worker without it, or with another key, is not.
func TestGossipEncryption(t *testing.T) {
	key, _ := gossip.NewKey()
	keys, err := gossip.ParseKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{GossipKeys: keys})
	train, _ := dataset.MNIST(dataset.Train)
	data := train.Subset(train.WithLabels(1)[:500])
	tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": data}, nil)
	StartWorkerWith(t, worker.Config{ID: "keyed", Join: []string{c.GossipAddr()}, GossipKeys: keys}, tr)
	WaitFor(t, 10*time.Second, "the keyed worker in the roster", func() bool { return len(c.FSM().Workers()) == 1 })

	other, _ := gossip.NewKey()
	otherKeys, _ := gossip.ParseKeys(other)
	for name, k := range map[string][][]byte{"no key": nil, "another key": otherKeys} {
		tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": data}, nil)
		w, err := worker.New(worker.Config{ID: "stranger", Join: []string{c.GossipAddr()}, GossipKeys: k, JoinTimeout: 2 * time.Second,
			Profile: "local", Logger: Logger(t)}, tr)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
		err = w.Run(ctx)
		cancel()
		tr.Close()
		if !errors.Is(err, worker.ErrNoCluster) {
			t.Errorf("%s: worker ran with err %v, want it unable to reach the cluster", name, err)
		}
		for _, m := range c.FSM().Workers() {
			if m.Id == "stranger" {
				t.Errorf("%s: the coordinator sees the stranger", name)
			}
		}
	}
	if _, err := gossip.ParseKeys("c2hvcnQ="); err == nil {
		t.Error("a 5-byte key was accepted")
	}
}

// TestRevokeWorker: a worker revoked through the log is refused by every
// coordinator, and still after the leader changes. The three coordinators
// run Raft over mutual TLS (RealRaft), so this also checks that a TLS Raft
// cluster forms, replicates and re-elects.
func TestRevokeWorker(t *testing.T) {
	ca := t.TempDir()
	if err := pki.InitCA(ca, "test", time.Hour); err != nil {
		t.Fatal(err)
	}
	cl := NewCluster(t, 3, ClusterOptions{RealRaft: true, Edit: func(i int, cfg *coordinator.Config) {
		cfg.TLS = node(t, ca, pki.RoleCoordinator, cfg.NodeID, time.Time{})
	}})
	admin := client.NewPoolTLS(node(t, ca, pki.RoleAdmin, "alice", time.Time{}).ClientTLS())
	defer admin.Close()
	w1 := client.NewPoolTLS(node(t, ca, pki.RoleWorker, "w1", time.Time{}).ClientTLS())
	defer w1.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	poll := func(nd *Node) error {
		conn, err := w1.Conn(nd.C.GRPCAddr())
		if err != nil {
			return err
		}
		_, err = rpcpb.NewWorkerClient(conn).PollTask(ctx, &pb.PollTaskRequest{WorkerId: "w1", WaitSeconds: 0.1})
		return err
	}
	for _, nd := range cl.Nodes {
		if err := poll(nd); err != nil {
			t.Fatalf("before revocation, %s refused w1: %v", nd.Name, err)
		}
	}
	leader := cl.Leader()
	conn, _ := admin.Conn(leader.C.GRPCAddr())
	if _, err := rpcpb.NewAdminClient(conn).RevokeWorker(ctx, &pb.RevokeWorkerRequest{Name: "w1", Reason: "key leaked"}); err != nil {
		t.Fatal(err)
	}
	refusedEverywhere := func(nodes []*Node) {
		t.Helper()
		for _, nd := range nodes {
			WaitFor(t, 10*time.Second, nd.Name+" refuses w1", func() bool {
				err := poll(nd)
				return status.Code(err) == codes.PermissionDenied
			})
		}
	}
	refusedEverywhere(cl.Nodes)
	cl.Crash(leader)
	next := cl.WaitForLeader(20 * time.Second)
	if next == leader {
		t.Fatal("no new leader")
	}
	refusedEverywhere(cl.Up())
	if err := poll(next); err == nil || !strings.Contains(err.Error(), "key leaked") {
		t.Errorf("new leader: err %v, want the revocation's reason", err)
	}
}

// TestSubmitRateLimit: a worker flooding SubmitUpdate is cut off with
// ResourceExhausted once its burst is spent; others are not affected.
func TestSubmitRateLimit(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{SubmitRate: 0.5, SubmitBurst: 3})
	pool := client.NewPool()
	defer pool.Close()
	conn, err := pool.Conn(c.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	codesSeen := map[codes.Code]int{}
	for range 8 {
		_, err := rpcpb.NewWorkerClient(conn).SubmitUpdate(ctx, &pb.SubmitUpdateRequest{WorkerId: "flood", Job: "nope", Round: 1})
		codesSeen[status.Code(err)]++
	}
	if codesSeen[codes.ResourceExhausted] < 5 || codesSeen[codes.NotFound] != 3 {
		t.Errorf("8 rapid submissions answered %v: want 3 judged on their merits (unknown job) and the rest rate-limited", codesSeen)
	}
	// A refusal says when to come back (gRPC RetryInfo): at 0.5 per second,
	// within 2 s.
	_, err = rpcpb.NewWorkerClient(conn).SubmitUpdate(ctx, &pb.SubmitUpdateRequest{WorkerId: "flood", Job: "nope", Round: 1})
	var wait time.Duration
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			wait = ri.GetRetryDelay().AsDuration()
		}
	}
	if status.Code(err) != codes.ResourceExhausted || wait <= 0 || wait > 2*time.Second || !strings.Contains(err.Error(), "retry in") {
		t.Errorf("a rate-limited submission: %v, retry delay %v; want ResourceExhausted with RetryInfo in (0, 2s]", err, wait)
	}
	_, err = rpcpb.NewWorkerClient(conn).SubmitUpdate(ctx, &pb.SubmitUpdateRequest{WorkerId: "other", Job: "nope", Round: 1})
	if status.Code(err) != codes.NotFound {
		t.Errorf("another worker was limited too: %v", err)
	}
	if got := counterWith(t, c, "fedtune_updates_rejected_total", "RateLimited"); got < 5 {
		t.Errorf("rate-limited submissions counted %v times", got)
	}
}

// TestRateLimitedWorkerDefers: workers whose rounds come faster than the
// coordinator's submit rate keep each refused update and send it again
// after the delay the refusal names, rather than dropping it and training
// the round again: every round gets both updates, each worker trains once
// per round, and no update is refused for good.
func TestRateLimitedWorkerDefers(t *testing.T) {
	c := StartCoordinator(t, coordinator.Config{SubmitRate: 0.5, SubmitBurst: 1})
	hs := startWorkers(t, []string{c.GossipAddr()}, 2)
	WaitFor(t, 10*time.Second, "2 workers", func() bool { return len(c.FSM().Workers()) == 2 })
	pool := client.NewPool()
	defer pool.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	const rounds = 4
	spec := haJob("limited", rounds, 2)
	spec.Train.LocalSteps = 3
	SubmitJob(t, pool, c.GRPCAddr(), spec, arch.Init(1))
	var j *pb.Job
	WaitFor(t, time.Minute, "the job", func() bool { j, _ = c.FSM().Job("limited"); return j.Status != pb.JobStatus_JOB_STATUS_RUNNING })
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	for _, r := range j.History {
		if len(r.Accepted) != 2 {
			t.Errorf("round %d aggregated %d updates, want 2", r.Number, len(r.Accepted))
		}
	}
	var deferred float64
	for _, h := range hs {
		m := gather(t, h.W.Registry())
		if m[`fedtune_worker_updates_total{outcome="refused"}`] != 0 || m[`fedtune_worker_tasks_total{result="trained"}`] != rounds {
			t.Errorf("%s: %v refused, %v trained for %d rounds", h.ID, m[`fedtune_worker_updates_total{outcome="refused"}`], m[`fedtune_worker_tasks_total{result="trained"}`], rounds)
		}
		deferred += m[`fedtune_worker_updates_total{outcome="deferred"}`]
	}
	if deferred == 0 || counterWith(t, c, "fedtune_updates_rejected_total", "RateLimited") == 0 {
		t.Errorf("no update was deferred (%v): the test did not exercise the rate limit", deferred)
	}
}

// gather returns a registry's series as name{labels} → value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			out[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

// counterWith returns the value of a counter family's series whose label
// has the given value.
func counterWith(t *testing.T, c *coordinator.Coordinator, name, label string) float64 {
	t.Helper()
	mfs, err := c.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestKeyringRotation rotates the gossip key of a running cluster through
// the log — install K2, use K2, remove K1 — and checks that the coordinator
// and a running worker follow, that the worker stays a member throughout,
// and that afterwards a node holding only K1 cannot join while one with K2
// can.
func TestKeyringRotation(t *testing.T) {
	k1, _ := gossip.NewKey()
	k2, _ := gossip.NewKey()
	keys1, _ := gossip.ParseKeys(k1)
	keys2, _ := gossip.ParseKeys(k2)
	c := StartCoordinator(t, coordinator.Config{GossipKeys: keys1})
	train, _ := dataset.MNIST(dataset.Train)
	data := train.Subset(train.WithLabels(1)[:500])
	tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": data}, nil)
	StartWorkerWith(t, worker.Config{ID: "w1", Join: []string{c.GossipAddr()}, GossipKeys: keys1}, tr)
	WaitFor(t, 10*time.Second, "w1 in the roster", func() bool { return len(c.FSM().Workers()) == 1 })

	pool := client.NewPool()
	defer pool.Close()
	conn, _ := pool.Conn(c.GRPCAddr())
	admin := rpcpb.NewAdminClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, step := range []struct {
		op   pb.Keyring_Op
		key  string
		want []string
	}{
		{pb.Keyring_OP_INSTALL, k2, []string{k1, k2}},
		{pb.Keyring_OP_USE, k2, []string{k2, k1}},
		{pb.Keyring_OP_REMOVE, k1, []string{k2}},
	} {
		resp, err := admin.Keyring(ctx, &pb.KeyringRequest{Change: &pb.Keyring{Op: step.op, Key: step.key}})
		if err != nil {
			t.Fatalf("%v: %v", step.op, err)
		}
		if !slices.Equal(resp.Keys, step.want) {
			t.Fatalf("%v: keyring %v, want %v", step.op, resp.Keys, step.want)
		}
		WaitFor(t, 10*time.Second, "coordinator gossip follows "+step.op.String(), func() bool { return slices.Equal(c.GossipKeys(), step.want) })
		// The worker learns it with its next poll (at most PollWait later);
		// give it that long before the next step removes a key it needs.
		time.Sleep(2500 * time.Millisecond)
	}
	if _, err := admin.Keyring(ctx, &pb.KeyringRequest{Change: &pb.Keyring{Op: pb.Keyring_OP_REMOVE, Key: k2}}); err == nil {
		t.Error("removing the key in use was accepted")
	}
	// No change: the keyring as it is (fedtune keyring list).
	if resp, err := admin.Keyring(ctx, &pb.KeyringRequest{}); err != nil || !slices.Equal(resp.Keys, []string{k2}) {
		t.Errorf("keyring list: %v %v, want [%s]", resp.GetKeys(), err, k2)
	}
	// w1 is still a live member: it switched keys with the cluster.
	time.Sleep(2 * time.Second)
	if alive := c.AliveWorkers(); !slices.Contains(alive, "w1") {
		t.Errorf("w1 dropped out of gossip during the rotation (alive: %v)", alive)
	}
	join := func(id string, keys [][]byte) error {
		tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": data}, nil)
		defer tr.Close()
		w, err := worker.New(worker.Config{ID: id, Join: []string{c.GossipAddr()}, GossipKeys: keys, JoinTimeout: 2 * time.Second, Profile: "local", Logger: Logger(t)}, tr)
		if err != nil {
			return err
		}
		rctx, rcancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer rcancel()
		return w.Run(rctx)
	}
	if err := join("old-key", keys1); !errors.Is(err, worker.ErrNoCluster) {
		t.Errorf("a worker with the removed key: %v, want it unable to join", err)
	}
	if err := join("new-key", keys2); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a worker with the new key: %v", err)
	}
	WaitFor(t, 10*time.Second, "new-key seen", func() bool {
		for _, w := range c.FSM().Workers() {
			if w.Id == "new-key" {
				return true
			}
		}
		return false
	})
}
