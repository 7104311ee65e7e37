// Package tokenizer is byte-level BPE, the scheme of GPT-2, Llama 3,
// SmolLM and Qwen tokenizers: text is split by the model's regular
// expression, each piece's UTF-8 bytes are merged pair by pair in the
// order of the model's merges, and every byte sequence has an encoding
// (the 256 single bytes are tokens), so decoding any ids and encoding any
// bytes round-trips exactly. Tokenizers are read from and written to
// Hugging Face tokenizer.json files (json.go), trained on a corpus
// (train.go), or built from tiktoken-style ranks (FromRanks).
package tokenizer

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// GPT2Pattern is GPT-2's split expression (also the ByteLevel
// pre-tokenizer's default in Hugging Face tokenizers).
const GPT2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// Llama3Pattern is the split expression of Llama 3 and of OpenAI's
// cl100k (case-insensitive contractions, digits in groups of up to three).
const Llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// Tokenizer is a byte-level BPE tokenizer. It is safe for concurrent use.
type Tokenizer struct {
	vocab   map[string]int // token bytes -> id
	tokens  []string       // id -> token bytes ("" where no token has the id)
	merges  []Pair         // in rank order
	rank    map[Pair]int
	pattern string
	split   *regexp2.Regexp
	special map[string]int // special tokens, matched literally in text
	specIDs map[int]string
	specRe  []string // special tokens, longest first

	cacheMu sync.Mutex
	cache   map[string][]int
}

// Pair is a merge: two tokens (as bytes) that become one.
type Pair struct{ A, B string }

// New returns a tokenizer over vocab (token bytes -> id, holding every
// single byte), the merges in rank order, the split pattern, and special
// tokens (text -> id), checking that every merge's parts and result are
// in the vocabulary.
func New(vocab map[string]int, merges []Pair, pattern string, special map[string]int) (*Tokenizer, error) {
	re, err := regexp2.Compile(pattern, regexp2.Unicode)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: split pattern: %w", err)
	}
	t := &Tokenizer{vocab: vocab, merges: merges, rank: make(map[Pair]int, len(merges)), pattern: pattern, split: re,
		special: special, specIDs: map[int]string{}, cache: map[string][]int{}}
	n := 0
	for _, id := range vocab {
		n = max(n, id+1)
	}
	for s, id := range special {
		if s == "" {
			return nil, fmt.Errorf("tokenizer: an empty special token")
		}
		n = max(n, id+1)
		t.specIDs[id] = s
		t.specRe = append(t.specRe, s)
	}
	sort.Slice(t.specRe, func(i, j int) bool { return len(t.specRe[i]) > len(t.specRe[j]) })
	t.tokens = make([]string, n)
	for s, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("tokenizer: token %q has id %d", s, id)
		}
		t.tokens[id] = s
	}
	for b := 0; b < 256; b++ {
		if _, ok := vocab[string([]byte{byte(b)})]; !ok {
			return nil, fmt.Errorf("tokenizer: byte 0x%02x has no token (byte-level BPE needs all 256)", b)
		}
	}
	for i, m := range merges {
		for _, s := range []string{m.A, m.B, m.A + m.B} {
			if _, ok := vocab[s]; !ok {
				return nil, fmt.Errorf("tokenizer: merge %d (%q + %q): %q is not in the vocabulary", i, m.A, m.B, s)
			}
		}
		if _, dup := t.rank[m]; !dup {
			t.rank[m] = i
		}
	}
	return t, nil
}

// VocabSize is one more than the largest id.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// Encode returns the ids of text; special tokens written in it are
// encoded as themselves.
func (t *Tokenizer) Encode(text string) []int {
	var ids []int
	for text != "" {
		at, sp := t.nextSpecial(text)
		ids = t.encodeOrdinary(text[:at], ids)
		if sp == "" {
			break
		}
		ids = append(ids, t.special[sp])
		text = text[at+len(sp):]
	}
	return ids
}

// EncodeBytes returns the ids of b with no special tokens: bytes that are
// not valid UTF-8 are encoded one piece each, so every byte string has an
// encoding that Decode turns back into it.
func (t *Tokenizer) EncodeBytes(b []byte) []int {
	return t.encodeOrdinary(string(b), nil)
}

func (t *Tokenizer) nextSpecial(text string) (int, string) {
	best, which := len(text), ""
	for _, s := range t.specRe {
		if i := strings.Index(text, s); i >= 0 && i < best {
			best, which = i, s
		}
	}
	return best, which
}

// encodeOrdinary splits valid UTF-8 runs with the pattern and encodes
// each piece; an invalid byte is a piece of its own.
func (t *Tokenizer) encodeOrdinary(s string, ids []int) []int {
	for s != "" {
		valid := 0
		for valid < len(s) {
			r, n := utf8.DecodeRuneInString(s[valid:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			valid += n
		}
		if valid > 0 {
			ids = t.encodeValid(s[:valid], ids)
		}
		if valid < len(s) {
			ids = append(ids, t.vocab[s[valid:valid+1]])
			valid++
		}
		s = s[valid:]
	}
	return ids
}

func (t *Tokenizer) encodeValid(s string, ids []int) []int {
	runes := []rune(s)
	offs := make([]int, len(runes)+1) // byte offset of each rune
	for i, o := 0, 0; i < len(runes); i++ {
		offs[i] = o
		o += utf8.RuneLen(runes[i])
		offs[i+1] = o
	}
	m, _ := t.split.FindRunesMatch(runes)
	last := 0
	for m != nil {
		if m.Index > last { // text the pattern skipped (it matches everything, but be safe)
			ids = t.encodePiece(s[offs[last]:offs[m.Index]], ids)
		}
		ids = t.encodePiece(s[offs[m.Index]:offs[m.Index+m.Length]], ids)
		last = m.Index + m.Length
		m, _ = t.split.FindNextMatch(m)
	}
	if last < len(runes) {
		ids = t.encodePiece(s[offs[last]:], ids)
	}
	return ids
}

// encodePiece merges one piece's bytes in merge order (the lowest-ranked
// adjacent pair first, leftmost among equals) and appends the ids.
func (t *Tokenizer) encodePiece(piece string, ids []int) []int {
	if piece == "" {
		return ids
	}
	if id, ok := t.vocab[piece]; ok && len(piece) == 1 {
		return append(ids, id)
	}
	t.cacheMu.Lock()
	cached, ok := t.cache[piece]
	t.cacheMu.Unlock()
	if ok {
		return append(ids, cached...)
	}
	parts := merge(piece, 1, func(a, b string) (int, bool) {
		r, ok := t.rank[Pair{a, b}]
		return r, ok
	})
	out := make([]int, len(parts))
	for i, p := range parts {
		out[i] = t.vocab[p]
	}
	t.cacheMu.Lock()
	if len(t.cache) > 1<<16 {
		t.cache = map[string][]int{}
	}
	t.cache[piece] = out
	t.cacheMu.Unlock()
	return append(ids, out...)
}

// Decode returns the bytes of ids (special tokens as their text).
func (t *Tokenizer) Decode(ids []int) ([]byte, error) {
	var out []byte
	for i, id := range ids {
		if s, ok := t.specIDs[id]; ok {
			out = append(out, s...)
			continue
		}
		if id < 0 || id >= len(t.tokens) || t.tokens[id] == "" {
			return nil, fmt.Errorf("tokenizer: id %d at %d is not in the vocabulary of %d", id, i, len(t.tokens))
		}
		out = append(out, t.tokens[id]...)
	}
	return out, nil
}

// FromRanks builds a tokenizer from tiktoken-style ranks (token bytes ->
// rank, the rank being the id): each multi-byte token's merge is the last
// step of encoding its bytes with the tokens ranked below it.
func FromRanks(ranks map[string]int, pattern string, special map[string]int) (*Tokenizer, error) {
	type tok struct {
		s string
		r int
	}
	var byRank []tok
	for s, r := range ranks {
		if len(s) > 1 {
			byRank = append(byRank, tok{s, r})
		}
	}
	sort.Slice(byRank, func(i, j int) bool { return byRank[i].r < byRank[j].r })
	merges := make([]Pair, 0, len(byRank))
	for _, tk := range byRank {
		parts := merge(tk.s, 2, func(a, b string) (int, bool) {
			r, ok := ranks[a+b]
			return r, ok && r < tk.r
		})
		if len(parts) != 2 {
			return nil, fmt.Errorf("tokenizer: token %q (rank %d) is not the merge of two lower-ranked tokens", tk.s, tk.r)
		}
		merges = append(merges, Pair{parts[0], parts[1]})
	}
	return New(ranks, merges, pattern, special)
}

// merge splits s into its bytes and merges adjacent parts, the pair of
// lowest rank first (leftmost among equals), until no pair has a rank or
// `until` parts are left.
func merge(s string, until int, rank func(a, b string) (int, bool)) []string {
	parts := make([]string, len(s))
	for i := 0; i < len(s); i++ { // bytes, not runes
		parts[i] = s[i : i+1]
	}
	for len(parts) > until {
		best, at := -1, -1
		for i := 0; i+1 < len(parts); i++ {
			if r, ok := rank(parts[i], parts[i+1]); ok && (best < 0 || r < best) {
				best, at = r, i
			}
		}
		if at < 0 {
			break
		}
		parts[at] += parts[at+1]
		parts = append(parts[:at+1], parts[at+2:]...)
	}
	return parts
}
