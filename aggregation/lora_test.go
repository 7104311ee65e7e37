package aggregation

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/fedtune/fedtune/tensor"
)

func adapter(r *rand.Rand, worker string, a []float32, rank, in, out int) Update {
	if a == nil {
		a = make([]float32, rank*in)
		for i := range a {
			a[i] = float32(r.NormFloat64())
		}
	}
	b := make([]float32, out*rank)
	for i := range b {
		b[i] = float32(r.NormFloat64())
	}
	bias := []float32{float32(r.NormFloat64()), float32(r.NormFloat64())}
	return Update{Worker: worker, Samples: uint64(1 + r.IntN(9)), Delta: tensor.MustNew(
		tensor.Tensor{Name: "base_model.fc1.lora_A.weight", Shape: []int{rank, in}, Data: a},
		tensor.Tensor{Name: "base_model.fc1.lora_B.weight", Shape: []int{out, rank}, Data: b},
		tensor.Tensor{Name: "head.bias", Shape: []int{2}, Data: bias},
	)}
}

// product returns B·A of an adapter set.
func product(s tensor.Set) *mat.Dense {
	a, _ := s.Get("base_model.fc1.lora_A.weight")
	b, _ := s.Get("base_model.fc1.lora_B.weight")
	var p mat.Dense
	p.Mul(mat.NewDense(b.Shape[0], b.Shape[1], f64(b.Data)), mat.NewDense(a.Shape[0], a.Shape[1], f64(a.Data)))
	return &p
}

func trueAverage(ups []Update) *mat.Dense {
	var total float64
	for _, u := range ups {
		total += float64(u.Samples)
	}
	var sum *mat.Dense
	for _, u := range ups {
		p := product(u.Delta)
		p.Scale(float64(u.Samples)/total, p)
		if sum == nil {
			sum = p
		} else {
			sum.Add(sum, p)
		}
	}
	return sum
}

func frob(a, b *mat.Dense) float64 {
	var d mat.Dense
	d.Sub(a, b)
	return mat.Norm(&d, 2)
}

// TestLoRAExact: the exact rule reproduces the average of the workers'
// products when it has rank ≤ r, and is never further from it than
// averaging A and B separately (the naive rule), which it beats clearly on
// unrelated adapters.
func TestLoRAExact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const rank, in, out = 2, 12, 9
	// Shared A: the true average is (Σ wB)·A, of rank ≤ r.
	shared := adapter(r, "x", nil, rank, in, out).Delta.Tensors[0].Data
	var ups []Update
	for i := range 5 {
		ups = append(ups, adapter(r, fmt.Sprint("w", i), append([]float32(nil), shared...), rank, in, out))
	}
	got, err := LoRAExact(ups)
	if err != nil {
		t.Fatal(err)
	}
	if e := frob(product(got), trueAverage(ups)); e > 1e-4 {
		t.Errorf("shared A: exact aggregate is %v away from the true average product", e)
	}
	// Unrelated adapters: the true average has rank up to 5r.
	ups = nil
	for i := range 5 {
		ups = append(ups, adapter(r, fmt.Sprint("w", i), nil, rank, in, out))
	}
	exact, err := LoRAExact(ups)
	if err != nil {
		t.Fatal(err)
	}
	naive, _, err := FedAvg{}.Aggregate(ups)
	if err != nil {
		t.Fatal(err)
	}
	want := trueAverage(ups)
	ee, en := frob(product(exact), want), frob(product(naive), want)
	t.Logf("distance to the true average product: exact (SVD) %.3f, naive %.3f", ee, en)
	if ee > en || ee > 0.8*en {
		t.Errorf("exact %.3f not clearly better than naive %.3f", ee, en)
	}
	// Eckart–Young: the error is the norm of the dropped singular values.
	var svd mat.SVD
	svd.Factorize(want, mat.SVDNone)
	var dropped float64
	for _, s := range svd.Values(nil)[rank:] {
		dropped += s * s
	}
	if math.Abs(ee-math.Sqrt(dropped)) > 1e-3 {
		t.Errorf("exact error %.5f, best rank-%d error %.5f", ee, rank, math.Sqrt(dropped))
	}
	// Other tensors are averaged as FedAvg does.
	eb, _ := exact.Get("head.bias")
	nb, _ := naive.Get("head.bias")
	if math.Abs(float64(eb.Data[0]-nb.Data[0])) > 1e-6 {
		t.Errorf("non-adapter tensor %v, FedAvg %v", eb.Data, nb.Data)
	}
	// Errors.
	lonely := Update{Worker: "a", Samples: 1, Delta: tensor.MustNew(tensor.Tensor{Name: "x.lora_A.weight", Shape: []int{2, 3}, Data: make([]float32, 6)})}
	if _, err := LoRAExact([]Update{lonely}); err == nil {
		t.Error("an A without its B was accepted")
	}
	plain := Update{Worker: "a", Samples: 1, Delta: tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{2}, Data: make([]float32, 2)})}
	if _, err := LoRAExact([]Update{plain}); err == nil {
		t.Error("updates without adapters were accepted")
	}
}
