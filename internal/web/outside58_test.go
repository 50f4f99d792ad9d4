package web_test

// Outside round 58 (users' secrets in every output), the console: API keys and TOTP codes
// typed into it — at sign-in (a malformed key, an unknown one, a good key with a wrong
// code), at step-up, when deciding an approval, and an API key pasted whole where a key id
// is asked for (revoke, rotate: the natural thing to do with a key found leaked) — must not
// reach the console's log, the audit trail (the transparency log /log/, `audit search`) or
// any file of the data directory. Correct TOTP codes used must not be recorded either.
//
// Found (fails while it lasts): the console records each action's "id" form field before
// anything checks it — console.action's subject.object (web/auth.go act: `subject :=
// map[string]string{"operation": op, "object": id}`, recorded before the step-up, the
// confirmation and the policy) — and App.RevokeKey records key.revoke's subject.key_id
// before it looks the key up (app/gateway.go RevokeKey: `a.Audit(… Subject: {"key_id": id})`
// then `a.APIKeys().Revoke`). A key pasted whole into "revoke" or "rotate" is written into
// the append-only transparency log, secret and all, and the key is not revoked.

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/app/apptest"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
	"github.com/strongroom/strongroom/internal/web"
)

// TestOutside58ConsoleCredentials: credentials typed into the console, in every output.
func TestOutside58ConsoleCredentials(t *testing.T) {
	ctx := context.Background()
	e := apptest.New(t, nil)
	var logBuf testenv.LogBuffer
	h := &harness{e: e, clock: &clock{}}
	vkey, err := e.App.LogVKey()
	if err != nil {
		t.Fatal(err)
	}
	con, err := web.New(web.Config{Ops: e.App, Store: e.App.Store, LogVKey: vkey, PolicyDir: e.App.Config.Gateway.PolicyDir,
		Digest: e.App.Redactor.Digest, Now: h.clock.now, Events: 50 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewServer(con.Handler())
	t.Cleanup(h.srv.Close)
	h.admin = e.Person(t, "root-admin", "admin")
	victim := e.Person(t, "victim", "researcher")
	signer := e.Person(t, "signer", "researcher")
	victim2 := e.Person(t, "victim2", "researcher")
	now := time.Now()
	if err := e.App.Store.CreateApproval(ctx, store.ApprovalRequest{ID: "ap-58", Kind: "lease", Requester: "owner", Runtime: "rt-1", Model: "m", Version: "1",
		Needed: 1, State: store.StatePending, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	secretOf := func(tok string) string { _, s, _ := strings.Cut(tok, "."); return s }
	pad := func(m string) string { return m + strings.Repeat("A", 43-len(m)) }

	type attempt struct {
		name    string
		secrets []testenv.Secret
		do      func(b *browser) *http.Response
		want    int
	}
	login := func(key, code string) func(b *browser) *http.Response {
		return func(b *browser) *http.Response {
			_, page := b.get("/console/login")
			m := loginRe.FindStringSubmatch(page)
			if m == nil {
				t.Fatalf("no sign-in form")
			}
			res, _ := b.do(http.MethodPost, "/console/login", url.Values{"login_token": {m[1]}, "api_key": {key}, "totp": {code}}, nil)
			return res
		}
	}
	attempts := []attempt{
		{"sign-in with a malformed key", []testenv.Secret{{Text: "LoginMalformedMarker58", Kind: "a malformed API key typed at sign-in"}},
			login("sr_LoginMalformedMarker58", "123456"), http.StatusUnauthorized},
		{"sign-in with an unknown key", []testenv.Secret{{Text: "LoginUnknownMarker58", Kind: "an unknown API key's secret typed at sign-in"}},
			login("sr_0123456789abcdef."+pad("LoginUnknownMarker58"), "123456"), http.StatusUnauthorized},
		{"sign-in with a key and no id", []testenv.Secret{{Text: "LoginNoDotMarker58", Kind: "an API key without its dot typed at sign-in"}},
			login("sr_LoginNoDotMarker58LoginNoDotMarker58", "123456"), http.StatusUnauthorized},
		{"sign-in with a good key and a wrong code", []testenv.Secret{{Text: secretOf(signer.Key), Kind: "a good API key's secret typed at sign-in"},
			{Text: "TotpLoginMarker58", Kind: "a wrong TOTP code typed at sign-in"}},
			login(signer.Key, "TotpLoginMarker58"), http.StatusUnauthorized},
	}
	for _, a := range attempts {
		if res := a.do(h.browser(t)); res.StatusCode != a.want {
			t.Errorf("premise: %s: %s, want %d", a.name, res.Status, a.want)
		}
	}

	// The admin signs in (a correct code), then acts.
	b := h.browser(t)
	signInCode := h.admin.Code(t)
	if res := b.login(h.admin, signInCode); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %s", res.Status)
	}
	b.get("/console/")
	acts := []attempt{
		{"rotate with the key pasted whole", []testenv.Secret{{Text: secretOf(victim.Key), Kind: "an API key pasted whole into the console's rotate form"}},
			func(b *browser) *http.Response {
				res, _ := b.post("/console/keys/rotate", url.Values{"id": {victim.Key}})
				return res
			}, 0},
		{"revoke with the key pasted whole", []testenv.Secret{{Text: secretOf(victim2.Key), Kind: "an API key pasted whole into the console's revoke form"}},
			func(b *browser) *http.Response {
				res, _ := b.post("/console/keys/revoke", url.Values{"id": {victim2.Key}, "confirm": {victim2.Key}})
				return res
			}, 0},
		{"step-up with a wrong code", []testenv.Secret{{Text: "TotpStepUpMarker58", Kind: "a wrong TOTP code typed at step-up"}},
			func(b *browser) *http.Response {
				res, _ := b.post("/console/stepup", url.Values{"totp": {"TotpStepUpMarker58"}, "next": {"/console/"}})
				return res
			}, http.StatusUnauthorized},
		{"approval with a wrong code", []testenv.Secret{{Text: "TotpApprovalMarker58", Kind: "a wrong TOTP code typed to decide an approval"}},
			func(b *browser) *http.Response {
				res, _ := b.post("/console/approvals/decide", url.Values{"id": {"ap-58"}, "decision": {"approve"}, "totp": {"TotpApprovalMarker58"},
					"justification": {"o58 check"}, "confirm": {"ap-58"}})
				return res
			}, http.StatusForbidden},
	}
	approveCode := h.admin.Code(t)
	acts = append(acts, attempt{"approval with the right code", nil, func(b *browser) *http.Response {
		res, _ := b.post("/console/approvals/decide", url.Values{"id": {"ap-58"}, "decision": {"approve"}, "totp": {approveCode},
			"justification": {"o58 check"}, "confirm": {"ap-58"}})
		return res
	}, http.StatusSeeOther})
	for _, a := range acts {
		if res := a.do(b); a.want != 0 && res.StatusCode != a.want {
			t.Errorf("premise: %s: %s, want %d", a.name, res.Status, a.want)
		}
	}
	if k, err := e.App.Store.ListAPIKeys(ctx, "victim2"); err == nil && len(k) == 1 && k[0].RevokedAt.IsZero() {
		t.Logf("note: the key pasted whole into the revoke form is still live")
	}

	// Every channel.
	evs := h.events(t, store.AuditQuery{})
	if len(evs) < 10 {
		t.Errorf("premise: %d audit events", len(evs))
	}
	type channel struct{ name, text string }
	channels := []channel{{"the console's log at debug level", logBuf.String()}}
	for _, ev := range evs {
		channels = append(channels, channel{fmt.Sprintf("audit log entry %d (kind %s: served at /log/, in `audit search --json`)", ev.Index, ev.Kind), string(ev.Raw)})
	}
	var files []channel
	filepath.WalkDir(e.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || d.Name() == config.FileName {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil {
			rel, _ := filepath.Rel(e.Dir, p)
			files = append(files, channel{"the data directory's file " + rel, string(b)})
		}
		return nil
	})
	var all []testenv.Secret
	for _, a := range append(attempts, acts...) {
		all = append(all, a.secrets...)
	}
	all = append(all, testenv.Secret{Text: secretOf(h.admin.Key), Kind: "the admin's API key secret (signed in with)"})
	for _, a := range append(attempts, acts...) {
		if len(a.secrets) == 0 {
			continue
		}
		t.Run(a.name, func(t *testing.T) {
			for _, ch := range channels {
				testenv.CheckNoSecrets(t, ch.name, ch.text, a.secrets, all)
			}
			for _, s := range a.secrets { // the first file that holds it
				for _, f := range files {
					if strings.Contains(f.text, s.Text) {
						testenv.CheckNoSecrets(t, f.name, f.text, []testenv.Secret{s}, all)
						break
					}
				}
			}
		})
	}
	t.Run("the admin's key and the correct TOTP codes", func(t *testing.T) {
		admin := []testenv.Secret{{Text: secretOf(h.admin.Key), Kind: "the admin's API key secret (signed in with)"}}
		for _, ch := range channels {
			testenv.CheckNoSecrets(t, ch.name, ch.text, admin, all)
		}
		// A six-digit code is looked for as a JSON string or a logged value.
		for _, code := range []string{signInCode, approveCode} {
			for _, ch := range channels {
				for _, f := range []string{`"` + code + `"`, "=" + code, " " + code + " "} {
					if i := strings.Index(ch.text, f); i >= 0 {
						t.Errorf("LEAK: a correct TOTP code is in %s: …%s…", ch.name, ch.text[max(0, i-200):min(len(ch.text), i+len(f)+80)])
					}
				}
			}
		}
	})
}
