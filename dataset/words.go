package dataset

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unicode/utf8"
)

// The words data set is character-level next-character prediction on
// per-language word lists (Debian's wamerican, wfrench, wngerman and
// wspanish, read from /usr/share/dict, or FEDTUNE_DICT_DIR; `make words`
// installs them). Each example is one position in a word: the previous
// WordsContext characters, one-hot (start padding included), and the
// character that follows (or the end of the word). Every example carries
// its language as its group, so workers can be split by language — a
// natural non-IID federation of regions.

// WordsContext is how many previous characters an example sees.
const WordsContext = 3

// WordsAlphabet is the characters the data set keeps; words with any other
// character are skipped. Index 0 is the padding before a word's start,
// the last index the end of a word.
var WordsAlphabet = []rune("^abcdefghijklmnopqrstuvwxyzàâäáçéèêëíîïñóôöúùûüÿßœæ$")

// WordsClasses is the number of classes (the alphabet's size).
var WordsClasses = len(WordsAlphabet)

// WordsDim is the width of a words example (WordsContext one-hot characters).
var WordsDim = WordsContext * WordsClasses

// Languages maps the language codes the words data set knows to their
// word list file names in /usr/share/dict and their Debian packages.
var Languages = map[string][2]string{
	"en": {"american-english", "wamerican"},
	"fr": {"french", "wfrench"},
	"de": {"ngerman", "wngerman"},
	"es": {"spanish", "wspanish"},
}

// ErrNoWordList is returned when a language's word list is not installed.
var ErrNoWordList = errors.New("word list not installed")

// Words per language kept for training and for testing.
const (
	wordsTrain = 3000
	wordsTest  = 500
)

var (
	wordsMu    sync.Mutex
	wordsCache = map[string]*Examples{}
)

// Words returns a split of the words data set for the given languages (in
// that order; group i is langs[i]). The same languages give the same
// examples: each list is filtered, shuffled with a fixed seed, and its
// first 3,000 words are the training split, the next 500 the test split.
// The result is shared and must not be modified.
func Words(langs []string, split Split) (*Examples, error) {
	if split != Train && split != Test {
		return nil, fmt.Errorf("words: unknown split %q (want train or test)", split)
	}
	key := strings.Join(langs, ",") + "/" + string(split)
	wordsMu.Lock()
	defer wordsMu.Unlock()
	if e, ok := wordsCache[key]; ok {
		return e, nil
	}
	if len(langs) == 0 || len(langs) > 255 {
		return nil, fmt.Errorf("words: %d languages, want 1 to 255", len(langs))
	}
	index := map[rune]int{}
	for i, r := range WordsAlphabet {
		index[r] = i
	}
	e := &Examples{Dim: WordsDim, Classes: WordsClasses}
	for g, lang := range langs {
		words, err := wordList(lang)
		if err != nil {
			return nil, err
		}
		if len(words) < wordsTrain+wordsTest {
			return nil, fmt.Errorf("words: %s has only %d usable words", lang, len(words))
		}
		pick := words[:wordsTrain]
		if split == Test {
			pick = words[wordsTrain : wordsTrain+wordsTest]
		}
		for _, w := range pick {
			runes := append([]rune(w), '$')
			ctx := make([]int, WordsContext) // all padding (index 0)
			for _, r := range runes {
				row := make([]float32, WordsDim)
				for k, c := range ctx {
					row[k*WordsClasses+c] = 1
				}
				e.X = append(e.X, row...)
				e.Y = append(e.Y, uint8(index[r]))
				e.Group = append(e.Group, uint8(g))
				ctx = append(ctx[1:], index[r])
			}
		}
	}
	wordsCache[key] = e
	return e, nil
}

// wordList reads, filters and shuffles (fixed seed) a language's words:
// lower-case, 2 to 12 characters, all in WordsAlphabet.
func wordList(lang string) ([]string, error) {
	l, ok := Languages[lang]
	if !ok {
		return nil, fmt.Errorf("words: unknown language %q (known: de, en, es, fr)", lang)
	}
	dir := os.Getenv("FEDTUNE_DICT_DIR")
	if dir == "" {
		dir = "/usr/share/dict"
	}
	path := filepath.Join(dir, l[0])
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("words: %s (%s): %w; install Debian %s (make words)", lang, path, ErrNoWordList, l[1])
	}
	defer f.Close()
	allowed := map[rune]bool{}
	for _, r := range WordsAlphabet[1 : len(WordsAlphabet)-1] {
		allowed[r] = true
	}
	var words []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		w := strings.TrimSpace(sc.Text())
		if !utf8.ValidString(w) || w != strings.ToLower(w) {
			continue // not UTF-8, or a proper noun
		}
		n := utf8.RuneCountInString(w)
		if n < 2 || n > 12 || seen[w] {
			continue
		}
		ok := true
		for _, r := range w {
			if !allowed[r] {
				ok = false
				break
			}
		}
		if ok {
			seen[w] = true
			words = append(words, w)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("words: %s: %w", path, err)
	}
	r := rand.New(rand.NewPCG(0x3031, uint64(len(lang))))
	r.Shuffle(len(words), func(i, j int) { words[i], words[j] = words[j], words[i] })
	return words, nil
}

// SplitGroups gives each of n workers examples of one group only: worker w
// belongs to group w mod G (G = the number of groups), and each group's
// examples are split IID among its workers with seed.
func SplitGroups(groups []uint8, n int, seed uint64) ([][]int, error) {
	g := 0
	for _, x := range groups {
		g = max(g, int(x)+1)
	}
	if n < g {
		return nil, fmt.Errorf("partition: %d workers for %d groups, want at least one per group", n, g)
	}
	byGroup := make([][]int, g)
	for i, x := range groups {
		byGroup[x] = append(byGroup[x], i)
	}
	out := make([][]int, n)
	for k := 0; k < g; k++ {
		var members []int
		for w := k; w < n; w += g {
			members = append(members, w)
		}
		r := rand.New(rand.NewPCG(seed, uint64(k)))
		idx := byGroup[k]
		perm := r.Perm(len(idx))
		for j, p := range perm {
			w := members[j%len(members)]
			out[w] = append(out[w], idx[p])
		}
	}
	return out, nil
}
