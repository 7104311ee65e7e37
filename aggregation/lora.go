package aggregation

import (
	"fmt"
	"math"
	"strings"

	"gonum.org/v1/gonum/mat"

	"github.com/fedtune/fedtune/tensor"
)

// LoRA adapters (Hu et al. 2021) replace a layer's update by a product
// B·A of two thin matrices, A [r, in] and B [out, r], named as Hugging Face
// PEFT names them: "<layer>.lora_A.weight" and "<layer>.lora_B.weight".
// Averaging the A's and the B's separately is not the average of the
// products: mean(B)·mean(A) ≠ mean(B·A). LoRAExact aggregates the products
// and factorises the result back to rank r with a truncated SVD — the best
// rank-r approximation of the true average (Eckart–Young), exact whenever
// that average has rank ≤ r.

// LoRA suffixes of adapter tensor names.
const (
	loraA = ".lora_A.weight"
	loraB = ".lora_B.weight"
)

// LoRAExact returns the sample-weighted aggregate of LoRA adapter updates:
// for every adapter pair, the rank-r truncated SVD of Σ wᵢ·Bᵢ·Aᵢ, split as
// B' = U·√S and A' = √S·Vᵀ; every other tensor is averaged with the same
// weights. Updates must share one layout with matching A/B pairs.
// Adapters are small, so each update is read into memory whole.
func LoRAExact(updates []Update) (tensor.Set, error) {
	j, err := prepare(updates)
	if err != nil {
		return tensor.Set{}, err
	}
	sets := make([]tensor.Set, j.n)
	weights := make([]float64, j.n)
	var total float64
	for i, u := range j.ups {
		if sets[i], err = tensor.Materialize(j.vs[i]); err != nil {
			return tensor.Set{}, err
		}
		weights[i] = float64(max(u.Samples, 1))
		total += weights[i]
	}
	for i := range weights {
		weights[i] /= total
	}
	out, _ := j.layout.Zeros()
	pairs := 0
	for k, t := range out.Tensors {
		switch {
		case strings.HasSuffix(t.Name, loraA):
			continue // written with its B
		case strings.HasSuffix(t.Name, loraB):
			ka, ok := index(out, strings.TrimSuffix(t.Name, loraB)+loraA)
			if !ok {
				return tensor.Set{}, fmt.Errorf("lora: %s has no matching %s", t.Name, loraA)
			}
			if err := exactPair(sets, weights, k, ka, out); err != nil {
				return tensor.Set{}, err
			}
			pairs++
		default:
			for i, s := range sets {
				tensor.Axpy(float32(weights[i]), s.Tensors[k].Data, t.Data)
			}
		}
	}
	for _, t := range out.Tensors {
		if strings.HasSuffix(t.Name, loraA) {
			if _, ok := index(out, strings.TrimSuffix(t.Name, loraA)+loraB); !ok {
				return tensor.Set{}, fmt.Errorf("lora: %s has no matching %s", t.Name, loraB)
			}
		}
	}
	if pairs == 0 {
		return tensor.Set{}, fmt.Errorf("lora: no adapter pairs (tensors named …%s and …%s)", loraA, loraB)
	}
	return out, nil
}

// exactPair writes the factorised weighted sum of B·A for tensors kb, ka.
func exactPair(sets []tensor.Set, weights []float64, kb, ka int, out tensor.Set) error {
	tb, ta := out.Tensors[kb], out.Tensors[ka]
	if len(tb.Shape) != 2 || len(ta.Shape) != 2 || tb.Shape[1] != ta.Shape[0] {
		return fmt.Errorf("lora: %s %v and %s %v are not B [out, r] and A [r, in]", tb.Name, tb.Shape, ta.Name, ta.Shape)
	}
	rows, r, cols := tb.Shape[0], tb.Shape[1], ta.Shape[1]
	sum := mat.NewDense(rows, cols, nil)
	var prod mat.Dense
	for i, s := range sets {
		b := mat.NewDense(rows, r, f64(s.Tensors[kb].Data))
		a := mat.NewDense(r, cols, f64(s.Tensors[ka].Data))
		prod.Mul(b, a)
		prod.Scale(weights[i], &prod)
		sum.Add(sum, &prod)
	}
	var svd mat.SVD
	if !svd.Factorize(sum, mat.SVDThin) {
		return fmt.Errorf("lora: SVD of %s·%s did not converge", tb.Name, ta.Name)
	}
	sv := svd.Values(nil)
	var u, v mat.Dense
	svd.UTo(&u)
	svd.VTo(&v)
	for c := 0; c < r && c < len(sv); c++ {
		root := math.Sqrt(sv[c])
		for row := 0; row < rows; row++ {
			tb.Data[row*r+c] = float32(u.At(row, c) * root)
		}
		for col := 0; col < cols; col++ {
			ta.Data[c*cols+col] = float32(v.At(col, c) * root)
		}
	}
	return nil
}

func index(s tensor.Set, name string) (int, bool) {
	for k, t := range s.Tensors {
		if t.Name == name {
			return k, true
		}
	}
	return 0, false
}

func f64(v []float32) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// ScoreAgainst scores updates against an aggregate they were combined into
// by a rule outside this package's streaming ones (LoRAExact): weights are
// the sample shares, and norm, distance and cosine are computed on the
// updates read whole. Scores come in worker order, like every rule's.
func ScoreAgainst(updates []Update, agg tensor.Set) ([]Score, error) {
	j, err := prepare(updates)
	if err != nil {
		return nil, err
	}
	if err := tensor.SetVector(agg).Layout().Check(j.layout); err != nil {
		return nil, fmt.Errorf("aggregation: aggregate: %w", err)
	}
	var total float64
	for _, u := range j.ups {
		total += float64(u.Samples)
	}
	aa := agg.Norm() * agg.Norm()
	weights, uu, ua := make([]float64, j.n), make([]float64, j.n), make([]float64, j.n)
	for i, u := range j.ups {
		weights[i] = 1 / float64(j.n)
		if total > 0 {
			weights[i] = float64(u.Samples) / total
		}
		s, err := tensor.Materialize(j.vs[i])
		if err != nil {
			return nil, fmt.Errorf("aggregation: update of %s: %w", u.Worker, err)
		}
		for k, t := range s.Tensors {
			for e, x := range t.Data {
				uu[i] += float64(x) * float64(x)
				ua[i] += float64(x) * float64(agg.Tensors[k].Data[e])
			}
		}
	}
	return j.scoresFrom(weights, uu, ua, aa), nil
}
