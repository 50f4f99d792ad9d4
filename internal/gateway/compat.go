package gateway

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// OpenAI compatibility beyond the proxied endpoints: GET /v1/models/{id}, the 400 for a
// request without a model, and the header that says what hardening changed.

// HardenedHeader lists the request fields hardening stripped or capped, in the order of
// hardenedFields, as FIELD=stripped or FIELD=VALUE (the value forwarded), comma-separated:
// "logit_bias=stripped,top_logprobs=5". Absent when nothing the client sent was changed.
const HardenedHeader = "X-Strongroom-Hardened"

var errNoModel = badRequest("you must provide a model parameter")

// retrieveModel answers GET /v1/models/{id} with the model object when the caller's
// listing has it, and with the same 404 for a model that does not exist and for one the
// caller may not use, so that an answer never tells a model exists.
func (g *Gateway) retrieveModel(w http.ResponseWriter, r *http.Request, id string) {
	if r.Method != http.MethodGet {
		errMethod.write(w)
		return
	}
	// The listing is the one place that decides what a caller may see: ask it.
	lw := &bufferedWriter{header: http.Header{}, status: http.StatusOK}
	g.models(lw, r)
	if lw.status != http.StatusOK {
		lw.copyTo(w)
		return
	}
	var list struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(lw.body.Bytes(), &list); err != nil {
		errUnavailable.write(w)
		return
	}
	for _, m := range list.Data {
		var entry struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(m, &entry) == nil && entry.ID == id {
			w.Header().Set("Content-Type", "application/json")
			w.Write(append(bytes.Clone(m), '\n'))
			return
		}
	}
	errModelNotFound.write(w)
}

// bufferedWriter holds a response in memory.
type bufferedWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header         { return b.header }
func (b *bufferedWriter) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bufferedWriter) WriteHeader(status int)      { b.status = status }

func (b *bufferedWriter) copyTo(w http.ResponseWriter) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	w.WriteHeader(b.status)
	w.Write(b.body.Bytes())
}

// modelPath returns the id of a /v1/models/{id} path.
func modelPath(path string) (string, bool) {
	id, ok := strings.CutPrefix(path, "/v1/models/")
	return id, ok && id != ""
}

// generations is how many completions the engine is asked to generate (n, or best_of
// when larger): what a request may cost is that many times max_tokens.
func (f *features) generations() int {
	g := f.n()
	if f.BestOf != nil {
		g = max(g, *f.BestOf)
	}
	return max(g, 1)
}

// sentFields is what the client sent of the fields hardening strips or caps (a value:
// no allocation a request).
type sentFields struct {
	logitBias, logprobsOn bool
	counts                [len(hardenedNames)]int  // as hardenedCounts
	has                   [len(hardenedNames)]bool // the client sent counts[i]
}

// hardenedNames are the count fields hardening caps or strips, in header order.
var hardenedNames = [...]string{"logprobs", "top_logprobs", "prompt_logprobs", "n", "best_of", "max_tokens", "max_completion_tokens"}

// hardenedCounts are f's values of hardenedNames' fields (nil: not sent).
func hardenedCounts(f *features) [len(hardenedNames)]*int {
	return [...]*int{f.LogprobsN, f.TopLogprobs, f.PromptLogprobs, f.N, f.BestOf, f.MaxTokens, f.MaxCompl}
}

// sent copies what the client asked before hardening changes f.
func sent(f *features) sentFields {
	s := sentFields{logitBias: len(f.LogitBias) > 0, logprobsOn: f.LogprobsOn}
	for i, v := range hardenedCounts(f) {
		if v != nil {
			s.counts[i], s.has[i] = *v, true
		}
	}
	return s
}

// hardened is the HardenedHeader value for what hardening made of the client's request
// (before) in f: "" when it changed nothing the client sent.
func hardened(before sentFields, f *features) string {
	var b []byte
	add := func(name, v string) {
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = append(append(append(b, name...), '='), v...)
	}
	if before.logitBias && len(f.LogitBias) == 0 {
		add("logit_bias", "stripped")
	}
	if before.logprobsOn && !f.LogprobsOn {
		add("logprobs", "stripped")
	}
	for i, v := range hardenedCounts(f) {
		switch {
		case !before.has[i]:
		case v == nil:
			add(hardenedNames[i], "stripped")
		case *v < before.counts[i]:
			add(hardenedNames[i], strconv.Itoa(*v))
		}
	}
	return string(b)
}

// setHardened says in the response what hardening changed of the request.
func setHardened(w http.ResponseWriter, before sentFields, f *features) {
	if v := hardened(before, f); v != "" {
		w.Header().Set(HardenedHeader, v)
	}
}
