//go:build goexperiment.simd && amd64

package tensor

import "simd/archsimd"

var avx2 = archsimd.X86.AVX2()

// SIMD reports whether the kernels use SIMD instructions in this build.
func SIMD() bool { return avx2 }

// axpy: 8 lanes at a time, multiply then add (not fused), exactly as axpyGo.
func axpy(alpha float32, x, y []float32) {
	if !avx2 {
		axpyGo(alpha, x, y)
		return
	}
	a := archsimd.BroadcastFloat32x8(alpha)
	n := len(x) &^ 7
	for i := 0; i < n; i += 8 {
		xv := archsimd.LoadFloat32x8Slice(x[i : i+8])
		yv := archsimd.LoadFloat32x8Slice(y[i : i+8])
		yv.Add(a.Mul(xv)).StoreSlice(y[i : i+8])
	}
	axpyGo(alpha, x[n:], y[n:])
}

func scale(alpha float32, x []float32) {
	if !avx2 {
		scaleGo(alpha, x)
		return
	}
	a := archsimd.BroadcastFloat32x8(alpha)
	n := len(x) &^ 7
	for i := 0; i < n; i += 8 {
		archsimd.LoadFloat32x8Slice(x[i : i+8]).Mul(a).StoreSlice(x[i : i+8])
	}
	scaleGo(alpha, x[n:])
}

// dot keeps dotGo's order: lane k of one float64x4 accumulator sums the
// products at indexes ≡ k (mod 4); float32 products are exact in float64.
func dot(x, y []float32) float64 {
	if !avx2 {
		return dotGo(x, y)
	}
	var acc archsimd.Float64x4
	n := len(x) &^ 3
	for i := 0; i < n; i += 4 {
		xv := archsimd.LoadFloat32x4Slice(x[i : i+4]).ConvertToFloat64()
		yv := archsimd.LoadFloat32x4Slice(y[i : i+4]).ConvertToFloat64()
		acc = acc.Add(xv.Mul(yv))
	}
	var s [4]float64
	acc.StoreSlice(s[:])
	for i := n; i < len(x); i++ {
		s[0] += float64(x[i]) * float64(y[i])
	}
	return (s[0] + s[1]) + (s[2] + s[3])
}
