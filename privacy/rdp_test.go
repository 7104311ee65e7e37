package privacy

import (
	"math"
	"testing"
)

// TestPublishedEpsilons reproduces ε values published with Opacus's RDP
// accountant (pytorch/opacus, opacus/tests/accountants_test.py):
// test_rdp_accountant — σ = 1.5, q = 0.04, ⌊90/0.04⌋ = 2250 steps,
// δ = 1e-5: ε = 7.32911117143; test_get_noise_multiplier — the σ that
// spends ε = 8 (tolerance 0.01) at q = 0.04 over 90 epochs, δ = 1e-5, is
// 1.425307617. Within 2% (the bar).
func TestPublishedEpsilons(t *testing.T) {
	for _, c := range []struct {
		name        string
		q, sigma    float64
		steps       int
		delta, want float64
	}{
		{"opacus test_rdp_accountant", 0.04, 1.5, 2250, 1e-5, 7.32911117143},
		{"opacus test_get_noise_multiplier", 0.04, 1.425307617, 2250, 1e-5, 8},
	} {
		a := NewAccountant()
		if err := a.Compose(c.q, c.sigma, c.steps); err != nil {
			t.Fatal(err)
		}
		eps, order, err := a.Epsilon(c.delta)
		if err != nil {
			t.Fatal(err)
		}
		if rel := math.Abs(eps-c.want) / c.want; rel > 0.02 {
			t.Errorf("%s: ε %.6f (order %v), published %v: %.2f%% off", c.name, eps, order, c.want, 100*rel)
		}
		t.Logf("%s: ε %.9f at order %v, published %v", c.name, eps, order, c.want)
	}
}

// TestRDPProperties: ε grows with the steps and the sampling rate and
// falls as the noise grows; without sampling the RDP is the Gaussian
// mechanism's α/(2σ²); fractional orders continue the integer ones.
func TestRDPProperties(t *testing.T) {
	eps := func(q, sigma float64, steps int) float64 {
		a := NewAccountant()
		if err := a.Compose(q, sigma, steps); err != nil {
			t.Fatal(err)
		}
		e, _, err := a.Epsilon(1e-5)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	prev := 0.0
	for _, steps := range []int{1, 10, 100, 1000, 10000} {
		e := eps(0.01, 1.1, steps)
		if e <= prev {
			t.Errorf("ε %v after %d steps, not above %v", e, steps, prev)
		}
		prev = e
	}
	prev = math.Inf(1)
	for _, sigma := range []float64{0.7, 1, 1.5, 2, 4, 8} {
		e := eps(0.01, sigma, 1000)
		if e >= prev {
			t.Errorf("ε %v at σ %v, not below %v", e, sigma, prev)
		}
		prev = e
	}
	prev = 0
	for _, q := range []float64{0.001, 0.01, 0.1, 0.5, 1} {
		e := eps(q, 1.5, 100)
		if e <= prev {
			t.Errorf("ε %v at q %v, not above %v", e, q, prev)
		}
		prev = e
	}
	full, err := RDP(1, 2, 3, []float64{2, 5.5})
	if err != nil || math.Abs(full[0]-3*2/8.0) > 1e-12 || math.Abs(full[1]-3*5.5/8.0) > 1e-12 {
		t.Errorf("RDP without sampling %v (%v), want 3·α/(2σ²)", full, err)
	}
	for _, a := range []float64{2, 3, 8, 32} {
		r, _ := RDP(0.05, 1.2, 1, []float64{a, a + 1e-7})
		if math.Abs(r[0]-r[1]) > 1e-5*math.Max(1, r[0]) {
			t.Errorf("order %v: integer formula %v, fractional just above %v", a, r[0], r[1])
		}
	}
	for _, bad := range []struct{ q, sigma float64 }{{-0.1, 1}, {1.1, 1}, {0.1, 0}, {0.1, math.NaN()}} {
		if _, err := RDP(bad.q, bad.sigma, 1, DefaultOrders()); err == nil {
			t.Errorf("q %v σ %v accepted", bad.q, bad.sigma)
		}
	}
	if _, _, err := NewAccountant().Epsilon(0); err == nil {
		t.Error("δ = 0 accepted")
	}
}
