package tensor

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// littleEndian is true when float32 values in memory already have the
// byte order safetensors uses, so F32 data can be copied as bytes.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// putF32 writes v to b (len(b) == 4*len(v)) as little-endian float32.
func putF32(b []byte, v []float32) {
	if littleEndian && len(v) > 0 {
		copy(b, unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v)))
		return
	}
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
}

// getF32 reads little-endian float32 values from b into v (len(b) == 4*len(v)).
func getF32(v []float32, b []byte) {
	if littleEndian && len(v) > 0 {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v)), b)
		return
	}
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
}

// F32Bytes returns v as little-endian float32 bytes (safetensors' and
// NumPy's '<f4' layout).
func F32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	putF32(b, v)
	return b
}
