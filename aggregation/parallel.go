package aggregation

import (
	"runtime"
	"sync"
)

// chunkSize is the fixed unit of parallel work. It does not depend on the
// number of cores, so sums combined chunk by chunk come out the same on
// every machine (aggregation must be deterministic to be verifiable).
const chunkSize = 1 << 16

// forChunks calls f for each chunk [lo, hi) of [0, n), on up to GOMAXPROCS
// goroutines; chunk i is [i*chunkSize, min((i+1)*chunkSize, n)).
func forChunks(n int, f func(chunk, lo, hi int)) {
	chunks := (n + chunkSize - 1) / chunkSize
	workers := min(runtime.GOMAXPROCS(0), chunks)
	if workers <= 1 {
		for c := 0; c < chunks; c++ {
			f(c, c*chunkSize, min((c+1)*chunkSize, n))
		}
		return
	}
	var wg sync.WaitGroup
	next := make(chan int, chunks)
	for c := 0; c < chunks; c++ {
		next <- c
	}
	close(next)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range next {
				f(c, c*chunkSize, min((c+1)*chunkSize, n))
			}
		}()
	}
	wg.Wait()
}

// network is a sorting network: compare-exchange pairs (lo, hi) that sort
// any column of its length when applied in order. Branch-free min/max make
// it faster than a comparison sort for the short columns of coordinate-wise
// rules (one value per update).
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

// sort sorts v, whose length must be the network's.
func (net network) sort(v []float32) {
	for _, c := range net {
		a, b := v[c[0]], v[c[1]]
		v[c[0]], v[c[1]] = min(a, b), max(a, b)
	}
}
