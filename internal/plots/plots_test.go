package plots

import (
	"image/png"
	"math"
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

const seedsCSV = `run,codec,seed,round,participants,accuracy,loss,bytes,cum_bytes
1,fp32,1,0,10,0.10,2.3,0,0
1,fp32,1,1,10,0.80,0.5,1000000,1000000
2,fp32,2,0,10,0.10,2.3,0,0
2,fp32,2,1,10,0.84,0.4,1000000,1000000
3,fp32,3,0,10,0.10,2.3,0,0
3,fp32,3,1,10,0.82,0.45,1000000,1000000
4,int8,1,0,10,0.10,2.3,0,0
4,int8,1,1,10,0.70,0.6,250000,250000
5,int8,2,0,10,0.10,2.3,0,0
5,int8,2,1,10,0.74,0.5,250000,250000
6,int8,3,0,10,0.10,2.3,0,0
6,int8,3,1,10,0.72,0.55,250000,250000
`

// TestSeedsAveraged: runs differing only in their seed become one series:
// the mean with Student's-t 95% interval, drawn as a band and labelled
// bars; the bytes plot takes a log axis without its zero point.
func TestSeedsAveraged(t *testing.T) {
	res, err := Read(strings.NewReader(seedsCSV))
	if err != nil {
		t.Fatal(err)
	}
	avg := averageSeeds(res)
	if len(avg.Runs) != 2 || strings.Join(avg.Swept, ",") != "codec" {
		t.Fatalf("%d series over %v", len(avg.Runs), avg.Swept)
	}
	fp := avg.Runs[0]
	// final accuracies 80, 84, 82: mean 82, sd 2, t(0.975, 2) = 4.303
	if math.Abs(fp.final-82) > 1e-9 || math.Abs(fp.finalCI-4.302652729749464*2/math.Sqrt(3)) > 1e-6 || fp.seeds != 3 {
		t.Errorf("fp32: final %v ± %v over %d seeds", fp.final, fp.finalCI, fp.seeds)
	}
	if fp.label != "codec=fp32 (3 seeds)" || len(fp.accLo) != 2 || !(fp.accLo[1] < 82 && fp.accHi[1] > 82) {
		t.Errorf("fp32 series %q, band %v–%v", fp.label, fp.accLo, fp.accHi)
	}
	files, err := Draw(res, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	if strings.Join(names, ",") != "accuracy.png,accuracy_vs_bytes.png,final.png,loss.png" {
		t.Errorf("wrote %v", names)
	}
}

const dpCSV = `run,dp_noise,round,participants,accuracy,loss,bytes,cum_bytes,epsilon
1,0,1,10,0.80,0.5,100,100,
1,0,2,10,0.90,0.4,100,200,
2,1,1,10,0.70,0.9,100,100,2.5
2,1,2,10,0.85,0.6,100,200,3.75
3,2,1,10,0.60,1.2,100,100,1
3,2,2,10,0.75,0.8,100,200,1.5
`

// TestDrawPrivacy: a DP sweep gets the ε per round, accuracy against ε and
// the privacy–utility plot; ε is read per round and per evaluated round.
func TestDrawPrivacy(t *testing.T) {
	res, err := Read(strings.NewReader(dpCSV))
	if err != nil {
		t.Fatal(err)
	}
	if !res.dp || res.Runs[1].finalEps != 3.75 || res.Runs[0].finalEps != 0 || len(res.Runs[2].accEps) != 2 || res.Runs[2].accEps[1] != 1.5 {
		t.Fatalf("dp %v, final ε %v %v, run 3's ε at its accuracies %v", res.dp, res.Runs[0].finalEps, res.Runs[1].finalEps, res.Runs[2].accEps)
	}
	files, err := Draw(res, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for _, want := range []string{"epsilon.png", "accuracy_vs_epsilon.png", "privacy_utility.png"} {
		if !strings.Contains(strings.Join(names, ","), want) {
			t.Errorf("wrote %v: no %s", names, want)
		}
	}
	if _, err := Read(strings.NewReader(strings.Replace(dpCSV, "3.75", "lots", 1))); err == nil {
		t.Error("a non-numeric ε accepted")
	}
}
