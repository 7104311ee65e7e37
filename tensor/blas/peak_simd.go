//go:build goexperiment.simd && amd64

package blas

import (
	"time"

	"simd/archsimd"
)

// PeakGFLOPS measures one core's float32 multiply-add peak for about d:
// a register-only loop of independent fused multiply-adds on the widest
// vectors this CPU has (no memory traffic), the ceiling no kernel passes.
func PeakGFLOPS(d time.Duration) float64 {
	if archsimd.X86.AVX512() {
		return rate(d, fma512, 10*2*16)
	}
	return rate(d, fma256, 10*2*8)
}

// rate runs loop(1<<16) for about d and returns GFLOP/s, counting flops
// per loop round.
func rate(d time.Duration, loop func(n int) float32, flops float64) float64 {
	var total float64
	start := time.Now()
	var sink float32
	for time.Since(start) < d {
		sink += loop(1 << 16)
		total += flops * (1 << 16)
	}
	_ = sink
	return total / time.Since(start).Seconds() / 1e9
}

// fma512 runs n rounds of 10 independent 16-lane multiply-adds.
func fma512(n int) float32 {
	y := archsimd.BroadcastFloat32x16(0.999999)
	var x0, x1, x2, x3, x4, x5, x6, x7, x8, x9 archsimd.Float32x16
	for i := 0; i < n; i++ {
		x0 = y.MulAdd(x0, y)
		x1 = y.MulAdd(x1, y)
		x2 = y.MulAdd(x2, y)
		x3 = y.MulAdd(x3, y)
		x4 = y.MulAdd(x4, y)
		x5 = y.MulAdd(x5, y)
		x6 = y.MulAdd(x6, y)
		x7 = y.MulAdd(x7, y)
		x8 = y.MulAdd(x8, y)
		x9 = y.MulAdd(x9, y)
	}
	var out [16]float32
	x0.Add(x1).Add(x2).Add(x3).Add(x4).Add(x5).Add(x6).Add(x7).Add(x8).Add(x9).Store(&out)
	return out[0]
}

func fma256(n int) float32 {
	y := archsimd.BroadcastFloat32x8(0.999999)
	var x0, x1, x2, x3, x4, x5, x6, x7, x8, x9 archsimd.Float32x8
	for i := 0; i < n; i++ {
		x0 = y.MulAdd(x0, y)
		x1 = y.MulAdd(x1, y)
		x2 = y.MulAdd(x2, y)
		x3 = y.MulAdd(x3, y)
		x4 = y.MulAdd(x4, y)
		x5 = y.MulAdd(x5, y)
		x6 = y.MulAdd(x6, y)
		x7 = y.MulAdd(x7, y)
		x8 = y.MulAdd(x8, y)
		x9 = y.MulAdd(x9, y)
	}
	var out [8]float32
	x0.Add(x1).Add(x2).Add(x3).Add(x4).Add(x5).Add(x6).Add(x7).Add(x8).Add(x9).Store(&out)
	return out[0]
}
