//go:build !(goexperiment.simd && amd64)

package aggregation

func loadLanes(rows [][]float32, j, m int, s []float32)      { loadLanesGo(rows, j, m, s) }
func sortLanes(net network, s []float32)                     { sortLanesGo(net, s) }
func meanRows(s []float32, a, b int, out *[lanes]float32)    { meanRowsGo(s, a, b, out) }
func gram(rows [][]float32, acc []float64)                   { gramGo(rows, acc) }
func dotLanes(x, y []float32) float64                        { return dotLanesGo(x, y) }
func dot2Lanes(x, y []float32) (float64, float64)            { return dot2LanesGo(x, y) }
func weightedSum(dst []float32, w []float32, xs [][]float32) { weightedSumGo(dst, w, xs) }

// SIMD reports whether the aggregation kernels use SIMD instructions
// (AVX-512) in this build on this CPU.
func SIMD() bool { return false }
