//go:build goexperiment.simd && amd64

package blas

import "simd/archsimd"

var (
	avx512Kernel  = kernel{mr: 12, nr: 32, fn: kernelAVX512x12x32, name: "avx512 12x32"}
	avx512Kernel6 = kernel{mr: 6, nr: 32, fn: kernelAVX512x6x32, name: "avx512 6x32"}
	avx2Kernel    = kernel{mr: 6, nr: 16, fn: kernelAVX2x6x16, name: "avx2 6x16"}
	avx512Kernel4 = kernel{mr: 4, nr: 32, fn: kernelAVX512x4x32, name: "avx512 4x32"}
	avx2Kernel4   = kernel{mr: 4, nr: 16, fn: kernelAVX2x4x16, name: "avx2 4x16"}
	avx512Kernel8 = kernel{mr: 8, nr: 16, fn: kernelAVX512x8x16, name: "avx512 8x16"}
)

// active is the micro-kernel this build uses on this CPU.
var active = func() kernel {
	switch {
	case archsimd.X86.AVX512():
		return avx512Asm
	case archsimd.X86.AVX2() && archsimd.X86.FMA():
		return avx2Kernel4
	}
	return goKernel
}()

// Kernel names the micro-kernel in use ("go 4x8", "avx512 12x32", …).
func Kernel() string { return active.name }

// kernels lists the micro-kernels this CPU can run (for tests).
func kernels() []kernel {
	ks := []kernel{goKernel}
	if archsimd.X86.AVX2() && archsimd.X86.FMA() {
		ks = append(ks, avx2Kernel4, avx2Kernel)
	}
	if archsimd.X86.AVX512() {
		ks = append(ks, avx512Kernel4, avx512Kernel8, avx512Kernel6, avx512Kernel, avx512Asm)
	}
	return ks
}

// The AVX-512 micro-kernels in assembly (kernel_avx512_amd64.s): the
// first r rows of a 12-row strip of packed A times a 32-wide strip of
// packed B, added alpha times into C. They need len(a) ≥ 12k, len(b) ≥
// 32k and len(c) ≥ (r−1)·ldc+32, which avx512Rows checks.
//
//go:noescape
func kernelAVX512r1x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r2x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r3x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r4x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r5x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r6x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r7x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r8x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r9x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r10x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r11x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r12x32asm(k int, alpha float32, a, b, c []float32, ldc int)

//go:noescape
func kernelAVX512r12x32asmsb(k int, alpha float32, a, b, c []float32, ldc, ldb int)

var avx512Asm = kernel{mr: 12, nr: 32, name: "avx512 12x32 asm",
	fn: avx512Rows(12, kernelAVX512r12x32asm),
	strided: func(k int, alpha float32, a, b, c []float32, ldc, ldb int) {
		if len(a) < 12*k || k > 0 && len(b) < (k-1)*ldb+32 || len(c) < 11*ldc+32 {
			panic("blas: micro-kernel operands too short")
		}
		kernelAVX512r12x32asmsb(k, alpha, a, b, c, ldc, ldb)
	},
	rows: [13]func(k int, alpha float32, a, b, c []float32, ldc int){
		nil, avx512Rows(1, kernelAVX512r1x32asm), avx512Rows(2, kernelAVX512r2x32asm), avx512Rows(3, kernelAVX512r3x32asm),
		avx512Rows(4, kernelAVX512r4x32asm), avx512Rows(5, kernelAVX512r5x32asm), avx512Rows(6, kernelAVX512r6x32asm),
		avx512Rows(7, kernelAVX512r7x32asm), avx512Rows(8, kernelAVX512r8x32asm), avx512Rows(9, kernelAVX512r9x32asm),
		avx512Rows(10, kernelAVX512r10x32asm), avx512Rows(11, kernelAVX512r11x32asm), avx512Rows(12, kernelAVX512r12x32asm)}}

// avx512Rows wraps an assembly kernel of r rows with the length checks it
// cannot make itself.
func avx512Rows(r int, f func(k int, alpha float32, a, b, c []float32, ldc int)) func(k int, alpha float32, a, b, c []float32, ldc int) {
	return func(k int, alpha float32, a, b, c []float32, ldc int) {
		if len(a) < 12*k || len(b) < 32*k || len(c) < (r-1)*ldc+32 {
			panic("blas: micro-kernel operands too short")
		}
		f(k, alpha, a, b, c, ldc)
	}
}
