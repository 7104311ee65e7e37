package coordinator

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// TestHCLogThroughSlog: a line raft logs through hclog becomes one slog
// record with raft's level, message, module and fields as attributes (it
// was hclog's whole text, its own timestamp and level included, inside
// slog's msg, also in JSON mode).
func TestHCLogThroughSlog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	hl := newHCLog(log, "raft")
	hl.Warn("failed to contact", "server-id", "coord-2", "error", "dial tcp: refused")
	hl.Error("failed to appendEntries", "peer", "coord-3")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d records: %s", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["level"] != "WARN" || rec["msg"] != "failed to contact" || rec["module"] != "raft" || rec["server-id"] != "coord-2" || rec["error"] != "dial tcp: refused" {
		t.Errorf("record %v", rec)
	}
	if strings.Contains(lines[0], "[WARN]") {
		t.Errorf("hclog's own formatting inside the record: %s", lines[0])
	}
	json.Unmarshal([]byte(lines[1]), &rec)
	if rec["level"] != "ERROR" {
		t.Errorf("error line logged at %v", rec["level"])
	}
}
