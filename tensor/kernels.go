package tensor

import "math"

// The flat kernels below are the inner loops of training updates and
// aggregation. Each is unrolled by four with independent accumulators so the
// compiler keeps the loop in registers and bounds checks are hoisted; the
// *Ref functions in kernels_ref.go are the obviously-right versions they are
// tested against.
//
// Length mismatches are programmer errors and panic with a "tensor:" prefix.
//
// Built with GOEXPERIMENT=simd on amd64 with AVX2, Axpy, Scale and Dot run
// SIMD versions (kernels_simd_amd64.go) that give bit-for-bit the results of
// the pure-Go ones below (same operations, same summation order, no fused
// multiply-add), so nodes built either way agree on every model hash.

// Axpy computes y += alpha*x.
func Axpy(alpha float32, x, y []float32) {
	if len(x) != len(y) {
		panic("tensor: Axpy length mismatch")
	}
	axpy(alpha, x, y)
}

// Scale computes x *= alpha.
func Scale(alpha float32, x []float32) { scale(alpha, x) }

// Dot returns the inner product of x and y, accumulated in float64 in a
// fixed order (four partial sums, one per index mod 4, combined as
// (s0+s1)+(s2+s3)), so the result is deterministic for a given input.
func Dot(x, y []float32) float64 {
	if len(x) != len(y) {
		panic("tensor: Dot length mismatch")
	}
	return dot(x, y)
}

// Norm returns the L2 norm of x.
func Norm(x []float32) float64 {
	return math.Sqrt(Dot(x, x))
}

func axpyGo(alpha float32, x, y []float32) {
	n := len(x) &^ 3
	x, y = x[:len(x)], y[:len(x)]
	for i := 0; i < n; i += 4 {
		xs, ys := x[i:i+4:i+4], y[i:i+4:i+4]
		ys[0] += alpha * xs[0]
		ys[1] += alpha * xs[1]
		ys[2] += alpha * xs[2]
		ys[3] += alpha * xs[3]
	}
	for i := n; i < len(x); i++ {
		y[i] += alpha * x[i]
	}
}

func scaleGo(alpha float32, x []float32) {
	n := len(x) &^ 3
	for i := 0; i < n; i += 4 {
		xs := x[i : i+4 : i+4]
		xs[0] *= alpha
		xs[1] *= alpha
		xs[2] *= alpha
		xs[3] *= alpha
	}
	for i := n; i < len(x); i++ {
		x[i] *= alpha
	}
}

func dotGo(x, y []float32) float64 {
	var s0, s1, s2, s3 float64
	n := len(x) &^ 3
	y = y[:len(x)]
	for i := 0; i < n; i += 4 {
		xs, ys := x[i:i+4:i+4], y[i:i+4:i+4]
		s0 += float64(xs[0]) * float64(ys[0])
		s1 += float64(xs[1]) * float64(ys[1])
		s2 += float64(xs[2]) * float64(ys[2])
		s3 += float64(xs[3]) * float64(ys[3])
	}
	for i := n; i < len(x); i++ {
		s0 += float64(x[i]) * float64(y[i])
	}
	return (s0 + s1) + (s2 + s3)
}
