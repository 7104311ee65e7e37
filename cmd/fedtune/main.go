// Command fedtune is the single fedtune binary: coordinator, worker, job and
// model tools, and the demo. This package only wires flags to the packages
// that do the work.
package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	app := newApp()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunContext(ctx, hoistFlags(app, os.Args)); err != nil {
		fmt.Fprintln(os.Stderr, "fedtune:", err)
		os.Exit(1)
	}
}

// newApp returns the command tree.
func newApp() *cli.App {
	app := &cli.App{
		Name:                 "fedtune",
		Usage:                "federated fine-tuning of shared models on data that never leaves its owners",
		Version:              version(),
		EnableBashCompletion: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn or error", EnvVars: []string{"FEDTUNE_LOG_LEVEL"}},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json", EnvVars: []string{"FEDTUNE_LOG_FORMAT"}},
			&cli.StringFlag{Name: "cert-dir", Value: filepath.Join("fedtune-data", "certs"), Usage: "directory of this node's certificate, key and the cluster's ca.pem (fedtune certs issue --out)", EnvVars: []string{"FEDTUNE_CERT_DIR"}},
			&cli.StringFlag{Name: "cert-name", Value: "admin", Usage: "CLI commands: the name of the admin certificate to use", EnvVars: []string{"FEDTUNE_CERT_NAME"}},
			&cli.BoolFlag{Name: "insecure", Usage: "no TLS: plaintext gRPC and Raft, anyone may call anything (local demos only; every node warns)", EnvVars: []string{"FEDTUNE_INSECURE"}},
		},
		Commands: []*cli.Command{
			coordinatorCommand(),
			workerCommand(),
			jobCommand(),
			workersCommand(),
			clusterCommand(),
			ledgerCommand(),
			aggregateCommand(),
			verifyCommand(),
			modelCommand(),
			tokenizerCommand(),
			demoCommand(),
			simCommand(),
			plotCommand(),
			certsCommand(),
			keyringCommand(),
			privacyCommand(),
			completionCommand(),
			{
				Name:  "version",
				Usage: "print the version and build information",
				Action: func(c *cli.Context) error {
					fmt.Fprint(c.App.Writer, buildInfo())
					return nil
				},
			},
		},
	}
	envFirst(app.Flags)
	for _, c := range app.Commands {
		tidyDefaults(c)
		walkCommands(c, func(c *cli.Command) { envFirst(c.Flags) })
	}
	return app
}

// EnvVar is the environment variable of a flag: FEDTUNE_ and its name in
// capitals with _ for - (--http-addr: FEDTUNE_HTTP_ADDR).
func EnvVar(flag string) string {
	return "FEDTUNE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envFirst makes FEDTUNE_<FLAG> the first variable of every flag, keeping
// the names older releases read (FEDTUNE_JOB for job submit --name, …)
// after it: the rule the README states holds everywhere, and old
// environments still work.
func envFirst(flags []cli.Flag) {
	for _, f := range flags {
		v := reflect.ValueOf(f)
		if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
			continue
		}
		field := v.Elem().FieldByName("EnvVars")
		if !field.IsValid() || !field.CanSet() {
			continue
		}
		envs := field.Interface().([]string)
		want := EnvVar(f.Names()[0])
		if len(envs) > 0 && envs[0] == want {
			continue
		}
		field.Set(reflect.ValueOf(append([]string{want}, slices.DeleteFunc(slices.Clone(envs), func(e string) bool { return e == want })...)))
	}
}

// walkCommands calls fn on c and every command below it.
func walkCommands(c *cli.Command, fn func(*cli.Command)) {
	fn(c)
	for _, sub := range c.Subcommands {
		walkCommands(sub, fn)
	}
}

// usageDefault is a default written at the end of a flag's help text,
// "(default 10)" or "(default 0: off)".
var usageDefault = regexp.MustCompile(`\s*\(default:? ([^()]*)\)$`)

// tidyDefaults moves a default written at the end of a flag's help text
// into the flag's default text, so that help shows one default, the
// meaningful one ("(default: 10)"), not that and the zero value that stands
// for it ("(default 10) (default: 0)").
func tidyDefaults(c *cli.Command) {
	for _, f := range c.Flags {
		var usage, text *string
		switch f := f.(type) {
		case *cli.Float64Flag:
			usage, text = &f.Usage, &f.DefaultText
		case *cli.UintFlag:
			usage, text = &f.Usage, &f.DefaultText
		case *cli.Uint64Flag:
			usage, text = &f.Usage, &f.DefaultText
		case *cli.IntFlag:
			usage, text = &f.Usage, &f.DefaultText
		case *cli.StringFlag:
			usage, text = &f.Usage, &f.DefaultText
		case *cli.DurationFlag:
			usage, text = &f.Usage, &f.DefaultText
		case *cli.BoolFlag:
			usage, text = &f.Usage, &f.DefaultText
		default:
			continue
		}
		if m := usageDefault.FindStringSubmatch(*usage); m != nil && *text == "" {
			*usage, *text = strings.TrimSuffix(*usage, m[0]), m[1]
		}
	}
	for _, sub := range c.Subcommands {
		tidyDefaults(sub)
	}
}

// buildVersion is set by `make build` (-ldflags -X main.buildVersion=...).
var buildVersion string

func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if buildVersion != "" {
		v = buildVersion
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v + " " + bi.GoVersion
}

// buildInfo describes the binary: version, commit and its time, whether
// the tree was modified, Go version and platform, and whether it is
// statically linked (no cgo).
func buildInfo() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "fedtune (no build information)\n"
	}
	set := map[string]string{}
	for _, s := range bi.Settings {
		set[s.Key] = s.Value
	}
	v := cmp.Or(buildVersion, bi.Main.Version)
	var b strings.Builder
	fmt.Fprintf(&b, "fedtune %s\n", v)
	if r := set["vcs.revision"]; r != "" {
		fmt.Fprintf(&b, "commit  %s %s", r, set["vcs.time"])
		if set["vcs.modified"] == "true" {
			b.WriteString(" (modified)")
		}
		b.WriteString("\n")
	}
	linking := "static (CGO_ENABLED=0)"
	if set["CGO_ENABLED"] == "1" {
		linking = "dynamic (cgo)"
	}
	fmt.Fprintf(&b, "go      %s %s/%s, %s\n", bi.GoVersion, set["GOOS"], set["GOARCH"], linking)
	return b.String()
}

// logger builds the slog logger the global flags ask for.
func logger(c *cli.Context, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.String("log-format") {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", c.String("log-format"))
}

// parseLabels turns ["k=v", ...] into a map.
func parseLabels(flag string, kvs []string) (map[string]string, error) {
	m := map[string]string{}
	for _, kv := range kvs {
		for _, part := range strings.Split(kv, ",") {
			if part == "" {
				continue
			}
			k, v, ok := strings.Cut(part, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("--%s %q: want key=value", flag, part)
			}
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "node"
	}
	return h
}
