//go:build goexperiment.simd && amd64

package aggregation

import "simd/archsimd"

// avx512 selects the SIMD kernels; without it the pure-Go ones run.
var avx512 = archsimd.X86.AVX512()

var zero16 archsimd.Float32x16

// SIMD reports whether the aggregation kernels use SIMD instructions
// (AVX-512) in this build on this CPU.
func SIMD() bool { return avx512 }

func loadLanes(rows [][]float32, j, m int, s []float32) {
	if !avx512 || m < lanes {
		loadLanesGo(rows, j, m, s)
		return
	}
	for r, row := range rows {
		archsimd.LoadFloat32x16Slice(row[j : j+lanes]).Add(zero16).StoreSlice(s[r*lanes : r*lanes+lanes])
	}
}

func sortLanes(net network, s []float32) {
	if !avx512 {
		sortLanesGo(net, s)
		return
	}
	for _, c := range net {
		a, b := s[int(c[0])*lanes:int(c[0])*lanes+lanes], s[int(c[1])*lanes:int(c[1])*lanes+lanes]
		x, y := archsimd.LoadFloat32x16Slice(a), archsimd.LoadFloat32x16Slice(b)
		x.Min(y).StoreSlice(a)
		x.Max(y).StoreSlice(b)
	}
}

func meanRows(s []float32, a, b int, out *[lanes]float32) {
	if !avx512 {
		meanRowsGo(s, a, b, out)
		return
	}
	acc := archsimd.LoadFloat32x16Slice(s[a*lanes : a*lanes+lanes])
	for r := a + 1; r < b; r++ {
		acc = acc.Add(archsimd.LoadFloat32x16Slice(s[r*lanes : r*lanes+lanes]))
	}
	acc.Div(archsimd.BroadcastFloat32x16(float32(b - a))).StoreSlice(out[:])
}

// gram computes the pairs in tiles of two rows by four: eight
// accumulators and six loads per step stay within the vector registers
// the compiler allocates (Z0–Z14), so the dot products run at the
// multiply and add rate rather than the load rate. Each pair's lanes hold
// exactly what dotLanesGo computes.
func gram(rows [][]float32, acc []float64) {
	n := len(rows)
	if !avx512 || n < 4 {
		gramGo(rows, acc)
		return
	}
	L := len(rows[0])
	full := L &^ (lanes - 1)
	n2, n4 := n&^1, n&^3
	var sums [8][lanes]float32
	for i := 0; i < n2; i += 2 {
		for j := i &^ 3; j < n4; j += 4 {
			tile24(rows[i:i+2], rows[j:j+4], full, L, &sums)
			for a := range 2 {
				for b := range 4 {
					if i+a <= j+b {
						acc[(i+a)*n+j+b] += reduceLanes(&sums[a*4+b])
					}
				}
			}
		}
	}
	for i := 0; i < n; i++ {
		start := n4 // columns past the tiles
		if i >= n2 {
			start = i // the odd last row
		}
		for j := max(i, start); j < n; j++ {
			acc[i*n+j] += dotLanes(rows[i], rows[j])
		}
	}
}

func dotLanes(x, y []float32) float64 {
	if !avx512 {
		return dotLanesGo(x, y)
	}
	full := len(x) &^ (lanes - 1)
	var a archsimd.Float32x16
	for k := 0; k < full; k += lanes {
		a = a.Add(archsimd.LoadFloat32x16Slice(x[k : k+lanes]).Mul(archsimd.LoadFloat32x16Slice(y[k : k+lanes])))
	}
	if full < len(x) {
		a = a.Add(archsimd.LoadFloat32x16SlicePart(x[full:]).Mul(archsimd.LoadFloat32x16SlicePart(y[full:len(x)])))
	}
	var s [lanes]float32
	a.StoreSlice(s[:])
	return reduceLanes(&s)
}

// tile24 accumulates the 2×4 pairs of rows x and y into sums[a*4+b]; a
// tail shorter than lanes runs through the same loop zero-padded (adding
// +0 products leaves the lanes as dotLanesGo has them).
func tile24(x, y [][]float32, full, L int, sums *[8][lanes]float32) {
	var acc [8]archsimd.Float32x16
	tileSteps(x[0][:full], x[1][:full], y[0][:full], y[1][:full], y[2][:full], y[3][:full], &acc)
	if full < L {
		var pad [6][lanes]float32
		copy(pad[0][:], x[0][full:L])
		copy(pad[1][:], x[1][full:L])
		for b := range 4 {
			copy(pad[2+b][:], y[b][full:L])
		}
		tileSteps(pad[0][:], pad[1][:], pad[2][:], pad[3][:], pad[4][:], pad[5][:], &acc)
	}
	for a := range acc {
		acc[a].StoreSlice(sums[a][:])
	}
}

func tileSteps(x0, x1, y0, y1, y2, y3 []float32, acc *[8]archsimd.Float32x16) {
	s00, s01, s02, s03 := acc[0], acc[1], acc[2], acc[3]
	s10, s11, s12, s13 := acc[4], acc[5], acc[6], acc[7]
	n := len(x0)
	x1 = x1[:n]
	y0, y1, y2, y3 = y0[:n], y1[:n], y2[:n], y3[:n]
	for k := 0; k+lanes <= n; k += lanes {
		b0 := archsimd.LoadFloat32x16Slice(y0[k : k+lanes])
		b1 := archsimd.LoadFloat32x16Slice(y1[k : k+lanes])
		b2 := archsimd.LoadFloat32x16Slice(y2[k : k+lanes])
		b3 := archsimd.LoadFloat32x16Slice(y3[k : k+lanes])
		a := archsimd.LoadFloat32x16Slice(x0[k : k+lanes])
		s00, s01, s02, s03 = s00.Add(a.Mul(b0)), s01.Add(a.Mul(b1)), s02.Add(a.Mul(b2)), s03.Add(a.Mul(b3))
		a = archsimd.LoadFloat32x16Slice(x1[k : k+lanes])
		s10, s11, s12, s13 = s10.Add(a.Mul(b0)), s11.Add(a.Mul(b1)), s12.Add(a.Mul(b2)), s13.Add(a.Mul(b3))
	}
	*acc = [8]archsimd.Float32x16{s00, s01, s02, s03, s10, s11, s12, s13}
}

func dot2Lanes(x, y []float32) (float64, float64) {
	if !avx512 {
		return dot2LanesGo(x, y)
	}
	full := len(x) &^ (lanes - 1)
	y = y[:len(x)]
	var a, b archsimd.Float32x16
	for k := 0; k < full; k += lanes {
		xv := archsimd.LoadFloat32x16Slice(x[k : k+lanes])
		a = a.Add(xv.Mul(xv))
		b = b.Add(xv.Mul(archsimd.LoadFloat32x16Slice(y[k : k+lanes])))
	}
	if full < len(x) {
		xv := archsimd.LoadFloat32x16SlicePart(x[full:])
		a = a.Add(xv.Mul(xv))
		b = b.Add(xv.Mul(archsimd.LoadFloat32x16SlicePart(y[full:])))
	}
	var sa, sb [lanes]float32
	a.StoreSlice(sa[:])
	b.StoreSlice(sb[:])
	return reduceLanes(&sa), reduceLanes(&sb)
}

func weightedSum(dst []float32, w []float32, xs [][]float32) {
	if !avx512 {
		weightedSumGo(dst, w, xs)
		return
	}
	full := len(dst) &^ (lanes - 1)
	for g := 0; g < len(xs); g += 8 {
		m := min(8, len(xs)-g)
		if m < 8 {
			weightedSumGo(dst, w[g:g+m], xs[g:g+m])
			continue
		}
		x0, x1, x2, x3 := xs[g][:full], xs[g+1][:full], xs[g+2][:full], xs[g+3][:full]
		x4, x5, x6, x7 := xs[g+4][:full], xs[g+5][:full], xs[g+6][:full], xs[g+7][:full]
		w0, w1 := archsimd.BroadcastFloat32x16(w[g]), archsimd.BroadcastFloat32x16(w[g+1])
		w2, w3 := archsimd.BroadcastFloat32x16(w[g+2]), archsimd.BroadcastFloat32x16(w[g+3])
		w4, w5 := archsimd.BroadcastFloat32x16(w[g+4]), archsimd.BroadcastFloat32x16(w[g+5])
		w6, w7 := archsimd.BroadcastFloat32x16(w[g+6]), archsimd.BroadcastFloat32x16(w[g+7])
		d := dst[:full]
		for k := 0; k < full; k += lanes {
			v := archsimd.LoadFloat32x16Slice(d[k : k+lanes])
			v = v.Add(w0.Mul(archsimd.LoadFloat32x16Slice(x0[k : k+lanes])))
			v = v.Add(w1.Mul(archsimd.LoadFloat32x16Slice(x1[k : k+lanes])))
			v = v.Add(w2.Mul(archsimd.LoadFloat32x16Slice(x2[k : k+lanes])))
			v = v.Add(w3.Mul(archsimd.LoadFloat32x16Slice(x3[k : k+lanes])))
			v = v.Add(w4.Mul(archsimd.LoadFloat32x16Slice(x4[k : k+lanes])))
			v = v.Add(w5.Mul(archsimd.LoadFloat32x16Slice(x5[k : k+lanes])))
			v = v.Add(w6.Mul(archsimd.LoadFloat32x16Slice(x6[k : k+lanes])))
			v = v.Add(w7.Mul(archsimd.LoadFloat32x16Slice(x7[k : k+lanes])))
			v.StoreSlice(d[k : k+lanes])
		}
		if full < len(dst) {
			weightedSumGo(dst[full:], w[g:g+8], [][]float32{xs[g][full:], xs[g+1][full:], xs[g+2][full:], xs[g+3][full:], xs[g+4][full:], xs[g+5][full:], xs[g+6][full:], xs[g+7][full:]})
		}
	}
}
