package blas

// goKernel is the pure-Go micro-kernel: a 4×8 tile in 32 scalar
// accumulators.
var goKernel = kernel{mr: 4, nr: 8, fn: kernelGo, name: "go 4x8"}

func kernelGo(k int, alpha float32, a, b, c []float32, ldc int) {
	var acc [4][8]float32
	for p := 0; p < k; p++ {
		ap := a[p*4 : p*4+4]
		bp := b[p*8 : p*8+8]
		for i := 0; i < 4; i++ {
			ai := ap[i]
			row := &acc[i]
			row[0] += ai * bp[0]
			row[1] += ai * bp[1]
			row[2] += ai * bp[2]
			row[3] += ai * bp[3]
			row[4] += ai * bp[4]
			row[5] += ai * bp[5]
			row[6] += ai * bp[6]
			row[7] += ai * bp[7]
		}
	}
	for i := 0; i < 4; i++ {
		row := c[i*ldc : i*ldc+8]
		for j := range row {
			row[j] += alpha * acc[i][j]
		}
	}
}
