//go:build !(goexperiment.simd && amd64)

package blas

import "time"

// active is the micro-kernel this build uses.
var active = goKernel

// Kernel names the micro-kernel in use ("go 4x8", "avx512 …").
func Kernel() string { return active.name }

// kernels lists the micro-kernels this build can run (for tests).
func kernels() []kernel { return []kernel{goKernel} }

// PeakGFLOPS measures one core's scalar float32 multiply-add rate for
// about d (this build has no SIMD kernels).
func PeakGFLOPS(d time.Duration) float64 {
	var flops float64
	start := time.Now()
	var sink float32
	for time.Since(start) < d {
		x0, x1, x2, x3 := float32(0), float32(0), float32(0), float32(0)
		y := float32(0.999999)
		for i := 0; i < 1<<16; i++ {
			x0 = x0*y + y
			x1 = x1*y + y
			x2 = x2*y + y
			x3 = x3*y + y
		}
		sink += x0 + x1 + x2 + x3
		flops += 4 * 2 * (1 << 16)
	}
	_ = sink
	return flops / time.Since(start).Seconds() / 1e9
}
