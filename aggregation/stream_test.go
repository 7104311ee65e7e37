package aggregation

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/fedtune/fedtune/tensor"
	"github.com/fedtune/fedtune/tensor/codec"
)

// bigUpdates returns n updates of a layout whose tensors straddle chunk
// and sub-block boundaries (d = 170,011), scattered around one direction,
// with some exact ties, zeros and negative zeros.
func bigUpdates(r *rand.Rand, n int) []Update {
	sizes := map[string][]int{"a.weight": {700, 100}, "b.bias": {5}, "c.weight": {3, 33335}, "d": {1}}
	center := map[string][]float32{}
	for name, shape := range sizes {
		c := make([]float32, tensor.NumElements(shape))
		for i := range c {
			c[i] = float32(r.NormFloat64())
		}
		center[name] = c
	}
	ups := make([]Update, n)
	for i := range ups {
		var ts []tensor.Tensor
		for name, shape := range sizes {
			d := make([]float32, len(center[name]))
			for k := range d {
				switch k % 97 {
				case 0:
					d[k] = 0.5 // the same in every update: ties
				case 1:
					d[k] = float32(math.Copysign(0, float64(1-2*(i%2))))
				default:
					d[k] = center[name][k] + float32(0.3*r.NormFloat64())
				}
			}
			ts = append(ts, tensor.Tensor{Name: name, Shape: shape, Data: d})
		}
		ups[i] = Update{Worker: fmt.Sprintf("w%02d", i), Delta: tensor.MustNew(ts...), Samples: uint64(10 + r.IntN(50))}
	}
	return ups
}

func sameSet(t *testing.T, what string, got, want tensor.Set) {
	t.Helper()
	if err := tensor.SameLayout(got, want); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	for k := range got.Tensors {
		for i, v := range got.Tensors[k].Data {
			if w := want.Tensors[k].Data[i]; math.Float32bits(v) != math.Float32bits(w) {
				t.Fatalf("%s: %s[%d] = %v, want %v bit for bit", what, got.Tensors[k].Name, i, v, w)
			}
		}
	}
}

// TestStreamedEqualsInMemory: every rule gives the same bits and scores
// whether the updates are in memory, streamed from safetensors files, or
// decoded block by block from compressed payloads.
func TestStreamedEqualsInMemory(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	ups := bigUpdates(r, 11)
	dir := t.TempDir()
	files := make([]Update, len(ups))
	for i, u := range ups {
		p := filepath.Join(dir, u.Worker+".safetensors")
		if err := tensor.WriteFile(p, u.Delta, tensor.F32); err != nil {
			t.Fatal(err)
		}
		v, err := tensor.OpenVector(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Close() })
		files[i] = Update{Worker: u.Worker, Source: v, Samples: u.Samples}
	}
	for _, name := range Rules {
		for _, clip := range []float64{0, 100} {
			a, err := NewRule(name, Params{F: 2, ClipNorm: clip, Tau: 50})
			if err != nil {
				t.Fatal(err)
			}
			want, wsc, err := a.Aggregate(ups)
			if err != nil {
				t.Fatalf("%s: %v", a.Name(), err)
			}
			got, gsc, err := a.Aggregate(files)
			if err != nil {
				t.Fatalf("%s streamed: %v", a.Name(), err)
			}
			sameSet(t, a.Name()+" streamed from files", got, want)
			for i := range wsc {
				if gsc[i] != wsc[i] {
					t.Fatalf("%s: score %+v streamed, %+v in memory", a.Name(), gsc[i], wsc[i])
				}
			}
		}
	}
	for _, cname := range []string{"int8", "topk=0.05+fp16", "fp16"} {
		c, err := codec.New(cname)
		if err != nil {
			t.Fatal(err)
		}
		dense := make([]Update, len(ups))
		lazy := make([]Update, len(ups))
		for i, u := range ups {
			p, err := c.Encode(u.Delta)
			if err != nil {
				t.Fatal(err)
			}
			s, err := c.Decode(p)
			if err != nil {
				t.Fatal(err)
			}
			v, err := codec.DecodeVector(c, p, u.Delta.Len())
			if err != nil {
				t.Fatal(err)
			}
			dense[i] = Update{Worker: u.Worker, Delta: s, Samples: u.Samples}
			lazy[i] = Update{Worker: u.Worker, Source: v, Samples: u.Samples}
		}
		for _, name := range []string{"fedavg", "median", "krum"} {
			a, _ := NewRule(name, Params{})
			want, _, err := a.Aggregate(dense)
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := a.Aggregate(lazy)
			if err != nil {
				t.Fatal(err)
			}
			sameSet(t, name+" of "+cname+" decoded by block", got, want)
		}
	}
}

// TestBigRulesMatchReferences checks the coordinate rules against the plain
// references on a model that spans several chunks.
func TestBigRulesMatchReferences(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	for _, n := range []int{6, 9} {
		ups := bigUpdates(r, n)
		vs := vecs(sortedByWorker(ups))
		got, _, err := Median{}.Aggregate(ups)
		if err != nil {
			t.Fatal(err)
		}
		close5(t, "median", got, refColumns(vs, refMedian))
		got, _, _ = TrimmedMean{Beta: 0.2}.Aggregate(ups)
		close5(t, "trimmed-mean", got, refColumns(vs, refTrimmed(0.2)))
		got, _, _ = Krum{F: 1, M: 3, Multi: true}.Aggregate(ups)
		close5(t, "multi-krum", got, refKrum(vs, 1, 3))
	}
}

// TestLongColumns covers columns longer than a sorting network handles.
func TestLongColumns(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	ups := honest(r, maxNetwork+3)
	vs := vecs(sortedByWorker(ups))
	got, _, err := Median{}.Aggregate(ups)
	if err != nil {
		t.Fatal(err)
	}
	close5(t, "median", got, refColumns(vs, refMedian))
	got, _, _ = TrimmedMean{Beta: 0.1}.Aggregate(ups)
	close5(t, "trimmed-mean", got, refColumns(vs, refTrimmed(0.1)))
}

// TestStreamFailures: a file that goes bad under an aggregation (truncated,
// a NaN written into it) gives an error naming the problem, never a
// panic or a silently wrong aggregate.
func TestStreamFailures(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	ups := bigUpdates(r, 5)
	dir := t.TempDir()
	open := func(i int) tensor.Vector {
		p := filepath.Join(dir, fmt.Sprint(i))
		if err := tensor.WriteFile(p, ups[i].Delta, tensor.F32); err != nil {
			t.Fatal(err)
		}
		v, err := tensor.OpenVector(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { v.Close() })
		return v
	}
	for _, tc := range []struct {
		name  string
		spoil func(path string)
		want  error
	}{
		{"truncated", func(p string) { os.Truncate(p, 4000) }, nil},
		{"nan", func(p string) {
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			f.WriteAt([]byte{0, 0, 0xc0, 0x7f}, 200000) // a NaN deep in the data
			f.Close()
		}, tensor.ErrNotFinite},
	} {
		files := make([]Update, len(ups))
		for i, u := range ups {
			files[i] = Update{Worker: u.Worker, Source: open(i), Samples: 1}
		}
		tc.spoil(filepath.Join(dir, "3"))
		for _, name := range []string{"fedavg", "median", "krum"} {
			a, _ := NewRule(name, Params{})
			_, _, err := a.Aggregate(files)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("%s, %s file: err = %v, want %v", name, tc.name, err, tc.want)
			}
		}
	}
}

// TestKernelsMatchGo: whichever kernels this build uses give the pure-Go
// kernels' bits (meaningful under GOEXPERIMENT=simd, which make test runs).
func TestKernelsMatchGo(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{1, 3, 4, 5, 8, 17, 64} {
		for _, L := range []int{1, 15, 16, 17, 1000, 1024} {
			rows := make([][]float32, n)
			for i := range rows {
				rows[i] = make([]float32, L)
				for k := range rows[i] {
					rows[i][k] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(5)-2)))
					if k%7 == 0 {
						rows[i][k] = float32(math.Copysign(0, r.NormFloat64()))
					}
				}
			}
			got, want := make([]float64, n*n), make([]float64, n*n)
			gram(rows, got)
			gramGo(rows, want)
			for k := range got {
				if got[k] != want[k] {
					t.Fatalf("gram n=%d L=%d: entry %d = %v, pure Go %v", n, L, k, got[k], want[k])
				}
			}
			net := sortNetwork(n)
			for g := 0; g+lanes <= L; g += lanes {
				a, b := make([]float32, n*lanes), make([]float32, n*lanes)
				loadLanes(rows, g, lanes, a)
				loadLanesGo(rows, g, lanes, b)
				sortLanes(net, a)
				sortLanesGo(net, b)
				var sa, sb [lanes]float32
				meanRows(a, 0, n, &sa)
				meanRowsGo(b, 0, n, &sb)
				for k := range a {
					if math.Float32bits(a[k]) != math.Float32bits(b[k]) {
						t.Fatalf("sortLanes n=%d: %v vs pure Go %v", n, a[k], b[k])
					}
				}
				if sa != sb {
					t.Fatalf("meanRows n=%d: %v vs pure Go %v", n, sa, sb)
				}
			}
		}
	}
}

func TestDotLanesMatchGo(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	for _, L := range []int{0, 1, 15, 16, 17, 1000, 2048} {
		x, y := make([]float32, L), make([]float32, L)
		for k := range x {
			x[k], y[k] = float32(r.NormFloat64()), float32(r.NormFloat64())
		}
		a, b := dot2Lanes(x, y)
		ga, gb := dot2LanesGo(x, y)
		if a != ga || b != gb || dotLanes(x, y) != dotLanesGo(x, y) || dotLanes(x, x) != ga {
			t.Fatalf("L=%d: dot2Lanes %v %v, pure Go %v %v", L, a, b, ga, gb)
		}
	}
}

func BenchmarkGram64(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	const n, d = 64, 1 << 20
	ups := make([]Update, n)
	for i := range ups {
		v := make([]float32, d)
		for k := range v {
			v[k] = float32(r.NormFloat64())
		}
		ups[i] = Update{Worker: fmt.Sprint(i), Delta: tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{d}, Data: v})}
	}
	j, _ := prepare(ups)
	for b.Loop() {
		j.gram()
	}
}

func BenchmarkFedAvg64(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	const n, d = 64, 1 << 20
	ups := make([]Update, n)
	for i := range ups {
		v := make([]float32, d)
		for k := range v {
			v[k] = float32(r.NormFloat64())
		}
		ups[i] = Update{Worker: fmt.Sprint(i), Delta: tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{d}, Data: v})}
	}
	for b.Loop() {
		FedAvg{}.Aggregate(ups)
	}
}

func TestWeightedSumMatchesAxpy(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	for _, n := range []int{1, 7, 8, 9, 17} {
		for _, L := range []int{5, 16, 100, 4096} {
			xs := make([][]float32, n)
			w := make([]float32, n)
			for i := range xs {
				w[i] = float32(r.Float64())
				xs[i] = make([]float32, L)
				for k := range xs[i] {
					xs[i][k] = float32(r.NormFloat64())
				}
			}
			got, want := make([]float32, L), make([]float32, L)
			weightedSum(got, w, xs)
			for i := range xs {
				tensor.Axpy(w[i], xs[i], want)
			}
			for k := range got {
				if math.Float32bits(got[k]) != math.Float32bits(want[k]) {
					t.Fatalf("n=%d L=%d: element %d = %v, Axpy gives %v", n, L, k, got[k], want[k])
				}
			}
		}
	}
}

// TestPrunedNetworks: a network pruned for the sum of positions [lo, hi)
// leaves exactly the sorted values' multiset there, for every span the
// rules use, on inputs with many ties.
func TestPrunedNetworks(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	for n := 1; n <= 70; n++ {
		full := sortNetwork(n)
		spans := [][2]int{{(n - 1) / 2, n/2 + 1}, {n / 10, n - n/10}, {n / 5, n - n/5}}
		for _, sp := range spans {
			net := full.forSum(n, sp[0], sp[1])
			if len(net) > len(full) {
				t.Fatalf("n=%d: pruned network larger than the full one", n)
			}
			for trial := 0; trial < 20; trial++ {
				v := make([]float32, n)
				for i := range v {
					v[i] = float32(r.IntN(5))
					if trial%2 == 1 {
						v[i] = float32(r.NormFloat64())
					}
				}
				want := append([]float32(nil), v...)
				full.sort(want)
				net.sort(v)
				got := append([]float32(nil), v[sp[0]:sp[1]]...)
				sortNetwork(len(got)).sort(got)
				for i := range got {
					if got[i] != want[sp[0]+i] {
						t.Fatalf("n=%d span %v: positions hold %v, sorted %v", n, sp, v[sp[0]:sp[1]], want[sp[0]:sp[1]])
					}
				}
			}
		}
	}
}
