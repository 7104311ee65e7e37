package main

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

// knownConfig returns, for a subcommand, the flag names (without dashes)
// and FEDTUNE_* variables it and the global flags accept.
func knownConfig(t *testing.T, sub string) (flags, envs map[string]bool) {
	app := newApp()
	flags, envs = map[string]bool{}, map[string]bool{}
	add := func(fs []cli.Flag) {
		for _, f := range fs {
			for _, n := range f.Names() {
				flags[n] = true
			}
			if df, ok := f.(cli.DocGenerationFlag); ok {
				for _, e := range df.GetEnvVars() {
					envs[e] = true
				}
			}
		}
	}
	add(app.Flags)
	i := slices.IndexFunc(app.Commands, func(c *cli.Command) bool { return c.Name == sub })
	if i < 0 {
		t.Fatalf("no command %q", sub)
	}
	add(app.Commands[i].Flags)
	for _, c := range app.Commands[i].Subcommands { // e.g. `job submit` through the cli service
		add(c.Flags)
	}
	return flags, envs
}

// TestComposeFile: every service of examples/compose runs a fedtune command
// with flags and FEDTUNE_* variables that command knows, so the packaging
// cannot drift from the CLI unnoticed.
func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	roles := map[string]int{}
	for name, s := range doc.Services {
		if s.Image != "fedtune" {
			t.Errorf("%s: image %q", name, s.Image)
		}
		sub := "job"
		if len(s.Command) > 0 {
			sub = s.Command[0]
		}
		roles[sub]++
		flags, envs := knownConfig(t, sub)
		for _, a := range s.Command[min(1, len(s.Command)):] {
			if f, ok := strings.CutPrefix(a, "--"); ok && !flags[f] {
				t.Errorf("%s: fedtune %s has no flag --%s", name, sub, f)
			}
		}
		for e := range s.Environment {
			if !envs[e] {
				t.Errorf("%s: fedtune %s reads no %s", name, sub, e)
			}
		}
	}
	if roles["coordinator"] != 3 || roles["worker"] != 4 {
		t.Errorf("compose runs %d coordinators and %d workers, want 3 and 4", roles["coordinator"], roles["worker"])
	}
}

// TestSystemdEnvFiles: the example env files set only variables their
// command reads.
func TestSystemdEnvFiles(t *testing.T) {
	for file, sub := range map[string]string{"coordinator.env": "coordinator", "worker.env": "worker"} {
		f, err := os.Open(filepath.Join("..", "..", "examples", "systemd", file))
		if err != nil {
			t.Fatal(err)
		}
		_, envs := knownConfig(t, sub)
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, _, _ := strings.Cut(line, "=")
			if n++; !envs[k] {
				t.Errorf("%s: fedtune %s reads no %s", file, sub, k)
			}
		}
		f.Close()
		if n == 0 {
			t.Errorf("%s sets nothing", file)
		}
	}
}

// TestDeploymentFilesWork checks what made the deployment examples fail as
// written: systemd units running as a DynamicUser, which cannot read the
// 0600 keys `certs issue` writes; a compose service publishing a port with
// only internal networks (Docker publishes nothing then); a Dockerfile
// whose default image has no shell for --trainer exec and no other image
// that has one, or whose default target is not the static image.
func TestDeploymentFilesWork(t *testing.T) {
	root := filepath.Join("..", "..")
	for _, unit := range []string{"fedtune-coordinator.service", "fedtune-worker.service"} {
		b, err := os.ReadFile(filepath.Join(root, "examples", "systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "\nDynamicUser=yes") || !strings.Contains(string(b), "\nUser=fedtune") {
			t.Errorf("%s: want a fixed User=fedtune that owns the certificates, not DynamicUser", unit)
		}
	}
	b, err := os.ReadFile(filepath.Join(root, "examples", "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Ports    []string `yaml:"ports"`
			Networks []string `yaml:"networks"`
		} `yaml:"services"`
		Networks map[string]struct {
			Internal bool `yaml:"internal"`
		} `yaml:"networks"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for name, s := range doc.Services {
		if len(s.Ports) > 0 && !slices.ContainsFunc(s.Networks, func(n string) bool { return !doc.Networks[n].Internal }) {
			t.Errorf("compose: %s publishes %v but is only on internal networks %v", name, s.Ports, s.Networks)
		}
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	froms := regexp.MustCompile(`(?m)^FROM (\S+)(?: AS (\S+))?`).FindAllStringSubmatch(string(df), -1)
	if len(froms) == 0 || froms[len(froms)-1][1] != "scratch" {
		t.Errorf("Dockerfile: the default (last) stage is %v, want the static image FROM scratch", froms[len(froms)-1])
	}
	if !slices.ContainsFunc(froms, func(f []string) bool { return f[2] == "exec-worker" }) || !strings.Contains(string(df), "python3") {
		t.Error("Dockerfile: no exec-worker target with Python for --trainer exec")
	}
}
