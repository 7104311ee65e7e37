package dataset

import "fmt"

// Load returns a split of the data set a job spec names. Known: "mnist".
func Load(name string, split Split) (*Examples, error) {
	switch name {
	case "mnist":
		return MNIST(split)
	}
	return nil, fmt.Errorf("unknown dataset %q (known: mnist)", name)
}
