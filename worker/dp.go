package worker

import (
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"

	"github.com/fedtune/fedtune/round"
	"github.com/fedtune/fedtune/tensor"
)

// privatize clips and noises an update for distributed DP with noise
// seeded from crypto/rand: nobody, the coordinators included, can
// reproduce and subtract it.
func privatize(delta tensor.Set, clip, std float64) error {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return fmt.Errorf("noise seed: %w", err)
	}
	return round.Privatize(delta, clip, std, mrand.New(mrand.NewChaCha8(seed)))
}
