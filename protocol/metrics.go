package protocol

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
)

// Bounds on the metrics an update reports (SubmitUpdateRequest.metrics).
// They go into the Raft log with the update, so they are kept small by
// construction: a few named, finite numbers.
const (
	MaxMetrics      = 16 // entries per update
	MaxMetricKeyLen = 64
)

var metricKey = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// CheckMetrics returns an error naming the first metric that breaks the
// bounds: more than MaxMetrics entries, a key that is not 1-64 letters,
// digits or "_.:-", or a value that is NaN or infinite.
func CheckMetrics(m map[string]float64) error {
	if len(m) > MaxMetrics {
		return fmt.Errorf("%d metrics: at most %d", len(m), MaxMetrics)
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !metricKey.MatchString(k) {
			return fmt.Errorf("metric name %.80q: use 1-%d letters, digits, '_', '.', ':' or '-'", k, MaxMetricKeyLen)
		}
		if v := m[k]; math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("metric %s = %v: must be finite", k, v)
		}
	}
	return nil
}

// SanitizeMetrics returns the metrics of m that CheckMetrics accepts: the
// first MaxMetrics valid entries in key order. It lists the names of those
// it dropped, so that a worker can say what its trainer reported wrongly
// and still send its update.
func SanitizeMetrics(m map[string]float64) (map[string]float64, []string) {
	out := make(map[string]float64, min(len(m), MaxMetrics))
	var dropped []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		if !metricKey.MatchString(k) || math.IsNaN(v) || math.IsInf(v, 0) || len(out) == MaxMetrics {
			dropped = append(dropped, fmt.Sprintf("%.80q", k))
			continue
		}
		out[k] = v
	}
	return out, dropped
}
