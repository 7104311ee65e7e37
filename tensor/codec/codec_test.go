package codec

import (
	"testing"

	"github.com/fedtune/fedtune/tensor"
)

func TestRoundTrip(t *testing.T) {
	d := tensor.MustNew(tensor.Tensor{Name: "w", Shape: []int{2, 2}, Data: []float32{1, -2, 0.5, 3}})
	for _, name := range []string{"fp32", "fp16", ""} {
		c, err := New(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Encode(d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Hash() != d.Hash() {
			t.Errorf("%s: round trip changed values", c.Name())
		}
	}
	c, _ := New("fp32")
	if _, err := c.Decode([]byte("garbage!garbage!")); err == nil {
		t.Error("garbage decoded")
	}
	if _, err := New("zstd"); err == nil {
		t.Error("unknown codec accepted")
	}
}
