package main

import (
	"strings"
	"testing"
)

// TestJobSubmitRefusesAbsurdNumbers: job submit refuses every non-finite,
// wrapping, absurd or silently-defaulted number before it dials anything,
// and its error names the flag.
func TestJobSubmitRefusesAbsurdNumbers(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--lr", "NaN"}, "--lr"},
		{[]string{"--lr", "Inf"}, "--lr"},
		{[]string{"--lr", "1e30"}, "--lr"},
		{[]string{"--momentum", "NaN"}, "--momentum"},
		{[]string{"--momentum", "5"}, "--momentum"},
		{[]string{"--max-update-norm", "NaN"}, "--max-update-norm"},
		{[]string{"--max-update-ratio", "-1"}, "--max-update-ratio"},
		{[]string{"--batch-size", "1000000000"}, "--batch-size"},
		{[]string{"--batch-size", "0"}, "--batch-size"},
		{[]string{"--epochs", "1000000000"}, "--epochs"},
		{[]string{"--clients", "100000", "--min-updates", "1"}, "--clients"},
		{[]string{"--rounds", "4294967295"}, "--rounds"},
		{[]string{"--rounds", "4294967296"}, "--rounds"},
		{[]string{"--round-timeout", "-1s"}, "--round-timeout"},
		{[]string{"--round-timeout", "0s"}, "--round-timeout"},
		{[]string{"--over-select", "NaN"}, "--over-select"},
		{[]string{"--prox-mu", "Inf"}, "--prox-mu"},
		{[]string{"--tau", "NaN", "--aggregator", "centered-clip"}, "--tau"},
		{[]string{"--server-lr", "Inf"}, "--server-lr"},
		{[]string{"--lora-rank", "2", "--lora-alpha", "Inf"}, "--lora-alpha"},
		{[]string{"--mode", "async", "--staleness-a", "NaN"}, "--staleness-a"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := append([]string{"fedtune", "--insecure", "job", "submit", "--name", "j", "--coordinator", "127.0.0.1:1"}, tc.args...)
			err := newApp().Run(args)
			if err == nil || !strings.Contains(err.Error(), tc.flag+" ") {
				t.Fatalf("err %v, want one naming %s", err, tc.flag)
			}
			if strings.Contains(err.Error(), "connect") || strings.Contains(err.Error(), "dial") {
				t.Fatalf("refused only when dialling: %v", err)
			}
		})
	}
}
