package web_test

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
)

// TestXSS plants script and javascript: URLs in every field the console shows — model,
// principal, runtime, approval, incident, sanction, and log entries (a prompt in a
// detector's evidence) — and checks that every page shows them as text.
func TestXSS(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	const s = `<script>alert("x")</script>`
	const j = `javascript:alert(1)`
	st := h.e.App.Store
	now := time.Now()
	if err := st.CreateExternalVersion(ctx, store.Version{Model: s, Version: j, Classification: s, Owner: j, AllowedCountries: []string{s}, CreatedAt: now, External: true}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutPrincipal(ctx, store.Principal{ID: s, Tenant: j, Roles: []string{s}, Org: s, Country: j, Screening: s, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutAPIKey(ctx, store.APIKey{ID: j, Principal: s, Hash: []byte{1}, Models: []string{s}, CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutRuntime(ctx, store.Runtime{ID: s, Env: s, Region: j, Jurisdiction: s, Host: s, Owner: j, CertExpires: now.Add(time.Hour), CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutLease(ctx, store.Lease{ID: j, Runtime: s, Model: s, Version: j, KeyID: s, Attestation: s, GrantedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateApproval(ctx, store.ApprovalRequest{ID: s, Kind: j, Requester: s, Runtime: j, Model: s, Version: s, Needed: 2, State: store.StatePending,
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// A detector's alert whose evidence carries an attacker's prompt.
	idx, err := h.e.App.AuditLog.Record(ctx, audit.Event{V: 1, TS: now, Kind: "detect.alert", Decision: audit.Deny, Reason: s,
		Actor: map[string]string{"principal": s}, Subject: map[string]string{"principal": j}, Fields: map[string]string{"prompt": s, "url": j}})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateIncident(ctx, store.Incident{ID: "inc-xss", Principal: s, Detector: s, Action: j, Summary: s + j, Evidence: []uint64{idx}, State: "open", OpenedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutSanction(ctx, store.Sanction{Principal: s, Action: j, Detector: s, Since: now, Until: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	h.events(t, store.AuditQuery{}) // wait for the index
	b := h.browser(t)
	b.signIn(h.admin)
	bad := regexp.MustCompile(`(?i)<script>alert|(href|src|action)="javascript:`)
	for _, p := range []string{"/console/", "/console/inventory", "/console/leases", "/console/approvals", "/console/principals",
		"/console/principals/" + url.PathEscape(s), "/console/incidents", "/console/incidents/inc-xss", "/console/audit", "/console/audit?principal=" + url.QueryEscape(s)} {
		res, body := b.get(p)
		if res.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", p, res.Status)
			continue
		}
		if m := bad.FindString(body); m != "" {
			t.Errorf("%s: unescaped %q", p, m)
		}
		if !strings.Contains(body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") {
			t.Errorf("%s: the planted text is not shown escaped", p)
		}
	}
}
