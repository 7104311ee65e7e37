//go:build !(goexperiment.simd && amd64)

package tensor

func axpy(alpha float32, x, y []float32) { axpyGo(alpha, x, y) }
func scale(alpha float32, x []float32)   { scaleGo(alpha, x) }
func dot(x, y []float32) float64         { return dotGo(x, y) }

// SIMD reports whether the kernels use SIMD instructions in this build.
func SIMD() bool { return false }
