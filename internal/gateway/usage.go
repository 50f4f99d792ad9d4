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
// and does not match.
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
	var u *Usage
	if json.NewDecoder(bytes.NewReader(rest)).Decode(&u) != nil || u == nil {
		return Usage{}, false
	}
	return *u, true
}

// estimateTokens is the fallback when an upstream gives no usage: about 4 bytes a token.
func estimateTokens(n int) int { return (n + 3) / 4 }
