package dataset

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestStripRoff(t *testing.T) {
	src := `.\" Copyright line
.TH LS 1 "2024" "GNU" "User Commands"
.SH NAME
ls \- list directory contents
.SH DESCRIPTION
.PP
List information about the \fBFILEs\fR (the current directory by default).
.B \-a
do not ignore entries starting with \(aq.\(aq \" a comment
.IP "\(bu" 2
\fIitalic\fP words\(emand a dash
`
	got := StripRoff([]byte(src))
	for _, want := range []string{"NAME", "ls - list directory contents", "List information about the FILEs (the current directory by default).",
		"-a", "do not ignore entries starting with '.'", "italic words—and a dash"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	for _, gone := range []string{"Copyright", ".TH", `\f`, "comment"} {
		if strings.Contains(got, gone) {
			t.Errorf("%q left in:\n%s", gone, got)
		}
	}
}

// TestManText reads each language's installed manual pages (make test
// installs Debian's manpages, manpages-fr, -de, -es) and checks they are in
// that language: its common words are far more frequent than the others'.
func TestManText(t *testing.T) {
	common := map[string][]string{"en": {" the ", " and ", " of "}, "fr": {" le ", " les ", " des "}, "de": {" der ", " die ", " und "}, "es": {" el ", " los ", " del "}}
	for _, lang := range TextLanguages {
		t.Run(lang, func(t *testing.T) {
			docs, err := ManText(lang, 2<<20)
			if err != nil {
				t.Skip(err)
			}
			if len(docs) < 20 {
				t.Fatalf("%d documents", len(docs))
			}
			text := " " + strings.ToLower(strings.Join(docs, " ")) + " "
			score := map[string]int{}
			for l, words := range common {
				for _, w := range words {
					score[l] += strings.Count(text, w)
				}
			}
			for l, s := range score {
				if l != lang && s >= score[lang] {
					t.Errorf("%s pages: %s's common words counted %d, their own %d", lang, l, s, score[lang])
				}
			}
			t.Logf("%s: %d documents, %d bytes", lang, len(docs), len(text))
		})
	}
	if _, err := ManText("xx", 0); err == nil {
		t.Error("an unknown language was read")
	}
}

func TestPackAndSplit(t *testing.T) {
	seqs := Pack([][]int{{1, 2, 3}, {4, 5}, {6, 7, 8, 9}}, 0, 3)
	want := [][]int{{1, 2, 3, 0}, {4, 5, 0, 6}, {7, 8, 9, 0}}
	if len(seqs) != len(want) {
		t.Fatalf("%v", seqs)
	}
	for i := range want {
		if !slices.Equal(seqs[i], want[i]) {
			t.Errorf("sequence %d = %v, want %v", i, seqs[i], want[i])
		}
	}
	docs := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	train, held := SplitHeldOut(docs, 0.2, 1)
	if len(held) != 2 || len(train) != 8 {
		t.Errorf("%d train, %d held out", len(train), len(held))
	}
	again, _ := SplitHeldOut(docs, 0.2, 1)
	if !slices.Equal(again, train) {
		t.Error("the split is not a function of the seed")
	}
	all := append(slices.Clone(train), held...)
	slices.Sort(all)
	if !slices.Equal(all, docs) {
		t.Errorf("documents lost or repeated: %v", all)
	}
}

// TestFortuneText reads each language's fortunes (make test installs
// Debian's fortune packages) and checks they are UTF-8 text in that
// language's script: Cyrillic for Russian, Latin letters with the
// language's own diacritics elsewhere.
func TestFortuneText(t *testing.T) {
	// Letters (or, for Italian, whose fortunes write accents as
	// apostrophes, a word) each language has and English does not.
	marks := map[string]string{"de": "äöüß", "es": "ñ", "it": " che ", "pl": "ąęłńśźż", "pt": "ãõç", "ru": "абвгдежзиклмнопрст", "en": " the "}
	for _, lang := range FortuneLanguages {
		t.Run(lang, func(t *testing.T) {
			docs, err := FortuneText(lang, 1<<20)
			if err != nil {
				t.Skip(err)
			}
			text := strings.ToLower(strings.Join(docs, "\n"))
			if !utf8.ValidString(text) {
				t.Fatal("not UTF-8")
			}
			m := marks[lang]
			found := strings.ContainsAny(text, m)
			if strings.HasPrefix(m, " ") { // a word, not a set of letters
				found = strings.Contains(text, m)
			}
			if !found {
				t.Errorf("none of %q in %d fortunes", marks[lang], len(docs))
			}
			t.Logf("%s: %d fortunes, %d bytes", lang, len(docs), len(text))
		})
	}
}
