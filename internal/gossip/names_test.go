package gossip

import (
	"strings"
	"testing"
)

func TestCheckNameAndLabels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		labels map[string]string
		ok     bool
	}{
		{"w1", map[string]string{"device": "gpu", "gpu": "NVIDIA A100-SXM4-40GB", "region": "eu"}, true},
		{"coord-1", nil, true},
		{"‹img src=x›", nil, false},
		{"evil\nname", nil, false},
		{"", nil, false},
		{strings.Repeat("a", 64), nil, false},
		{"w1", map[string]string{"device": "gpu\x1b[31m"}, false},
		{"w1", map[string]string{"de vice": "gpu"}, false},
		{"w1", map[string]string{"note": "<script>"}, false},
		{"w1", map[string]string{"long": strings.Repeat("x", 64)}, false},
	} {
		err := CheckName(tc.name)
		if err == nil {
			err = CheckLabels(tc.labels)
		}
		if (err == nil) != tc.ok {
			t.Errorf("%q %v: err %v, want ok=%v", tc.name, tc.labels, err, tc.ok)
		}
	}
	many := map[string]string{}
	for i := range MaxLabels + 1 {
		many[strings.Repeat("k", i+1)] = "v"
	}
	if CheckLabels(many) == nil {
		t.Errorf("%d labels accepted", len(many))
	}
}
