package main

import (
	"encoding/json"
	"fmt"

	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// outputFlag is --output of the read commands: text for people, json for
// scripts.
func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Value: "text", Usage: "text, or json (the whole answer, for scripts)", EnvVars: []string{"FEDTUNE_OUTPUT"}}
}

// wantJSON says whether --output asks for JSON, refusing other values.
func wantJSON(c *cli.Context) (bool, error) {
	switch o := c.String("output"); o {
	case "json":
		return true, nil
	case "text", "":
		return false, nil
	default:
		return false, fmt.Errorf("--output %q: want text or json", o)
	}
}

// printJSON writes v as indented JSON: protobuf messages with their .proto
// field names, anything else with encoding/json.
func printJSON(c *cli.Context, v any) error {
	var b []byte
	var err error
	if m, ok := v.(proto.Message); ok {
		b, err = protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(m)
	} else {
		b, err = json.MarshalIndent(v, "", "  ")
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.App.Writer, string(b))
	return err
}
