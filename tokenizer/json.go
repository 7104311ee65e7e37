package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// byteRunes is GPT-2's bytes_to_unicode: every byte as a printable rune
// (printable Latin-1 bytes as themselves, the others shifted past 255), the
// alphabet Hugging Face's ByteLevel vocabularies and merges are written in.
var byteRunes, runeBytes = func() ([256]rune, map[rune]byte) {
	var br [256]rune
	rb := map[rune]byte{}
	n := 0
	for b := 0; b < 256; b++ {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			br[b] = rune(b)
		} else {
			br[b] = rune(256 + n)
			n++
		}
		rb[br[b]] = byte(b)
	}
	return br, rb
}()

func toUnicode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteRune(byteRunes[s[i]])
	}
	return b.String()
}

func fromUnicode(s string) (string, error) {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		b, ok := runeBytes[r]
		if !ok {
			return "", fmt.Errorf("%q is not in the byte-level alphabet", r)
		}
		out = append(out, b)
	}
	return string(out), nil
}

// hfFile is the part of a Hugging Face tokenizer.json this package reads
// and writes.
type hfFile struct {
	Version       string          `json:"version"`
	Truncation    any             `json:"truncation"`
	Padding       any             `json:"padding"`
	AddedTokens   []hfAdded       `json:"added_tokens"`
	Normalizer    any             `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor any             `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         hfModel         `json:"model"`
}

type hfAdded struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	Lstrip     bool   `json:"lstrip"`
	Rstrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type hfModel struct {
	Type                    string            `json:"type"`
	Dropout                 any               `json:"dropout"`
	UnkToken                any               `json:"unk_token"`
	ContinuingSubwordPrefix any               `json:"continuing_subword_prefix"`
	EndOfWordSuffix         any               `json:"end_of_word_suffix"`
	FuseUnk                 bool              `json:"fuse_unk"`
	ByteFallback            bool              `json:"byte_fallback"`
	Vocab                   map[string]int    `json:"vocab"`
	Merges                  []json.RawMessage `json:"merges"`
}

type hfPre struct {
	Type           string  `json:"type"`
	AddPrefixSpace bool    `json:"add_prefix_space"`
	UseRegex       *bool   `json:"use_regex"`
	Pattern        *hfPat  `json:"pattern"`
	Behavior       string  `json:"behavior"`
	Pretokenizers  []hfPre `json:"pretokenizers"`
}

type hfPat struct {
	Regex  string `json:"Regex,omitempty"`
	String string `json:"String,omitempty"`
}

// Load reads a Hugging Face tokenizer.json of a byte-level BPE model:
// ByteLevel pre-tokenizer (GPT-2's split) or a Sequence of a regex Split
// and ByteLevel (Llama 3, SmolLM2, Qwen2), BPE model, added tokens.
func Load(path string) (*Tokenizer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Parse reads a tokenizer.json document (see Load).
func Parse(b []byte) (*Tokenizer, error) {
	var f hfFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	if f.Model.Type != "BPE" {
		return nil, fmt.Errorf("tokenizer.json: model type %q: only byte-level BPE is supported", f.Model.Type)
	}
	if f.Model.ByteFallback {
		return nil, fmt.Errorf("tokenizer.json: a BPE with byte_fallback (SentencePiece style, Llama 2) is not byte-level BPE: not supported")
	}
	pattern, err := splitPattern(f.PreTokenizer)
	if err != nil {
		return nil, err
	}
	vocab := make(map[string]int, len(f.Model.Vocab))
	for s, id := range f.Model.Vocab {
		raw, err := fromUnicode(s)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.json: vocab entry %q: %w", s, err)
		}
		vocab[raw] = id
	}
	merges := make([]Pair, 0, len(f.Model.Merges))
	for i, m := range f.Model.Merges {
		var a, b string
		var s string
		var arr []string
		switch {
		case json.Unmarshal(m, &s) == nil:
			var ok bool
			if a, b, ok = strings.Cut(s, " "); !ok {
				return nil, fmt.Errorf("tokenizer.json: merge %d %q is not two tokens", i, s)
			}
		case json.Unmarshal(m, &arr) == nil && len(arr) == 2:
			a, b = arr[0], arr[1]
		default:
			return nil, fmt.Errorf("tokenizer.json: merge %d: %s", i, m)
		}
		ra, err := fromUnicode(a)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.json: merge %d: %w", i, err)
		}
		rb, err := fromUnicode(b)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.json: merge %d: %w", i, err)
		}
		merges = append(merges, Pair{ra, rb})
	}
	special := map[string]int{}
	for _, a := range f.AddedTokens {
		if _, inVocab := f.Model.Vocab[a.Content]; inVocab && !a.Special {
			continue
		}
		special[a.Content] = a.ID
	}
	return New(vocab, merges, pattern, special)
}

// splitPattern finds the split expression of a byte-level pre-tokenizer.
func splitPattern(raw json.RawMessage) (string, error) {
	var p hfPre
	if err := json.Unmarshal(raw, &p); err != nil {
		return "", fmt.Errorf("tokenizer.json: pre_tokenizer: %w", err)
	}
	switch p.Type {
	case "ByteLevel":
		if p.AddPrefixSpace {
			return "", fmt.Errorf("tokenizer.json: ByteLevel with add_prefix_space is not supported")
		}
		if p.UseRegex != nil && !*p.UseRegex {
			return "", fmt.Errorf("tokenizer.json: a ByteLevel pre-tokenizer without its regex and no Split before it")
		}
		return GPT2Pattern, nil
	case "Sequence":
		var pattern string
		for _, q := range p.Pretokenizers {
			switch q.Type {
			case "Split":
				if q.Pattern == nil || q.Pattern.Regex == "" || q.Behavior != "Isolated" {
					return "", fmt.Errorf("tokenizer.json: a Split pre-tokenizer other than an isolated regex")
				}
				pattern = q.Pattern.Regex
			case "ByteLevel":
				if q.UseRegex == nil || *q.UseRegex {
					if pattern != "" {
						return "", fmt.Errorf("tokenizer.json: two split expressions")
					}
					pattern = GPT2Pattern
				}
			default:
				return "", fmt.Errorf("tokenizer.json: pre-tokenizer %q is not supported", q.Type)
			}
		}
		if pattern == "" {
			return "", fmt.Errorf("tokenizer.json: no split expression")
		}
		return pattern, nil
	}
	return "", fmt.Errorf("tokenizer.json: pre-tokenizer %q is not supported (byte-level BPE only)", p.Type)
}

// Marshal writes t as a Hugging Face tokenizer.json: a Sequence of the
// split expression and ByteLevel, a BPE model with merges as "a b"
// strings, the ByteLevel decoder, and the special tokens as added tokens.
func (t *Tokenizer) Marshal() ([]byte, error) {
	f, _ := json.Marshal(false)
	pre := map[string]any{"type": "Sequence", "pretokenizers": []any{
		map[string]any{"type": "Split", "pattern": map[string]string{"Regex": t.pattern}, "behavior": "Isolated", "invert": false},
		map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": json.RawMessage(f)},
	}}
	preJSON, err := json.Marshal(pre)
	if err != nil {
		return nil, err
	}
	dec, _ := json.Marshal(map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true})
	out := hfFile{Version: "1.0", PreTokenizer: preJSON, Decoder: dec, Model: hfModel{Type: "BPE", ContinuingSubwordPrefix: nil, EndOfWordSuffix: nil,
		Vocab: make(map[string]int, len(t.vocab))}}
	for s, id := range t.vocab {
		out.Model.Vocab[toUnicode(s)] = id
	}
	for _, m := range t.merges {
		b, _ := json.Marshal(toUnicode(m.A) + " " + toUnicode(m.B))
		out.Model.Merges = append(out.Model.Merges, b)
	}
	for s, id := range t.special {
		out.AddedTokens = append(out.AddedTokens, hfAdded{ID: id, Content: s, Special: true})
	}
	slices.SortFunc(out.AddedTokens, func(a, b hfAdded) int { return a.ID - b.ID })
	return json.MarshalIndent(out, "", " ")
}
