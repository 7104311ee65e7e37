package dataset

import (
	"errors"
	"testing"
)

func TestWords(t *testing.T) {
	langs := []string{"en", "fr", "de", "es"}
	train, err := Words(langs, Train)
	if errors.Is(err, ErrNoWordList) {
		t.Skipf("word lists not installed (make words installs them): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	test, err := Words(langs, Test)
	if err != nil {
		t.Fatal(err)
	}
	if train.Dim != WordsDim || train.Classes != WordsClasses || len(train.Group) != train.Len() {
		t.Fatalf("dim %d classes %d, %d groups for %d examples", train.Dim, train.Classes, len(train.Group), train.Len())
	}
	// Every example is one-hot in each context slot, and its label is a
	// character or the end of a word, never the start padding.
	counts := make([]int, len(langs))
	for i := 0; i < train.Len(); i++ {
		ones := 0
		for _, v := range train.Row(i) {
			if v == 1 {
				ones++
			} else if v != 0 {
				t.Fatalf("example %d: feature %v", i, v)
			}
		}
		if ones != WordsContext || train.Y[i] == 0 {
			t.Fatalf("example %d: %d ones, label %d", i, ones, train.Y[i])
		}
		counts[train.Group[i]]++
	}
	for g, c := range counts {
		if c < 3000*3 {
			t.Errorf("%s: only %d training examples", langs[g], c)
		}
	}
	if test.Len() == 0 || test.Len() > train.Len()/4 {
		t.Errorf("%d test examples for %d training ones", test.Len(), train.Len())
	}
	// One language per worker group.
	parts, err := SplitGroups(train.Group, 8, 1)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for w, p := range parts {
		for _, i := range p {
			if int(train.Group[i]) != w%4 {
				t.Fatalf("worker %d got an example of group %d", w, train.Group[i])
			}
		}
		total += len(p)
	}
	if total != train.Len() {
		t.Errorf("partition covers %d of %d examples", total, train.Len())
	}
	if _, err := SplitGroups(train.Group, 3, 1); err == nil {
		t.Error("3 workers for 4 groups accepted")
	}
	if _, err := Words([]string{"tlh"}, Train); err == nil {
		t.Error("unknown language accepted")
	}
}
