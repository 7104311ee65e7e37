package aggregation

// The kernels below are the inner loops of the coordinate-wise rules and of
// the Gram matrix. Each has a pure-Go version here and, built with
// GOEXPERIMENT=simd on amd64 with AVX-512, a SIMD version
// (kernels_simd_amd64.go) that computes bit for bit the same result: the
// same operations on the same 16 lanes in the same order, no fused
// multiply-add. Nodes built either way agree on every model hash.

// lanes is how many coordinates the column kernels process at once (one
// 512-bit register of float32).
const lanes = 16

// network is a sorting network: compare-exchange pairs (lo, hi) that sort
// any column of its length when applied in order. Applied to lanes
// coordinates at once with min/max, it sorts 16 columns with no branches.
type network [][2]int32

// sortNetwork returns Batcher's odd-even merge sort network for n inputs:
// built for the next power of two and pruned of comparators that touch
// padding (which would hold +Inf and never move).
func sortNetwork(n int) network {
	p2 := 1
	for p2 < n {
		p2 <<= 1
	}
	var net network
	for p := 1; p < p2; p <<= 1 {
		for k := p; k >= 1; k >>= 1 {
			for j := k % p; j+k < p2; j += 2 * k {
				for i := 0; i < min(k, p2-j-k); i++ {
					a, b := i+j, i+j+k
					if a/(2*p) == b/(2*p) && b < n {
						net = append(net, [2]int32{int32(a), int32(b)})
					}
				}
			}
		}
	}
	return net
}

// forSum returns the comparators of net (for n inputs) that matter when
// only the sum of the sorted values at positions [lo, hi) is wanted — a
// median (one or two middle positions) or a trimmed mean — about a fifth
// fewer. Walking backwards, a comparator is dropped when neither output
// is needed, or when both outputs only enter the sum (a compare-exchange
// does not change a sum); every other comparator is kept, and its inputs
// become needed exactly. After the pruned network, positions [lo, hi)
// hold the right values, possibly permuted among themselves.
func (net network) forSum(n, lo, hi int) network {
	const unneeded, summed, exact = 0, 1, 2
	st := make([]byte, n)
	for p := lo; p < hi; p++ {
		st[p] = summed
	}
	keep := make([]bool, len(net))
	kept := 0
	for i := len(net) - 1; i >= 0; i-- {
		a, b := net[i][0], net[i][1]
		if st[a] == st[b] && st[a] != exact {
			continue
		}
		st[a], st[b] = exact, exact
		keep[i] = true
		kept++
	}
	out := make(network, 0, kept)
	for i, c := range net {
		if keep[i] {
			out = append(out, c)
		}
	}
	return out
}

// loadLanesGo copies coordinates [j, j+m) (m ≤ lanes) of each row into
// s[r*lanes:], adding +0 so that -0 becomes +0: with no signed zeros (and
// no NaN: updates are validated finite) min and max are unambiguous, so
// every build sorts to the same bits.
func loadLanesGo(rows [][]float32, j, m int, s []float32) {
	for r, row := range rows {
		dst := s[r*lanes : r*lanes+m]
		for l, v := range row[j : j+m] {
			dst[l] = v + 0
		}
	}
}

// sortLanesGo sorts each of the lanes columns of s (rows × lanes) with net.
func sortLanesGo(net network, s []float32) {
	for _, c := range net {
		a := (*[lanes]float32)(s[int(c[0])*lanes:])
		b := (*[lanes]float32)(s[int(c[1])*lanes:])
		for l := range lanes {
			x, y := a[l], b[l]
			a[l], b[l] = min(x, y), max(x, y)
		}
	}
}

// meanRowsGo sets out[l] to the mean of rows [a, b) of s in lane l: added
// in row order in float32, then divided by b − a.
func meanRowsGo(s []float32, a, b int, out *[lanes]float32) {
	*out = *(*[lanes]float32)(s[a*lanes:])
	for r := a + 1; r < b; r++ {
		row := (*[lanes]float32)(s[r*lanes:])
		for l := range lanes {
			out[l] += row[l]
		}
	}
	for l := range lanes {
		out[l] /= float32(b - a)
	}
}

// gramGo adds to acc[i*n+j] (i ≤ j) the dot product of rows i and j, all of
// length L: lane l sums the products at indexes ≡ l (mod 16) in float32 in
// index order, then the lanes are added in order in float64.
func gramGo(rows [][]float32, acc []float64) {
	n := len(rows)
	for i := 0; i < n; i++ {
		for j := i; j < n; j++ {
			acc[i*n+j] += dotLanesGo(rows[i], rows[j])
		}
	}
}

func dotLanesGo(x, y []float32) float64 {
	var a [lanes]float32
	y = y[:len(x)]
	k := 0
	for ; k+lanes <= len(x); k += lanes {
		xs, ys := (*[lanes]float32)(x[k:]), (*[lanes]float32)(y[k:])
		for l := range lanes {
			a[l] += float32(xs[l] * ys[l])
		}
	}
	for l := 0; k+l < len(x); l++ {
		a[l] += float32(x[k+l] * y[k+l])
	}
	return reduceLanes(&a)
}

// dot2LanesGo returns x·x and x·y with dotLanesGo's lanes and order.
func dot2LanesGo(x, y []float32) (float64, float64) {
	var a, b [lanes]float32
	y = y[:len(x)]
	k := 0
	for ; k+lanes <= len(x); k += lanes {
		xs, ys := (*[lanes]float32)(x[k:]), (*[lanes]float32)(y[k:])
		for l := range lanes {
			a[l] += float32(xs[l] * xs[l])
			b[l] += float32(xs[l] * ys[l])
		}
	}
	for l := 0; k+l < len(x); l++ {
		a[l] += float32(x[k+l] * x[k+l])
		b[l] += float32(x[k+l] * y[k+l])
	}
	return reduceLanes(&a), reduceLanes(&b)
}

// reduceLanes adds the lanes in float64 as a balanced tree (independent
// additions, so it is not a chain of sixteen dependent ones).
func reduceLanes(a *[lanes]float32) float64 {
	var s [lanes / 2]float64
	for i := range s {
		s[i] = float64(a[2*i]) + float64(a[2*i+1])
	}
	return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

// weightedSumGo adds w[i]*xs[i] to dst for every i, in i order for each
// element: exactly what a sequence of tensor.Axpy calls computes. The
// SIMD version reads up to eight updates at once, so eight streams are in
// flight and dst is loaded and stored once per eight updates.
func weightedSumGo(dst []float32, w []float32, xs [][]float32) {
	for i, x := range xs {
		x = x[:len(dst)]
		for k := range dst {
			dst[k] += float32(w[i] * x[k])
		}
	}
}
