package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// newHCLog returns an hclog.Logger (what hashicorp/raft and raft-wal log
// through) whose lines become slog records of log: its level, message,
// module and fields as slog attributes — in JSON mode too — instead of
// hclog's formatted text nested in one slog message with a second
// timestamp and level.
func newHCLog(log *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Warn, JSONFormat: true, Output: hclogSink{log}})
}

// hclogSink decodes hclog's JSON lines into slog records.
type hclogSink struct{ l *slog.Logger }

func (s hclogSink) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		var rec map[string]any
		if err := json.Unmarshal(line, &rec); err != nil {
			s.l.Warn(string(line)) // not hclog's JSON: keep it as it is
			continue
		}
		level := slog.LevelInfo
		switch strings.ToLower(fmt.Sprint(rec["@level"])) {
		case "trace", "debug":
			level = slog.LevelDebug
		case "warn":
			level = slog.LevelWarn
		case "error":
			level = slog.LevelError
		}
		msg := fmt.Sprint(rec["@message"])
		var attrs []any
		if m, ok := rec["@module"]; ok {
			attrs = append(attrs, "module", m)
		}
		keys := make([]string, 0, len(rec))
		for k := range rec {
			if !strings.HasPrefix(k, "@") {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			attrs = append(attrs, k, rec[k])
		}
		s.l.Log(context.Background(), level, msg, attrs...)
	}
	return len(p), nil
}
