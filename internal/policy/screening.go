package policy

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// ScreeningList is a consolidated denied-party list (CSV: name, alt names separated by ";",
// country, source list), matched with normalized fuzzy names.
type ScreeningList struct {
	entries []screenEntry
}

type screenEntry struct {
	names   [][]string // normalized token lists of the name and each alias
	raw     string
	country string
	source  string
}

// Hit is one list entry a name matched.
type Hit struct {
	Name, Country, Source string
	Score                 float64
}

// ParseScreeningList reads the CSV; a header row starting with "name" is skipped.
func ParseScreeningList(r io.Reader) (*ScreeningList, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	l := &ScreeningList{}
	for line := 1; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("screening list: %w", err)
		}
		if line == 1 && len(rec) > 0 && strings.EqualFold(strings.TrimSpace(rec[0]), "name") {
			continue
		}
		if len(rec) != 4 || strings.TrimSpace(rec[0]) == "" {
			return nil, fmt.Errorf("screening list: line %d: want name,alt_names,country,source", line)
		}
		e := screenEntry{raw: rec[0], country: strings.ToUpper(strings.TrimSpace(rec[2])), source: strings.TrimSpace(rec[3])}
		for _, n := range append([]string{rec[0]}, strings.Split(rec[1], ";")...) {
			if toks := normalizeName(n); len(toks) > 0 {
				e.names = append(e.names, toks)
			}
		}
		l.entries = append(l.entries, e)
	}
	return l, nil
}

// Len is the number of entries.
func (l *ScreeningList) Len() int { return len(l.entries) }

// normalizeName folds case and diacritics, drops punctuation and corporate suffixes, and
// returns the sorted-independent token list.
func normalizeName(s string) []string {
	var b strings.Builder
	for _, r := range norm.NFKD.String(s) {
		switch {
		case unicode.Is(unicode.Mn, r):
		case unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(unicode.ToLower(r))
		default:
			b.WriteByte(' ')
		}
	}
	var out []string
	for _, t := range strings.Fields(b.String()) {
		switch t {
		case "ltd", "llc", "inc", "co", "corp", "company", "limited", "the", "of", "and", "gmbh", "sa", "ooo", "jsc", "plc":
			continue
		}
		out = append(out, t)
	}
	return out
}

// similarity of two token lists: each token of the shorter list is matched to its most
// similar token in the other (Jaro-Winkler), order-insensitive, averaged.
func similarity(a, b []string) float64 {
	if len(a) == 0 || len(b) == 0 {
		return 0
	}
	if len(a) > len(b) {
		a, b = b, a
	}
	var sum float64
	for _, x := range a {
		best := 0.0
		for _, y := range b {
			best = max(best, jaroWinkler(x, y))
		}
		sum += best
	}
	// Penalize a big difference in token counts ("John" vs "John Michael Smith").
	return sum / float64(len(a)) * (0.85 + 0.15*float64(len(a))/float64(len(b)))
}

// Screen returns entries whose name or alias matches name at or above threshold (0.92 is a
// reasonable default: it catches transliteration variants and typos, not unrelated names).
func (l *ScreeningList) Screen(name string, threshold float64) []Hit {
	q := normalizeName(name)
	var hits []Hit
	for _, e := range l.entries {
		best := 0.0
		for _, n := range e.names {
			best = max(best, similarity(q, n))
		}
		if best >= threshold {
			hits = append(hits, Hit{Name: e.raw, Country: e.country, Source: e.source, Score: best})
		}
	}
	return hits
}

func jaroWinkler(s, t string) float64 {
	a, b := []rune(s), []rune(t)
	if len(a) == 0 && len(b) == 0 {
		return 1
	}
	if len(a) == 0 || len(b) == 0 {
		return 0
	}
	window := max(len(a), len(b))/2 - 1
	window = max(window, 0)
	ma, mb := make([]bool, len(a)), make([]bool, len(b))
	matches := 0
	for i := range a {
		lo, hi := max(0, i-window), min(len(b), i+window+1)
		for j := lo; j < hi; j++ {
			if !mb[j] && a[i] == b[j] {
				ma[i], mb[j] = true, true
				matches++
				break
			}
		}
	}
	if matches == 0 {
		return 0
	}
	transpositions, k := 0, 0
	for i := range a {
		if !ma[i] {
			continue
		}
		for !mb[k] {
			k++
		}
		if a[i] != b[k] {
			transpositions++
		}
		k++
	}
	m := float64(matches)
	jaro := (m/float64(len(a)) + m/float64(len(b)) + (m-float64(transpositions)/2)/m) / 3
	prefix := 0
	for i := 0; i < min(4, len(a), len(b)) && a[i] == b[i]; i++ {
		prefix++
	}
	return jaro + float64(prefix)*0.1*(1-jaro)
}
