package dataset

import (
	"testing"
)

func TestMNIST(t *testing.T) {
	for _, c := range []struct {
		split Split
		n     int
	}{{Train, 60000}, {Test, 10000}} {
		e, err := MNIST(c.split)
		if err != nil {
			t.Fatal(err)
		}
		if e.Len() != c.n || e.Dim != 784 {
			t.Fatalf("%s: %d examples of dim %d, want %d of 784", c.split, e.Len(), e.Dim, c.n)
		}
		var counts [10]int
		for _, y := range e.Y {
			counts[y]++
		}
		for d, k := range counts {
			if k < c.n/20 {
				t.Errorf("%s: digit %d has only %d examples", c.split, d, k)
			}
		}
		var maxv float32
		for _, v := range e.X[:784*10] {
			maxv = max(maxv, v)
		}
		if maxv != 1 {
			t.Errorf("pixels not scaled to [0,1]: max %v", maxv)
		}
	}
	if _, err := MNIST("valid"); err == nil {
		t.Error("unknown split accepted")
	}
	if _, err := MNISTDir(t.TempDir(), Train); err == nil {
		t.Error("missing files accepted")
	}
}

func TestPartitions(t *testing.T) {
	labels := make([]uint8, 6000)
	for i := range labels {
		labels[i] = uint8(i % 10)
	}
	cases := []struct {
		p Partition
		// maxClasses bounds how many labels any one client sees (0: no bound).
		maxClasses int
	}{
		{Partition{Kind: "iid", Seed: 1}, 0},
		{Partition{Kind: "shards", Shards: 2, Seed: 1}, 4}, // 16 shards of 375 over classes of 600: each spans at most 2 labels
		{Partition{Kind: "dirichlet", Alpha: 0.1, Seed: 1}, 0},
		{Partition{Kind: "dirichlet", Alpha: 100, Seed: 1}, 0},
	}
	for _, c := range cases {
		t.Run(c.p.Kind, func(t *testing.T) {
			parts, err := c.p.Split(labels, 10, 8)
			if err != nil {
				t.Fatal(err)
			}
			seen := make([]bool, len(labels))
			for _, part := range parts {
				classes := map[uint8]bool{}
				for _, i := range part {
					if seen[i] {
						t.Fatalf("example %d given twice", i)
					}
					seen[i] = true
					classes[labels[i]] = true
				}
				if c.maxClasses > 0 && len(classes) > c.maxClasses {
					t.Errorf("client sees %d classes, want at most %d", len(classes), c.maxClasses)
				}
			}
			for i, s := range seen {
				if !s {
					t.Fatalf("example %d given to nobody", i)
				}
			}
			again, _ := c.p.Split(labels, 10, 8)
			for k := range parts {
				if len(again[k]) != len(parts[k]) {
					t.Fatal("same seed gave a different split")
				}
			}
		})
	}
	if _, err := (Partition{Kind: "dirichlet"}).Split(labels, 10, 4); err == nil {
		t.Error("dirichlet without alpha accepted")
	}
	if _, err := (Partition{Kind: "zipf"}).Split(labels, 10, 4); err == nil {
		t.Error("unknown kind accepted")
	}
}
