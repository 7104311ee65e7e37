package privacy

// Accountant composes rounds of the subsampled Gaussian mechanism, each
// with its own sampling rate and noise multiplier (a federated job's rate
// is the clients selected over those eligible, which changes with the
// roster), and reports (ε, δ) after any of them.
type Accountant struct {
	orders []float64
	rdp    []float64
}

// NewAccountant returns an accountant over DefaultOrders.
func NewAccountant() *Accountant {
	o := DefaultOrders()
	return &Accountant{orders: o, rdp: make([]float64, len(o))}
}

// Compose adds steps rounds at sampling rate q and noise multiplier sigma.
func (a *Accountant) Compose(q, sigma float64, steps int) error {
	r, err := RDP(q, sigma, steps, a.orders)
	if err != nil {
		return err
	}
	for i, v := range r {
		a.rdp[i] += v
	}
	return nil
}

// Epsilon is the ε spent so far at δ, and the RDP order that gives it.
func (a *Accountant) Epsilon(delta float64) (eps, order float64, err error) {
	return Epsilon(a.rdp, a.orders, delta)
}
