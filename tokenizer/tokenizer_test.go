package tokenizer

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// texts are sentences in several languages and scripts, with digits,
// punctuation, runs of spaces and newlines, contractions.
var texts = []string{
	"The quick brown fox doesn't jump over   the lazy dog; it's 1234567 times faster!\n\nNew paragraph.",
	"Le renard brun et rapide ne saute pas : c'est l'été, il fait 35 °C à Marseille.",
	"Der schnelle braune Fuchs springt über den faulen Hund — Größe, Straße, Ärger.",
	"El rápido zorro marrón salta sobre el perro perezoso. ¿Qué tal? ¡Mañana!",
	"Быстрая коричневая лиса прыгает через ленивую собаку.",
	"Szybki brązowy lis przeskakuje nad leniwym psem. Zażółć gęślą jaźń.",
	"敏捷的棕色狐狸跳过了懒狗。 東京は2024年に…\t tabs\r\nand CRLF",
	"emoji 🦊🐶 and combining é (e\u0301) and zero-width\u200bjoiner",
}

var (
	trainedOnce sync.Once
	trained     *Tokenizer
)

func trainedTokenizer(t testing.TB) *Tokenizer {
	trainedOnce.Do(func() {
		var err error
		trained, err = Train(texts, 600, Llama3Pattern, []string{"<|endoftext|>", "<|pad|>"}, nil)
		if err != nil {
			t.Fatal(err)
		}
	})
	return trained
}

func TestTrainEncodeDecode(t *testing.T) {
	tok := trainedTokenizer(t)
	if tok.VocabSize() != 600 {
		t.Errorf("vocabulary of %d, want 600", tok.VocabSize())
	}
	var nTokens, nBytes int
	for _, s := range texts {
		ids := tok.Encode(s)
		got, err := tok.Decode(ids)
		if err != nil || string(got) != s {
			t.Errorf("%q: decoded %q, %v", s, got, err)
		}
		nTokens, nBytes = nTokens+len(ids), nBytes+len(s)
	}
	// 344 merges on a corpus this small nearly learn it by heart.
	if nTokens*3 > nBytes {
		t.Errorf("%d tokens for %d bytes of the training corpus: the merges learnt little", nTokens, nBytes)
	}
	ids := tok.Encode("a<|endoftext|>b<|pad|>")
	if len(ids) != 4 || ids[1] != 598 || ids[3] != 599 {
		t.Errorf("special tokens: %v", ids)
	}
	if _, err := tok.Decode([]int{tok.VocabSize()}); err == nil {
		t.Error("an id past the vocabulary decoded")
	}
}

func TestMarshalParse(t *testing.T) {
	tok := trainedTokenizer(t)
	b, err := tok.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(texts, "<|endoftext|>x") {
		if a, b := tok.Encode(s), back.Encode(s); !slices.Equal(a, b) {
			t.Errorf("%q: %v before tokenizer.json, %v after", s, a, b)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	ok, _ := trainedTokenizer(t).Marshal()
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"wordpiece", `"type": "BPE"`, `"type": "WordPiece"`, "only byte-level BPE"},
		{"byte fallback", `"byte_fallback": false`, `"byte_fallback": true`, "byte_fallback"},
		{"unknown pre-tokenizer", `"type": "Split"`, `"type": "Whitespace"`, "not supported"},
		{"missing byte", `"Ā": 0,`, ``, "byte 0x00 has no token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := strings.Replace(string(ok), tc.from, tc.to, 1)
			if bad == string(ok) {
				t.Fatalf("%q not in the document", tc.from)
			}
			if _, err := Parse([]byte(bad)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// FuzzRoundTrip: any bytes encode, and decode back to themselves.
func FuzzRoundTrip(f *testing.F) {
	for _, s := range texts {
		f.Add([]byte(s))
	}
	f.Add([]byte{0xff, 0xfe, 'a', 0xc3})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok := trainedTokenizer(t)
		got, err := tok.Decode(tok.EncodeBytes(b))
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("%q: decoded %q, %v", b, got, err)
		}
	})
}

// jsTiktoken returns the directory holding npm's js-tiktoken (installed
// into the user cache on first use), or skips.
func jsTiktoken(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("no node: the agreement test needs npm's js-tiktoken")
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(cache, "fedtune-npm")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "js-tiktoken", "package.json")); err != nil {
		if out, err := exec.Command("npm", "install", "--silent", "--prefix", dir, "js-tiktoken@1.0.21").CombinedOutput(); err != nil {
			t.Skipf("npm install js-tiktoken: %v\n%s", err, out)
		}
	}
	return dir
}

// TestAgreesWithTiktoken encodes text in eight languages with js-tiktoken
// (an independent implementation) and with this package on the same
// published vocabularies (GPT-2 and cl100k ranks, converted to merges and
// through tokenizer.json): the ids are the same.
func TestAgreesWithTiktoken(t *testing.T) {
	dir := jsTiktoken(t)
	script := `
import { Tiktoken } from "js-tiktoken/lite";
import { readFileSync } from "fs";
const name = process.argv[2];
const ranks = (await import("js-tiktoken/ranks/" + name)).default;
const enc = new Tiktoken(ranks);
const texts = JSON.parse(readFileSync(0, "utf8"));
const vocab = {};
for (const [k, v] of enc.rankMap) vocab[Buffer.from(k.split(",").map(Number)).toString("base64")] = v;
console.log(JSON.stringify({pattern: ranks.pat_str, special: ranks.special_tokens, vocab, ids: texts.map(s => enc.encode(s))}));
`
	path := filepath.Join(dir, "dump.mjs")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	in, _ := json.Marshal(texts)
	for _, name := range []string{"gpt2", "cl100k_base"} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command("node", path, name)
			cmd.Dir = dir
			cmd.Stdin = bytes.NewReader(in)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("node: %v", err)
			}
			var ref struct {
				Pattern string
				Special map[string]int
				Vocab   map[string]int
				IDs     [][]int
			}
			if err := json.Unmarshal(out, &ref); err != nil {
				t.Fatal(err)
			}
			ranks := make(map[string]int, len(ref.Vocab))
			for k, v := range ref.Vocab {
				b, _ := base64.StdEncoding.DecodeString(k)
				ranks[string(b)] = v
			}
			tok, err := FromRanks(ranks, ref.Pattern, ref.Special)
			if err != nil {
				t.Fatal(err)
			}
			doc, err := tok.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			viaJSON, err := Parse(doc)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range texts {
				if got := viaJSON.Encode(s); !slices.Equal(got, ref.IDs[i]) {
					t.Errorf("%q:\n fedtune    %v\n js-tiktoken %v", s, got, ref.IDs[i])
				}
			}
			t.Logf("%s: %d tokens, %d texts agree", name, tok.VocabSize(), len(texts))
		})
	}
}
