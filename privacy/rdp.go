// Package privacy accounts for differential privacy: the Rényi DP (RDP) of
// the Poisson-subsampled Gaussian mechanism — what one round of DP-FedAvg
// is, clients sampled with probability q and their clipped sum noised with
// standard deviation σ·clip — composed over rounds, and its conversion to
// (ε, δ). The formulas are those of Mironov, Talwar and Zhang, "Rényi
// Differential Privacy of the Sampled Gaussian Mechanism" (2019): integer
// orders by the binomial expansion, fractional orders by its two-sided
// series with erfc terms; the conversion is Balle et al. (2020),
// Proposition 12 (the one Opacus and Google's dp_accounting use). The
// package is pure arithmetic: no state but what an Accountant composes.
package privacy

import (
	"fmt"
	"math"
)

// DefaultOrders are the RDP orders the conversion minimises over:
// 1.1, 1.2, …, 10.9 and 12, 13, …, 63 (Opacus's defaults).
func DefaultOrders() []float64 {
	var out []float64
	for x := 1; x < 100; x++ {
		out = append(out, 1+float64(x)/10)
	}
	for a := 12; a < 64; a++ {
		out = append(out, float64(a))
	}
	return out
}

// RDP returns, at each order, the Rényi DP of steps compositions of the
// Gaussian mechanism with noise multiplier sigma applied to a Poisson
// sample of rate q.
func RDP(q, sigma float64, steps int, orders []float64) ([]float64, error) {
	switch {
	case !(q >= 0 && q <= 1):
		return nil, fmt.Errorf("privacy: sampling rate %v: want a number in [0, 1]", q)
	case !(sigma > 0) || math.IsInf(sigma, 0):
		return nil, fmt.Errorf("privacy: noise multiplier %v: want a positive number", sigma)
	case steps < 0:
		return nil, fmt.Errorf("privacy: %d steps", steps)
	}
	out := make([]float64, len(orders))
	for i, a := range orders {
		if !(a > 1) {
			return nil, fmt.Errorf("privacy: order %v: want an order above 1", a)
		}
		out[i] = float64(steps) * rdpOne(q, sigma, a)
	}
	return out, nil
}

// rdpOne is the RDP of one step at order a.
func rdpOne(q, sigma, a float64) float64 {
	switch {
	case q == 0:
		return 0
	case q == 1:
		return a / (2 * sigma * sigma)
	case math.IsInf(a, 1):
		return math.Inf(1)
	}
	var logA float64
	if a == math.Trunc(a) {
		logA = logAInt(q, sigma, int(a))
	} else {
		logA = logAFrac(q, sigma, a)
	}
	return logA / (a - 1)
}

// logAInt is log A_a for an integer order: Σ_k C(a,k) (1−q)^(a−k) q^k
// exp((k²−k)/(2σ²)), summed in log space.
func logAInt(q, sigma float64, a int) float64 {
	logA := math.Inf(-1)
	for k := 0; k <= a; k++ {
		logCoef := logBinom(float64(a), k) + float64(k)*math.Log(q) + float64(a-k)*math.Log1p(-q)
		logA = logAddExp(logA, logCoef+float64(k*k-k)/(2*sigma*sigma))
	}
	return logA
}

// logAFrac is log A_a for a fractional order: the two series of Mironov et
// al. (2019, Section 3.3) around z0 = σ² log(1/q − 1) + ½, summed until
// their terms are negligible.
func logAFrac(q, sigma, a float64) float64 {
	logA0, logA1 := math.Inf(-1), math.Inf(-1)
	z0 := sigma*sigma*math.Log(1/q-1) + 0.5
	logCoef, sign := 0.0, 1.0 // C(a, 0)
	for i := 0; i < 100000; i++ {
		if i > 0 {
			f := (a - float64(i) + 1) / float64(i)
			if f < 0 {
				sign = -sign
			}
			logCoef += math.Log(math.Abs(f))
		}
		fi, j := float64(i), a-float64(i)
		logT0 := logCoef + fi*math.Log(q) + j*math.Log1p(-q)
		logT1 := logCoef + j*math.Log(q) + fi*math.Log1p(-q)
		logE0 := math.Log(0.5) + logErfc((fi-z0)/(math.Sqrt2*sigma))
		logE1 := math.Log(0.5) + logErfc((z0-j)/(math.Sqrt2*sigma))
		logS0 := logT0 + (fi*fi-fi)/(2*sigma*sigma) + logE0
		logS1 := logT1 + (j*j-j)/(2*sigma*sigma) + logE1
		if sign > 0 {
			logA0, logA1 = logAddExp(logA0, logS0), logAddExp(logA1, logS1)
		} else {
			logA0, logA1 = logSubExp(logA0, logS0), logSubExp(logA1, logS1)
		}
		if math.Max(logS0, logS1) < -30 {
			break
		}
	}
	return logAddExp(logA0, logA1)
}

// Epsilon converts RDP at orders to (ε, δ)-DP: the smallest, over the
// orders, of rdp + log((α−1)/α) − (log δ + log α)/(α−1) (Balle et al. 2020,
// Proposition 12), and the order that gives it.
func Epsilon(rdp, orders []float64, delta float64) (eps, order float64, err error) {
	if !(delta > 0 && delta < 1) {
		return 0, 0, fmt.Errorf("privacy: δ %v: want a number in (0, 1)", delta)
	}
	if len(rdp) != len(orders) || len(orders) == 0 {
		return 0, 0, fmt.Errorf("privacy: %d RDP values for %d orders", len(rdp), len(orders))
	}
	eps, order = math.Inf(1), 0
	for i, a := range orders {
		e := rdp[i] + math.Log((a-1)/a) - (math.Log(delta)+math.Log(a))/(a-1)
		if e < eps {
			eps, order = e, a
		}
	}
	return math.Max(eps, 0), order, nil
}

// logBinom is log C(n, k) for n ≥ k ≥ 0.
func logBinom(n float64, k int) float64 {
	a, _ := math.Lgamma(n + 1)
	b, _ := math.Lgamma(float64(k) + 1)
	c, _ := math.Lgamma(n - float64(k) + 1)
	return a - b - c
}

func logAddExp(a, b float64) float64 {
	if math.IsInf(a, -1) {
		return b
	}
	if math.IsInf(b, -1) {
		return a
	}
	m := math.Max(a, b)
	return m + math.Log1p(math.Exp(-math.Abs(a-b)))
}

// logSubExp is log(exp(a) − exp(b)) for a ≥ b (−∞ when they are equal).
func logSubExp(a, b float64) float64 {
	if math.IsInf(b, -1) {
		return a
	}
	if b >= a {
		return math.Inf(-1)
	}
	return a + math.Log1p(-math.Exp(b-a))
}

// logErfc is log erfc(x), by its asymptotic expansion where erfc
// underflows.
func logErfc(x float64) float64 {
	if x < 20 {
		return math.Log(math.Erfc(x))
	}
	x2 := x * x
	return -x2 - math.Log(x) - 0.5*math.Log(math.Pi) + math.Log1p(-1/(2*x2)+3/(4*x2*x2)-15/(8*x2*x2*x2))
}
