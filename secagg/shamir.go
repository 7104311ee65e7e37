package secagg

import (
	"errors"
	"fmt"
	"io"
)

// Shamir secret sharing over GF(2^8), byte by byte (the field of AES, with
// its polynomial x^8 + x^4 + x^3 + x + 1): a secret is split into shares,
// each the values at one nonzero point of random polynomials of degree
// threshold−1 whose constant terms are the secret's bytes; any threshold of
// them give the secret back by Lagrange interpolation at 0, fewer give
// nothing about it. Points are 1 to 255, so at most 255 shares.

var gfExp, gfLog = func() (exp [510]byte, log [256]byte) {
	x := byte(1)
	for i := range 255 {
		exp[i], exp[i+255] = x, x
		log[x] = byte(i)
		// multiply by the generator 3: x·2 ⊕ x
		hi := x & 0x80
		x2 := x << 1
		if hi != 0 {
			x2 ^= 0x1b
		}
		x ^= x2
	}
	return exp, log
}()

func gfMul(a, b byte) byte {
	if a == 0 || b == 0 {
		return 0
	}
	return gfExp[int(gfLog[a])+int(gfLog[b])]
}

func gfDiv(a, b byte) byte {
	if a == 0 {
		return 0
	}
	return gfExp[int(gfLog[a])+255-int(gfLog[b])]
}

// Share is one point of a shared secret: the evaluation point X (1 to 255)
// and the secret's polynomials evaluated there.
type Share struct {
	X    byte
	Data []byte
}

// Split shares secret among the points xs (distinct, nonzero) so that any
// threshold of the shares recover it. rng supplies the polynomials'
// coefficients (crypto/rand in production).
func Split(secret []byte, xs []byte, threshold int, rng io.Reader) ([]Share, error) {
	if threshold < 1 || threshold > len(xs) {
		return nil, fmt.Errorf("shamir: threshold %d of %d shares", threshold, len(xs))
	}
	seen := map[byte]bool{}
	for _, x := range xs {
		if x == 0 || seen[x] {
			return nil, fmt.Errorf("shamir: evaluation point %d repeated or zero", x)
		}
		seen[x] = true
	}
	coef := make([]byte, len(secret)*(threshold-1))
	if _, err := io.ReadFull(rng, coef); err != nil {
		return nil, fmt.Errorf("shamir: random coefficients: %w", err)
	}
	out := make([]Share, len(xs))
	for i, x := range xs {
		data := make([]byte, len(secret))
		for b, s := range secret {
			// Horner: ((c_{t-1}·x + c_{t-2})·x + …)·x + secret
			var y byte
			for k := threshold - 2; k >= 0; k-- {
				y = gfMul(y, x) ^ coef[b*(threshold-1)+k]
			}
			data[b] = gfMul(y, x) ^ s
		}
		out[i] = Share{X: x, Data: data}
	}
	return out, nil
}

// Combine recovers a secret from shares (at least the threshold it was
// split with; more are fine, and all are used: a caller that must catch a
// wrong share checks the secret against a commitment). Shares must have
// distinct nonzero points and equal lengths.
func Combine(shares []Share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, errors.New("shamir: no shares")
	}
	n := len(shares[0].Data)
	seen := map[byte]bool{}
	for _, s := range shares {
		if s.X == 0 || seen[s.X] {
			return nil, fmt.Errorf("shamir: share point %d repeated or zero", s.X)
		}
		if len(s.Data) != n {
			return nil, fmt.Errorf("shamir: shares of %d and %d bytes", n, len(s.Data))
		}
		seen[s.X] = true
	}
	secret := make([]byte, n)
	for i, si := range shares {
		// Lagrange basis at 0: Π_{j≠i} x_j / (x_j − x_i); − is ⊕ here.
		l := byte(1)
		for j, sj := range shares {
			if i != j {
				l = gfMul(l, gfDiv(sj.X, sj.X^si.X))
			}
		}
		for b := range secret {
			secret[b] ^= gfMul(l, si.Data[b])
		}
	}
	return secret, nil
}
