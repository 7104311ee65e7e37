package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tc "github.com/fedtune/fedtune/internal/testcluster"
)

// TestSecureProcesses stands up a cluster the way the README's "Running
// securely" says — a CA, certificates per node, TLS everywhere — as
// processes, runs a job through it with the CLI's admin certificate, and
// checks that the CLI and a worker without certificates are turned away.
func TestSecureProcesses(t *testing.T) {
	root := t.TempDir()
	ca := filepath.Join(root, "ca")
	run(t, "certs", "init", "--ca-dir", ca)
	dirs := map[string]string{}
	for _, n := range []struct{ role, name string }{{"coordinator", "c1"}, {"worker", "w1"}, {"worker", "w2"}, {"admin", "alice"}} {
		dirs[n.name] = filepath.Join(root, n.name)
		run(t, "certs", "issue", "--ca-dir", ca, "--role", n.role, "--out", dirs[n.name], n.name)
	}
	grpcAddr, gossip := tc.FreeAddr(t), tc.FreeAddr(t)
	// FEDTUNE_INSECURE=1 is set for the other process tests: --insecure=false overrides it.
	tc.StartProc(t, binary, "c1", "--insecure=false", "--cert-dir", dirs["c1"], "coordinator", "--id", "c1", "--data-dir", filepath.Join(root, "data"),
		"--grpc-addr", grpcAddr, "--raft-addr", tc.FreeAddr(t), "--gossip-addr", gossip, "--http-addr", "", "--fast")
	for i, w := range []string{"w1", "w2"} {
		tc.StartProc(t, binary, w, "--insecure=false", "--cert-dir", dirs[w], "worker", "--id", w, "--join", gossip, "--fast",
			"--num-partitions", "2", "--partition-index", fmt.Sprint(i), "--max-examples", "2000", "--state-dir", filepath.Join(root, w+"-state"))
	}
	admin := []string{"--insecure=false", "--cert-dir", dirs["alice"], "--cert-name", "alice"}
	tc.WaitFor(t, 30*time.Second, "2 workers alive", func() bool {
		out, err := exec(append(admin, "workers", "--coordinator", grpcAddr)...)
		return err == nil && strings.Count(out, "alive") == 2
	})
	run(t, append(admin, submitArgs(grpcAddr, "sec", 2, 2, "--min-updates", "2")...)...)
	tc.WaitFor(t, 2*time.Minute, "job done", func() bool {
		out, err := exec(append(admin, "job", "status", "--coordinator", grpcAddr, "sec")...)
		return err == nil && strings.Contains(out, "done")
	})
	if out, err := exec("--insecure=false", "--cert-dir", filepath.Join(root, "nowhere"), "job", "list", "--coordinator", grpcAddr); err == nil || !strings.Contains(out, "--insecure") {
		t.Errorf("CLI without a certificate: err %v, output %q; want a refusal pointing at --insecure", err, out)
	}
	if out, err := exec("--insecure", "job", "list", "--coordinator", grpcAddr); err == nil {
		t.Errorf("a plaintext CLI was served: %q", out)
	}
	if out, err := exec("--insecure=false", "--cert-dir", dirs["w1"], "worker", "--id", "w3", "--join", gossip, "--join-timeout", "2s"); err == nil || !strings.Contains(out, "certificate") {
		t.Errorf("a worker without its certificate: err %v, output %q", err, out)
	}
}
