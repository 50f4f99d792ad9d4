package refmodel

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Tokenizer is a byte-level BPE tokenizer (GPT-2 style) read from a Hugging Face
// tokenizer.json: vocab, ranked merges, added special tokens.
type Tokenizer struct {
	vocab   map[string]int
	inv     []string
	ranks   map[[2]string]int
	special map[string]int
	specInv map[int]string
	cache   map[string][]int
}

// maxTokenizerBytes caps tokenizer.json.
const maxTokenizerBytes = 64 << 20

// byteEnc maps bytes to the printable runes GPT-2's byte-level BPE uses, byteDec back.
var byteEnc, byteDec = func() ([256]rune, map[rune]byte) {
	var enc [256]rune
	dec := map[rune]byte{}
	n := 0
	for b := range 256 {
		if (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff) {
			enc[b] = rune(b)
		} else {
			enc[b] = rune(256 + n)
			n++
		}
		dec[enc[b]] = byte(b)
	}
	return enc, dec
}()

type tokenizerJSON struct {
	AddedTokens []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
	Model struct {
		Type   string          `json:"type"`
		Vocab  map[string]int  `json:"vocab"`
		Merges json.RawMessage `json:"merges"`
	} `json:"model"`
}

// LoadTokenizer reads dir/tokenizer.json.
func LoadTokenizer(path string) (*Tokenizer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxTokenizerBytes {
		return nil, fmt.Errorf("tokenizer.json: %d bytes is too large", fi.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseTokenizer(b)
}

// ParseTokenizer parses tokenizer.json bytes; only byte-level BPE is supported.
func ParseTokenizer(b []byte) (*Tokenizer, error) {
	var tj tokenizerJSON
	if err := json.Unmarshal(b, &tj); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	if tj.Model.Type != "BPE" {
		return nil, fmt.Errorf("tokenizer.json: model type %q, want BPE", tj.Model.Type)
	}
	t := &Tokenizer{vocab: tj.Model.Vocab, ranks: map[[2]string]int{}, special: map[string]int{}, specInv: map[int]string{}, cache: map[string][]int{}}
	maxID := -1
	for s, id := range t.vocab {
		if id < 0 || id > 1<<22 {
			return nil, fmt.Errorf("tokenizer.json: token %q has id %d", s, id)
		}
		maxID = max(maxID, id)
	}
	for _, a := range tj.AddedTokens {
		if a.ID < 0 || a.ID > 1<<22 || a.Content == "" {
			return nil, fmt.Errorf("tokenizer.json: added token %q id %d", a.Content, a.ID)
		}
		t.special[a.Content], t.specInv[a.ID] = a.ID, a.Content
		maxID = max(maxID, a.ID)
	}
	t.inv = make([]string, maxID+1)
	for s, id := range t.vocab {
		t.inv[id] = s
	}
	for _, r := range byteEnc {
		if _, ok := t.vocab[string(r)]; !ok {
			return nil, fmt.Errorf("tokenizer.json: byte-level vocabulary lacks %q", string(r))
		}
	}
	// Merges are "a b" strings (older files) or ["a", "b"] pairs (newer).
	var asStrings []string
	var asPairs [][2]string
	if err := json.Unmarshal(tj.Model.Merges, &asStrings); err == nil {
		for _, m := range asStrings {
			a, b, ok := strings.Cut(m, " ")
			if !ok {
				return nil, fmt.Errorf("tokenizer.json: merge %q", m)
			}
			asPairs = append(asPairs, [2]string{a, b})
		}
	} else if err := json.Unmarshal(tj.Model.Merges, &asPairs); err != nil {
		return nil, fmt.Errorf("tokenizer.json: merges: %w", err)
	}
	for i, p := range asPairs {
		if _, ok := t.vocab[p[0]+p[1]]; !ok {
			return nil, fmt.Errorf("tokenizer.json: merge %d (%q %q) makes a token not in the vocabulary", i, p[0], p[1])
		}
		if _, dup := t.ranks[p]; !dup {
			t.ranks[p] = i
		}
	}
	return t, nil
}

// Size is the number of token ids (the largest id + 1).
func (t *Tokenizer) Size() int { return len(t.inv) }

// Has says whether id stands for a token (ids past the vocabulary and holes in it do not).
func (t *Tokenizer) Has(id int) bool {
	if _, ok := t.specInv[id]; ok {
		return true
	}
	return id >= 0 && id < len(t.inv) && t.inv[id] != ""
}

// Special returns the id of a special token.
func (t *Tokenizer) Special(s string) (int, bool) { id, ok := t.special[s]; return id, ok }

// runeClass: 0 whitespace, 1 letter, 2 number, 3 anything else.
func runeClass(r rune) int {
	switch {
	case unicode.IsSpace(r):
		return 0
	case unicode.IsLetter(r):
		return 1
	case unicode.IsNumber(r):
		return 2
	}
	return 3
}

var contractions = []string{"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}

// pretokenize splits text as GPT-2's pattern does:
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// — a run of whitespace before a non-space gives its last character to what follows when
// that character is a plain space, and leaves it standing alone otherwise.
func pretokenize(s string) []string {
	var out []string
	i := 0
	for i < len(s) {
		matched := false
		for _, c := range contractions {
			if strings.HasPrefix(s[i:], c) {
				out, i, matched = append(out, c), i+len(c), true
				break
			}
		}
		if matched {
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		start := i
		if runeClass(r) == 0 {
			j := i
			var lastStart int
			for j < len(s) {
				r2, n2 := utf8.DecodeRuneInString(s[j:])
				if runeClass(r2) != 0 {
					break
				}
				lastStart = j
				j += n2
			}
			if j == len(s) { // trailing whitespace: one token
				out, i = append(out, s[i:j]), j
				continue
			}
			if lastStart > i { // all but the last whitespace character
				out = append(out, s[i:lastStart])
			}
			i = lastStart
			if s[i] != ' ' { // e.g. "\n" before a word stands alone
				_, nl := utf8.DecodeRuneInString(s[i:])
				out, i = append(out, s[i:i+nl]), i+nl
				continue
			}
			start = i
			i++ // the space prefixes the next token
			r, n = utf8.DecodeRuneInString(s[i:])
		} else if r == ' ' {
			i++
			r, n = utf8.DecodeRuneInString(s[i:])
		}
		c := runeClass(r)
		i += n
		for i < len(s) {
			r2, n2 := utf8.DecodeRuneInString(s[i:])
			if runeClass(r2) != c {
				break
			}
			i += n2
		}
		out = append(out, s[start:i])
	}
	return out
}

// Encode turns text into token ids; special tokens written literally are recognized.
func (t *Tokenizer) Encode(text string) []int {
	var ids []int
	for len(text) > 0 {
		// The earliest special token in the rest of the text, if any.
		at, which := -1, ""
		for sp := range t.special {
			if k := strings.Index(text, sp); k >= 0 && (at < 0 || k < at || (k == at && len(sp) > len(which))) {
				at, which = k, sp
			}
		}
		chunk := text
		if at >= 0 {
			chunk = text[:at]
		}
		for _, w := range pretokenize(chunk) {
			ids = append(ids, t.word(w)...)
		}
		if at < 0 {
			break
		}
		ids = append(ids, t.special[which])
		text = text[at+len(which):]
	}
	return ids
}

// word applies the merges to one pre-token.
func (t *Tokenizer) word(w string) []int {
	if ids, ok := t.cache[w]; ok {
		return ids
	}
	syms := make([]string, 0, len(w))
	for i := 0; i < len(w); i++ {
		syms = append(syms, string(byteEnc[w[i]]))
	}
	for len(syms) > 1 {
		best, at := -1, -1
		for k := 0; k+1 < len(syms); k++ {
			if r, ok := t.ranks[[2]string{syms[k], syms[k+1]}]; ok && (best < 0 || r < best) {
				best, at = r, k
			}
		}
		if at < 0 {
			break
		}
		merged := syms[at] + syms[at+1]
		// Merge every occurrence of this pair, left to right.
		out := syms[:0:0]
		for k := 0; k < len(syms); k++ {
			if k+1 < len(syms) && syms[k] == syms[at] && syms[k+1] == syms[at+1] && syms[k]+syms[k+1] == merged {
				out = append(out, merged)
				k++
				continue
			}
			out = append(out, syms[k])
		}
		syms = out
	}
	ids := make([]int, len(syms))
	for k, s := range syms {
		ids[k] = t.vocab[s]
	}
	if len(t.cache) < 1<<16 {
		t.cache[w] = ids
	}
	return ids
}

// Decode turns ids back into text (special tokens as their text).
func (t *Tokenizer) Decode(ids []int) string {
	var b []byte
	for _, id := range ids {
		b = append(b, t.TokenBytes(id)...)
	}
	return string(b)
}

// TokenBytes is the bytes a token stands for.
func (t *Tokenizer) TokenBytes(id int) []byte {
	if s, ok := t.specInv[id]; ok {
		return []byte(s)
	}
	if id < 0 || id >= len(t.inv) {
		return nil
	}
	var b []byte
	for _, r := range t.inv[id] {
		b = append(b, byteDec[r])
	}
	return b
}

// trainBPE learns merges over a corpus until the vocabulary reaches size (or no pair occurs
// twice): the synthesizer's tokenizer. Deterministic: ties break by the pair's text.
func trainBPE(corpus string, size int) (vocab map[string]int, merges [][2]string) {
	vocab = map[string]int{}
	for b := range 256 {
		vocab[string(byteEnc[b])] = b
	}
	counts := map[string]int{}
	for _, w := range pretokenize(corpus) {
		counts[w]++
	}
	type word struct {
		syms []string
		n    int
	}
	var words []word
	keys := make([]string, 0, len(counts))
	for w := range counts {
		keys = append(keys, w)
	}
	sort.Strings(keys)
	for _, w := range keys {
		var syms []string
		for i := 0; i < len(w); i++ {
			syms = append(syms, string(byteEnc[w[i]]))
		}
		words = append(words, word{syms, counts[w]})
	}
	for len(vocab) < size {
		pairs := map[[2]string]int{}
		for _, w := range words {
			for k := 0; k+1 < len(w.syms); k++ {
				pairs[[2]string{w.syms[k], w.syms[k+1]}] += w.n
			}
		}
		var best [2]string
		bestN := 1
		for p, n := range pairs {
			if n > bestN || (n == bestN && n > 1 && p[0]+" "+p[1] < best[0]+" "+best[1]) {
				best, bestN = p, n
			}
		}
		if bestN < 2 {
			break
		}
		merged := best[0] + best[1]
		if _, ok := vocab[merged]; !ok {
			vocab[merged] = len(vocab)
		}
		merges = append(merges, best)
		for i := range words {
			s := words[i].syms
			out := s[:0:0]
			for k := 0; k < len(s); k++ {
				if k+1 < len(s) && s[k] == best[0] && s[k+1] == best[1] {
					out = append(out, merged)
					k++
					continue
				}
				out = append(out, s[k])
			}
			words[i].syms = out
		}
	}
	return vocab, merges
}
