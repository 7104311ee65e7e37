package aggregation

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

func randUpdate(r *rand.Rand, worker string, samples uint64) Update {
	w := make([]float32, 12)
	b := make([]float32, 3)
	for i := range w {
		w[i] = float32(r.NormFloat64())
	}
	for i := range b {
		b[i] = float32(r.NormFloat64())
	}
	return Update{Worker: worker, Samples: samples, Delta: tensor.MustNew(
		tensor.Tensor{Name: "fc.weight", Shape: []int{3, 4}, Data: w},
		tensor.Tensor{Name: "fc.bias", Shape: []int{3}, Data: b},
	)}
}

// fedavgRef is the plain definition, in float64.
func fedavgRef(ups []Update) map[string][]float64 {
	var total float64
	for _, u := range ups {
		total += float64(u.Samples)
	}
	out := map[string][]float64{}
	for _, u := range ups {
		for _, t := range u.Delta.Tensors {
			if out[t.Name] == nil {
				out[t.Name] = make([]float64, len(t.Data))
			}
			for i, v := range t.Data {
				out[t.Name][i] += float64(u.Samples) / total * float64(v)
			}
		}
	}
	return out
}

func TestFedAvgMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for trial := 0; trial < 200; trial++ {
		n := 1 + r.IntN(16)
		ups := make([]Update, n)
		for i := range ups {
			ups[i] = randUpdate(r, string(rune('a'+i)), uint64(1+r.IntN(1000)))
		}
		got, scores, err := FedAvg{}.Aggregate(ups)
		if err != nil {
			t.Fatal(err)
		}
		want := fedavgRef(ups)
		for _, tt := range got.Tensors {
			for i, v := range tt.Data {
				if math.Abs(float64(v)-want[tt.Name][i]) > 1e-5 {
					t.Fatalf("trial %d %s[%d] = %v, reference %v", trial, tt.Name, i, v, want[tt.Name][i])
				}
			}
		}
		var wsum float64
		for _, s := range scores {
			wsum += s.Weight
		}
		if math.Abs(wsum-1) > 1e-9 || len(scores) != n {
			t.Fatalf("weights sum to %v over %d scores", wsum, len(scores))
		}
		// Permutation invariance, bit for bit: order is fixed by worker id.
		r.Shuffle(n, func(i, j int) { ups[i], ups[j] = ups[j], ups[i] })
		again, _, _ := FedAvg{}.Aggregate(ups)
		if again.Hash() != got.Hash() {
			t.Fatal("aggregate depends on the order updates arrived in")
		}
	}
}

func TestFedAvgRefusesBadInput(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	a := randUpdate(r, "a", 10)
	b := randUpdate(r, "b", 10)
	b.Delta.Tensors[0].Shape = []int{2, 6}
	cases := map[string][]Update{
		"empty":          nil,
		"layout":         {a, b},
		"same worker ×2": {a, a},
	}
	for name, ups := range cases {
		if _, _, err := (FedAvg{}).Aggregate(ups); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New("krum-typo"); err == nil {
		t.Error("unknown rule accepted")
	}
}
