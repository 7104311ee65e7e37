package gossip

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
)

// Node names and labels are printed by the CLI and the dashboard and
// matched by job selectors; they come from other nodes, so they are held
// to the same rules as job names: no spaces, control characters or markup.
var (
	nodeName   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	labelKey   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)
	labelValue = regexp.MustCompile(`^[A-Za-z0-9 ._:/+()@,=-]{0,63}$`)
)

// MaxLabels bounds a node's labels.
const MaxLabels = 32

// CheckName refuses a node name that is not 1-63 letters, digits, '.',
// '_' or '-' starting with a letter or digit.
func CheckName(name string) error {
	if !nodeName.MatchString(name) {
		return fmt.Errorf("node name %.80q: use 1-63 letters, digits, '.', '_' or '-'", name)
	}
	return nil
}

// CheckLabels refuses more than MaxLabels labels, a key that is not 1-63
// letters, digits or "._/-", or a value that is not up to 63 letters,
// digits, spaces or "._:/+()@,=-" (a GPU's model name fits).
func CheckLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels: at most %d", len(labels), MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if !labelKey.MatchString(k) {
			return fmt.Errorf("label key %.80q: use 1-63 letters, digits, '.', '_', '/' or '-'", k)
		}
		if v := labels[k]; !labelValue.MatchString(v) {
			return fmt.Errorf("label %s=%.80q: use up to 63 letters, digits, spaces or ._:/+()@,=-", k, v)
		}
	}
	return nil
}
