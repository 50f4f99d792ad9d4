package detect

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/store"
)

// seqAudit hands out log indices in order and keeps the events.
type seqAudit struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (a *seqAudit) Submit(_ context.Context, ev audit.Event) audit.Future {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.evs = append(a.evs, ev)
	idx := uint64(100 + len(a.evs))
	return func() (uint64, error) { return idx, nil }
}

func (a *seqAudit) kinds() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ks []string
	for _, e := range a.evs {
		ks = append(ks, string(e.Kind)+":"+e.Fields["action"])
	}
	return strings.Join(ks, ",")
}

// TestResponderIncidentWebhookSanction: an alert becomes an audit event, an action event, a
// sanction, an incident whose evidence names the log entries (the alert, the action, the
// principal's recent requests in the index), and a signed webhook call.
func TestResponderIncidentWebhookSanction(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UTC()
	st.IndexAudit(ctx, []store.AuditEvent{{Index: 7, TS: now.Add(-time.Minute), Kind: "gateway.request", Principal: "mallory", Decision: "allow", Raw: []byte("{}")},
		{Index: 8, TS: now.Add(-2 * time.Hour), Kind: "gateway.request", Principal: "mallory", Decision: "allow", Raw: []byte("{}")},
		{Index: 9, TS: now.Add(-time.Minute), Kind: "gateway.request", Principal: "alice", Decision: "allow", Raw: []byte("{}")}})
	secret := []byte("webhook-secret")
	got := make(chan Incident, 1)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get("X-Strongroom-Signature") != Sign(secret, body) {
			http.Error(w, "bad signature", 401)
			return
		}
		var in Incident
		json.Unmarshal(body, &in)
		got <- in
	}))
	defer hook.Close()
	aud := &seqAudit{}
	r := NewResponder(New(Config{HarvestTokens: 10}), ResponderConfig{Audit: aud, Incidents: st, Webhook: hook.URL, WebhookSecret: secret, Duration: time.Hour})
	// The search index trails the log: mallory's latest request (100) and the alert and
	// action (101, 102) reach it only after the alert is raised. The incident waits for it.
	go func() {
		time.Sleep(300 * time.Millisecond)
		st.IndexAudit(ctx, []store.AuditEvent{{Index: 100, TS: now, Kind: "gateway.request", Principal: "mallory", Decision: "allow", Raw: []byte("{}")},
			{Index: 101, TS: now, Kind: "detect.alert", Principal: "strongroom/detect", Decision: "deny", Raw: []byte("{}")},
			{Index: 102, TS: now, Kind: "detect.action", Principal: "strongroom/detect", Decision: "deny", Raw: []byte("{}")}})
	}()
	if a, _ := r.Sanction("mallory"); a != "" {
		t.Fatalf("sanction before any alert: %q", a)
	}
	for i := range 3 {
		bias := map[string]float64{}
		for k := range 5 {
			bias[string(rune('0'+i))+string(rune('0'+k))] = 100
		}
		r.Observe(obs.Observation{TS: now, Principal: "mallory", Model: "m", Prompt: []byte("p"), Logprobs: true, TopLogprobs: 5, LogitBias: bias})
	}
	r.Wait()
	action, since := r.Sanction("mallory")
	if action != "strip_logprobs" || since.IsZero() {
		t.Fatalf("sanction %q since %v", action, since)
	}
	if k := aud.kinds(); k != "detect.alert:strip_logprobs,detect.action:strip_logprobs" {
		t.Fatalf("audit events %s", k)
	}
	select {
	case in := <-got:
		if in.Principal != "mallory" || in.Detector != "logit_harvest" || !strings.HasPrefix(in.ID, "inc-") {
			t.Fatalf("webhook incident %+v", in)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no webhook call")
	}
	is, _ := st.ListIncidents(ctx, "open")
	if len(is) != 1 {
		t.Fatalf("incidents: %+v", is)
	}
	// The alert (101), the action (102), mallory's requests of the last hour (7, and 100,
	// indexed after the alert) — not the older one, not alice's.
	ev := is[0].Evidence
	if len(ev) != 4 || ev[0] != 101 || ev[1] != 102 || !slices.Equal(slices.Sorted(slices.Values(ev[2:])), []uint64{7, 100}) {
		t.Fatalf("evidence %v", ev)
	}
	if a, _ := r.Sanction("alice"); a != "" {
		t.Fatalf("alice sanctioned: %q", a)
	}
}

func TestTraceWriterRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	tw := NewTraceWriter(&buf, func(s string) string { return "hmac:" + s[:1] })
	Tee{tw}.Observe(obs.Observation{TS: time.Date(2026, 11, 27, 1, 0, 0, 0, time.UTC), Principal: "p", IP: "10.0.0.1", Model: "m",
		Endpoint: "chat", Prompt: []byte("secret prompt"), Logprobs: true, TopLogprobs: 3, CompletionTokens: 9})
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "secret") {
		t.Fatalf("prompt recorded in the clear: %s", buf.String())
	}
	var n int
	err := ReadTrace(&buf, func(i int, r *Request) error {
		n++
		if r.Principal != "p" || r.Prompt != "hmac:s" || r.Params.TopLogprobs != 3 || r.CompletionTokens != 9 || r.IP != "10.0.0.1" {
			t.Fatalf("replayed %+v", r)
		}
		return nil
	})
	if err != nil || n != 1 {
		t.Fatalf("read %d: %v", n, err)
	}
}

func TestCalibrate(t *testing.T) {
	reqs, _ := Simulate("benign-chat", 3, 1)
	c := Calibrate(reqs, 64)
	if c.N < 1000 || c.P001 > c.P01 || c.P01 > c.P50 {
		t.Fatalf("calibration %+v", c)
	}
	// The default probing threshold sits below what benign chat reaches.
	if c.Suggested < New(Config{}).cfg.ProbeBits {
		t.Fatalf("benign nearest-neighbour distances reach %d bits at p0.1, under the default threshold %d", c.P001, New(Config{}).cfg.ProbeBits)
	}
}

// TestSharedSanctions: a sanction one gateway imposes holds in another that shares the
// store (and after a restart); lifting it in the store ends it everywhere.
func TestSharedSanctions(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mk := func() *Responder {
		return NewResponder(New(Config{HarvestTokens: 10}), ResponderConfig{Audit: &seqAudit{}, Incidents: st, Duration: time.Hour, EvidenceWait: time.Millisecond})
	}
	a, b := mk(), mk()
	now := time.Now()
	for i := range 3 {
		bias := map[string]float64{}
		for k := range 5 {
			bias[strconv.Itoa(i*5+k)] = 100
		}
		a.Observe(obs.Observation{TS: now, Principal: "mallory", Model: "m", Prompt: []byte("p"), Logprobs: true, TopLogprobs: 5, LogitBias: bias})
	}
	a.Wait()
	if s, _ := b.Sanction("mallory"); s != "" {
		t.Fatalf("b sanctioned before loading: %q", s)
	}
	b.Refresh(ctx)
	if s, _ := b.Sanction("mallory"); s != "strip_logprobs" {
		t.Fatalf("b: %q", s)
	}
	if s, _ := mk().Sanction("mallory"); s != "" {
		t.Fatal("a fresh responder knows before refreshing")
	}
	if err := st.LiftSanction(ctx, "mallory"); err != nil {
		t.Fatal(err)
	}
	a.Refresh(ctx)
	b.Refresh(ctx)
	for _, r := range []*Responder{a, b} {
		if s, _ := r.Sanction("mallory"); s != "" {
			t.Fatalf("lifted sanction still in force: %q", s)
		}
	}
}

// TestShadowModeAndLadder: a detector in shadow mode records its alerts (with what it would
// have done) and imposes nothing; promoted, its alerts climb its ladder as evidence
// accumulates — probing's first alert is a recorded alert, its second a throttle (issue 14).
func TestShadowModeAndLadder(t *testing.T) {
	reqs, _ := Simulate("probing", 5, 1)
	prober := ""
	for _, q := range reqs {
		if q.Label == "probing" {
			prober = q.Principal
			break
		}
	}
	run := func(modes map[string]string, promoteAfter int) (*seqAudit, *Responder) {
		aud := &seqAudit{}
		r := NewResponder(New(Config{Modes: modes}), ResponderConfig{Audit: aud, Duration: time.Hour})
		alerts := 0
		for i := range reqs {
			if reqs[i].Principal != prober {
				continue
			}
			f := ExtractFeatures(&reqs[i])
			r.observeLocal(&reqs[i], &f, actRecord)
			if n := strings.Count(aud.kinds(), "detect.alert"); n != alerts {
				alerts = n
				if alerts == promoteAfter {
					r.SetModes(map[string]string{"*": "enforce"})
				}
			}
		}
		r.Wait()
		return aud, r
	}
	aud, r := run(map[string]string{"*": "shadow"}, -1)
	if act, _ := r.Sanction(prober); act != "" {
		t.Fatalf("shadow mode imposed %q", act)
	}
	k := aud.kinds()
	if !strings.HasPrefix(k, "detect.alert:alert,detect.alert:alert") || strings.Contains(k, "detect.action") {
		t.Fatalf("shadow: %s", k)
	}
	aud.mu.Lock()
	second := aud.evs[1]
	aud.mu.Unlock()
	if second.Fields["mode"] != "shadow" || second.Fields["would_action"] != "throttle" || second.Fields["step"] != "2" {
		t.Fatalf("shadow alert fields: %v", second.Fields)
	}
	// Promoted after the first alert: the second climbs to the ladder's sanction.
	aud, r = run(map[string]string{"*": "shadow"}, 1)
	if act, _ := r.Sanction(prober); act != "throttle" {
		t.Fatalf("promoted: sanction %q", act)
	}
	if k := aud.kinds(); !strings.HasPrefix(k, "detect.alert:alert,detect.alert:throttle,detect.action:throttle") {
		t.Fatalf("promoted: %s", k)
	}
}
