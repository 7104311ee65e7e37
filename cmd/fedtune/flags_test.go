package main

import (
	"os"
	"path/filepath"
	"regexp"
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

// TestHelpTexts: no flag's help shows two defaults ("(default 0.1)
// (default: 0)" once stood on 18 job submit flags), and every example
// file a command's help cites exists.
func TestHelpTexts(t *testing.T) {
	app := newApp()
	cited := regexp.MustCompile(`examples/[A-Za-z0-9_./-]+\.[a-z]+`)
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := path + " " + c.Name
			for _, f := range c.Flags {
				if s := f.String(); strings.Count(s, "(default") > 1 {
					t.Errorf("%s: %s", p, s)
				}
			}
			for _, ex := range cited.FindAllString(c.Description+c.Usage+c.UsageText, -1) {
				if _, err := os.Stat(filepath.Join("..", "..", ex)); err != nil {
					t.Errorf("%s cites %s: %v", p, ex, err)
				}
			}
			walk(p, c.Subcommands)
		}
	}
	walk("fedtune", app.Commands)
}
