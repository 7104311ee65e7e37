package testcluster

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fedtune/fedtune/coordinator"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHealthEndpoints: every coordinator of three is live and ready; when
// two are killed the survivor stays live but is not ready (no leader), and
// says why; it is ready again once they are back.
func TestHealthEndpoints(t *testing.T) {
	cl := NewCluster(t, 3, ClusterOptions{Edit: func(_ int, cfg *coordinator.Config) { cfg.HTTPAddr = "127.0.0.1:0" }})
	for _, nd := range cl.Up() {
		base := "http://" + nd.C.HTTPAddr()
		if code, body := get(t, base+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
			t.Errorf("%s /healthz: %d %q", nd.Name, code, body)
		}
		WaitFor(t, 10*time.Second, nd.Name+" ready", func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })
		_, body := get(t, base+"/readyz")
		for _, want := range []string{"leader: ok", "log: ok", "blobs: ok writable"} {
			if !strings.Contains(body, want) {
				t.Errorf("%s /readyz lacks %q: %s", nd.Name, want, body)
			}
		}
	}
	survivor := cl.Nodes[0]
	for _, nd := range cl.Nodes[1:] {
		cl.Crash(nd)
	}
	base := "http://" + survivor.C.HTTPAddr()
	WaitFor(t, 30*time.Second, "the survivor not ready", func() bool { code, _ := get(t, base+"/readyz"); return code == http.StatusServiceUnavailable })
	if _, body := get(t, base+"/readyz"); !strings.Contains(body, "leader: FAIL") {
		t.Errorf("/readyz without a quorum does not say why: %s", body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("the survivor's /healthz: %d", code)
	}
	for _, nd := range cl.Nodes[1:] {
		cl.Start(nd)
	}
	WaitFor(t, 30*time.Second, "the survivor ready again", func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })
}
