package blas

import (
	"runtime"
	"sync"
)

// Blocking: a KC×NC panel of op(B) (packed in NR-wide strips) stays in
// L2/L3 while MC×KC blocks of op(A) (packed in MR-tall strips) stream
// through L2 and the micro-kernel keeps an MR×NR tile of C in registers.
const (
	kc = 256
	mc = 144 // a multiple of every kernel's mr
	nc = 3072
)

// parallelFlops is the size (m·n·k) from which a product is split across
// cores: below it goroutines cost more than they save.
const parallelFlops = 1 << 18

// Gemm computes C = alpha·op(A)·op(B) + beta·C (row-major; aT, bT say
// whether op transposes), without argument checks.
func Gemm(aT, bT bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if beta != 1 {
		for i := 0; i < m; i++ {
			row := c[i*ldc : i*ldc+n]
			if beta == 0 {
				clear(row)
			} else {
				for j := range row {
					row[j] *= beta
				}
			}
		}
	}
	if k == 0 || alpha == 0 {
		return
	}
	kern := active
	workers := 1
	if m*n*k >= parallelFlops {
		workers = runtime.GOMAXPROCS(0)
	}
	if workers == 1 {
		bufs := getBufs(kern, m, n, k)
		serial(kern, bufs, aT, bT, m, n, k, alpha, a, lda, b, ldb, c, ldc)
		putBufs(bufs)
		return
	}
	// Split C into one rectangle per worker, each multiplied on its own
	// (its own packing, no synchronisation inside): by columns when C is
	// short and wide (a batch through a layer: 64×256), else by rows. The
	// operand every rectangle shares is packed once per worker.
	type part struct{ i0, i1, j0, j1 int }
	var parts []part
	if n >= m && n >= workers*kern.nr {
		per := ((n+workers-1)/workers + kern.nr - 1) / kern.nr * kern.nr
		for j := 0; j < n; j += per {
			parts = append(parts, part{0, m, j, min(j+per, n)})
		}
	} else {
		per := ((m+workers-1)/workers + kern.mr - 1) / kern.mr * kern.mr
		for i := 0; i < m; i += per {
			parts = append(parts, part{i, min(i+per, m), 0, n})
		}
	}
	run := func(p part) {
		mm, nn := p.i1-p.i0, p.j1-p.j0
		// op(A) rows i0… and op(B) columns j0…, as sub-matrices.
		aOff := p.i0 * lda
		if aT {
			aOff = p.i0
		}
		bOff := p.j0
		if bT {
			bOff = p.j0 * ldb
		}
		bufs := getBufs(kern, mm, nn, k)
		serial(kern, bufs, aT, bT, mm, nn, k, alpha, a[aOff:], lda, b[bOff:], ldb, c[p.i0*ldc+p.j0:], ldc)
		putBufs(bufs)
	}
	var wg sync.WaitGroup
	for _, p := range parts[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run(p)
		}()
	}
	run(parts[0]) // the calling goroutine takes a share
	wg.Wait()
}

// serial adds alpha·op(A)·op(B) to C on this goroutine: the blocked loops
// around the micro-kernel.
func serial(kern kernel, bufs *buffers, aT, bT bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	// k in panels of equal depth (784 = 4 × 196, not 3 × 256 + 16: a thin
	// last panel costs a packing pass for little arithmetic).
	panels := (k + kc - 1) / kc
	kstep := (k + panels - 1) / panels
	for jc := 0; jc < n; jc += nc {
		nb := min(nc, n-jc)
		for pc := 0; pc < k; pc += kstep {
			kb := min(kstep, k-pc)
			var direct []float32 // op(B)'s panel in place, for the strided kernel
			if !bT && kern.strided != nil && nb >= kern.nr {
				direct = b[pc*ldb+jc:]
				// Only a last, partial strip is packed (at its own offset).
				if full := nb / kern.nr * kern.nr; full < nb {
					packB(kern.nr, bufs.b[full*kb:], b, ldb, bT, pc, jc+full, kb, nb-full)
				}
			} else {
				packB(kern.nr, bufs.b, b, ldb, bT, pc, jc, kb, nb)
			}
			for ic := 0; ic < m; ic += mc {
				mb := min(mc, m-ic)
				packA(kern.mr, bufs.a, a, lda, aT, ic, pc, mb, kb)
				macro(kern, bufs.a, bufs.b, direct, ldb, alpha, c, ldc, ic, mb, kb, jc, nb, 0, nb)
			}
		}
	}
}

// macro multiplies columns j0…j1 of the panel of B (kb×nb: packed in
// bbuf, or for full strips read in place from direct, rows ldb apart) by
// the packed mb×kb block of op(A) in abuf for rows ic…, adding alpha times
// the product to C at (ic, jc+j0). j0 is a multiple of NR.
func macro(kern kernel, abuf, bbuf, direct []float32, ldb int, alpha float32, c []float32, ldc, ic, mb, kb, jc, nb, j0, j1 int) {
	mr, nr := kern.mr, kern.nr
	var edge [maxMR * maxNR]float32
	for jr := j0; jr < j1; jr += nr {
		bp := bbuf[jr*kb : jr*kb+nr*kb]
		nn := min(nr, nb-jr)
		for ir := 0; ir < mb; ir += mr {
			ap := abuf[ir*kb : ir*kb+mr*kb]
			mm := min(mr, mb-ir)
			off := (ic+ir)*ldc + jc + jr
			if mm == mr && nn == nr {
				if direct != nil {
					kern.strided(kb, alpha, ap, direct[jr:], c[off:], ldc, ldb)
				} else {
					kern.fn(kb, alpha, ap, bp, c[off:], ldc)
				}
				continue
			}
			if direct != nil && nn == nr { // a partial strip of rows: pack this B strip
				packB(nr, bbuf[jr*kb:], direct[jr:], ldb, false, 0, 0, kb, nr)
			}
			if nn == nr && kern.rows[mm] != nil {
				kern.rows[mm](kb, alpha, ap, bp, c[off:], ldc)
				continue
			}
			clear(edge[:mr*nr])
			kern.fn(kb, alpha, ap, bp, edge[:], nr)
			for i := 0; i < mm; i++ {
				row := c[off+i*ldc : off+i*ldc+nn]
				for j := range row {
					row[j] += edge[i*nr+j]
				}
			}
		}
	}
}

// packA copies the mb×kb block of op(A) at (ic, pc) into MR-tall strips:
// strip s holds rows s·MR… in k-major order (MR values per k), zero past m.
func packA(mr int, dst, a []float32, lda int, aT bool, ic, pc, mb, kb int) {
	for ir := 0; ir < mb; ir += mr {
		p := dst[ir*kb : ir*kb+mr*kb]
		mm := min(mr, mb-ir)
		if aT { // op(A)[i][p] = A[p][i]: rows of A are contiguous in i
			for p2 := 0; p2 < kb; p2++ {
				src := a[(pc+p2)*lda+ic+ir:]
				d := p[p2*mr : p2*mr+mr]
				copy(d[:mm], src[:mm])
				clear(d[mm:])
			}
			continue
		}
		// Gather: one pass over k writing each packed column contiguously,
		// reading mm row streams (a scatter per row was a third of a
		// batch-64 product's time).
		if mm == 12 && mr == 12 {
			pack12(p, a[(ic+ir)*lda+pc:], lda, kb)
			continue
		}
		var rows [maxMR][]float32
		for i := 0; i < mm; i++ {
			rows[i] = a[(ic+ir+i)*lda+pc : (ic+ir+i)*lda+pc+kb]
		}
		for p2 := 0; p2 < kb; p2++ {
			d := p[p2*mr : p2*mr+mr]
			for i := 0; i < mm; i++ {
				d[i] = rows[i][p2]
			}
			clear(d[mm:])
		}
	}
}

// packB copies the kb×nb panel of op(B) at (pc, jc) into NR-wide strips:
// strip s holds columns s·NR… in k-major order (NR values per k), zero
// past n.
func packB(nr int, dst, b []float32, ldb int, bT bool, pc, jc, kb, nb int) {
	for jr := 0; jr < nb; jr += nr {
		p := dst[jr*kb : jr*kb+nr*kb]
		nn := min(nr, nb-jr)
		if !bT { // op(B)[p][j] = B[p][j]: rows contiguous in j
			if nn == 32 && nr == 32 {
				for p2 := 0; p2 < kb; p2++ {
					off := (pc+p2)*ldb + jc + jr
					*(*[32]float32)(p[p2*32:]) = *(*[32]float32)(b[off : off+32])
				}
				continue
			}
			for p2 := 0; p2 < kb; p2++ {
				src := b[(pc+p2)*ldb+jc+jr:]
				d := p[p2*nr : p2*nr+nr]
				copy(d[:nn], src[:nn])
				clear(d[nn:])
			}
			continue
		}
		for j := 0; j < nn; j++ { // op(B)[p][j] = B[j][p]
			src := b[(jc+jr+j)*ldb+pc : (jc+jr+j)*ldb+pc+kb]
			for p2, v := range src {
				p[p2*nr+j] = v
			}
		}
		for j := nn; j < nr; j++ {
			for p2 := 0; p2 < kb; p2++ {
				p[p2*nr+j] = 0
			}
		}
	}
}

// kernel is a micro-kernel: fn adds alpha·(packed A strip)·(packed B
// strip) over k to the mr×nr tile of C at c (row stride ldc).
type kernel struct {
	mr, nr int
	fn     func(k int, alpha float32, a, b, c []float32, ldc int)
	name   string
	// rows[r], if set, is fn for the first r rows of a strip (the last
	// strip of a block whose height is not a multiple of mr), written to C
	// directly instead of through a padded tile.
	rows [13]func(k int, alpha float32, a, b, c []float32, ldc int)
	// strided, if set, is fn reading B in place (rows ldb apart) instead
	// of from a packed strip: for op(B) = B, packing is a copy it saves.
	strided func(k int, alpha float32, a, b, c []float32, ldc, ldb int)
}

const maxMR, maxNR = 16, 32

// buffers are one goroutine's packing space: a B panel and an A block.
// A few are kept between calls on a free list (not a sync.Pool, which
// every garbage collection empties: training collects often, and
// re-allocating and clearing megabytes per product showed in profiles).
type buffers struct {
	a, b []float32
}

var free struct {
	sync.Mutex
	list []*buffers
}

func getBufs(kern kernel, m, n, k int) *buffers {
	free.Lock()
	var bs *buffers
	if l := len(free.list); l > 0 {
		bs, free.list = free.list[l-1], free.list[:l-1]
	}
	free.Unlock()
	if bs == nil {
		bs = &buffers{}
	}
	kb := min(kc, k)
	if need := kb * ((min(nc, n) + kern.nr - 1) / kern.nr * kern.nr); len(bs.b) < need {
		bs.b = make([]float32, need)
	}
	if need := kb * ((min(mc, m) + kern.mr - 1) / kern.mr * kern.mr); len(bs.a) < need {
		bs.a = make([]float32, need)
	}
	return bs
}

func putBufs(bs *buffers) {
	free.Lock()
	defer free.Unlock()
	if len(free.list) < 8 {
		free.list = append(free.list, bs)
	}
}

// pack12 packs a full 12-row strip of a row-major A (rows lda apart,
// starting at a) over kb columns: 12 values per column, contiguous.
func pack12(dst, a []float32, lda, kb int) {
	r0, r1, r2, r3 := a[:kb], a[lda:lda+kb], a[2*lda:2*lda+kb], a[3*lda:3*lda+kb]
	r4, r5, r6, r7 := a[4*lda:4*lda+kb], a[5*lda:5*lda+kb], a[6*lda:6*lda+kb], a[7*lda:7*lda+kb]
	r8, r9, r10, r11 := a[8*lda:8*lda+kb], a[9*lda:9*lda+kb], a[10*lda:10*lda+kb], a[11*lda:11*lda+kb]
	dst = dst[:12*kb]
	for p := 0; p < kb; p++ {
		d := (*[12]float32)(dst[12*p:])
		d[0], d[1], d[2], d[3] = r0[p], r1[p], r2[p], r3[p]
		d[4], d[5], d[6], d[7] = r4[p], r5[p], r6[p], r7[p]
		d[8], d[9], d[10], d[11] = r8[p], r9[p], r10[p], r11[p]
	}
}
