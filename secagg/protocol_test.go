package secagg

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"

	pb "github.com/fedtune/fedtune/protocol"
)

// run is one simulated round: n workers, inputs of dim values, those in
// drop send shares but never their masked input.
type run struct {
	p       Params
	clients map[string]*Client
	keys    []*pb.SecAggKeys
	shared  []string
	inbox   map[string][]*pb.SecAggShare
	plain   map[string][]uint32
	masked  map[string][]uint32
}

func newRun(t *testing.T, p Params, n, dim int) *run {
	t.Helper()
	r := &run{p: p, clients: map[string]*Client{}, inbox: map[string][]*pb.SecAggShare{}, plain: map[string][]uint32{}, masked: map[string][]uint32{}}
	for i := range n {
		id := fmt.Sprintf("w%02d", i)
		c, k, err := NewClient(p, id, rand.Reader, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.clients[id], r.keys = c, append(r.keys, k)
	}
	for _, k := range r.keys {
		shares, err := r.clients[k.Worker].Shares(r.keys)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range shares {
			r.inbox[s.To] = append(r.inbox[s.To], s)
		}
		r.shared = append(r.shared, k.Worker)
	}
	g := mrand.New(mrand.NewPCG(uint64(n), uint64(dim)))
	for _, u := range r.shared {
		x := make([]float32, dim)
		for i := range x {
			x[i] = float32(g.NormFloat64() * 0.3)
		}
		r.plain[u] = Encode(x, p.FracBits, p.ClipRange)
	}
	return r
}

func (r *run) mask(t *testing.T, drop map[string]bool) {
	t.Helper()
	for _, u := range r.shared {
		y, err := r.clients[u].Mask(r.plain[u], r.shared, r.inbox[u])
		if err != nil {
			t.Fatal(err)
		}
		if !drop[u] {
			r.masked[u] = y
		}
	}
}

func (r *run) survivors() []string {
	var s []string
	for u := range r.masked {
		s = append(s, u)
	}
	slices.Sort(s)
	return s
}

func (r *run) reveal(t *testing.T) []*pb.SecAggReveal {
	t.Helper()
	var out []*pb.SecAggReveal
	for _, u := range r.survivors() {
		rv, err := r.clients[u].Reveal(r.survivors())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rv...)
	}
	return out
}

func (r *run) plainSum() []uint32 {
	var sum []uint32
	for _, u := range r.survivors() {
		if sum == nil {
			sum = make([]uint32, len(r.plain[u]))
		}
		for i, v := range r.plain[u] {
			sum[i] += v
		}
	}
	return sum
}

func params(n int) Params {
	return Params{Job: "job", Round: 3, Seed: 9, FracBits: FracBits(n, 1), ClipRange: 1}
}

// TestUnmaskWithDropouts: the unmasked sum is exactly the plain sum of the
// survivors' fixed-point inputs, in the complete graph (classic SecAgg)
// and in SecAgg+'s sparse one, with 30% of workers dropping out after the
// masks were fixed; no masked input equals its plain input.
func TestUnmaskWithDropouts(t *testing.T) {
	// Sparse graphs keep t of a neighbourhood's k: a third here, so that
	// 30% dropouts leave enough shares of every secret.
	for _, tc := range []struct {
		n, k, dim int
		f         float64
	}{{10, 0, 1001, 0}, {40, 0, 257, 0.34}, {40, 16, 64, 0.34}} {
		t.Run(fmt.Sprintf("n%d_k%d", tc.n, tc.k), func(t *testing.T) {
			p := params(tc.n)
			p.Neighbors, p.Threshold = tc.k, tc.f
			r := newRun(t, p, tc.n, tc.dim)
			drop := map[string]bool{}
			for i := range tc.n * 3 / 10 {
				drop[fmt.Sprintf("w%02d", 3*i+1)] = true
			}
			r.mask(t, drop)
			for u, y := range r.masked {
				if same := sameCount(y, r.plain[u]); same > tc.dim/100+1 {
					t.Errorf("%s's masked input equals its plain input in %d of %d values", u, same, tc.dim)
				}
			}
			sum, err := Unmask(p, r.keys, r.shared, r.masked, r.reveal(t))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sum, r.plainSum()) {
				t.Fatalf("unmasked sum differs from the survivors' plain sum")
			}
			// and it decodes to the float sum within the encoding's step
			dec := Decode(sum, p.FracBits)
			if math.Abs(float64(dec[0])-float64(Decode(r.plainSum()[:1], p.FracBits)[0])) > 0 {
				t.Errorf("decode %v", dec[0])
			}
			t.Logf("n %d, k %d (threshold %d), %d dropped: sum exact", tc.n, Degree(tc.n, tc.k), ThresholdOf(Degree(tc.n, tc.k), tc.f), len(drop))
		})
	}
}

func sameCount(a, b []uint32) int {
	n := 0
	for i := range a {
		if a[i] == b[i] {
			n++
		}
	}
	return n
}

// TestBadInput: malformed or misdirected shares, a share for another
// round, wrong revealed shares and too few survivors are errors (or are
// outvoted by enough good shares), never a wrong sum.
func TestBadInput(t *testing.T) {
	const n, dim = 10, 50
	t.Run("tampered share", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		r.inbox["w01"][0].Ciphertext[20] ^= 1
		if _, err := r.clients["w01"].Mask(r.plain["w01"], r.shared, r.inbox["w01"]); err == nil || !strings.Contains(err.Error(), "does not open") {
			t.Errorf("tampered share: %v", err)
		}
	})
	t.Run("share for another round", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		other := params(n)
		other.Round++
		// w00 made its shares for the next round with the same keys
		c := r.clients["w00"]
		c.p, c.graph = other, nil
		shares, err := c.Shares(r.keys)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range r.inbox["w01"] {
			if s.From == "w00" {
				r.inbox["w01"][i] = shares[slices.IndexFunc(shares, func(s *pb.SecAggShare) bool { return s.To == "w01" })]
			}
		}
		if _, err := r.clients["w01"].Mask(r.plain["w01"], r.shared, r.inbox["w01"]); err == nil {
			t.Error("a share made for another round opened")
		}
	})
	t.Run("share meant for another worker", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		if _, err := r.clients["w02"].Mask(r.plain["w02"], r.shared, r.inbox["w01"]); err == nil {
			t.Error("another worker's shares accepted")
		}
	})
	t.Run("one wrong revealed share among good ones", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		r.mask(t, map[string]bool{"w03": true})
		rv := r.reveal(t)
		rv[0].Share[0] ^= 0xff
		sum, err := Unmask(params(n), r.keys, r.shared, r.masked, rv)
		if err != nil || !slices.Equal(sum, r.plainSum()) {
			t.Errorf("with one wrong share: err %v, exact %v", err, slices.Equal(sum, r.plainSum()))
		}
	})
	t.Run("wrong shares everywhere", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		r.mask(t, map[string]bool{"w03": true})
		rv := r.reveal(t)
		for _, x := range rv {
			x.Share[0] ^= byte(len(x.From))
		}
		if _, err := Unmask(params(n), r.keys, r.shared, r.masked, rv); !errors.Is(err, ErrBadShares) {
			t.Errorf("all shares wrong: %v", err)
		}
	})
	t.Run("malformed reveals", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		r.mask(t, map[string]bool{"w03": true})
		for name, mutate := range map[string]func(x *pb.SecAggReveal){
			"short share":       func(x *pb.SecAggReveal) { x.Share = x.Share[:5] },
			"wrong point":       func(x *pb.SecAggReveal) { x.X = 200 },
			"wrong secret kind": func(x *pb.SecAggReveal) { x.MaskKey = !x.MaskKey },
			"from a dropout":    func(x *pb.SecAggReveal) { x.From = "w03" },
			"of an outsider":    func(x *pb.SecAggReveal) { x.Of = "w99" },
		} {
			rv := r.reveal(t)
			mutate(rv[1])
			if _, err := Unmask(params(n), r.keys, r.shared, r.masked, rv); err == nil {
				t.Errorf("%s accepted", name)
			}
			for _, c := range r.clients {
				c.revealedOnce = false
			}
		}
	})
	t.Run("too few survivors", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		drop := map[string]bool{}
		for i := range 6 {
			drop[fmt.Sprintf("w%02d", i)] = true
		}
		r.mask(t, drop)
		if _, err := r.clients["w07"].Reveal(r.survivors()); !errors.Is(err, ErrTooFewSurvivors) {
			t.Errorf("a worker revealed with %d survivors: %v", len(r.survivors()), err)
		}
		if _, err := Unmask(params(n), r.keys, r.shared, r.masked, nil); !errors.Is(err, ErrTooFewSurvivors) {
			t.Errorf("unmask with %d survivors: %v", len(r.survivors()), err)
		}
	})
	t.Run("too few shares", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		r.mask(t, nil)
		rv := r.reveal(t)
		var few []*pb.SecAggReveal
		for _, x := range rv {
			if x.Of != "w05" || len(few) < 2 {
				few = append(few, x)
			}
		}
		if _, err := Unmask(params(n), r.keys, r.shared, r.masked, few); !errors.Is(err, ErrTooFewShares) {
			t.Errorf("2 shares of w05: %v", err)
		}
	})
	t.Run("second reveal refused", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		r.mask(t, nil)
		r.reveal(t)
		if _, err := r.clients["w00"].Reveal(r.survivors()[1:]); err == nil {
			t.Error("a worker revealed twice (both secrets of one worker could be asked for)")
		}
	})
	t.Run("masked inputs of different lengths", func(t *testing.T) {
		r := newRun(t, params(n), n, dim)
		r.mask(t, nil)
		r.masked["w04"] = r.masked["w04"][:10]
		if _, err := Unmask(params(n), r.keys, r.shared, r.masked, r.reveal(t)); err == nil {
			t.Error("inputs of different lengths accepted")
		}
	})
}

func TestFixedPoint(t *testing.T) {
	if b := FracBits(10, 1); b != 27 {
		t.Errorf("FracBits(10, 1) = %d, want 27", b)
	}
	x := []float32{0, 0.5, -0.25, 3, -3, float32(math.NaN())}
	got := Decode(Encode(x, 20, 1), 20)
	want := []float32{0, 0.5, -0.25, 1, -1, 0}
	if !slices.Equal(got, want) {
		t.Errorf("round trip %v, want %v", got, want)
	}
	// n inputs at the clamp bound sum without wrapping
	n := 10
	b := FracBits(n, 1)
	sum := make([]uint32, 1)
	for range n {
		sum[0] += Encode([]float32{-1}, b, 1)[0]
	}
	if d := Decode(sum, b)[0]; d != -10 {
		t.Errorf("ten times -1 decodes to %v", d)
	}
}

func TestGraph(t *testing.T) {
	var ids []string
	for i := range 50 {
		ids = append(ids, fmt.Sprintf("w%02d", i))
	}
	g, err := NewGraph(ids, Params{Seed: 1, Round: 2})
	if err != nil {
		t.Fatal(err)
	}
	if g.K() != 12 { // ⌈2·log2 50⌉ = 12
		t.Fatalf("k = %d", g.K())
	}
	for _, u := range ids {
		nb := g.Neighbors(u)
		if len(nb) != 12 || slices.Contains(nb, u) {
			t.Fatalf("%s's neighbours %v", u, nb)
		}
		for _, v := range nb {
			if !slices.Contains(g.Neighbors(v), u) {
				t.Fatalf("%s neighbours %s but not back", u, v)
			}
		}
	}
	if _, err := NewGraph([]string{"b", "a"}, Params{}); err == nil {
		t.Error("unsorted ids accepted")
	}
}

// fakeAuth signs with a per-worker secret the "CA" knows: enough to test
// that clients refuse keys nobody signed or that someone else signed.
type fakeAuth struct{ id string }

func (a fakeAuth) tag(worker string, msg []byte) []byte {
	h := sha256.Sum256(append([]byte("secret of "+worker+"\x00"), msg...))
	return h[:]
}

func (a fakeAuth) Sign(k *pb.SecAggKeys, msg []byte) error {
	k.Certificate, k.Signature = []byte(a.id), a.tag(a.id, msg)
	return nil
}

func (a fakeAuth) Verify(k *pb.SecAggKeys, msg []byte) error {
	if string(k.Certificate) != k.Worker || !bytes.Equal(k.Signature, a.tag(k.Worker, msg)) {
		return errors.New("bad signature")
	}
	return nil
}

// TestSignedKeys: with authentication, a worker shares only with keys
// their workers signed: a coordinator substituting its own keys for one
// worker's (to open that worker's shares and masks) is refused.
func TestSignedKeys(t *testing.T) {
	p := params(4)
	var clients []*Client
	var keys []*pb.SecAggKeys
	for i := range 4 {
		id := fmt.Sprintf("w%02d", i)
		c, k, err := NewClient(p, id, rand.Reader, fakeAuth{id})
		if err != nil {
			t.Fatal(err)
		}
		clients, keys = append(clients, c), append(keys, k)
	}
	if _, err := clients[0].Shares(keys); err != nil {
		t.Fatalf("signed keys refused: %v", err)
	}
	// the coordinator's own keys in w02's place, unsigned or signed by it
	_, evil, _ := NewClient(p, "w02", rand.Reader, nil)
	forged := slices.Clone(keys)
	forged[2] = evil
	if _, err := clients[1].Shares(forged); err == nil || !strings.Contains(err.Error(), "keys of w02") {
		t.Errorf("unsigned substitute keys: %v", err)
	}
	evil.Certificate, evil.Signature = []byte("w02"), []byte("forged")
	if _, err := clients[3].Shares(forged); err == nil {
		t.Error("substitute keys with a forged signature accepted")
	}
	// keys signed for another round do not carry over
	other := p
	other.Round++
	_, old, _ := NewClient(other, "w02", rand.Reader, fakeAuth{"w02"})
	forged[2] = old
	if _, err := clients[3].Shares(forged); err == nil {
		t.Error("keys signed for another round accepted")
	}
}
