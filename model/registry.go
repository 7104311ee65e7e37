package model

import (
	"fmt"
	"sort"
	"strings"

	"github.com/fedtune/fedtune/dataset"
)

// architectures are the models a job may name.
var architectures = map[string]MLP{
	"mnist-mlp":       {Sizes: []int{784, 256, 10}},
	"mnist-mlp-small": {Sizes: []int{784, 64, 10}},
	// next-character prediction on the words data set
	"words-mlp": {Sizes: []int{dataset.WordsDim, 128, dataset.WordsClasses}},
}

// Lookup returns the architecture a job spec names.
func Lookup(name string) (MLP, error) {
	m, ok := architectures[name]
	if !ok {
		return MLP{}, fmt.Errorf("unknown model %q (known: %s)", name, strings.Join(Names(), ", "))
	}
	return MLP{Sizes: append([]int(nil), m.Sizes...)}, nil
}

// Names lists the known architectures, sorted.
func Names() []string {
	var ns []string
	for n := range architectures {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}
