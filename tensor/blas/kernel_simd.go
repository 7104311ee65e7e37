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
		return avx512Kernel4
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
		ks = append(ks, avx512Kernel4, avx512Kernel8, avx512Kernel6, avx512Kernel)
	}
	return ks
}
