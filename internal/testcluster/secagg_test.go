package testcluster

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/internal/client"
	"github.com/fedtune/fedtune/internal/pki"
	"github.com/fedtune/fedtune/model"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/secagg"
	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/worker"
)

// TestSecAggDropouts runs secure aggregation on three coordinators with ten
// workers, three of which drop out after masking (their shares delivered,
// their masked updates never sent): the round commits the exact sum of the
// seven survivors' fixed-point updates, every round verifies, and no
// coordinator's blobs, Raft log, snapshots or logs hold any worker's
// unmasked update. Then the same job without secagg, to state the
// overhead.
func TestSecAggDropouts(t *testing.T) {
	cl, logs := loggedCluster(t, slog.LevelDebug)
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	parts, _ := dataset.Partition{Kind: "iid", Seed: 5}.Split(train.Y, 10, 40)
	var mu sync.Mutex
	plain := map[string]map[uint32][]uint32{} // worker -> round -> plain fixed-point update
	deltas := map[string][]float32{}          // worker/round -> the update as trained
	dropped := map[string]bool{"sa-02": true, "sa-05": true, "sa-08": true}
	for i := range 10 {
		id := fmt.Sprintf("sa-%02d", i)
		cfg := worker.Config{ID: id, Join: cl.GossipAddrs(), SecAggMasked: func(job string, r uint32, delta []float32, p, masked []uint32) bool {
			mu.Lock()
			defer mu.Unlock()
			deltas[fmt.Sprint(id, "/", r)] = slices.Clone(delta)
			if plain[id] == nil {
				plain[id] = map[uint32][]uint32{}
			}
			plain[id][r] = slices.Clone(p)
			return !(job == "secagg" && r == 1 && dropped[id])
		}}
		StartWorkerWith(t, cfg, worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset(parts[i])}, nil))
	}
	WaitFor(t, 20*time.Second, "10 workers in the roster", func() bool { return cl.RosterSize() == 10 })
	spec := func(name string, sa bool) *pb.JobSpec {
		s := haJob(name, 2, 10)
		s.MinUpdates, s.RoundTimeoutSeconds = 5, 60
		if sa {
			s.Secagg = &pb.SecAggSpec{PhaseTimeoutSeconds: 4}
		}
		return s
	}
	submit(t, cl, spec("secagg", true))
	j := cl.WaitDone("secagg", 3*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("secagg job ended %v: %s", j.Status, j.Error)
	}
	checkHistory(t, cl, j, 2)
	r1 := j.History[0]
	if r1.Updates != 7 || len(r1.Secagg.GetShared()) != 10 || r1.Metrics["secagg_survivors"] != 7 {
		t.Fatalf("round 1: %d masked updates of %d that shared, want 7 of 10", r1.Updates, len(r1.Secagg.GetShared()))
	}
	for _, w := range r1.Workers {
		if dropped[w] {
			t.Errorf("dropped worker %s counted in round 1", w)
		}
	}
	// The committed round unmasks to exactly the survivors' plain sum.
	leader := cl.WaitForLeader(15 * time.Second)
	layout, _ := model.Lookup("mnist-mlp-small")
	n := layout.Init(1).Len()
	inputs := map[string][]uint32{}
	want := make([]uint32, n)
	mu.Lock()
	for _, u := range r1.Accepted {
		b, err := readBlob(leader.C, u.Blob)
		if err != nil {
			t.Fatal(err)
		}
		if inputs[u.Worker], err = secagg.DecodeMasked(b, n); err != nil {
			t.Fatal(err)
		}
		for i, v := range plain[u.Worker][1] {
			want[i] += v
		}
		if bytes.Equal(b, secagg.EncodeMasked(plain[u.Worker][1])) {
			t.Errorf("%s's stored update is its plain update", u.Worker)
		}
	}
	mu.Unlock()
	p := round.SecAggParams(j.Spec, &pb.Round{Number: 1, Attempt: r1.Secagg.Attempt, Secagg: r1.Secagg})
	sum, err := secagg.Unmask(p, r1.Secagg.Keys, r1.Secagg.Shared, inputs, r1.Secagg.Reveals)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sum, want) {
		t.Fatal("the committed round does not unmask to the survivors' plain sum")
	}
	// and the model moved by that mean
	m0, _ := readSet(leader.C, round.VersionModel(j, 0))
	m1, _ := readSet(leader.C, r1.Model)
	mean := round.SecAggMean(want, r1.Secagg.FracBits, 7)
	var off int
	var worst float64
	for ti, tn := range m1.Tensors {
		for i, v := range tn.Data {
			worst = max(worst, math.Abs(float64(v-m0.Tensors[ti].Data[i]-mean[off+i])))
		}
		off += len(tn.Data)
	}
	if worst > 1e-6 {
		t.Errorf("model moved by something other than the survivors' mean: worst difference %g", worst)
	}
	pool := client.NewPool()
	defer pool.Close()
	for _, nd := range cl.Up() {
		conn, err := pool.Conn(nd.C.GRPCAddr())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range j.History {
			verifyRound(t, conn, "secagg", r.Number)
		}
	}
	// No unmasked update anywhere a coordinator writes: blobs, Raft log,
	// snapshots, logs — neither as fixed point nor as float32.
	mu.Lock()
	var needles [][]byte
	for _, rs := range plain {
		for _, v := range rs {
			needles = append(needles, secagg.EncodeMasked(v[100:164])) // past the first layer's zero rows
		}
	}
	for _, d := range deltas {
		fb := make([]byte, 4*64)
		for i, x := range d[100:164] {
			binary.LittleEndian.PutUint32(fb[4*i:], math.Float32bits(x))
		}
		needles = append(needles, fb)
	}
	mu.Unlock()
	var scanned int64
	for _, nd := range cl.Nodes {
		filepath.WalkDir(nd.Cfg.DataDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			scanned += int64(len(b))
			for _, nd := range needles {
				if bytes.Contains(b, nd) {
					t.Errorf("%s holds a worker's unmasked update", path)
					break
				}
			}
			return nil
		})
	}
	if scanned < 3*2_000_000 {
		t.Errorf("scanned only %d bytes of the coordinators' data: the masked updates alone are 2 MB a round", scanned)
	}
	for _, nd := range needles {
		if strings.Contains(logs.String(), string(nd)) {
			t.Error("the coordinators' logs hold a worker's unmasked update")
		}
	}

	// Overhead against plain FedAvg on the same workers.
	submit(t, cl, spec("plain", false))
	pj := cl.WaitDone("plain", 2*time.Minute)
	if pj.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("plain job ended %v: %s", pj.Status, pj.Error)
	}
	var saBytes, plainBytes int64
	for _, u := range j.History[1].Accepted {
		s, _ := leader.C.BlobSize(u.Blob)
		saBytes += s
	}
	for _, u := range pj.History[1].Accepted {
		s, _ := leader.C.BlobSize(u.Blob)
		plainBytes += s
	}
	var proto int
	r2 := j.History[1].Secagg
	for _, k := range r2.Keys {
		proto += len(k.CipherPub) + len(k.MaskPub) + len(k.SeedCommit)
	}
	for _, rv := range r2.Reveals {
		proto += len(rv.Share) + 1
	}
	shares := 10 * 9 * (12 + 64 + 16) // sealed shares: not kept in the record
	dur := func(r *pb.RoundRecord) time.Duration { return time.Duration(r.CommittedUnixNano - r.StartedUnixNano) }
	t.Logf("round 2 (no dropouts): secagg %d update bytes + %d protocol bytes (keys, reveals) + %d sealed-share bytes in %v; plain FedAvg %d update bytes in %v",
		saBytes, proto, shares, dur(j.History[1]).Round(time.Millisecond), plainBytes, dur(pj.History[1]).Round(time.Millisecond))
	t.Logf("round 1 (3 dropouts after masking, phase timeout 4 s): %v", dur(j.History[0]).Round(time.Millisecond))
}

func readBlob(c *coordinator.Coordinator, hash string) ([]byte, error) { return c.ReadBlob(hash) }

func readSet(c *coordinator.Coordinator, hash string) (tensor.Set, error) {
	b, err := c.ReadBlob(hash)
	if err != nil {
		return tensor.Set{}, err
	}
	return tensor.Unmarshal(b)
}

// TestSecAggRescheduleAndFailover: a round where too few masked updates
// arrive to unmask is aborted and planned again (then commits); masked
// updates and messages for a round that is not open are refused; and a
// leader killed in the middle of a round's secure aggregation loses
// nothing: the job completes and every round verifies.
func TestSecAggRescheduleAndFailover(t *testing.T) {
	cl, logs := loggedCluster(t, slog.LevelInfo)
	train, err := dataset.MNIST(dataset.Train)
	if err != nil {
		t.Fatal(err)
	}
	parts, _ := dataset.Partition{Kind: "iid", Seed: 6}.Split(train.Y, 10, 5)
	var mu sync.Mutex
	calls := map[string]int{}
	for i := range 5 {
		id := fmt.Sprintf("sb-%d", i)
		cfg := worker.Config{ID: id, Join: cl.GossipAddrs(), SecAggMasked: func(job string, r uint32, _ []float32, _, _ []uint32) bool {
			mu.Lock()
			defer mu.Unlock()
			calls[job+id]++
			// three of five drop out of the first attempt of round 1
			return !(job == "sa-few" && r == 1 && calls[job+id] == 1 && id != "sb-0" && id != "sb-4")
		}}
		StartWorkerWith(t, cfg, worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset(parts[i])}, nil))
	}
	WaitFor(t, 20*time.Second, "5 workers in the roster", func() bool { return cl.RosterSize() == 5 })
	spec := func(name string, rounds uint32) *pb.JobSpec {
		s := haJob(name, rounds, 5)
		s.MinUpdates, s.RoundTimeoutSeconds = 3, 60
		s.Secagg = &pb.SecAggSpec{PhaseTimeoutSeconds: 3}
		return s
	}
	submit(t, cl, spec("sa-few", 2))
	j := cl.WaitDone("sa-few", 2*time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", j.Status, j.Error)
	}
	checkHistory(t, cl, j, 2)
	if a := j.History[0].Secagg.GetAttempt(); a < 1 || j.History[0].Updates != 5 {
		t.Errorf("round 1 committed at attempt %d with %d updates: want a later attempt with all 5", a, j.History[0].Updates)
	}
	if !strings.Contains(logs.String(), "too few survivors to unmask: 2 of 5 masked updates arrived, 3 needed") {
		t.Error("no rescheduling for too few survivors in the logs")
	}
	pool := client.NewPool()
	defer pool.Close()
	leader := cl.WaitForLeader(15 * time.Second)
	conn, err := pool.Conn(leader.C.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	wc := rpcpb.NewWorkerClient(conn)
	n := 50890
	for _, r := range []uint32{1, 9} {
		_, err := wc.SubmitUpdate(t.Context(), &pb.SubmitUpdateRequest{WorkerId: "sb-0", Job: "sa-few", Round: r, BaseModel: j.CurrentModel, Codec: round.CodecSecAgg,
			Payload: make([]byte, 4*n), Samples: 10})
		if err == nil {
			t.Errorf("a masked update for round %d (not open) was accepted", r)
		}
		_, err = wc.SecAgg(t.Context(), &pb.SecAggRequest{WorkerId: "sb-0", Job: "sa-few", Round: r, Phase: round.PhaseKeys,
			Keys: &pb.SecAggKeys{Worker: "sb-0", CipherPub: make([]byte, 32), MaskPub: make([]byte, 32), SeedCommit: make([]byte, 32)}})
		if err == nil {
			t.Errorf("keys for round %d (not open) were accepted", r)
		}
	}
	if after := cl.Job("sa-few"); len(after.History) != 2 {
		t.Errorf("refused messages changed the history: %d rounds", len(after.History))
	}

	// A leader killed during round 2's secure aggregation.
	submit(t, cl, spec("sa-ha", 3))
	cl.WaitRound("sa-ha", 1, time.Minute)
	WaitFor(t, 30*time.Second, "round 2 past its key phase", func() bool {
		j := cl.Job("sa-ha")
		return (j.OpenRound != nil && j.OpenRound.Number == 2 && j.OpenRound.Secagg.GetPhase() >= round.PhaseShares) || j.Status != pb.JobStatus_JOB_STATUS_RUNNING
	})
	old := cl.Leader()
	phase := cl.Job("sa-ha").OpenRound.GetSecagg().GetPhase()
	cl.Crash(old)
	cl.WaitForLeader(15 * time.Second)
	cl.Start(old)
	h := cl.WaitDone("sa-ha", 2*time.Minute)
	if h.Status != pb.JobStatus_JOB_STATUS_DONE {
		t.Fatalf("job ended %v: %s", h.Status, h.Error)
	}
	checkHistory(t, cl, h, 3)
	nl := cl.WaitForLeader(15 * time.Second)
	nconn, err := pool.Conn(nl.C.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range h.History {
		verifyRound(t, nconn, "sa-ha", r.Number)
	}
	t.Logf("killed %s in round 2's secagg phase %d; round 2 committed at attempt %d with %d masked updates", old.Name, phase, h.History[1].Secagg.GetAttempt(), h.History[1].Updates)
}

// TestSecAggSignedKeys runs secure aggregation in secure mode: every
// worker signs its keys with its certificate and checks the others' before
// sharing (so a coordinator cannot put its own keys in a worker's place);
// the round commits with every key signed by the certificate of the worker
// it names.
func TestSecAggSignedKeys(t *testing.T) {
	ca := t.TempDir()
	if err := pki.InitCA(ca, "test", time.Hour); err != nil {
		t.Fatal(err)
	}
	c := StartCoordinator(t, coordinator.Config{TLS: node(t, ca, pki.RoleCoordinator, "coord-1", time.Time{})})
	train, _ := dataset.MNIST(dataset.Train)
	parts, _ := dataset.Partition{Kind: "iid", Seed: 1}.Split(train.Y, 10, 20)
	for i, id := range []string{"w1", "w2", "w3"} {
		tr := worker.NewGorgoniaTrainer(map[string]*dataset.Examples{"mnist": train.Subset(parts[i])}, nil)
		StartWorkerWith(t, worker.Config{ID: id, Join: []string{c.GossipAddr()}, TLS: node(t, ca, pki.RoleWorker, id, time.Time{})}, tr)
	}
	WaitFor(t, 10*time.Second, "3 workers", func() bool { return len(c.FSM().Workers()) == 3 })
	admin := client.NewPoolTLS(node(t, ca, pki.RoleAdmin, "alice", time.Time{}).ClientTLS())
	defer admin.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	SubmitJob(t, admin, c.GRPCAddr(), &pb.JobSpec{
		Name: "signed", Model: "mnist-mlp-small", Dataset: "mnist", Rounds: 1, ClientsPerRound: 3, RoundTimeoutSeconds: 60, Secagg: &pb.SecAggSpec{PhaseTimeoutSeconds: 10},
		Train: &pb.TrainConfig{LocalSteps: 10, BatchSize: 32, LearningRate: 0.1},
	}, arch.Init(1))
	j := WaitDoneOn(t, c, "signed", time.Minute)
	if j.Status != pb.JobStatus_JOB_STATUS_DONE || len(j.History) != 1 || j.History[0].Updates != 3 {
		t.Fatalf("job ended %v with %d rounds: %s", j.Status, len(j.History), j.Error)
	}
	checker := node(t, ca, pki.RoleWorker, "checker", time.Time{})
	for _, k := range j.History[0].Secagg.GetKeys() {
		id, _, err := checker.VerifyCertificate(k.Certificate)
		if err != nil || id.Name != k.Worker || len(k.Signature) == 0 {
			t.Errorf("keys of %s: certificate of %v (%v), %d-byte signature", k.Worker, id, err, len(k.Signature))
		}
	}
}

// loggedCluster starts three coordinators whose logs it keeps (to search
// them, and to print them if the test fails).
func loggedCluster(t *testing.T, level slog.Level) (*Cluster, *syncBuffer) {
	logs := &syncBuffer{}
	cl := NewCluster(t, 3, ClusterOptions{Edit: func(_ int, cfg *coordinator.Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))
	}})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("coordinator logs:\n%s", logs.String())
		}
	})
	return cl, logs
}
