package dataset

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// ManRoot is where Debian installs manual pages: English in man1…man8,
// translations in <lang>/man1… (packages manpages, manpages-fr, -de, -es,
// which `make test` installs).
var ManRoot = "/usr/share/man"

// TextLanguages are the languages ManText reads.
var TextLanguages = []string{"de", "en", "es", "fr"}

// ManText returns the manual pages of a language as plain text, one
// document per page, in a fixed order (sorted by path), up to maxBytes of
// text in all (0: no limit): real text written by people, in the roff
// source's language with the markup stripped. It fails if the language's
// pages are not installed.
func ManText(lang string, maxBytes int) ([]string, error) {
	if !slices.Contains(TextLanguages, lang) {
		return nil, fmt.Errorf("manual pages: unknown language %q (known: %s)", lang, strings.Join(TextLanguages, ", "))
	}
	root := ManRoot
	if lang != "en" {
		root = filepath.Join(ManRoot, lang)
	}
	var paths []string
	for sec := 1; sec <= 8; sec++ {
		ps, _ := filepath.Glob(filepath.Join(root, fmt.Sprintf("man%d", sec), "*.gz"))
		paths = append(paths, ps...)
	}
	if len(paths) == 0 {
		pkg := "manpages"
		if lang != "en" {
			pkg += "-" + lang
		}
		return nil, fmt.Errorf("manual pages (%s): none under %s; install Debian's %s", lang, root, pkg)
	}
	sort.Strings(paths)
	var docs []string
	total := 0
	for _, p := range paths {
		raw, err := readGzip(p)
		if err != nil {
			continue // a damaged page is skipped, not fatal
		}
		text := StripRoff(raw)
		if len(text) < 200 || bytes.HasPrefix(raw, []byte(".so ")) {
			continue // a link to another page, or next to nothing
		}
		if maxBytes > 0 && total+len(text) > maxBytes {
			break
		}
		docs = append(docs, text)
		total += len(text)
	}
	return docs, nil
}

func readGzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(z, 4<<20))
}

var (
	roffEscape = regexp.MustCompile(`\\f[BIRP0-9]|\\f\[[^\]]*\]|\\f\([A-Z]{2}|\\s[-+]?[0-9]|\\\([a-zA-Z]{2}|\\\[[^\]]*\]|\\[*n]\(?[a-zA-Z0-9]{1,2}|\\[&|^%:]|\\c`)
	roffDash   = strings.NewReplacer(`\-`, "-", `\e`, `\`, `\ `, " ", `\(em`, "—", `\(en`, "–", `\(aq`, "'", `\(dq`, `"`)
	spaces     = regexp.MustCompile(`[ \t]+`)
)

// StripRoff turns a roff manual page into its text: requests and macro
// lines (. and ') dropped except the words of headings and paragraphs
// they carry, comments dropped, escapes resolved or removed.
func StripRoff(src []byte) string {
	var out strings.Builder
	for _, line := range strings.Split(string(src), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.HasPrefix(line, `.\"`) || strings.HasPrefix(line, `'\"`) || strings.HasPrefix(line, `\"`) {
			continue
		}
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			// Keep the text of the macros that carry it (.SH NAME, .B word, .I word).
			f := strings.SplitN(line, " ", 2)
			switch strings.TrimLeft(f[0], ".'") {
			case "SH", "SS", "B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "TP", "IP":
				if len(f) == 2 {
					line = strings.ReplaceAll(f[1], `"`, "")
				} else {
					continue
				}
			default:
				if !strings.HasPrefix(line, ".PP") && !strings.HasPrefix(line, ".P ") && line != ".P" && !strings.HasPrefix(line, ".LP") {
					continue
				}
				out.WriteString("\n")
				continue
			}
		}
		if i := strings.Index(line, `\"`); i >= 0 {
			line = line[:i]
		}
		line = roffEscape.ReplaceAllString(roffDash.Replace(line), "")
		line = strings.TrimSpace(spaces.ReplaceAllString(line, " "))
		if line == "" {
			continue
		}
		out.WriteString(line)
		out.WriteString("\n")
	}
	return strings.TrimSpace(out.String())
}

// Pack concatenates tokenised documents, each followed by eos, and cuts
// the stream into sequences of seqLen+1 ids (a model's inputs are the
// first seqLen, its next-token targets the last seqLen); the tail that
// does not fill a sequence is dropped.
func Pack(docs [][]int, eos, seqLen int) [][]int {
	var stream []int
	for _, d := range docs {
		stream = append(append(stream, d...), eos)
	}
	var seqs [][]int
	for lo := 0; lo+seqLen+1 <= len(stream); lo += seqLen + 1 {
		seqs = append(seqs, stream[lo:lo+seqLen+1:lo+seqLen+1])
	}
	return seqs
}

// SplitHeldOut shuffles documents with seed and returns the train part
// and a held-out part of about frac of them (at least one of each when
// there are two or more).
func SplitHeldOut(docs []string, frac float64, seed uint64) (train, held []string) {
	idx := rand.New(rand.NewPCG(seed, 0x7e57)).Perm(len(docs))
	n := int(frac * float64(len(docs)))
	if len(docs) >= 2 {
		n = min(max(n, 1), len(docs)-1)
	}
	for i, j := range idx {
		if i < n {
			held = append(held, docs[j])
		} else {
			train = append(train, docs[j])
		}
	}
	return train, held
}

// Text returns the documents of a text data set (man-<lang> or
// fortunes-<lang>), at most maxBytes of them (0: all).
func Text(name string, maxBytes int) ([]string, error) {
	kind, lang, _ := strings.Cut(name, "-")
	switch {
	case !IsText(name) || lang == "":
		return nil, fmt.Errorf("%q is not a text data set of one language (man-<lang>, fortunes-<lang>)", name)
	case kind == "man":
		return ManText(lang, maxBytes)
	}
	return FortuneText(lang, maxBytes)
}

// ShareDocs deals documents among n holders after a shuffle drawn from
// seed (every holder's call with the same seed deals alike) and returns
// holder i's share.
func ShareDocs(docs []string, n, i int, seed uint64) ([]string, error) {
	if n < 1 || i < 0 || i >= n {
		return nil, fmt.Errorf("share %d of %d", i, n)
	}
	var out []string
	for k, j := range rand.New(rand.NewPCG(seed, 0xd0c5)).Perm(len(docs)) {
		if k%n == i {
			out = append(out, docs[j])
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("share %d of %d of %d documents is empty", i, n, len(docs))
	}
	return out, nil
}

// TextShare returns holder i of n's share of a text data set's documents
// (at most maxBytes read), split into its training part and a held-out
// part of about heldOut of them: what worker i of n holds. Every holder's
// call with the same seed deals alike.
func TextShare(name string, maxBytes, n, i int, heldOut float64, seed uint64) (train, held []string, err error) {
	if !(heldOut > 0 && heldOut < 1) {
		return nil, nil, fmt.Errorf("held-out share %v: want a share in (0, 1)", heldOut)
	}
	docs, err := Text(name, maxBytes)
	if err != nil {
		return nil, nil, err
	}
	share, err := ShareDocs(docs, n, i, seed)
	if err != nil {
		return nil, nil, err
	}
	train, held = SplitHeldOut(share, heldOut, seed+uint64(i))
	return train, held, nil
}

// TextUnion returns the union over all n holders of TextShare's parts:
// the training and held-out documents of n workers together, for a
// centralised baseline on the same data.
func TextUnion(name string, maxBytes, n int, heldOut float64, seed uint64) (train, held []string, err error) {
	for i := 0; i < n; i++ {
		t, h, err := TextShare(name, maxBytes, n, i, heldOut, seed)
		if err != nil {
			return nil, nil, err
		}
		train, held = append(train, t...), append(held, h...)
	}
	return train, held, nil
}
