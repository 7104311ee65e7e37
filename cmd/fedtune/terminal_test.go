package main

import "testing"

func TestTerminalSafe(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"w1", "w1"},
		{"lab-gpu-1", "lab-gpu-1"},
		{"région", "région"},
		{"evil\nw2  alive  device=gpu", `evil\x0aw2  alive  device=gpu`},
		{"\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"rtl\u202eeman", `rtl\u202eeman`},
		{"bad\xffutf8", `bad\xffutf8`},
		{"tab\there", `tab\x09here`},
	} {
		if got := terminalSafe(tc.in); got != tc.want {
			t.Errorf("terminalSafe(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
