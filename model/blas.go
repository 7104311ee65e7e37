package model

import (
	G "gorgonia.org/gorgonia"

	"github.com/fedtune/fedtune/tensor/blas"
)

// Gorgonia computes with fedtune's float32 BLAS (tensor/blas: a packed,
// cache-blocked Sgemm with SIMD micro-kernels in GOEXPERIMENT=simd builds,
// on all cores for large products) instead of gonum's pure-Go one.
func init() { G.Use(blas.Implementation{}) }
