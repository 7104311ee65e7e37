package coordinator

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// MaxReadyLag is how many committed log entries this node may not yet
// have applied and still be ready: a follower further behind serves stale
// job states.
const MaxReadyLag = 1000

// Health endpoints, for load balancers and Kubernetes probes:
//
//	/healthz  200 while the process serves HTTP (liveness)
//	/readyz   200 when Raft has a leader, this node has applied its log to
//	          within MaxReadyLag entries of the commit index, and its blob
//	          store takes a write; 503 otherwise. The body lists each check.
func (c *Coordinator) healthHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		checks, ready := c.readiness()
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprint(w, strings.Join(checks, "\n")+"\n")
	})
}

// readiness runs the readiness checks and describes each.
func (c *Coordinator) readiness() ([]string, bool) {
	ready := true
	check := func(name string, err error, ok string) string {
		if err != nil {
			ready = false
			return fmt.Sprintf("%s: FAIL %v", name, err)
		}
		return fmt.Sprintf("%s: ok %s", name, ok)
	}
	var out []string
	addr, id := c.raft.LeaderWithID()
	var leaderErr error
	if addr == "" {
		leaderErr = fmt.Errorf("no Raft leader known (%s)", c.noLeaderReason())
	}
	out = append(out, check("leader", leaderErr, string(id)))
	commit, _ := strconv.ParseUint(c.raft.Stats()["commit_index"], 10, 64)
	applied := c.raft.AppliedIndex()
	var lagErr error
	if commit > applied+MaxReadyLag {
		lagErr = fmt.Errorf("applied %d of %d committed entries", applied, commit)
	}
	out = append(out, check("log", lagErr, fmt.Sprintf("applied %d of %d committed entries", applied, commit)))
	out = append(out, check("blobs", c.blobs.CheckWritable(), "writable"))
	return out, ready
}

// CheckWritable writes and removes a file in the store's directory.
func (s *BlobStore) CheckWritable() error {
	f, err := os.CreateTemp(s.dir, ".ready-*")
	if err != nil {
		return fmt.Errorf("blob store: %w", err)
	}
	name := f.Name()
	_, werr := f.Write([]byte("ok"))
	cerr := f.Close()
	rerr := os.Remove(name)
	for _, e := range []error{werr, cerr, rerr} {
		if e != nil {
			return fmt.Errorf("blob store: %w", e)
		}
	}
	return nil
}
