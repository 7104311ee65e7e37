package blas

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// check runs Sgemm and gonum's on the same inputs and compares C element
// by element, within float32 rounding of a k-term sum (relative to the sum
// of the absolute products, as the orders of summation differ).
func check(t testing.TB, r *rand.Rand, tA, tB blas.Transpose, m, n, k, pad int, alpha, beta float32) {
	t.Helper()
	rowsA, colsA := m, k
	if tA == blas.Trans {
		rowsA, colsA = k, m
	}
	rowsB, colsB := k, n
	if tB == blas.Trans {
		rowsB, colsB = n, k
	}
	lda, ldb, ldc := colsA+pad, colsB+pad, n+pad
	fill := func(rows, ld int) []float32 {
		v := make([]float32, max(0, (rows-1)*ld)+ld)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	a, b, c := fill(rowsA, lda), fill(rowsB, ldb), fill(m, ldc)
	want := append([]float32(nil), c...)
	gonum.Implementation{}.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, want, ldc)
	// Gemm directly: Sgemm hands builds without SIMD to gonum, and the
	// blocking code must be tested with every kernel.
	if _, _, err := checkGemm(tA, tB, m, n, k, a, lda, b, ldb, c, ldc); err != "" {
		t.Fatal(err)
	}
	Gemm(tA == blas.Trans, tB == blas.Trans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
	for i := 0; i < m; i++ {
		for j := 0; j < ldc; j++ {
			got, w := c[i*ldc+j], want[i*ldc+j]
			if j >= n {
				if got != w {
					t.Fatalf("%v%v %dx%dx%d pad %d: C[%d][%d] beyond n changed: %g, was %g", tA, tB, m, n, k, pad, i, j, got, w)
				}
				continue
			}
			var mag float64
			for p := 0; p < k; p++ {
				var av, bv float32
				if tA == blas.Trans {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if tB == blas.Trans {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				mag += math.Abs(float64(av) * float64(bv))
			}
			tol := 1e-6*(float64(k)+4)*(math.Abs(float64(alpha))*mag) + 1e-6*math.Abs(float64(beta*w)) + 1e-6
			if d := math.Abs(float64(got - w)); d > tol {
				t.Fatalf("%v%v %dx%dx%d pad %d alpha %g beta %g: C[%d][%d] = %g, gonum %g (tolerance %g)", tA, tB, m, n, k, pad, alpha, beta, i, j, got, w, tol)
			}
		}
	}
}

var transposes = []blas.Transpose{blas.NoTrans, blas.Trans}

// TestSgemmMatchesGonum covers the four transpose cases on odd shapes
// (every edge of every tile and block), padded strides, and alpha/beta.
func TestSgemmMatchesGonum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	shapes := [][3]int{{1, 1, 1}, {3, 5, 7}, {7, 33, 17}, {13, 1, 300}, {1, 65, 9}, {64, 256, 784}, {64, 10, 256}, {150, 37, 513}, {5, 3100, 3}, {200, 200, 1}, {300, 70, 260}}
	for _, tA := range transposes {
		for _, tB := range transposes {
			for _, s := range shapes {
				for _, ab := range [][2]float32{{1, 0}, {1, 1}, {-0.5, 2}} {
					t.Run(fmt.Sprintf("%c%c/%dx%dx%d/a%gb%g", tA, tB, s[0], s[1], s[2], ab[0], ab[1]), func(t *testing.T) {
						check(t, r, tA, tB, s[0], s[1], s[2], int(r.IntN(3)), ab[0], ab[1])
					})
				}
			}
		}
	}
}

// TestKernelsAgree runs every micro-kernel this build has on the same
// products: the SIMD ones and the pure-Go one.
func TestKernelsAgree(t *testing.T) {
	defer func(k kernel) { active = k }(active)
	for _, k := range kernels() {
		active = k
		t.Run(k.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, 4))
			for _, s := range [][3]int{{17, 45, 31}, {64, 256, 784}, {33, 100, 257}} {
				for _, tA := range transposes {
					for _, tB := range transposes {
						check(t, r, tA, tB, s[0], s[1], s[2], 1, 0.7, 0.3)
					}
				}
			}
		})
	}
}

func TestSgemmPanicsOnBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name    string
		m, n, k int
		lda     int
		la      int
	}{
		{"negative m", -1, 2, 2, 2, 4},
		{"short lda", 2, 2, 3, 2, 6},
		{"short A", 2, 2, 3, 3, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			Implementation{}.Sgemm(blas.NoTrans, blas.NoTrans, tc.m, tc.n, tc.k, 1, make([]float32, tc.la), tc.lda, make([]float32, 6), 2, 0, make([]float32, 4), 2)
		})
	}
}

func FuzzSgemm(f *testing.F) {
	f.Add(uint8(3), uint8(4), uint8(5), uint8(0), uint8(1), false, true)
	f.Add(uint8(70), uint8(40), uint8(130), uint8(2), uint8(0), true, true)
	f.Fuzz(func(t *testing.T, m, n, k, pad, seed uint8, tA, tB bool) {
		ta, tb := blas.NoTrans, blas.NoTrans
		if tA {
			ta = blas.Trans
		}
		if tB {
			tb = blas.Trans
		}
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		check(t, r, ta, tb, int(m)%200+1, int(n)%200+1, int(k)%300+1, int(pad)%4, 1.5, 0.5)
	})
}
