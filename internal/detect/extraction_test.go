package detect_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/detect"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
	"golang.org/x/mod/sumdb/note"
)

// setup serves the reference model (hidden size 64, vocabulary 256) through the gateway.
// The route allows logit_bias and top-5 logprobs, so only detection stands in the way.
func setup(t *testing.T, protect bool) (url, key string, hidden int) {
	ctx := context.Background()
	dir := t.TempDir()
	o := refmodel.DefaultSynth()
	if err := refmodel.Synthesize(filepath.Join(dir, "m"), o); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(filepath.Join(dir, "m", "model.safetensors"))
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	m, err := refmodel.LoadModel(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(&refmodel.Server{Name: "demo", Model: m})
	t.Cleanup(up.Close)
	st, _ := store.OpenSQLite(ctx, filepath.Join(dir, "db"))
	t.Cleanup(func() { st.Close() })
	st.PutPrincipal(ctx, store.Principal{ID: "mallory", Tenant: "t", Screening: "clear"})
	keys := authn.NewKeys(st, nil, time.Minute)
	key, _, _ = keys.Create(ctx, "mallory", 0, nil)
	skey, _, _ := note.GenerateKey(nil, "strongroom.test/x")
	signer, _ := note.NewSigner(skey)
	l, err := audit.Open(ctx, audit.Config{Dir: filepath.Join(dir, "log"), Signer: signer, Index: st, ShutdownTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	red, _ := audit.NewRedactor(bytes.Repeat([]byte{2}, 32))
	eng, _ := policy.NewEngine("", nil)
	cfg := gateway.Config{
		Routes: []gateway.Route{{Model: "demo", Upstreams: []string{up.URL + "/v1"}}},
		Models: modelrec.NewTable(modelrec.Record{Name: "demo", Version: "1", Attrs: modelrec.Attrs{Classification: "public",
			Hardening: &gateway.Hardening{LogitBias: "allow", MaxTopLogprobs: 5, MaxN: 1, MaxTokens: 16}}}),
		Auth: keys, Policy: eng, Limiter: limits.NewLocal(nil), Audit: l, Redactor: red,
	}
	if protect {
		r := detect.NewResponder(detect.New(detect.Config{Vocab: o.Vocab}), detect.ResponderConfig{Audit: l, Incidents: st, Duration: time.Hour})
		cfg.Detector, cfg.Sanctions = r, r
	}
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	return srv.URL, key, o.Hidden
}

// query asks for one token after prompt with +100 bias on tokens and returns the top-5
// logprobs by token id, or nil if the gateway refused or gave no logprobs.
func query(url, key, prompt string, tokens []int) map[int]float64 {
	bias := map[string]float64{}
	for _, t := range tokens {
		bias[strconv.Itoa(t)] = 100
	}
	body, _ := json.Marshal(map[string]any{"model": "demo", "max_tokens": 1, "temperature": 0, "logprobs": true, "top_logprobs": 5,
		"logit_bias": bias, "messages": []any{map[string]string{"role": "user", "content": prompt}}})
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		if resp != nil {
			resp.Body.Close()
		}
		return nil
	}
	defer resp.Body.Close()
	var r struct {
		Choices []struct {
			Logprobs struct {
				Content []struct {
					TopLogprobs []struct {
						Logprob float64 `json:"logprob"`
						Bytes   []int   `json:"bytes"`
					} `json:"top_logprobs"`
				} `json:"content"`
			} `json:"logprobs"`
		} `json:"choices"`
	}
	json.NewDecoder(resp.Body).Decode(&r)
	if len(r.Choices) == 0 || len(r.Choices[0].Logprobs.Content) == 0 {
		return nil
	}
	out := map[int]float64{}
	for _, a := range r.Choices[0].Logprobs.Content[0].TopLogprobs {
		if len(a.Bytes) == 1 {
			out[a.Bytes[0]] = a.Logprob
		}
	}
	return out
}

// attack rebuilds full logit vectors (relative to token 0) through logit_bias sweeps, as in
// Carlini et al. 2024, and returns them with the number of requests it made.
func attack(url, key string, prompts, vocab int) ([][]float64, int) {
	var rows [][]float64
	reqs := 0
	for p := range prompts {
		prompt := "probe " + string(rune(33+p))
		row := make([]float64, vocab)
		var mu sync.Mutex
		var wg sync.WaitGroup
		ok := true
		for start := 1; start < vocab; start += 4 {
			group := []int{0}
			for t := start; t < min(start+4, vocab); t++ {
				group = append(group, t)
			}
			reqs++
			wg.Go(func() {
				lp := query(url, key, prompt, group)
				mu.Lock()
				defer mu.Unlock()
				if _, found := lp[0]; !found {
					if debugAttack {
						fmt.Fprintf(os.Stderr, "group %v got %v\n", group, lp)
					}
					ok = false
					return
				}
				for _, t := range group[1:] {
					v, found := lp[t]
					if !found {
						ok = false
						return
					}
					row[t] = v - lp[0]
				}
			})
			if start%32 == 1 {
				wg.Wait()
			}
		}
		wg.Wait()
		if !ok {
			break
		}
		rows = append(rows, row)
	}
	return rows, reqs
}

var debugAttack = os.Getenv("DEBUG_ATTACK") != ""

// rank is the numeric rank of the centered rows (modified Gram-Schmidt).
func rank(rows [][]float64, tol float64) int {
	var basis [][]float64
	for _, r := range rows {
		v := append([]float64(nil), r...)
		mean := 0.0
		for _, x := range v {
			mean += x
		}
		mean /= float64(len(v))
		norm0 := 0.0
		for i := range v {
			v[i] -= mean
			norm0 += v[i] * v[i]
		}
		for _, b := range basis {
			d := 0.0
			for i := range v {
				d += v[i] * b[i]
			}
			for i := range v {
				v[i] -= d * b[i]
			}
		}
		n := 0.0
		for _, x := range v {
			n += x * x
		}
		if n > tol*tol*norm0 && n > 0 {
			n = math.Sqrt(n)
			for i := range v {
				v[i] /= n
			}
			basis = append(basis, v)
		}
	}
	return len(basis)
}

// TestExtractionAttack runs the logit-bias extraction attack for real through the gateway:
// unprotected it recovers the model's hidden size; with detection on, the attacker is cut
// off before one full logit vector.
func TestExtractionAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("thousands of requests")
	}
	if !testenv.Race {
		// The attack's premise — unprotected, it recovers the hidden size — is statistics
		// over thousands of requests (~30 s under the race detector): scripts/test's second
		// pass runs it. The protected half, a detector sanctioning under concurrent
		// requests, runs raced too.
		url, key, hidden := setup(t, false)
		rows, reqs := attack(url, key, hidden+16, 256)
		if len(rows) != hidden+16 {
			t.Fatalf("unprotected attack got %d of %d vectors", len(rows), hidden+16)
		}
		if got := rank(rows, 1e-3); got != hidden {
			t.Fatalf("recovered hidden size %d, model has %d", got, hidden)
		}
		t.Logf("unprotected: %d requests recovered hidden size %d", reqs, hidden)
	}

	url, key, _ := setup(t, true)
	rows, reqs := attack(url, key, 4, 256)
	if len(rows) != 0 {
		t.Fatalf("protected: the attacker completed %d full logit vectors in %d requests", len(rows), reqs)
	}
	// The harvest is on the record and the principal is sanctioned.
	if lp := query(url, key, "probe !", []int{0, 1, 2, 3, 4}); lp != nil {
		t.Fatal("sanctioned principal still gets logprobs with logit_bias")
	}
	fmt.Fprint(os.Stderr)
}
