package model

import "github.com/fedtune/fedtune/dataset"

// The built-in architectures.
func init() {
	Register("mnist-mlp", MLP{Sizes: []int{784, 256, 10}})
	Register("mnist-mlp-small", MLP{Sizes: []int{784, 64, 10}})
	// next-character prediction on the words data set
	Register("words-mlp", MLP{Sizes: []int{dataset.WordsDim, 128, dataset.WordsClasses}})
}
