package testcluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/fedtune/fedtune/internal/client"
	pb "github.com/fedtune/fedtune/protocol"
	"github.com/fedtune/fedtune/protocol/rpcpb"
)

// BuildBinary builds cmd/fedtune into dir and returns its path. pkg is the
// import path or directory of the main package.
func BuildBinary(dir, pkg string) (string, error) {
	bin := filepath.Join(dir, "fedtune")
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("build fedtune: %v\n%s", err, out)
	}
	return bin, nil
}

// Proc is a running fedtune process; its output is shown if the test fails.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartProc starts bin with args.
func StartProc(t testing.TB, bin, name string, args ...string) *Proc {
	t.Helper()
	p := &Proc{Name: name, cmd: exec.Command(bin, args...), out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() && os.Getenv("FEDTUNE_TEST_QUIET") == "" {
			out := p.out.String()
			if len(out) > 20000 {
				out = "...\n" + out[len(out)-20000:]
			}
			t.Logf("---- output of %s ----\n%s", name, out)
		}
	})
	return p
}

// PID returns the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output returns what the process printed so far (stdout and stderr).
func (p *Proc) Output() string { return p.out.String() }

// Kill sends SIGKILL (kill -9) and waits for the process to be gone.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// ProcNode is a coordinator process with fixed addresses and data dir, so
// that it can be killed and restarted as the same node.
type ProcNode struct {
	Name                          string
	GRPC, Raft, Gossip, HTTP, Dir string
	P                             *Proc // nil while down
}

// ProcCluster is coordinators and workers as processes of the built binary
// on 127.0.0.1.
type ProcCluster struct {
	t      testing.TB
	Bin    string
	Nodes  []*ProcNode
	Extra  []string // extra flags for every coordinator
	Expect int      // --bootstrap-expect of every coordinator
	pool   *client.Pool
	nextWk int
}

// NewProcCluster starts n coordinators (--bootstrap-expect n, and --fast
// unless extra names a --profile) and waits until they agree on a leader.
func NewProcCluster(t testing.TB, bin string, n int, extra ...string) *ProcCluster {
	t.Helper()
	pc := &ProcCluster{t: t, Bin: bin, Extra: extra, Expect: n, pool: client.NewPool()}
	t.Cleanup(pc.pool.Close)
	for i := range n {
		pc.Nodes = append(pc.Nodes, &ProcNode{Name: fmt.Sprintf("coord-%d", i+1), GRPC: freeAddrTB(t), Raft: freeAddrTB(t),
			Gossip: freeAddrTB(t), HTTP: freeAddrTB(t), Dir: t.TempDir()})
	}
	for _, nd := range pc.Nodes {
		pc.Start(nd)
	}
	pc.WaitForLeader(30 * time.Second)
	return pc
}

// Add starts one more coordinator, which joins the running cluster.
func (pc *ProcCluster) Add() *ProcNode {
	nd := &ProcNode{Name: fmt.Sprintf("coord-%d", len(pc.Nodes)+1), GRPC: freeAddrTB(pc.t), Raft: freeAddrTB(pc.t),
		Gossip: freeAddrTB(pc.t), HTTP: freeAddrTB(pc.t), Dir: pc.t.TempDir()}
	pc.Nodes = append(pc.Nodes, nd)
	pc.Start(nd)
	return nd
}

// Start starts (or restarts) a coordinator process.
func (pc *ProcCluster) Start(nd *ProcNode) {
	args := []string{"coordinator", "--id", nd.Name, "--data-dir", nd.Dir, "--grpc-addr", nd.GRPC, "--raft-addr", nd.Raft,
		"--gossip-addr", nd.Gossip, "--http-addr", nd.HTTP, "--bootstrap-expect", fmt.Sprint(pc.Expect)}
	if !slices.Contains(pc.Extra, "--profile") {
		args = append(args, "--fast")
	}
	for _, o := range pc.Nodes {
		if o != nd {
			args = append(args, "--join", o.Gossip)
		}
	}
	nd.P = StartProc(pc.t, pc.Bin, nd.Name, append(args, pc.Extra...)...)
}

// Kill kill -9s a coordinator.
func (pc *ProcCluster) Kill(nd *ProcNode) {
	if nd.P != nil {
		nd.P.Kill()
		nd.P = nil
	}
}

// Up returns the running coordinators.
func (pc *ProcCluster) Up() []*ProcNode {
	var out []*ProcNode
	for _, nd := range pc.Nodes {
		if nd.P != nil {
			out = append(out, nd)
		}
	}
	return out
}

// Status asks a coordinator for its ClusterStatus.
func (pc *ProcCluster) Status(nd *ProcNode, timeout time.Duration) (*pb.ClusterStatusResponse, error) {
	conn, err := pc.pool.Conn(nd.GRPC)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return rpcpb.NewAdminClient(conn).ClusterStatus(ctx, &pb.ClusterStatusRequest{})
}

// Leader returns the running coordinator that says it leads, or nil.
func (pc *ProcCluster) Leader() *ProcNode {
	for _, nd := range pc.Up() {
		if st, err := pc.Status(nd, 500*time.Millisecond); err == nil && st.State == "Leader" {
			return nd
		}
	}
	return nil
}

// WaitForLeader waits until a running coordinator leads and all running
// ones name it.
func (pc *ProcCluster) WaitForLeader(timeout time.Duration) *ProcNode {
	pc.t.Helper()
	var leader *ProcNode
	WaitFor(pc.t, timeout, "a leader all coordinators agree on", func() bool {
		leader = pc.Leader()
		if leader == nil {
			return false
		}
		for _, nd := range pc.Up() {
			st, err := pc.Status(nd, 500*time.Millisecond)
			if err != nil || st.LeaderId != leader.Name {
				return false
			}
		}
		return true
	})
	return leader
}

// Conn returns a gRPC connection to a coordinator.
func (pc *ProcCluster) Conn(nd *ProcNode) (*grpc.ClientConn, error) { return pc.pool.Conn(nd.GRPC) }

// Admin returns an Admin client for a coordinator.
func (pc *ProcCluster) Admin(nd *ProcNode) rpcpb.AdminClient {
	conn, err := pc.pool.Conn(nd.GRPC)
	if err != nil {
		pc.t.Fatal(err)
	}
	return rpcpb.NewAdminClient(conn)
}

// Job returns a job as the first coordinator that answers sees it.
func (pc *ProcCluster) Job(name string) *pb.Job {
	nodes := pc.Up()
	if l := pc.Leader(); l != nil {
		nodes = append([]*ProcNode{l}, nodes...)
	}
	for _, nd := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := pc.Admin(nd).JobStatus(ctx, &pb.JobStatusRequest{Name: name})
		cancel()
		if err == nil {
			return resp.Job
		}
	}
	return nil
}

// GossipAddrs returns every coordinator's gossip address.
func (pc *ProcCluster) GossipAddrs() []string {
	var out []string
	for _, nd := range pc.Nodes {
		out = append(out, nd.Gossip)
	}
	return out
}

// StartWorker starts a worker process joining every coordinator's gossip
// address; args are appended to the defaults (--fast, --poll-wait 2s).
func (pc *ProcCluster) StartWorker(id string, args ...string) *Proc {
	full := []string{"worker", "--id", id, "--fast", "--poll-wait", "2s", "--state-dir", pc.t.TempDir()}
	for _, g := range pc.GossipAddrs() {
		full = append(full, "--join", g)
	}
	return StartProc(pc.t, pc.Bin, id, append(full, args...)...)
}

// Run runs the binary to completion and returns its output.
func (pc *ProcCluster) Run(args ...string) (string, error) {
	out, err := exec.Command(pc.Bin, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
