package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestHoistFlags: flags after a command's positional arguments are read as
// flags (`job status quorum1 -c ADDR` was refused with advice that made
// the job name the address).
func TestHoistFlags(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		{"fedtune job status quorum1 -c 10.0.0.1:7070", "fedtune job status -c 10.0.0.1:7070 quorum1"},
		{"fedtune job status quorum1 --watch -c a:1", "fedtune job status --watch -c a:1 quorum1"},
		{"fedtune --insecure job status j --coordinator=a:1", "fedtune --insecure job status --coordinator=a:1 j"},
		{"fedtune job status -c a:1 j", "fedtune job status -c a:1 j"},
		{"fedtune aggregate u1.st u2.st -o out.st --rule krum", "fedtune aggregate -o out.st --rule krum u1.st u2.st"},
		{"fedtune aggregate -o out -- -odd-name.st", "fedtune aggregate -o out -- -odd-name.st"},
		{"fedtune job status j --unknown", "fedtune job status j --unknown"},
		{"fedtune job status j --insecure -c a:1", "fedtune --insecure job status -c a:1 j"},
		{"fedtune", "fedtune"},
	} {
		got := strings.Join(hoistFlags(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
	if got := hoistFlags(app, []string{"fedtune", "job", "status", "j", "-c"}); !slices.Equal(got, []string{"fedtune", "job", "status", "j", "-c"}) {
		t.Errorf("a flag missing its value: %v", got)
	}
}

// TestJobName: a job is named by its argument or --job, in any order, and
// the two must agree.
func TestJobName(t *testing.T) {
	cases := []struct {
		args []string
		want string // "" for an error
	}{
		{[]string{"j1"}, "j1"},
		{[]string{"--job", "j1"}, "j1"},
		{[]string{"--job", "j1", "j1"}, "j1"},
		{[]string{"j1", "--job", "j1"}, "j1"},
		{[]string{"--job", "j1", "j2"}, ""},
		{[]string{}, ""},
		{[]string{"j1", "j2"}, ""},
	}
	for _, c := range cases {
		var got string
		app := &cli.App{Name: "fedtune", Commands: []*cli.Command{{Name: "ledger", Flags: []cli.Flag{jobFlag()}, Action: func(ctx *cli.Context) (err error) {
			got, err = jobName(ctx)
			return err
		}}}}
		err := app.Run(hoistFlags(app, append([]string{"fedtune", "ledger"}, c.args...)))
		if c.want == "" && err == nil || c.want != "" && (err != nil || got != c.want) {
			t.Errorf("ledger %v: %q, %v; want %q", c.args, got, err, c.want)
		}
	}
}
