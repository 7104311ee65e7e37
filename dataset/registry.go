package dataset

import (
	"fmt"
	"slices"
	"strings"
)

// Load returns a split of the data set a job spec names:
//
//	mnist                    handwritten digits
//	words                    next character on the en, fr, de and es word lists
//	words-fr, words-fr+de    the same on the languages named
func Load(name string, split Split) (*Examples, error) {
	if err := Check(name); err != nil {
		return nil, err
	}
	if name == "mnist" {
		return MNIST(split)
	}
	if IsText(name) {
		return nil, fmt.Errorf("text data set %q is held by workers as documents and tokenised per job; evaluate its jobs federatedly (evaluation federated), not on a coordinator's test split", name)
	}
	langs, _ := wordsLanguages(name)
	return Words(langs, split)
}

// Check says whether name is a data set Load knows, without loading it.
func Check(name string) error {
	if name == "mnist" || IsText(name) {
		return nil
	}
	if langs, ok := wordsLanguages(name); ok {
		for _, l := range langs {
			if _, known := Languages[l]; !known {
				return fmt.Errorf("dataset %q: unknown language %q (known: %s)", name, l, strings.Join(LanguageCodes(), ", "))
			}
		}
		return nil
	}
	return fmt.Errorf("unknown dataset %q (known: mnist, words, words-<lang>[+<lang>…] with languages %s; text: man-<lang>, fortunes-<lang>, or man, fortunes, text for whatever text each worker holds)", name, strings.Join(LanguageCodes(), ", "))
}

// Family returns the data set family a name belongs to: "words" for
// "words-fr+de", otherwise the name itself. A worker's local data serves
// any job on its family: a French worker's words train a job on
// words-fr+de+es as they train one on words-fr.
func Family(name string) string {
	if _, ok := wordsLanguages(name); ok {
		return "words"
	}
	if kind, _, ok := strings.Cut(name, "-"); ok && IsText(name) {
		return kind
	}
	return name
}

// IsText says whether name is a text data set, which workers hold as
// documents and tokenise with a job's tokenizer: man-<lang> (Debian's
// manual pages: en, fr, de, es), fortunes-<lang> (de, en, es, it, pl, pt,
// ru), or a family a job names to train on whatever text of that kind
// each worker holds (man, fortunes; text for any).
func IsText(name string) bool {
	switch name {
	case "man", "fortunes", "text":
		return true
	}
	kind, lang, ok := strings.Cut(name, "-")
	switch {
	case !ok:
		return false
	case kind == "man":
		return slices.Contains(TextLanguages, lang)
	case kind == "fortunes":
		return slices.Contains(FortuneLanguages, lang)
	}
	return false
}

// LanguageCodes returns the words data set's languages, sorted.
func LanguageCodes() []string {
	var codes []string
	for c := range Languages {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	return codes
}

// wordsLanguages parses a words data set name.
func wordsLanguages(name string) ([]string, bool) {
	if name == "words" {
		return []string{"en", "fr", "de", "es"}, true
	}
	rest, ok := strings.CutPrefix(name, "words-")
	if !ok || rest == "" {
		return nil, false
	}
	return strings.Split(rest, "+"), true
}
