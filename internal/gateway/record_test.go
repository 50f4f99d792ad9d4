package gateway

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// requestRecord is the request's record as submitRecord writes it (appendRecord), in its
// own bytes.
func (g *Gateway) requestRecord(st *reqState, kind audit.Kind) store.AuditEvent {
	rec, _ := g.appendRecord(nil, st, kind)
	return rec
}

// TestRequestRecordCanonical: the request records the gateway writes itself (requestRecord)
// are byte for byte what audit.Event.Marshal gives for the same request's event — over
// random requests with every optional part on or off and hostile strings (quotes,
// backslashes, control characters, invalid UTF-8, U+2028, HTML) — and parse as canonical.
// A record over the size limit is truncated as Submit would.
func TestRequestRecordCanonical(t *testing.T) {
	red, err := audit.NewRedactor(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 7, 30, 0, 123456789, time.UTC)
	g := &Gateway{cfg: Config{Redactor: red, Now: func() time.Time { return now }}}
	rng := rand.New(rand.NewPCG(3, 4))
	odd := []string{"", "plain", `q"uote`, `back\slash`, "ctl\x00\x01\x1f\n\t\r", "bad\xff\xfeutf8", "sep\u2028\u2029", "<html>&amp;", "ünïcödé 漢字 🙂"}
	str := func() string { return odd[rng.IntN(len(odd))] + odd[rng.IntN(len(odd))] }
	for i := range 3000 {
		st := &reqState{start: now.Add(-time.Duration(rng.IntN(5000)) * time.Millisecond), endpoint: str(), country: str(),
			decision: []string{audit.Allow, audit.Deny, ""}[rng.IntN(3)], reason: str(), status: rng.IntN(600),
			watermark: rng.IntN(2) == 0, watermarked: rng.IntN(2) == 0,
			usage: Usage{PromptTokens: rng.IntN(1 << 20), CompletionTokens: rng.IntN(1 << 20), Estimated: rng.IntN(2) == 0}}
		if rng.IntN(4) > 0 {
			st.p = &authn.Principal{Principal: store.Principal{ID: str(), Tenant: str()}, KeyID: str()}
		}
		if rng.IntN(4) > 0 {
			st.route = &Route{Model: str()}
			if rng.IntN(2) == 0 {
				st.rec = modelrec.Record{Version: "v" + str()}
				st.rec.Attrs.Classification = str()
			}
		}
		if rng.IntN(3) > 0 {
			st.ip = netip.AddrFrom4([4]byte{10, 0, byte(i), 1})
		}
		if rng.IntN(3) > 0 {
			st.prompt = []byte(str())
		}
		if rng.IntN(3) > 0 {
			st.outHash = red.NewHash()
			st.outHash.Write([]byte(str()))
		}
		if i%500 == 0 {
			st.reason = strings.Repeat("r", audit.MaxEventSize) // over the limit: truncated
		}
		for _, kind := range []audit.Kind{audit.KindRequest, audit.KindStreamStart} {
			ev := g.requestEvent(st)
			if kind == audit.KindStreamStart {
				ev = g.streamStartEvent(st)
			}
			want, err := ev.Marshal()
			if i%500 == 0 {
				ev = ev.Truncated()
				want, err = ev.Marshal()
			}
			if err != nil {
				t.Fatal(err)
			}
			rec := g.requestRecord(st, kind)
			if !bytes.Equal(rec.Raw, want) {
				t.Fatalf("request %d (%s):\n got %s\nwant %s", i, kind, rec.Raw, want)
			}
			got := mustParseRecord(rec)
			if got.Kind != kind {
				t.Fatalf("kind %s, want %s", got.Kind, kind)
			}
			_, hasOut := got.Fields["output_hmac"]
			_, hasStatus := got.Fields["status"]
			if kind == audit.KindStreamStart && (hasOut || hasStatus) {
				t.Fatalf("a stream's start record carries an outcome: %s", rec.Raw)
			}
			if kind == audit.KindRequest && (!hasStatus || hasOut != (st.outHash != nil)) {
				t.Fatalf("a request's record without its outcome: %s", rec.Raw)
			}
		}
	}
	// The address digests come from a cache: each is still the Redactor's digest, also
	// across the cache's reset.
	for i := range maxIPDigests + 50 {
		a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		if i%997 == 0 || i > maxIPDigests {
			for range 2 {
				if d := g.ipDigest(a); d != red.Digest(a.String()) {
					t.Fatalf("digest of %s: %s, want %s", a, d, red.Digest(a.String()))
				}
			}
		} else {
			g.ipDigest(a)
		}
	}
}

// TestLoneRequestNotDelayed: a request alone in the gateway does not wait out the group
// delay for its record (nobody can join the group): with a delay of an hour, an answer and
// a stream still complete, their records durable — in fleet mode (batches) and with the
// journal.
func TestLoneRequestNotDelayed(t *testing.T) {
	for _, journal := range []bool{false, true} {
		f := newFixture(t, func(c *Config) { c.RecordAnswers = true })
		cfg := audit.BatcherConfig{MaxDelay: time.Hour}
		if journal {
			cfg.Journal, cfg.FoldEvery = t.TempDir(), time.Hour
		}
		b := audit.NewBatcher(f.log, audit.DirBundles{Dir: f.logDir}, cfg)
		t.Cleanup(b.Close)
		f.gw.cfg.Records = b
		url := f.srv.URL + "/v1/chat/completions"
		done := make(chan string, 1)
		go func() {
			if resp, _ := postRaw(t, url, f.alice, `{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`); resp.StatusCode != 200 {
				done <- fmt.Sprintf("status %d", resp.StatusCode)
				return
			}
			resp, raw := postRaw(t, url, f.alice, `{"model":"demo","max_tokens":2,"stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			if resp.StatusCode != 200 || !strings.HasSuffix(strings.TrimSpace(raw), "data: [DONE]") {
				done <- fmt.Sprintf("stream %d %q", resp.StatusCode, raw)
				return
			}
			done <- ""
		}()
		select {
		case msg := <-done:
			if msg != "" {
				t.Fatalf("journal %v: %s", journal, msg)
			}
		case <-time.After(2 * time.Minute): // the group delay is an hour; a request takes ms
			t.Fatalf("journal %v: a lone request waited out the group delay", journal)
		}
	}
}

// BenchmarkRequestRecordBytes: one request record's bytes, with the field values of
// ../shared/bench's load (a 100-byte prompt, a 330-byte answer's content hashed).
func BenchmarkRequestRecordBytes(b *testing.B) {
	red, err := audit.NewRedactor(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		b.Fatal(err)
	}
	g := &Gateway{cfg: Config{Redactor: red, Now: time.Now}}
	prompt := []byte(`{"model":"demo","messages":[{"role":"user","content":"Say hello to the benchmark, please."}]}`)
	out := []byte(strings.Repeat("o", 330))
	st := &reqState{start: time.Now(), endpoint: "/v1/chat/completions", country: "ZZ", decision: audit.Allow,
		reason: "policy permits", status: 200, usage: Usage{PromptTokens: 12, CompletionTokens: 20},
		p:     &authn.Principal{Principal: store.Principal{ID: "bench", Tenant: "default"}, KeyID: "k_0123456789abcdef"},
		route: &Route{Model: "demo"}, ip: netip.AddrFrom4([4]byte{127, 0, 0, 1}), prompt: prompt}
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		st.outHash = red.NewHash()
		st.outHash.Write(out)
		_, buf = g.appendRecord(buf[:0], st, audit.KindRequest) // as submitRecord: a reused buffer
		red.Release(st.outHash)                                 // as finish: the HMAC reused
	}
}
