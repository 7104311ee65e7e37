package dataset

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// FortuneRoot is where Debian's fortune packages put their files:
// English (package fortunes) and Brazilian Portuguese (fortunes-br, the
// file brasil) at the top, the others in <lang>/ (fortunes-de, -es, -it,
// -pl, -ru), offensive ones in off/ (never read).
var FortuneRoot = "/usr/share/games/fortunes"

// FortuneLanguages are the languages FortuneText reads.
var FortuneLanguages = []string{"de", "en", "es", "it", "pl", "pt", "ru"}

// FortuneText returns the fortunes of a language, one document each, in a
// fixed order, up to maxBytes in all (0: no limit). Files are read as
// UTF-8 (their .u8 version where the package ships one; Latin-1 files
// converted); it fails if the language's package is not installed.
func FortuneText(lang string, maxBytes int) ([]string, error) {
	if !slices.Contains(FortuneLanguages, lang) {
		return nil, fmt.Errorf("fortunes: unknown language %q (known: %s)", lang, strings.Join(FortuneLanguages, ", "))
	}
	var paths []string
	switch lang {
	case "pt":
		paths = []string{filepath.Join(FortuneRoot, "brasil")}
	case "en":
		entries, _ := os.ReadDir(FortuneRoot)
		for _, e := range entries {
			if e.Type().IsRegular() && fortuneFile(e.Name()) && e.Name() != "brasil" {
				paths = append(paths, filepath.Join(FortuneRoot, e.Name()))
			}
		}
	default:
		entries, _ := os.ReadDir(filepath.Join(FortuneRoot, lang))
		for _, e := range entries {
			if !e.IsDir() && fortuneFile(e.Name()) {
				paths = append(paths, filepath.Join(FortuneRoot, lang, e.Name()))
			}
		}
	}
	sort.Strings(paths)
	var docs []string
	total := 0
	for _, p := range paths {
		b, err := os.ReadFile(p + ".u8")
		if err != nil || len(b) == 0 { // fortunes-pl ships empty .u8 files
			if b, err = os.ReadFile(p); err != nil {
				continue
			}
		}
		if !utf8.Valid(b) {
			b = latin1(b)
		}
		for _, f := range bytes.Split(b, []byte("\n%\n")) {
			doc := strings.TrimSpace(strings.TrimSuffix(string(f), "%"))
			if doc == "" {
				continue
			}
			if maxBytes > 0 && total+len(doc) > maxBytes {
				return docs, nil
			}
			docs, total = append(docs, doc), total+len(doc)
		}
	}
	if len(docs) == 0 {
		pkg := "fortunes"
		if lang != "en" {
			pkg = map[string]string{"pt": "fortunes-br"}[lang]
			if pkg == "" {
				pkg = "fortunes-" + lang
			}
		}
		return nil, fmt.Errorf("fortunes (%s): none under %s; install Debian's %s", lang, FortuneRoot, pkg)
	}
	return docs, nil
}

// fortuneFile says whether a file name is a fortune file (not the .dat
// index strfile writes, nor the .u8 UTF-8 copy read in its place).
func fortuneFile(name string) bool {
	return !strings.HasSuffix(name, ".dat") && !strings.HasSuffix(name, ".u8")
}

// latin1 converts ISO 8859-1 bytes to UTF-8.
func latin1(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/8)
	for _, c := range b {
		out = utf8.AppendRune(out, rune(c))
	}
	return out
}
