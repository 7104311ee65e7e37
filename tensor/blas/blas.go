// Package blas is fedtune's float32 BLAS for Gorgonia: gonum's
// implementation with the routines local training spends its time in
// replaced by kernels written for speed. Sgemm is cache-blocked with
// packed panels (Goto's layout: a KC×NC panel of op(B) shared by every
// core, MC×KC blocks of op(A) per core) around a register-blocked
// micro-kernel — AVX-512 or AVX2 with fused multiply-add when built with
// GOEXPERIMENT=simd on amd64, plain Go otherwise — and runs on all cores
// for large products. Everything else falls through to gonum.
//
// Builds without SIMD (a plain `go build`) keep gonum's Sgemm, which is
// faster than the pure-Go micro-kernel; that kernel remains the tested
// reference of the blocking code.
//
// Results equal gonum's within float32 rounding (the summation order and
// the fused multiply-adds differ), not bit for bit.
package blas

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// Implementation is gonum's BLAS with fedtune's Sgemm. The zero value is
// ready; pass it to gorgonia.Use.
type Implementation struct {
	gonum.Implementation
}

// Sgemm computes C = alpha·op(A)·op(B) + beta·C for row-major matrices,
// op(A) m×k, op(B) k×n, C m×n, with gonum's argument checks (it panics on
// bad arguments, as every BLAS does).
func (impl Implementation) Sgemm(tA, tB blas.Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if active.name == goKernel.name {
		// No SIMD kernel in this build or on this CPU: gonum's Sgemm (its
		// assembly dot and axpy) is twice the pure-Go micro-kernel.
		impl.Implementation.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	aT, bT, err := checkGemm(tA, tB, m, n, k, a, lda, b, ldb, c, ldc)
	if err != "" {
		panic(err)
	}
	if m == 0 || n == 0 {
		return
	}
	Gemm(aT, bT, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// checkGemm validates Sgemm's arguments the way gonum does.
func checkGemm(tA, tB blas.Transpose, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) (aT, bT bool, err string) {
	switch tA {
	case blas.NoTrans:
	case blas.Trans, blas.ConjTrans:
		aT = true
	default:
		return false, false, "blas: illegal transpose"
	}
	switch tB {
	case blas.NoTrans:
	case blas.Trans, blas.ConjTrans:
		bT = true
	default:
		return false, false, "blas: illegal transpose"
	}
	switch {
	case m < 0:
		return aT, bT, "blas: m < 0"
	case n < 0:
		return aT, bT, "blas: n < 0"
	case k < 0:
		return aT, bT, "blas: k < 0"
	case aT && lda < max(1, m), !aT && lda < max(1, k):
		return aT, bT, "blas: bad leading dimension of A"
	case bT && ldb < max(1, k), !bT && ldb < max(1, n):
		return aT, bT, "blas: bad leading dimension of B"
	case ldc < max(1, n):
		return aT, bT, "blas: bad leading dimension of C"
	}
	if m == 0 || n == 0 {
		return aT, bT, ""
	}
	rowsA, colsA := m, k
	if aT {
		rowsA, colsA = k, m
	}
	rowsB, colsB := k, n
	if bT {
		rowsB, colsB = n, k
	}
	switch {
	case k > 0 && len(a) < (rowsA-1)*lda+colsA:
		return aT, bT, "blas: insufficient length of A"
	case k > 0 && len(b) < (rowsB-1)*ldb+colsB:
		return aT, bT, "blas: insufficient length of B"
	case len(c) < (m-1)*ldc+n:
		return aT, bT, "blas: insufficient length of C"
	}
	return aT, bT, ""
}
