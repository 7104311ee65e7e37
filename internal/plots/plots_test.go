package plots

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sweepCSV = `run,aggregator,attack,byzantine,round,participants,accuracy,loss,bytes,cum_bytes
1,fedavg,none,0.1,1,10,0.8,0.5,100,100
1,fedavg,none,0.1,2,10,0.9,0.4,100,200
2,fedavg,ipm,0.1,1,10,0.5,1.5,100,100
2,fedavg,ipm,0.1,2,10,,,100,200
3,median,none,0.1,1,10,0.79,0.5,100,100
3,median,none,0.1,2,10,0.88,0.45,100,200
4,median,ipm,0.1,1,10,0.7,0.9,100,100
4,median,ipm,0.1,2,10,0.85,0.6,100,200
5,fedavg,none,0.2,1,10,0.8,0.5,100,100
6,fedavg,ipm,0.2,1,10,0.1,9,100,100
7,median,none,0.2,1,10,0.8,0.5,100,100
8,median,ipm,0.2,1,10,0.6,1,100,100
`

func TestDrawSweep(t *testing.T) {
	res, err := Read(strings.NewReader(sweepCSV))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Runs) != 8 || strings.Join(res.Swept, ",") != "aggregator,attack,byzantine" {
		t.Fatalf("%d runs swept over %v", len(res.Runs), res.Swept)
	}
	if f := res.Runs[1].final; f != 50 {
		t.Errorf("run 2's final accuracy %v: want its last evaluated round's (50%%)", f)
	}
	dir := t.TempDir()
	files, err := Draw(res, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"accuracy.png", "accuracy_vs_bytes.png", "final_byzantine-0.1.png", "final_byzantine-0.2.png", "loss.png"}
	if len(files) != len(want) {
		t.Fatalf("wrote %v, want %v", files, want)
	}
	for i, f := range files {
		if filepath.Base(f) != want[i] {
			t.Errorf("file %d: %s, want %s", i, f, want[i])
		}
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(r)
		r.Close()
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 300 {
			t.Errorf("%s is %v", f, b)
		}
	}
}

func TestReadRefusesOtherCSV(t *testing.T) {
	for _, in := range []string{"", "a,b\n1,2\n", "run,round,accuracy,loss,cum_bytes\n1,x,0.5,1,1\n", "run,round,accuracy,loss,cum_bytes\n1,1,0.5\n"} {
		if _, err := Read(strings.NewReader(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
