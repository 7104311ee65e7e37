//go:build goexperiment.simd && amd64

package blas

import "testing"

func BenchmarkKernels(b *testing.B) {
	for _, k := range kernels() {
		a, bb, c := make([]float32, 256*k.mr), make([]float32, 256*k.nr), make([]float32, k.mr*k.nr)
		b.Run(k.name, func(b *testing.B) {
			for b.Loop() {
				k.fn(256, 1, a, bb, c, k.nr)
			}
			b.ReportMetric(2*256*float64(k.mr*k.nr)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
