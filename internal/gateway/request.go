package gateway

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// # Request-parsing contract
//
// The gateway judges a request on one strict decoding of its body, and the engine receives
// bytes in which every field that decoding judged means the same thing to any JSON decoder
// that matches names exactly (Python's json, pydantic, serde) or case-insensitively (Go's
// encoding/json). A body is refused with 400 unless:
//
//   - it is one JSON object (RFC 8259), valid UTF-8, no trailing data, nesting ≤ maxDepth;
//   - no object anywhere holds two names that are equal, or equal under Unicode simple case
//     folding ("n" and "N", "logit_bias" and "logit_biaſ");
//   - no top-level name folds to a field the gateway judges without being spelled exactly
//     like it ("MODEL", "Logit_Bias" alone are refused, not passed through);
//   - each judged field has its declared JSON type: counts (n, best_of, max_tokens,
//     max_completion_tokens, top_logprobs, prompt_logprobs, completions' logprobs) are
//     integer literals in [0, 2^31) — 1e1, 20.0 and "20" are refused, not read as 0 —
//     or null; stream and echo are booleans or null; model is a string; logit_bias is an
//     object of canonical decimal token ids to numbers, or null.
//
// What is forwarded: the body unchanged when hardening edits nothing (the common case);
// otherwise the same members in the same order with their original bytes, less the members
// hardening removes, with the values it caps replaced, and any member it adds appended.
// The prompt-bearing field of the endpoint (chat: messages, completions: prompt,
// embeddings: input) is forwarded byte for byte and is what the log digests and the
// detectors see.

const maxDepth = 64

// judged are the top-level fields the gateway reads; a case variant of one is refused.
var judged = map[string]bool{
	"model": true, "messages": true, "prompt": true, "input": true, "stream": true, "stream_options": true,
	"max_tokens": true, "max_completion_tokens": true, "n": true, "best_of": true, "logprobs": true,
	"top_logprobs": true, "prompt_logprobs": true, "logit_bias": true, "echo": true, "temperature": true,
}

// features are the request fields that policy, limits and hardening look at.
type features struct {
	Model          string
	Stream         bool
	MaxTokens      *int
	MaxCompl       *int
	N              *int
	BestOf         *int
	LogprobsOn     bool // chat: logprobs true
	LogprobsN      *int // completions: the count
	logprobsBool   bool // logprobs given as true or false (completions refuses it)
	TopLogprobs    *int
	PromptLogprobs *int
	Echo           bool
	LogitBias      map[string]float64
	IncludeUsage   bool // stream_options.include_usage
	Temperature    *float64
	Prompt         []byte
	members        []member  // top-level members in order, for rewriting
	memberBuf      [8]member // members' first eight, with the features
}

// member is one top-level name/value pair as byte offsets into the body.
type member struct {
	name             string
	nameStart        int // the opening quote of the name
	valStart, valEnd int
}

// errBadRequest marks a body the contract refuses; its text is the one-line reason, for
// the caller. reason is the same without what the caller wrote (the names it used, the
// decoder's quotes of its bytes), for the request record and the log: the record is
// public, and member names are content — a tool's parameters, metadata keys, a PIN after
// a lone surrogate (outside round 58).
type errBadRequest struct{ msg, reason string }

func (e *errBadRequest) Error() string { return e.msg }

// refuse is a refusal whose %q and %v arguments are the caller's (names, decoder errors):
// the record's reason shows each as "…". Other verbs take the contract's own words.
func refuse(format string, a ...any) error {
	hidden := slices.Clone(a)
	n := 0
	for i := 0; i < len(format)-1; i++ {
		if format[i] != '%' {
			continue
		}
		i++
		if format[i] == '%' {
			continue
		}
		if (format[i] == 'q' || format[i] == 'v') && n < len(hidden) {
			hidden[n] = callerText{}
		}
		n++
	}
	return &errBadRequest{fmt.Sprintf(format, a...), fmt.Sprintf(format, hidden...)}
}

// callerText stands for what the caller wrote, in a record's reason.
type callerText struct{}

func (callerText) Format(f fmt.State, _ rune) { f.Write([]byte("…")) }

// recordReason is err's reason without the caller's text.
func recordReason(err error) string {
	if e, ok := err.(*errBadRequest); ok {
		return e.reason
	}
	return "invalid request body"
}

// pooledDecoder keeps a decoder's buffers between requests.
type pooledDecoder struct {
	r   bytes.Reader
	dec jsontext.Decoder
}

var decoders = sync.Pool{New: func() any { return new(pooledDecoder) }}

// parseRequest decodes body strictly for endpoint ("chat", "completions", "embeddings").
func parseRequest(body []byte, endpoint string) (*features, error) {
	f := &features{}
	d := decoders.Get().(*pooledDecoder)
	defer decoders.Put(d)
	d.r.Reset(body)
	d.dec.Reset(&d.r)
	dec := &d.dec
	tok, err := dec.ReadToken()
	if err != nil {
		return nil, refuse("body is not JSON: %v", err)
	}
	if tok.Kind() != '{' {
		return nil, refuse("body is not a JSON object")
	}
	var seen [16]string // a request's top-level names: on the stack unless there are more
	names := foldSet(seen[:0])
	f.members = f.memberBuf[:0]
	var promptField string
	switch endpoint {
	case "chat":
		promptField = "messages"
	case "completions":
		promptField = "prompt"
	case "embeddings":
		promptField = "input"
	}
	for dec.PeekKind() != '}' {
		prev := int(dec.InputOffset())
		name, err := readName(dec)
		if err != nil {
			return nil, err
		}
		nameEnd := int(dec.InputOffset())
		if names, err = names.with(name); err != nil {
			return nil, err
		}
		if !judged[name] {
			if k := foldKey(name); judged[k] || judgedFold[k] {
				return nil, refuse("unknown field %q (field names are case-sensitive)", name)
			}
		}
		m := member{name: name, nameStart: prev + bytes.IndexByte(body[prev:nameEnd], '"')}
		m.valStart = nameEnd + bytes.IndexByte(body[nameEnd:], ':') + 1
		m.valStart += len(body[m.valStart:]) - len(bytes.TrimLeft(body[m.valStart:], " \t\r\n"))
		if err := f.field(dec, name); err != nil {
			return nil, err
		}
		m.valEnd = int(dec.InputOffset())
		if name == promptField {
			f.Prompt = body[m.valStart:m.valEnd]
		}
		f.members = append(f.members, m)
	}
	dec.ReadToken() // '}'
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, refuse("trailing data after the JSON object")
	}
	if endpoint == "completions" && f.logprobsBool {
		// Completions' logprobs is a count. An engine that reads a boolean as one (vLLM's
		// lax validation: false is 0, the sampled token's logprob) would answer with
		// logprobs that "false" told hardening were not asked for.
		return nil, refuse("logprobs must be a number (how many) on completions")
	}
	return f, nil
}

// judgedFold holds the fold keys of judged names that are not their own fold key (none
// today: every judged name is lower-case ASCII); kept so that a future name cannot slip.
var judgedFold = func() map[string]bool {
	m := map[string]bool{}
	for n := range judged {
		m[foldKey(n)] = true
	}
	return m
}()

// field reads the value of one top-level member.
func (f *features) field(dec *jsontext.Decoder, name string) error {
	var err error
	switch name {
	case "model":
		var s *string
		if s, err = readString(dec, name); err == nil && s != nil {
			f.Model = *s
		}
	case "stream":
		f.Stream, err = readBool(dec, name)
	case "echo":
		f.Echo, err = readBool(dec, name)
	case "max_tokens":
		f.MaxTokens, err = readCount(dec, name)
	case "max_completion_tokens":
		f.MaxCompl, err = readCount(dec, name)
	case "n":
		f.N, err = readCount(dec, name)
	case "best_of":
		f.BestOf, err = readCount(dec, name)
	case "top_logprobs":
		f.TopLogprobs, err = readCount(dec, name)
	case "prompt_logprobs":
		f.PromptLogprobs, err = readCount(dec, name)
	case "logprobs":
		if k := dec.PeekKind(); k == '0' { // completions: the number of logprobs
			f.LogprobsN, err = readCount(dec, name)
		} else {
			f.logprobsBool = k == 't' || k == 'f'
			f.LogprobsOn, err = readBool(dec, name)
		}
	case "logit_bias":
		f.LogitBias, err = readBias(dec)
	case "temperature":
		f.Temperature, err = readNumber(dec, name)
	case "stream_options":
		f.IncludeUsage, err = readStreamOptions(dec)
	default:
		err = skipChecked(dec, 1)
	}
	return err
}

// knownNames are the member names most bodies hold: the judged ones, stream_options' and
// a chat message's usual fields. readName gives them as these constants.
var knownNames = func() map[string]string {
	m := map[string]string{}
	for n := range judged {
		m[n] = n
	}
	for _, n := range []string{"include_usage", "role", "content", "name", "type", "text", "image_url", "url",
		"detail", "tool_calls", "tool_call_id", "function", "arguments", "id", "refusal", "user", "seed",
		"top_p", "stop", "tools", "tool_choice", "response_format", "presence_penalty", "frequency_penalty"} {
		m[n] = n
	}
	return m
}()

// readName reads an object member's name (the decoder is at one). A known name comes
// without an allocation: Token.String made one for every name of every object, ~80 % of a
// chat body's allocations (BenchmarkParse). What it returns is what Token.String would.
func readName(dec *jsontext.Decoder) (string, error) {
	v, err := dec.ReadValue()
	if err != nil {
		return "", refuse("body is not valid JSON: %v", err)
	}
	// A name is a string (the decoder refuses anything else there), valid UTF-8.
	raw := v[1 : len(v)-1]
	if bytes.IndexByte(raw, '\\') >= 0 {
		var buf [64]byte
		if raw, err = jsontext.AppendUnquote(buf[:0], v); err != nil {
			return "", refuse("body is not valid JSON: %v", err)
		}
	}
	if n, ok := knownNames[string(raw)]; ok {
		return n, nil
	}
	return string(raw), nil
}

func readToken(dec *jsontext.Decoder) (jsontext.Token, error) {
	t, err := dec.ReadToken()
	if err != nil {
		return t, refuse("body is not valid JSON: %v", err)
	}
	return t, nil
}

func readString(dec *jsontext.Decoder, name string) (*string, error) {
	t, err := readToken(dec)
	switch {
	case err != nil:
		return nil, err
	case t.Kind() == 'n':
		return nil, nil
	case t.Kind() != '"':
		return nil, refuse("%s must be a string", name)
	}
	s := t.String()
	return &s, nil
}

func readBool(dec *jsontext.Decoder, name string) (bool, error) {
	t, err := readToken(dec)
	switch {
	case err != nil:
		return false, err
	case t.Kind() == 'n' || t.Kind() == 'f':
		return false, nil
	case t.Kind() == 't':
		return true, nil
	}
	return false, refuse("%s must be a boolean", name)
}

// numberToken reads a JSON number, returned as written, or null (nil); anything else is
// refused as not being what (a string "20" is not the number 20).
func numberToken(dec *jsontext.Decoder, name, what string) (string, bool, error) {
	t, err := readToken(dec)
	switch {
	case err != nil:
		return "", false, err
	case t.Kind() == 'n':
		return "", false, nil
	case t.Kind() != '0':
		return "", false, refuse("%s must be %s", name, what)
	}
	return t.String(), true, nil // a number token's String is its text
}

// readCount reads a non-negative integer literal below 2^31, or null.
func readCount(dec *jsontext.Decoder, name string) (*int, error) {
	raw, ok, err := numberToken(dec, name, "an integer")
	if !ok {
		return nil, err
	}
	v, err := strconv.ParseUint(raw, 10, 31)
	if err != nil {
		return nil, refuse("%s must be an integer from 0 to 2147483647 written without fraction or exponent", name)
	}
	n := int(v)
	return &n, nil
}

// readNumber reads a JSON number (any form) in [0, 100], or null.
func readNumber(dec *jsontext.Decoder, name string) (*float64, error) {
	raw, ok, err := numberToken(dec, name, "a number")
	if !ok {
		return nil, err
	}
	v, err := strconv.ParseFloat(raw, 64)
	if err != nil || v < 0 || v > 100 {
		return nil, refuse("%s out of range", name)
	}
	return &v, nil
}

func readBias(dec *jsontext.Decoder) (map[string]float64, error) {
	t, err := readToken(dec)
	switch {
	case err != nil:
		return nil, err
	case t.Kind() == 'n':
		return nil, nil
	case t.Kind() != '{':
		return nil, refuse("logit_bias must be an object")
	}
	m := map[string]float64{}
	for dec.PeekKind() != '}' {
		kt, err := readToken(dec)
		if err != nil {
			return nil, err
		}
		k := kt.String()
		if _, err := strconv.ParseUint(k, 10, 31); err != nil || (len(k) > 1 && k[0] == '0') {
			return nil, refuse("logit_bias keys must be token ids in canonical decimal form")
		}
		raw, ok, err := numberToken(dec, "logit_bias values", "numbers")
		if !ok {
			if err == nil {
				err = refuse("logit_bias values must be numbers")
			}
			return nil, err
		}
		v, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return nil, refuse("logit_bias value out of range")
		}
		m[k] = v // names are unique: the decoder refuses duplicates
	}
	dec.ReadToken()
	return m, nil
}

func readStreamOptions(dec *jsontext.Decoder) (bool, error) {
	t, err := readToken(dec)
	switch {
	case err != nil:
		return false, err
	case t.Kind() == 'n':
		return false, nil
	case t.Kind() != '{':
		return false, refuse("stream_options must be an object")
	}
	var seen [4]string
	names, usage := foldSet(seen[:0]), false
	for dec.PeekKind() != '}' {
		k, err := readName(dec)
		if err != nil {
			return false, err
		}
		if names, err = names.with(k); err != nil {
			return false, err
		}
		switch {
		case k == "include_usage":
			if usage, err = readBool(dec, "stream_options.include_usage"); err != nil {
				return false, err
			}
		case foldKey(k) == "include_usage":
			return false, refuse("unknown field %q (field names are case-sensitive)", k)
		default:
			if err := skipChecked(dec, 2); err != nil {
				return false, err
			}
		}
	}
	dec.ReadToken()
	return usage, nil
}

// skipChecked reads one value, refusing fold-equal names in any object within it.
func skipChecked(dec *jsontext.Decoder, depth int) error {
	if depth > maxDepth {
		return refuse("JSON nested deeper than %d", maxDepth)
	}
	t, err := readToken(dec)
	if err != nil {
		return err
	}
	switch t.Kind() {
	case '{':
		var seen [8]string // a message's names: on the stack unless there are more
		names := foldSet(seen[:0])
		for dec.PeekKind() != '}' {
			k, err := readName(dec)
			if err != nil {
				return err
			}
			if names, err = names.with(k); err != nil {
				return err
			}
			if err := skipChecked(dec, depth+1); err != nil {
				return err
			}
		}
		_, err = dec.ReadToken()
	case '[':
		for dec.PeekKind() != ']' {
			if dec.PeekKind() == 0 {
				_, err := dec.ReadToken()
				return refuse("body is not valid JSON: %v", err)
			}
			if err := skipChecked(dec, depth+1); err != nil {
				return err
			}
		}
		_, err = dec.ReadToken()
	}
	if err != nil {
		return refuse("body is not valid JSON: %v", err)
	}
	return nil
}

// foldSet refuses a name that folds to one already seen in the same object. Small objects
// (the usual case) are a slice.
type foldSet []string

// with is s with name added, or an error if a name fold-equal to it is there (a value,
// not a pointer receiver: a set backed by the caller's stack array stays there).
func (s foldSet) with(name string) (foldSet, error) {
	k := foldKey(name)
	for _, o := range s {
		if o == k {
			return s, refuse("duplicate field %q (names differing only in case are duplicates)", name)
		}
	}
	return append(s, k), nil
}

// foldKey maps s to a representative of its Unicode simple-case-folding class: the
// smallest rune of each rune's fold orbit, so that strings.EqualFold(a, b) exactly when
// foldKey(a) == foldKey(b).
func foldKey(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		for i := 0; i < len(s); i++ {
			if c := s[i]; 'A' <= c && c <= 'Z' {
				b := []byte(s)
				for j := i; j < len(b); j++ {
					if 'A' <= b[j] && b[j] <= 'Z' {
						b[j] += 'a' - 'A'
					}
				}
				return string(b)
			}
		}
		return s
	}
	b := make([]byte, 0, len(s))
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		if m < utf8.RuneSelf && 'A' <= m && m <= 'Z' {
			m += 'a' - 'A' // ASCII names fold to lower case, as in the fast path
		}
		b = utf8.AppendRune(b, m)
	}
	return string(b)
}

// prompt returns the raw JSON of the endpoint's prompt-bearing field.
func (f *features) prompt() []byte { return f.Prompt }

// logprobs says whether any token logprobs are asked for, and the most alternatives asked
// for per token. Engines return the sampled token's logprob for a count of 0 (vLLM:
// completions' logprobs 0, prompt_logprobs 0), and some honour top_logprobs without
// logprobs: all of those count.
func (f *features) logprobs() (bool, int) {
	top := 0
	for _, p := range []*int{f.LogprobsN, f.TopLogprobs, f.PromptLogprobs} {
		if p != nil {
			top = max(top, *p)
		}
	}
	return f.LogprobsOn || f.LogprobsN != nil || f.PromptLogprobs != nil || top > 0, top
}

// maxTokens is the most tokens a generation may run to, 0 for no bound. Engines differ in
// which of max_completion_tokens and max_tokens they read (vLLM's completions only
// max_tokens; its chat the first, else the second), so with both, the larger — and 0 (no
// bound) if either is 0. Taking max_completion_tokens alone let a request with it small and
// max_tokens huge pass the hardening cap and the limits' estimate (outside round 56).
func (f *features) maxTokens() int {
	m := 0
	for _, p := range []*int{f.MaxCompl, f.MaxTokens} {
		if p != nil {
			if *p == 0 {
				return 0
			}
			m = max(m, *p)
		}
	}
	return m
}

func (f *features) n() int {
	if f.N != nil {
		return *f.N
	}
	return 1
}

// rewrite returns body with the named members removed (value nil) or set to the given raw
// JSON, members not in body appended in the order given; original bytes are kept for the
// rest.
func (f *features) rewrite(body []byte, edits []edit) []byte {
	out := make([]byte, 0, len(body)+64)
	out = append(out, '{')
	done := make([]bool, len(edits))
	for _, m := range f.members {
		val := body[m.valStart:m.valEnd]
		for i, e := range edits {
			if e.name == m.name {
				val, done[i] = e.value, true
			}
		}
		if val == nil {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, rawName(body, m)...)
		out = append(out, ':')
		out = append(out, val...)
	}
	for i, e := range edits {
		if done[i] || e.value == nil {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = strconv.AppendQuote(out, e.name)
		out = append(out, ':')
		out = append(out, e.value...)
	}
	return append(out, '}')
}

// rawName is the member's name as written (between nameStart and the colon, trimmed).
func rawName(body []byte, m member) []byte {
	return bytes.TrimRight(body[m.nameStart:bytes.LastIndexByte(body[:m.valStart], ':')], " \t\r\n")
}

type edit struct {
	name  string
	value []byte // nil: remove
}

// askedFor is what a request asks of the model before hardening: what the policy judges
// and the detectors see.
type askedFor struct {
	Logprobs         bool
	TopLogprobs      int
	N                int
	MaxTokens        int
	LogitBias        map[string]float64
	TemperatureMilli int64 // -1: not given
}

func asked(f *features) askedFor {
	on, top := f.logprobs()
	n := f.n()
	if f.BestOf != nil {
		n = max(n, *f.BestOf)
	}
	temp := int64(-1)
	if f.Temperature != nil {
		temp = int64(math.Round(*f.Temperature * 1000))
	}
	return askedFor{Logprobs: on, TopLogprobs: top, N: n, MaxTokens: f.maxTokens(), LogitBias: f.LogitBias, TemperatureMilli: temp}
}
