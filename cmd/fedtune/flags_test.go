package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestEveryFlagDocumented: every flag of every command has help text and a
// FEDTUNE_* environment variable.
func TestEveryFlagDocumented(t *testing.T) {
	app := newApp()
	check := func(path string, flags []cli.Flag) {
		for _, f := range flags {
			name := f.Names()[0]
			df, ok := f.(cli.DocGenerationFlag)
			if !ok {
				t.Errorf("%s --%s: not a documented flag type", path, name)
				continue
			}
			if df.GetUsage() == "" {
				t.Errorf("%s --%s has no help text", path, name)
			}
			envs := df.GetEnvVars()
			if len(envs) == 0 || !strings.HasPrefix(envs[0], "FEDTUNE_") {
				t.Errorf("%s --%s has no FEDTUNE_* environment variable (%v)", path, name, envs)
			}
		}
	}
	check("fedtune", app.Flags)
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := path + " " + c.Name
			if c.Usage == "" {
				t.Errorf("%s has no usage text", p)
			}
			check(p, c.Flags)
			walk(p, c.Subcommands)
		}
	}
	walk("fedtune", app.Commands)
}
