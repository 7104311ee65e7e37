package coordinator

import (
	"strings"
	"testing"
	"time"
)

// TestConfigRefusesNegatives: a negative size, rate or grace is an error
// naming it, not silently the default (max-blob-bytes: -5 and
// server-grace: -1s were accepted).
func TestConfigRefusesNegatives(t *testing.T) {
	for _, tc := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.MaxBlobBytes = -5 }, "max blob bytes"},
		{func(c *Config) { c.ServerGrace = -time.Second }, "server grace"},
		{func(c *Config) { c.WorkerGrace = -time.Second }, "worker grace"},
		{func(c *Config) { c.SubmitRate = -1 }, "submit rate"},
		{func(c *Config) { c.NodeID = "bad\nname" }, "id"},
	} {
		c := Config{DataDir: t.TempDir(), NodeID: "c1", Profile: "local"}
		tc.edit(&c)
		if err := c.defaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("err %v, want one naming %q", err, tc.want)
		}
	}
	c := Config{DataDir: t.TempDir(), NodeID: "c1", Profile: "local"}
	if err := c.defaults(); err != nil || c.MaxBlobBytes != 1<<30 {
		t.Errorf("zero values: %v, max blob bytes %d", err, c.MaxBlobBytes)
	}
}
