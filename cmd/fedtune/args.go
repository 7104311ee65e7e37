package main

import (
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// hoistFlags moves the flags that follow a command's positional arguments
// to before them, so that `fedtune job status NAME -c ADDR --watch` means
// what it says (urfave/cli stops reading flags at the first positional
// argument). Flags of the command and the global ones are recognised, with
// their values (a global one goes before the command, where the application
// reads it); "--" ends the flags as usual, and anything not recognised stays
// where it was.
func hoistFlags(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	// Global flags, then the command path (global flags may stand between
	// its words).
	path := []string{args[0]}
	i := 1
	cmds, flags := app.Commands, app.Flags
	for i < len(args) {
		a := args[i]
		if strings.HasPrefix(a, "-") {
			n := flagWidth(flags, a, args[i+1:])
			if n == 0 {
				return args
			}
			path = append(path, args[i:i+n]...)
			i += n
			continue
		}
		k := slices.IndexFunc(cmds, func(c *cli.Command) bool { return c.HasName(a) })
		if k < 0 {
			break
		}
		path = append(path, a)
		flags = cmds[k].Flags
		cmds = cmds[k].Subcommands
		i++
	}
	// The rest: the command's own flags go after the path; global ones,
	// which only the application reads, before it.
	var global, hoisted, positional []string
	for i < len(args) {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i:]...)
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 {
			if n := flagWidth(flags, a, args[i+1:]); n > 0 {
				hoisted = append(hoisted, args[i:i+n]...)
				i += n
				continue
			}
			if n := flagWidth(app.Flags, a, args[i+1:]); n > 0 {
				global = append(global, args[i:i+n]...)
				i += n
				continue
			}
		}
		positional = append(positional, a)
		i++
	}
	out := append([]string{args[0]}, global...)
	return append(append(append(out, path[1:]...), hoisted...), positional...)
}

// flagWidth returns how many arguments the flag a takes up (1, or 2 with
// its value), or 0 if flags has no such flag or its value is missing.
func flagWidth(flags []cli.Flag, a string, rest []string) int {
	name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
	for _, f := range flags {
		if !slices.Contains(f.Names(), name) {
			continue
		}
		if _, isBool := f.(*cli.BoolFlag); isBool || hasValue {
			return 1
		}
		if len(rest) == 0 {
			return 0 // no value: left where it is, for the command to refuse
		}
		return 2
	}
	return 0
}
