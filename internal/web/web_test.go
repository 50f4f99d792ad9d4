package web_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/app/apptest"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/web"
)

// clock is the console's time, moved by tests (step-up and session expiry).
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.off) }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

type harness struct {
	e     *apptest.Env
	srv   *httptest.Server
	clock *clock
	admin *apptest.Person
}

// failingAudit is the deployment with a log that cannot record: everything must be refused.
type failingAudit struct{ web.Ops }

func (failingAudit) Audit(context.Context, audit.Event) error {
	return errors.New("log unavailable")
}

func newHarness(t testing.TB, wrap func(web.Ops) web.Ops) *harness {
	t.Helper()
	return newHarnessConfig(t, wrap, nil)
}

func newHarnessConfig(t testing.TB, wrap func(web.Ops) web.Ops, mod func(c *config.Config, dataDir string)) *harness {
	t.Helper()
	e := apptest.New(t, mod)
	h := &harness{e: e, clock: &clock{}}
	vkey, err := e.App.LogVKey()
	if err != nil {
		t.Fatal(err)
	}
	var ops web.Ops = e.App
	if wrap != nil {
		ops = wrap(ops)
	}
	con, err := web.New(web.Config{Ops: ops, Store: e.App.Store, LogVKey: vkey, PolicyDir: e.App.Config.Gateway.PolicyDir,
		Digest: e.App.Redactor.Digest, Now: h.clock.now, Events: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewServer(con.Handler())
	t.Cleanup(h.srv.Close)
	h.admin = e.Person(t, "root-admin", "admin")
	return h
}

// browser is a cookie-keeping client that does not follow redirects.
type browser struct {
	t    testing.TB
	h    *harness
	c    *http.Client
	csrf string
}

func (h *harness) browser(t testing.TB) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, h: h, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) do(method, path string, form url.Values, hdr map[string]string) (*http.Response, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, b.h.srv.URL+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if method == http.MethodPost {
		req.Header.Set("Origin", b.h.srv.URL)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	res, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	if m := csrfRe.FindStringSubmatch(string(out)); m != nil {
		b.csrf = m[1]
	}
	return res, string(out)
}

var (
	csrfRe  = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	loginRe = regexp.MustCompile(`name="login_token" value="([^"]+)"`)
)

func (b *browser) get(path string) (*http.Response, string) {
	return b.do(http.MethodGet, path, nil, nil)
}

func (b *browser) post(path string, form url.Values) (*http.Response, string) {
	if form.Get("csrf") == "" {
		form.Set("csrf", b.csrf)
	}
	return b.do(http.MethodPost, path, form, nil)
}

// login signs p in with its key and a fresh TOTP code; it returns the answer.
func (b *browser) login(p *apptest.Person, code string) *http.Response {
	b.t.Helper()
	_, page := b.get("/console/login")
	m := loginRe.FindStringSubmatch(page)
	if m == nil {
		b.t.Fatalf("no sign-in form: %s", page)
	}
	res, _ := b.do(http.MethodPost, "/console/login", url.Values{"login_token": {m[1]}, "api_key": {p.Key}, "totp": {code}}, nil)
	return res
}

func (b *browser) signIn(p *apptest.Person) {
	b.t.Helper()
	if res := b.login(p, p.Code(b.t)); res.StatusCode != http.StatusSeeOther {
		b.t.Fatalf("sign-in: %s", res.Status)
	}
	if res, _ := b.get("/console/"); res.StatusCode != http.StatusOK {
		b.t.Fatalf("overview after sign-in: %s", res.Status)
	}
}

func sessionCookie(res *http.Response) *http.Cookie {
	for _, c := range res.Cookies() {
		if c.Name == "strongroom_session" {
			return c
		}
	}
	return nil
}

func (h *harness) events(t *testing.T, q store.AuditQuery) []store.AuditEvent {
	t.Helper()
	ctx := context.Background()
	// Request records wait in the journal until a fold (every second) or a barrier, and the
	// search index trails the log by up to a second: fold now, then wait for the index to
	// reach the log (a generous bound, failing loudly rather than reading a stale index).
	want, _ := h.e.App.AuditLog.IntegratedSize(ctx)
	if idx, ok, err := h.e.App.RequestRecords().Barrier(ctx); err != nil {
		t.Fatal(err)
	} else if ok {
		want = max(want, idx+1)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if n, _ := h.e.App.Store.AuditIndexed(ctx); n >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the search index did not reach log entry %d in a minute", want)
		}
	}
	evs, err := h.e.App.Store.SearchAudit(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestSessionFixation: an id planted before sign-in is never authenticated; sign-in
// issues a new one, HttpOnly and SameSite=Strict; sign-out ends it.
func TestSessionFixation(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser(t)
	u, _ := url.Parse(h.srv.URL + "/console/")
	planted := "attacker-chosen-session-id"
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "strongroom_session", Value: planted, Path: "/console/"}})
	if res, _ := b.get("/console/"); res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/console/login" {
		t.Fatalf("planted id let in: %s %s", res.Status, res.Header.Get("Location"))
	}
	res := b.login(h.admin, h.admin.Code(t))
	c := sessionCookie(res)
	if res.StatusCode != http.StatusSeeOther || c == nil || c.Value == planted || len(c.Value) < 40 {
		t.Fatalf("sign-in: %s, cookie %v", res.Status, c)
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/console/" {
		t.Fatalf("session cookie attributes: %+v", c)
	}
	// The planted id is still nothing.
	other := h.browser(t)
	other.c.Jar.SetCookies(u, []*http.Cookie{{Name: "strongroom_session", Value: planted, Path: "/console/"}})
	if res, _ := other.get("/console/inventory"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("planted id after the victim's sign-in: %s", res.Status)
	}
	// Idle expiry.
	if res, _ := b.get("/console/inventory"); res.StatusCode != http.StatusOK {
		t.Fatalf("signed in: %s", res.Status)
	}
	h.clock.add(16 * time.Minute)
	if res, _ := b.get("/console/inventory"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("after 16 idle minutes: %s", res.Status)
	}
	// Sign-out ends the session on the server.
	b2 := h.browser(t)
	b2.signIn(h.admin)
	cookies := b2.c.Jar.Cookies(u)
	if res, _ := b2.post("/console/logout", url.Values{}); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out: %s", res.Status)
	}
	b3 := h.browser(t)
	b3.c.Jar.SetCookies(u, cookies)
	if res, _ := b3.get("/console/"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("cookie still valid after sign-out: %s", res.Status)
	}
}

// TestCSRF: a state-changing request needs the session's token and this origin.
func TestCSRF(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser(t)
	b.signIn(h.admin)
	victim := h.e.Person(t, "victim", "researcher")
	keys, _ := h.e.App.Store.ListAPIKeys(context.Background(), victim.ID)
	id := keys[0].ID
	form := func(tok string) url.Values {
		return url.Values{"csrf": {tok}, "id": {id}, "confirm": {id}}
	}
	// The token with its first character changed: "x" + csrf[1:] was the token itself
	// whenever it began with "x" (the suite met that once, thirty-ninth session).
	wrong := "x" + b.csrf[1:]
	if b.csrf[0] == 'x' {
		wrong = "y" + b.csrf[1:]
	}
	for name, tc := range map[string]struct {
		form url.Values
		hdr  map[string]string
	}{
		"no token":          {url.Values{"id": {id}, "confirm": {id}}, nil},
		"wrong token":       {form(wrong), nil},
		"other origin":      {form(b.csrf), map[string]string{"Origin": "http://evil.example"}},
		"no origin":         {form(b.csrf), map[string]string{"Origin": ""}},
		"cross-site fetch":  {form(b.csrf), map[string]string{"Sec-Fetch-Site": "cross-site"}},
		"same-site sibling": {form(b.csrf), map[string]string{"Sec-Fetch-Site": "same-site"}},
	} {
		if tc.form.Get("csrf") == "" {
			tc.form.Set("csrf", "")
		}
		res, _ := b.do(http.MethodPost, "/console/keys/revoke", tc.form, tc.hdr)
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %s", name, res.Status)
		}
		if k, _ := h.e.App.Store.GetAPIKey(context.Background(), id); !k.RevokedAt.IsZero() {
			t.Fatalf("%s: key revoked", name)
		}
	}
	// The same request with the token from this origin works.
	if res, body := b.post("/console/keys/revoke", form(b.csrf)); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke: %s %s", res.Status, body)
	}
	if k, _ := h.e.App.Store.GetAPIKey(context.Background(), id); k.RevokedAt.IsZero() {
		t.Fatal("key not revoked")
	}
	// A sign-in form posted from elsewhere is refused too (login CSRF).
	res, _ := b.do(http.MethodPost, "/console/login", url.Values{"login_token": {"x"}, "api_key": {h.admin.Key}, "totp": {"000000"}}, map[string]string{"Origin": "http://evil.example"})
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin sign-in: %s", res.Status)
	}
}

// TestHeaders: every answer forbids framing and inline script and style.
func TestHeaders(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser(t)
	check := func(what string, res *http.Response) {
		t.Helper()
		csp := res.Header.Get("Content-Security-Policy")
		for _, want := range []string{"frame-ancestors 'none'", "script-src 'self'", "style-src 'self'", "default-src 'none'", "form-action 'self'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %s", what, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("%s: CSP allows inline code: %s", what, csp)
		}
		if res.Header.Get("X-Frame-Options") != "DENY" || res.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: framing/sniffing headers: %v", what, res.Header)
		}
	}
	res, _ := b.get("/console/login")
	check("login", res)
	res, _ = b.get("/console/static/app.js")
	check("static", res)
	b.signIn(h.admin)
	for _, p := range []string{"/console/", "/console/inventory", "/console/leases", "/console/approvals", "/console/principals",
		"/console/incidents", "/console/audit", "/console/policies", "/console/no-such-page"} {
		res, body := b.get(p)
		check(p, res)
		if strings.Contains(body, "<script>") || strings.Contains(body, " style=") || strings.Contains(body, "onclick") {
			t.Errorf("%s: inline script or style in the page", p)
		}
	}
}
