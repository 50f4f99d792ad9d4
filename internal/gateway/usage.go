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

// parseUsage reads the usage block of an OpenAI response or stream chunk, if any.
func parseUsage(b []byte) (Usage, bool) {
	if !bytes.Contains(b, []byte(`"usage"`)) {
		return Usage{}, false
	}
	var r struct {
		Usage *Usage `json:"usage"`
	}
	if json.Unmarshal(b, &r) != nil || r.Usage == nil {
		return Usage{}, false
	}
	return *r.Usage, true
}

// estimateTokens is the fallback when an upstream gives no usage: about 4 bytes a token.
func estimateTokens(n int) int { return (n + 3) / 4 }
