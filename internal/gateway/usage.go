package gateway

import (
	"bytes"
	"encoding/json"
)

// Usage is the token count of one request.
type Usage struct {
	PromptTokens     int  `json:"prompt_tokens"`
	CompletionTokens int  `json:"completion_tokens"`
	Estimated        bool `json:"-"`
}

var usageKey = []byte(`"usage":`)

// parseUsage reads the usage block of an OpenAI response or stream chunk, if any. It
// decodes only the object after the last "usage" key (responses put it last), not the
// whole answer; a "usage" inside generated text is a JSON string, so its quote is escaped
// and does not match. A block with a negative count is not believed (the caller estimates):
// it would credit the principal's budget.
//
// The block is read by scanUsage when it has the shape engines send (plain keys, integer
// counts, objects of integers for the *_details members) and by encoding/json otherwise;
// the two agree on every input (FuzzUsageScan), and the scan costs no allocation (the
// decoder was 4 % of a request's CPU).
func parseUsage(b []byte) (Usage, bool) {
	if !bytes.Contains(b, usageKey) { // vectorized; LastIndex is not (it was 3% of a stream)
		return Usage{}, false
	}
	i := bytes.LastIndex(b, usageKey)
	if i < 0 {
		return Usage{}, false
	}
	rest := b[i+len(usageKey):]
	if bytes.HasPrefix(bytes.TrimLeft(rest, " \t\r\n"), []byte("null")) {
		return Usage{}, false // every chunk of a stream with include_usage, but the last
	}
	u, ok, sure := scanUsage(rest)
	if !sure {
		u, ok = decodeUsage(rest)
	}
	if ok && (u.PromptTokens < 0 || u.CompletionTokens < 0) {
		return Usage{}, false
	}
	return u, ok
}

// decodeUsage is encoding/json's reading of the value at the start of rest (what follows
// it is not read).
func decodeUsage(rest []byte) (Usage, bool) {
	var u *Usage
	if json.NewDecoder(bytes.NewReader(rest)).Decode(&u) != nil || u == nil {
		return Usage{}, false
	}
	return *u, true
}

// scanUsage reads a usage object of the common shape — {"k":int,...} where a value may
// also be an object of such members — without allocating. sure is false when rest is
// anything else (escapes in a key, a key that matches a field only case-insensitively,
// strings, floats, exponents, arrays, leading zeros, 19 digits or more, bad syntax): the
// caller then asks encoding/json, so the answer is always the decoder's.
func scanUsage(rest []byte) (u Usage, ok, sure bool) {
	s := usageScanner{b: rest}
	s.space()
	if !s.eat('{') {
		return Usage{}, false, false
	}
	s.space()
	if s.eat('}') {
		return Usage{}, true, true
	}
	for {
		key, good := s.key()
		if !good {
			return Usage{}, false, false
		}
		var field *int
		switch {
		case string(key) == "prompt_tokens":
			field = &u.PromptTokens
		case string(key) == "completion_tokens":
			field = &u.CompletionTokens
		case bytes.EqualFold(key, []byte("prompt_tokens")), bytes.EqualFold(key, []byte("completion_tokens")):
			return Usage{}, false, false // encoding/json matches these case-insensitively
		}
		s.space()
		if s.peek() == '{' {
			if field != nil || !s.flatObject() {
				return Usage{}, false, false
			}
		} else {
			n, good := s.int()
			if !good {
				return Usage{}, false, false
			}
			if field != nil {
				*field = n // the last of duplicate keys, as encoding/json
			}
		}
		s.space()
		if s.eat('}') {
			return u, true, true
		}
		if !s.eat(',') {
			return Usage{}, false, false
		}
		s.space()
	}
}

type usageScanner struct {
	b []byte
	i int
}

func (s *usageScanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *usageScanner) eat(c byte) bool {
	if s.peek() == c {
		s.i++
		return true
	}
	return false
}

func (s *usageScanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// key reads `"name"` and the colon after it; names with escapes, control bytes or bytes
// outside ASCII are not read (encoding/json's rules for those are the decoder's to apply).
func (s *usageScanner) key() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		if c == '"' {
			key := s.b[start:s.i]
			s.i++
			s.space()
			return key, s.eat(':')
		}
		if c == '\\' || c < 0x20 || c >= 0x80 {
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// int reads a JSON integer of at most 18 digits (no fraction, no exponent).
func (s *usageScanner) int() (int, bool) {
	neg := s.eat('-')
	start := s.i
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		n = n*10 + int(s.b[s.i]-'0')
		s.i++
	}
	digits := s.i - start
	if digits == 0 || digits > 18 || (digits > 1 && s.b[start] == '0') {
		return 0, false
	}
	switch s.peek() {
	case '.', 'e', 'E':
		return 0, false
	}
	if neg {
		n = -n
	}
	return n, true
}

// flatObject skips {"k":int,...}.
func (s *usageScanner) flatObject() bool {
	s.i++ // '{'
	s.space()
	if s.eat('}') {
		return true
	}
	for {
		if _, good := s.key(); !good {
			return false
		}
		s.space()
		if _, good := s.int(); !good {
			return false
		}
		s.space()
		if s.eat('}') {
			return true
		}
		if !s.eat(',') {
			return false
		}
		s.space()
	}
}

// estimateTokens is the fallback when an upstream gives no usage: about 4 bytes a token.
func estimateTokens(n int) int { return (n + 3) / 4 }
