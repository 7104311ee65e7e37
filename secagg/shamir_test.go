package secagg

import (
	"bytes"
	"crypto/rand"
	"testing"
)

func TestGF256(t *testing.T) {
	for a := 1; a < 256; a++ {
		for b := 1; b < 256; b++ {
			if got := gfDiv(gfMul(byte(a), byte(b)), byte(b)); got != byte(a) {
				t.Fatalf("(%d·%d)/%d = %d", a, b, b, got)
			}
		}
	}
	// AES's field: 0x57 · 0x83 = 0xc1 (FIPS-197 §4.2)
	if got := gfMul(0x57, 0x83); got != 0xc1 {
		t.Errorf("0x57·0x83 = %#x, want 0xc1", got)
	}
}

func TestShamir(t *testing.T) {
	secret := []byte("a 32-byte secret seed for masks!")
	xs := []byte{1, 2, 3, 4, 5, 6, 7}
	for _, tc := range []struct {
		threshold int
		use       []int // indexes of the shares combined
		ok        bool
	}{
		{4, []int{0, 1, 2, 3}, true},
		{4, []int{6, 2, 4, 0}, true},
		{4, []int{0, 1, 2, 3, 4, 5, 6}, true},
		{4, []int{0, 1, 2}, false}, // below the threshold: a different value
		{1, []int{5}, true},
		{7, []int{0, 1, 2, 3, 4, 5, 6}, true},
	} {
		shares, err := Split(secret, xs, tc.threshold, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var use []Share
		for _, i := range tc.use {
			use = append(use, shares[i])
		}
		got, err := Combine(use)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, secret) != tc.ok {
			t.Errorf("threshold %d from shares %v: recovered %v, want ok %v", tc.threshold, tc.use, bytes.Equal(got, secret), tc.ok)
		}
	}
	for _, bad := range []struct {
		xs []byte
		t  int
	}{{[]byte{1, 1, 2}, 2}, {[]byte{0, 1, 2}, 2}, {[]byte{1, 2}, 3}, {[]byte{1, 2}, 0}} {
		if _, err := Split(secret, bad.xs, bad.t, rand.Reader); err == nil {
			t.Errorf("split at %v threshold %d accepted", bad.xs, bad.t)
		}
	}
	if _, err := Combine([]Share{{X: 1, Data: []byte{1}}, {X: 1, Data: []byte{2}}}); err == nil {
		t.Error("repeated share point accepted")
	}
	if _, err := Combine([]Share{{X: 1, Data: []byte{1}}, {X: 2, Data: []byte{2, 3}}}); err == nil {
		t.Error("shares of different lengths accepted")
	}
}
