package blas

import (
	"testing"
	"time"
)

func TestPeakGFLOPS(t *testing.T) {
	p := PeakGFLOPS(200 * time.Millisecond)
	t.Logf("one core's float32 FMA peak: %.1f GFLOP/s (kernel %s)", p, Kernel())
	if !(p > 0.1) {
		t.Errorf("peak %g GFLOP/s", p)
	}
}
