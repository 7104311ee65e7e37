package tokenizer

import (
	"fmt"
	"sort"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// Train learns a byte-level BPE of vocabSize tokens (256 bytes, then one
// token per merge, then the special tokens) on corpus split by pattern:
// each round merges the adjacent pair that occurs most often across the
// corpus's pieces (ties broken by the pair's bytes, so training is
// deterministic). progress, if set, is called after every merge.
func Train(corpus []string, vocabSize int, pattern string, special []string, progress func(done, total int)) (*Tokenizer, error) {
	if vocabSize < 256+len(special) {
		return nil, fmt.Errorf("tokenizer: vocabulary of %d cannot hold the 256 bytes and %d special tokens", vocabSize, len(special))
	}
	re, err := regexp2.Compile(pattern, regexp2.Unicode)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: split pattern: %w", err)
	}
	counts := map[string]int{}
	for _, text := range corpus {
		if !utf8.ValidString(text) {
			return nil, fmt.Errorf("tokenizer: the corpus must be UTF-8 text")
		}
		runes := []rune(text)
		m, _ := re.FindRunesMatch(runes)
		for m != nil {
			counts[string(runes[m.Index:m.Index+m.Length])]++
			m, _ = re.FindNextMatch(m)
		}
	}
	type word struct {
		parts []string
		n     int
	}
	words := make([]word, 0, len(counts))
	pieces := make([]string, 0, len(counts))
	for p := range counts {
		pieces = append(pieces, p)
	}
	sort.Strings(pieces)
	for _, p := range pieces {
		w := word{n: counts[p]}
		for i := 0; i < len(p); i++ {
			w.parts = append(w.parts, p[i:i+1])
		}
		words = append(words, w)
	}
	vocab := map[string]int{}
	for b := 0; b < 256; b++ {
		vocab[string([]byte{byte(b)})] = b
	}
	target := vocabSize - len(special)
	var merges []Pair
	for len(vocab) < target {
		pairs := map[Pair]int{}
		for _, w := range words {
			for i := 0; i+1 < len(w.parts); i++ {
				pairs[Pair{w.parts[i], w.parts[i+1]}] += w.n
			}
		}
		var best Pair
		bestN := 0
		for p, n := range pairs {
			if n > bestN || n == bestN && (p.A+"\x00"+p.B) < (best.A+"\x00"+best.B) {
				best, bestN = p, n
			}
		}
		if bestN == 0 {
			break // every piece is one token: the corpus is exhausted
		}
		merged := best.A + best.B
		if _, dup := vocab[merged]; !dup {
			vocab[merged] = len(vocab)
		}
		merges = append(merges, best)
		for wi := range words {
			ps := words[wi].parts
			out := ps[:0]
			for i := 0; i < len(ps); i++ {
				if i+1 < len(ps) && ps[i] == best.A && ps[i+1] == best.B {
					out = append(out, merged)
					i++
					continue
				}
				out = append(out, ps[i])
			}
			words[wi].parts = out
		}
		if progress != nil {
			progress(len(vocab), target)
		}
	}
	sp := map[string]int{}
	for i, s := range special {
		sp[s] = len(vocab) + i
	}
	return New(vocab, merges, pattern, sp)
}
