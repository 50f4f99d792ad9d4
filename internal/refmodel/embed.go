package refmodel

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
)

// Embedder is an LM that also embeds token sequences.
type Embedder interface {
	// Embed returns one vector for the tokens: the mean of the model's final hidden states,
	// unit length.
	Embed(tokens []int) ([]float32, error)
}

// maxEmbedInputs caps the inputs of one embeddings request (OpenAI: 2048).
const maxEmbedInputs = 2048

// Embed mean-pools the final normalized hidden state over the tokens.
func (l *LlamaLM) Embed(tokens []int) ([]float32, error) {
	if len(tokens) == 0 {
		return nil, errors.New("input has no tokens")
	}
	if len(tokens) > l.M.Cfg.MaxPositions {
		return nil, fmt.Errorf("input of %d tokens exceeds the context of %d", len(tokens), l.M.Cfg.MaxPositions)
	}
	s := l.M.NewState()
	sum := make([]float64, l.M.Cfg.HiddenSize)
	for _, t := range tokens {
		if err := l.M.Forward(s, t, nil); err != nil {
			return nil, err
		}
		for k, x := range s.Hidden() {
			sum[k] += float64(x)
		}
	}
	return unit(sum), nil
}

// Embed mean-pools the bigram model's embedding rows of the tokens.
func (b bigramLM) Embed(tokens []int) ([]float32, error) {
	if len(tokens) == 0 {
		return nil, errors.New("input has no tokens")
	}
	m := b.m
	sum := make([]float64, m.hidden)
	for _, t := range tokens {
		row := m.embed[(t%m.vocab)*m.hidden:]
		for k := range sum {
			sum[k] += float64(row[k])
		}
	}
	return unit(sum), nil
}

func unit(v []float64) []float32 {
	n := 0.0
	for _, x := range v {
		n += x * x
	}
	n = math.Sqrt(n)
	out := make([]float32, len(v))
	for k, x := range v {
		if n > 0 {
			out[k] = float32(x / n)
		}
	}
	return out
}

// embedReq is an embeddings request as OpenAI defines it.
type embedReq struct {
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

// embedInput is one input: text, or token ids given by the caller.
type embedInput struct {
	text   string
	tokens []int
	isText bool
}

// parseEmbedInput reads OpenAI's input forms: a string, an array of strings, an array of
// token ids, or an array of arrays of token ids; none may be empty.
func parseEmbedInput(raw json.RawMessage) ([]embedInput, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, errors.New("input is required")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil, errors.New("input must not be empty")
		}
		return []embedInput{{text: s, isText: true}}, nil
	}
	var ids []int
	if json.Unmarshal(raw, &ids) == nil {
		if len(ids) == 0 {
			return nil, errors.New("input must not be empty")
		}
		return []embedInput{{tokens: ids}}, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, errors.New("input must be a string, an array of strings, or token ids")
	}
	if len(items) == 0 || len(items) > maxEmbedInputs {
		return nil, fmt.Errorf("input must hold 1 to %d items", maxEmbedInputs)
	}
	out := make([]embedInput, 0, len(items))
	for _, it := range items {
		var s string
		var ids []int
		switch {
		case json.Unmarshal(it, &s) == nil && s != "":
			out = append(out, embedInput{text: s, isText: true})
		case json.Unmarshal(it, &ids) == nil && len(ids) > 0:
			out = append(out, embedInput{tokens: ids})
		default:
			return nil, errors.New("each input item must be a non-empty string or array of token ids")
		}
	}
	return out, nil
}

// embeddings answers /v1/embeddings with the LM's pooled hidden states; encoding_format
// "base64" gives the float32 little-endian bytes, as OpenAI does; dimensions shortens the
// vectors (truncated, then made unit length again).
func (s *Server) embeddings(w http.ResponseWriter, body []byte) {
	var req embedReq
	if err := json.Unmarshal(body, &req); err != nil {
		oaiError(w, http.StatusBadRequest, "invalid JSON body")
		return
	}
	inputs, err := parseEmbedInput(req.Input)
	if err != nil {
		oaiError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.EncodingFormat != "" && req.EncodingFormat != "float" && req.EncodingFormat != "base64" {
		oaiError(w, http.StatusBadRequest, "encoding_format must be float or base64")
		return
	}
	lm := s.lm()
	emb, ok := lm.(Embedder)
	if !ok {
		oaiError(w, http.StatusBadRequest, "this model does not serve embeddings")
		return
	}
	data := make([]any, 0, len(inputs))
	tokens := 0
	for i, in := range inputs {
		toks := in.tokens
		if in.isText {
			toks = lm.PromptTokens(nil, in.text, false)
		}
		for _, t := range toks {
			if t < 0 || t >= lm.Vocab() {
				oaiError(w, http.StatusBadRequest, fmt.Sprintf("token id %d outside the vocabulary", t))
				return
			}
		}
		vec, err := emb.Embed(toks)
		if err != nil {
			oaiError(w, http.StatusBadRequest, err.Error())
			return
		}
		if d := req.Dimensions; d != nil {
			if *d < 1 || *d > len(vec) {
				oaiError(w, http.StatusBadRequest, fmt.Sprintf("dimensions must be from 1 to %d", len(vec)))
				return
			}
			short := make([]float64, *d)
			for k := range short {
				short[k] = float64(vec[k])
			}
			vec = unit(short)
		}
		tokens += len(toks)
		var v any = vec
		if req.EncodingFormat == "base64" {
			b := make([]byte, 4*len(vec))
			for k, x := range vec {
				binary.LittleEndian.PutUint32(b[4*k:], math.Float32bits(x))
			}
			v = base64.StdEncoding.EncodeToString(b)
		}
		data = append(data, map[string]any{"object": "embedding", "index": i, "embedding": v})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"object": "list", "model": s.Name, "data": data,
		"usage": map[string]int{"prompt_tokens": tokens, "total_tokens": tokens}})
}
