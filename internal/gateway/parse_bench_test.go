package gateway

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// legacyFeatures is the struct the gateway decoded request bodies into with encoding/json
// before the strict parser (the baseline of BenchmarkParse).
type legacyFeatures struct {
	Model       string             `json:"model"`
	Stream      bool               `json:"stream"`
	MaxTokens   *int               `json:"max_tokens"`
	MaxCompl    *int               `json:"max_completion_tokens"`
	N           *int               `json:"n"`
	Logprobs    json.RawMessage    `json:"logprobs"`
	TopLogprobs *int               `json:"top_logprobs"`
	LogitBias   map[string]float64 `json:"logit_bias"`
	StreamOpts  *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Messages json.RawMessage `json:"messages"`
	Prompt   json.RawMessage `json:"prompt"`
	Input    json.RawMessage `json:"input"`
}

func chatBody(turns, wordsPerTurn int) []byte {
	var b strings.Builder
	b.WriteString(`{"model":"demo","max_tokens":256,"temperature":0.7,"logprobs":true,"top_logprobs":3,"messages":[`)
	for i := range turns {
		if i > 0 {
			b.WriteByte(',')
		}
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		fmt.Fprintf(&b, `{"role":%q,"content":%q}`, role, strings.Repeat("word ", wordsPerTurn))
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

// BenchmarkParse: the strict decoding of a request body next to the encoding/json decode it
// replaced, on the same bodies in the same run. ns/op of each row; compare the pairs.
func BenchmarkParse(b *testing.B) {
	for _, size := range []struct {
		name         string
		turns, words int
	}{{"200B", 1, 10}, {"2KB", 6, 60}, {"64KB", 20, 650}} {
		body := chatBody(size.turns, size.words)
		b.Run(size.name+"/encoding-json", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				var f legacyFeatures
				if err := json.Unmarshal(body, &f); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(size.name+"/strict", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := parseRequest(body, "chat"); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(size.name+"/strict+rewrite", func(b *testing.B) { // hardening caps top_logprobs: the body is spliced
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			h := Hardening{LogitBias: "strip", MaxTopLogprobs: 2, MaxN: 4, MaxTokens: 4096}
			for b.Loop() {
				f, err := parseRequest(body, "chat")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := applyHardening(h, body, f, "chat"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
