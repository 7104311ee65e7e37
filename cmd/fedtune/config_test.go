package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	tc "github.com/fedtune/fedtune/internal/testcluster"
)

// runWithConfig runs `fedtune <args>` in process with the named command's
// action replaced by one that records the flags it sees.
func runWithConfig(t *testing.T, command string, args ...string) (map[string]string, error) {
	t.Helper()
	app := newApp()
	app.Writer, app.ErrWriter = io.Discard, io.Discard
	got := map[string]string{}
	for _, cmd := range app.Commands {
		if cmd.Name != command {
			continue
		}
		cmd.Action = func(c *cli.Context) error {
			for _, name := range flagNames(c) {
				owner, f := findFlag(c, name)
				if _, ok := f.(*cli.StringSliceFlag); ok {
					got[name] = strings.Join(owner.StringSlice(name), ",")
				} else {
					got[name] = fmt.Sprint(owner.Value(name))
				}
			}
			return nil
		}
	}
	return got, app.Run(append([]string{"fedtune", command}, args...))
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fedtune.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigFile: a node command takes its flags from --config (or
// FEDTUNE_CONFIG), its own and the global ones, lists for repeatable
// flags; the command line and the environment win over the file; unknown
// keys, lists for single flags, values of the wrong kind and malformed
// files are errors naming the file, the line and the key.
func TestConfigFile(t *testing.T) {
	const good = `# a coordinator of a 3-node cluster
id: coord-7
data-dir: /var/lib/fedtune
join: [coord-2:7946, coord-3:7946]
bootstrap-expect: 3
server-grace: 90s
fast: true
log-format: json
`
	cases := []struct {
		name    string
		command string
		file    string
		args    []string
		env     map[string]string
		want    map[string]string
		wantErr string
	}{
		{name: "file sets command and global flags", command: "coordinator", file: good,
			want: map[string]string{"id": "coord-7", "data-dir": "/var/lib/fedtune", "join": "coord-2:7946,coord-3:7946",
				"bootstrap-expect": "3", "server-grace": "1m30s", "fast": "true", "log-format": "json", "grpc-addr": "127.0.0.1:7070"}},
		{name: "command line wins", command: "coordinator", file: good, args: []string{"--id", "coord-8", "--join", "x:1"},
			want: map[string]string{"id": "coord-8", "join": "x:1", "data-dir": "/var/lib/fedtune"}},
		{name: "environment wins", command: "coordinator", file: good, env: map[string]string{"FEDTUNE_DATA_DIR": "/srv/ft", "FEDTUNE_LOG_FORMAT": "text"},
			want: map[string]string{"data-dir": "/srv/ft", "log-format": "text", "id": "coord-7"}},
		{name: "FEDTUNE_CONFIG names the file", command: "worker", env: map[string]string{"FEDTUNE_CONFIG": "FILE"},
			file: "label: [region=eu, lang=fr]\nmax-examples: 500\ndevice: cpu\n",
			want: map[string]string{"label": "region=eu,lang=fr", "max-examples": "500", "device": "cpu", "dataset": "mnist"}},
		{name: "empty file", command: "worker", file: "# nothing\n", want: map[string]string{"device": "auto"}},
		{name: "unknown key", command: "coordinator", file: "id: a\ndata-dri: /x\n", wantErr: "line 2: data-dri: not a flag of fedtune coordinator"},
		{name: "a worker flag in a coordinator's file", command: "coordinator", file: "dataset: mnist\n", wantErr: "dataset: not a flag of fedtune coordinator"},
		{name: "list for a single flag", command: "coordinator", file: "id: [a, b]\n", wantErr: "--id takes one value, not a list"},
		{name: "wrong kind", command: "coordinator", file: "bootstrap-expect: three\n", wantErr: "line 1: bootstrap-expect"},
		{name: "bad duration", command: "worker", file: "poll-wait: soon\n", wantErr: "poll-wait"},
		{name: "no value", command: "worker", file: "dataset:\n", wantErr: "dataset: no value"},
		{name: "map value", command: "worker", file: "label: {region: eu}\n", wantErr: "want a value or a list"},
		{name: "twice", command: "worker", file: "dataset: a\ndataset: b\n", wantErr: "given twice"},
		{name: "not a map", command: "worker", file: "- id\n", wantErr: "want a map of flag names"},
		{name: "malformed", command: "worker", file: "id: [a\n", wantErr: "config "},
		{name: "names another config", command: "worker", file: "config: other.yaml\n", wantErr: "cannot name another"},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.file)
			args := tt.args
			for k, v := range tt.env {
				if v == "FILE" {
					v = path
				}
				t.Setenv(k, v)
			}
			if _, viaEnv := tt.env["FEDTUNE_CONFIG"]; !viaEnv {
				args = append([]string{"--config", path}, args...)
			}
			got, err := runWithConfig(t, tt.command, args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("got error %v, want one naming %s and %q", err, path, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("--%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
	if _, err := runWithConfig(t, "worker", "--config", filepath.Join(t.TempDir(), "absent.yaml")); err == nil || !strings.Contains(err.Error(), "absent.yaml") {
		t.Errorf("a missing file: %v", err)
	}
	// A huge file is refused before it is read whole.
	huge := writeFile(t, "id: c1\n# "+strings.Repeat("x", maxConfigBytes)+"\n")
	if _, err := runWithConfig(t, "coordinator", "--config", huge); err == nil || !strings.Contains(err.Error(), "not a config file") {
		t.Errorf("a file of %d bytes: %v", maxConfigBytes+10, err)
	}
}

// TestConfigFileProcesses: a coordinator and a worker started with nothing
// but --config: the coordinator listens where its file says (its /metrics
// answers), logs JSON, and the worker joins with its file's labels.
func TestConfigFileProcesses(t *testing.T) {
	grpcAddr, httpAddr, gossip := tc.FreeAddr(t), tc.FreeAddr(t), tc.FreeAddr(t)
	coord := writeFile(t, fmt.Sprintf(`id: coord-cfg
data-dir: %s
grpc-addr: %s
raft-addr: %s
gossip-addr: %s
http-addr: %s
fast: true
log-format: json
`, t.TempDir(), grpcAddr, tc.FreeAddr(t), gossip, httpAddr))
	cp := tc.StartProc(t, binary, "coord-cfg", "coordinator", "--config", coord)
	wk := writeFile(t, fmt.Sprintf(`id: w-cfg
join: [%s]
label: [region=eu, lang=fr]
max-examples: 500
fast: true
poll-wait: 2s
state-dir: %s
`, gossip, t.TempDir()))
	tc.StartProc(t, binary, "w-cfg", "worker", "--config", wk)

	deadline := time.Now().Add(30 * time.Second)
	var out string
	for time.Now().Before(deadline) {
		out, _ = exec("workers", "--coordinator", grpcAddr)
		if strings.Contains(out, "w-cfg") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(out, "w-cfg") || !strings.Contains(out, "region=eu") || !strings.Contains(out, "lang=fr") {
		t.Fatalf("the worker configured by file is not in the roster with its labels:\n%s", out)
	}
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatalf("the coordinator's http-addr from its file: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/metrics: %s", resp.Status)
	}
	var jsonLines int
	for _, line := range strings.Split(cp.Output(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["node"] == "coord-cfg" {
			jsonLines++
		}
	}
	if jsonLines == 0 {
		t.Errorf("log-format: json from the file: no JSON log line with node=coord-cfg in\n%s", cp.Output())
	}
}
