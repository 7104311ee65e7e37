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

// insertionSort sorts a short column in place (n is the number of
// updates: tens, where it beats the general sort).
func insertionSort(v []float32) {
	for i := 1; i < len(v); i++ {
		x := v[i]
		j := i - 1
		for j >= 0 && v[j] > x {
			v[j+1] = v[j]
			j--
		}
		v[j+1] = x
	}
}
