// Package layering holds tests of the project's dependency rules (the
// README's architecture section): which packages may import which.
package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/fedtune/fedtune"

// deps returns the transitive imports of pkg, as `go list -deps` prints them.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, ee.Stderr)
		}
		t.Skipf("go list unavailable: %v", err)
	}
	return strings.Fields(string(out))
}

func TestDependencyRules(t *testing.T) {
	cases := []struct {
		pkg       string
		forbidden []string // import path prefixes pkg must not reach
	}{
		{module + "/sim", []string{
			"github.com/hashicorp/raft", "github.com/hashicorp/raft-wal",
			"github.com/hashicorp/memberlist", "google.golang.org/grpc",
			"github.com/prometheus/", module + "/coordinator",
		}},
		{module + "/round", []string{
			"google.golang.org/grpc", "github.com/hashicorp/", "net/http",
			module + "/coordinator", module + "/dataset",
		}},
		{module + "/coordinator", []string{module + "/model", module + "/dataset", "gorgonia.org/"}},
		{module + "/lora", []string{module + "/model", "gorgonia.org/"}},
		{module + "/hf", []string{module + "/model", module + "/coordinator", "gorgonia.org/"}},
		{module + "/tokenizer", []string{module + "/model", module + "/tensor", module + "/protocol", "gorgonia.org/"}},
		{module + "/tensor", []string{module + "/aggregation", module + "/model",
			module + "/protocol", module + "/coordinator"}},
	}
	for _, c := range cases {
		t.Run(strings.TrimPrefix(c.pkg, module+"/"), func(t *testing.T) {
			for _, d := range deps(t, c.pkg) {
				for _, f := range c.forbidden {
					if d == strings.TrimSuffix(f, "/") || strings.HasPrefix(d, f) && (strings.HasSuffix(f, "/") || strings.HasPrefix(d, f+"/")) {
						t.Errorf("%s depends on %s (forbidden: %s)", c.pkg, d, f)
					}
				}
			}
		})
	}
}
