package central

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/fedtune/fedtune/dataset"
	"github.com/fedtune/fedtune/model"
)

// TestEvaluateMatchesModelAndRunsConcurrently checks the evaluator gives
// the model's own evaluation of the test split, from several goroutines at
// once (different jobs' evaluations do not share one evaluator).
func TestEvaluateMatchesModelAndRunsConcurrently(t *testing.T) {
	arch, _ := model.Lookup("mnist-mlp-small")
	params := arch.Init(3)
	test, err := dataset.Load("mnist", dataset.Test)
	if err != nil {
		t.Skipf("MNIST: %v", err)
	}
	ev, _ := arch.NewEvaluator(Batch)
	want, err := ev.Evaluate(params, test)
	ev.Close()
	if err != nil {
		t.Fatal(err)
	}
	e := New()
	defer e.Close()
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := e.Evaluate(context.Background(), "mnist-mlp-small", "mnist", params)
			if err != nil || got.Accuracy != want.Accuracy || got.Loss != want.Loss || got.N != want.N {
				t.Errorf("Evaluate = %+v, %v; want %+v", got, err, want)
			}
		}()
	}
	wg.Wait()
	if n := len(e.idle["mnist-mlp-small"]); n < 1 || n > maxIdle {
		t.Errorf("%d idle evaluators kept", n)
	}
}

func TestErrors(t *testing.T) {
	e := New()
	defer e.Close()
	arch, _ := model.Lookup("mnist-mlp-small")
	for _, tc := range []struct{ model, ds, want string }{
		{"mnist-mlp-small", "imagenet", "unknown dataset"},
		{"nope", "mnist", "unknown model"},
		{"mnist-mlp", "mnist", "does not fit"},
	} {
		_, err := e.Evaluate(context.Background(), tc.model, tc.ds, arch.Init(1))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s on %s: %v, want %q", tc.model, tc.ds, err, tc.want)
		}
	}
	if err := e.CheckDataset("words-xx"); err == nil {
		t.Error("an unknown language was accepted")
	}
}
