package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"
)

// Node commands (coordinator, worker) read their flags from a YAML file as
// well as from the command line and FEDTUNE_* variables: each key is a flag
// name, of the command or a global one (log-level, cert-dir, insecure…),
// and a list gives a repeatable flag several values:
//
//	id: coord-1
//	data-dir: /var/lib/fedtune
//	join: [coord-2:7946, coord-3:7946]
//	log-format: json
//
// The command line wins over the environment, which wins over the file,
// which wins over the defaults. Unknown keys are errors, so a typo is not
// silently a default.

// maxConfigBytes bounds a --config file: a few hundred flags fit in a few
// kilobytes, and a huge file is a mistake (it was once read whole: 983 MB
// of memory for a 200 MB file).
const maxConfigBytes = 1 << 20

// readSmallFile reads path if it holds at most limit bytes.
func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a config file", path, limit)
	}
	return b, nil
}

// configFlag is the --config flag of the node commands.
func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Usage: "YAML file of flag values, keys named as the flags (data-dir: /var/lib/fedtune; join: [a:7946, b:7946]); the command line and FEDTUNE_* variables win over it", EnvVars: []string{"FEDTUNE_CONFIG"}}
}

// applyConfig sets, from the file named by --config, every flag that
// neither the command line nor the environment set. It is the Before of
// the node commands.
func applyConfig(c *cli.Context) error {
	path := c.String("config")
	if path == "" {
		return nil
	}
	b, err := readSmallFile(path, maxConfigBytes)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s: line %d: want a map of flag names to values", path, top.Line)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		key := k.Value
		at := fmt.Sprintf("config %s: line %d: %s", path, k.Line, key)
		if seen[key] {
			return fmt.Errorf("%s: given twice", at)
		}
		seen[key] = true
		if key == "config" {
			return fmt.Errorf("%s: a config file cannot name another", at)
		}
		owner, flag := findFlag(c, key)
		if flag == nil {
			return fmt.Errorf("%s: not a flag of fedtune %s (known: %s)", at, c.Command.Name, strings.Join(flagNames(c), ", "))
		}
		vals, err := scalars(v)
		if err != nil {
			return fmt.Errorf("%s: %w", at, err)
		}
		if len(vals) != 1 && !repeatable(flag) {
			return fmt.Errorf("%s: --%s takes one value, not a list", at, key)
		}
		if owner.IsSet(key) {
			continue // the command line or the environment set it
		}
		for _, val := range vals {
			if err := owner.Set(key, val); err != nil {
				return fmt.Errorf("%s: %w", at, err)
			}
		}
	}
	return nil
}

// findFlag returns the flag called name (or by an alias) of the command or
// of a command above it, with the context that owns it.
func findFlag(c *cli.Context, name string) (*cli.Context, cli.Flag) {
	for _, ctx := range c.Lineage() {
		for _, f := range contextFlags(ctx) {
			if slices.Contains(f.Names(), name) {
				return ctx, f
			}
		}
	}
	return nil, nil
}

// contextFlags returns the flags a context parsed: its command's, or the
// application's for the root.
func contextFlags(ctx *cli.Context) []cli.Flag {
	if ctx.Command != nil && ctx.Command.Name != "" {
		return ctx.Command.Flags
	}
	if ctx.App != nil {
		return ctx.App.Flags
	}
	return nil
}

// flagNames lists the keys a config file may use for the command c.
func flagNames(c *cli.Context) []string {
	var out []string
	for _, ctx := range c.Lineage() {
		for _, f := range contextFlags(ctx) {
			if n := f.Names()[0]; n != "config" && n != "help" {
				out = append(out, n)
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// scalars returns a YAML value as strings: one for a scalar, one per item
// of a list of scalars.
func scalars(v *yaml.Node) ([]string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return nil, fmt.Errorf("no value")
		}
		return []string{v.Value}, nil
	case yaml.SequenceNode:
		var out []string
		for _, item := range v.Content {
			if item.Kind != yaml.ScalarNode || item.Tag == "!!null" {
				return nil, fmt.Errorf("list items must be plain values")
			}
			out = append(out, item.Value)
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("empty list")
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a value or a list of values")
}

// repeatable reports whether a flag takes several values.
func repeatable(f cli.Flag) bool {
	switch f.(type) {
	case *cli.StringSliceFlag, *cli.IntSliceFlag, *cli.Int64SliceFlag, *cli.Float64SliceFlag, *cli.Uint64SliceFlag, *cli.UintSliceFlag:
		return true
	}
	return false
}
