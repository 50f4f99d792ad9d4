package web

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/store"
)

// req is one signed-in request: its session, the principal as the store has it now, and a
// context whose recorded events name that principal as actor.
type req struct {
	s     *session
	p     store.Principal
	ctx   context.Context
	state string // a live page's state (JSON), taken before the page reads what it shows
}

func (q *req) mfaAge(now time.Time) int64 {
	if q.s.stepUp.IsZero() {
		return -1
	}
	return int64(now.Sub(q.s.stepUp) / time.Second)
}

// signedIn finds the request's session and principal; nil when there is none (or the
// principal is gone).
func (c *Console) signedIn(r *http.Request) *req {
	s := c.sessions.get(readCookie(r, sessionCookie))
	if s == nil {
		return nil
	}
	p, err := c.cfg.Store.GetPrincipal(r.Context(), s.principal)
	if err != nil {
		return nil
	}
	ctx := audit.WithActor(r.Context(), map[string]string{"principal": p.ID, "via": "console", "login": s.login})
	return &req{s: s, p: p, ctx: ctx}
}

func (c *Console) decide(q *req, action, op string, destructive bool) (policy.Decision, error) {
	return c.cfg.Ops.DecideConsole(q.ctx, policy.ConsoleRequest{
		Principal: policy.Principal{ID: q.p.ID, Tenant: q.p.Tenant, Org: q.p.Org, Country: q.p.Country, Screening: string(q.p.Screening), Roles: q.p.Roles},
		Action:    action, Operation: op, Destructive: destructive, MFAAgeS: q.mfaAge(c.cfg.Now()), Login: q.s.login,
	})
}

// view serves a page that op names to signed-in users the policy lets see it.
func (c *Console) view(op string, fn func(w http.ResponseWriter, r *http.Request, q *req) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			c.fail(w, r, nil, errorf(http.StatusMethodNotAllowed, "use GET"))
			return
		}
		q := c.signedIn(r)
		if q == nil {
			http.Redirect(w, r, "/console/login", http.StatusSeeOther)
			return
		}
		d, err := c.decide(q, policy.ActionConsoleView, op, false)
		if err != nil {
			c.fail(w, r, q, err)
			return
		}
		if !d.Allow {
			c.fail(w, r, q, errorf(http.StatusForbidden, "the policy does not let %s see this page (%s)", q.p.ID, d.Reason()))
			return
		}
		if live[op] {
			// Before the page's own reads: a change in between reloads the page once more,
			// never leaves it stale.
			if st, err := c.snapshot(q.ctx); err == nil {
				b, _ := json.Marshal(st)
				q.state = string(b)
			}
		}
		if err := fn(w, r, q); err != nil {
			c.fail(w, r, q, err)
		}
	}
}

// sameOrigin is the CSRF check besides the token: a state-changing request must come from
// a page of this console — its Origin (which browsers send on every POST) is this host,
// and Sec-Fetch-Site, when sent, says same-origin.
func sameOrigin(r *http.Request) error {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" {
		return errorf(http.StatusForbidden, "cross-site request refused")
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return errorf(http.StatusForbidden, "request without an Origin refused")
	}
	u, err := url.Parse(o)
	if err != nil || u.Host != r.Host || (u.Scheme == "https") != (r.TLS != nil) {
		return errorf(http.StatusForbidden, "cross-origin request refused")
	}
	return nil
}

// postForm accepts a same-origin POST and reads its form (at most limit bytes).
func postForm(w http.ResponseWriter, r *http.Request, limit int64) error {
	if r.Method != http.MethodPost {
		return errorf(http.StatusMethodNotAllowed, "use POST")
	}
	if err := sameOrigin(r); err != nil {
		return err
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	if err := r.ParseForm(); err != nil {
		return errorf(http.StatusBadRequest, "bad form")
	}
	return nil
}

// act serves a state-changing operation: POST, same origin, the session's CSRF token,
// the policy's console_act; a destructive one also needs a step-up within StepUpFor and
// the object's id typed into "confirm". The attempt is recorded (console.action) before
// anything is done; if it cannot be recorded nothing is done.
func (c *Console) act(op string, destructive bool, fn func(w http.ResponseWriter, r *http.Request, q *req) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := postForm(w, r, 64<<10); err != nil {
			c.fail(w, r, nil, err)
			return
		}
		q := c.signedIn(r)
		if q == nil {
			c.fail(w, r, nil, errorf(http.StatusUnauthorized, "sign in first"))
			return
		}
		if !equalTokens(q.s.csrf, r.PostFormValue("csrf")) {
			c.fail(w, r, q, errorf(http.StatusForbidden, "missing or wrong CSRF token"))
			return
		}
		if strings.HasPrefix(op, "key.") {
			// A key pasted whole (one found leaked): its id, here and in the operation; the
			// secret is recorded nowhere (outside round 58: it went into console.action).
			for _, f := range []string{"id", "confirm"} {
				if v, ok := r.PostForm[f]; ok && len(v) > 0 {
					r.PostForm[f] = []string{authn.KeyID(v[0])}
				}
			}
		}
		id := r.PostFormValue("id")
		subject := map[string]string{"operation": op, "object": id}
		refuse := func(err error) {
			if rerr := c.record(q.ctx, audit.KindConsoleAction, audit.Deny, err.Error(), subject, nil); rerr != nil {
				c.cfg.Log.Error("console: cannot record a refusal", "op", op, "err", rerr)
			}
			c.fail(w, r, q, err)
		}
		if destructive {
			if q.s.stepUp.IsZero() || c.cfg.Now().Sub(q.s.stepUp) > c.cfg.StepUpFor {
				refuse(errorf(http.StatusForbidden, "a fresh TOTP step-up is required (within %s)", c.cfg.StepUpFor))
				return
			}
			if id == "" || r.PostFormValue("confirm") != id {
				refuse(errorf(http.StatusBadRequest, "type the id %q to confirm", id))
				return
			}
		}
		d, err := c.decide(q, policy.ActionConsoleAct, op, destructive)
		if err != nil {
			c.fail(w, r, q, err)
			return
		}
		if !d.Allow {
			refuse(errorf(http.StatusForbidden, "the policy does not let %s do %s (%s)", q.p.ID, op, d.Reason()))
			return
		}
		if err := c.record(q.ctx, audit.KindConsoleAction, audit.Allow, d.Reason(), subject, nil); err != nil {
			c.fail(w, r, q, errorf(http.StatusServiceUnavailable, "not done: the audit log cannot record it"))
			return
		}
		if err := fn(w, r, q); err != nil {
			c.fail(w, r, q, err)
		}
	}
}

// back redirects to a page of the console after an action, with a one-time message.
func (c *Console) back(w http.ResponseWriter, r *http.Request, q *req, to, msg string) error {
	c.sessions.update(q.s.key, func(s *session) { s.flash = msg })
	http.Redirect(w, r, localPath(to, "/console/"), http.StatusSeeOther)
	return nil
}

// localPath accepts only a path of this console (no scheme, host or "//"), else def.
func localPath(p, def string) string {
	if !strings.HasPrefix(p, "/console/") || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n") {
		return def
	}
	return p
}

func clientIP(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

func (c *Console) loginForm(w http.ResponseWriter, r *http.Request) {
	tok := randomToken()
	setCookie(w, r, loginCookie, tok, 600)
	c.render(w, r, nil, http.StatusOK, "login", "Sign in", map[string]any{"LoginToken": tok, "OIDC": c.cfg.OIDC != nil})
}

// login signs in with an admin API key and a TOTP code. Failures are rate limited per
// address and per principal (and key id), and each is recorded.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		c.loginForm(w, r)
		return
	}
	if err := postForm(w, r, 16<<10); err != nil {
		c.fail(w, r, nil, err)
		return
	}
	if !equalTokens(readCookie(r, loginCookie), r.PostFormValue("login_token")) {
		c.fail(w, r, nil, errorf(http.StatusForbidden, "missing or wrong form token: reload the sign-in page"))
		return
	}
	ctx := r.Context()
	ip := clientIP(r)
	key, code := strings.TrimSpace(r.PostFormValue("api_key")), strings.TrimSpace(r.PostFormValue("totp"))
	keyID, _, _ := strings.Cut(key, ".") // the key's public id: failures count against it before a principal is known
	failed := func(who, reason string) {
		c.limiter.fail(ip, keyID, who)
		c.recordLoginFailure(ctx, who, "api_key_totp", reason, ip)
		st := http.StatusUnauthorized
		if reason == "too many attempts" {
			st = http.StatusTooManyRequests
		}
		c.render(w, r, nil, st, "login", "Sign in", map[string]any{"Error": "Sign-in failed: " + reason + ".", "LoginToken": readCookie(r, loginCookie), "OIDC": c.cfg.OIDC != nil})
	}
	if !c.limiter.allowed(ip, keyID) {
		failed("", "too many attempts")
		return
	}
	p, err := c.cfg.Ops.AuthenticateKey(ctx, key)
	if err != nil {
		failed("", "wrong API key or TOTP code")
		return
	}
	if !c.limiter.allowed(ip, keyID, p.ID) {
		failed(p.ID, "too many attempts")
		return
	}
	if err := c.cfg.Ops.VerifyTOTP(ctx, p.ID, code); err != nil {
		failed(p.ID, "wrong API key or TOTP code")
		return
	}
	c.startSession(w, r, p, "api_key_totp", true)
}

// record records an event of the console (the actor comes from ctx: audit.WithActor).
func (c *Console) record(ctx context.Context, kind audit.Kind, decision, reason string, subject, fields map[string]string) error {
	return c.cfg.Ops.Audit(ctx, audit.Event{Kind: kind, Decision: decision, Reason: reason, Subject: subject, Fields: fields})
}

// recordLoginFailure records a refused sign-in (who: the principal when known).
func (c *Console) recordLoginFailure(ctx context.Context, who, method, reason, ip string) {
	actor := map[string]string{"principal": who, "via": "console"}
	if who == "" {
		actor["principal"] = "anonymous"
	}
	if err := c.record(audit.WithActor(ctx, actor), audit.KindConsoleLogin, audit.Deny, reason, map[string]string{"principal": who},
		map[string]string{"method": method, "client_ip_hmac": c.cfg.Digest(ip)}); err != nil {
		c.cfg.Log.Error("console: cannot record a failed sign-in", "err", err)
	}
}

// startSession records the sign-in (refused if it cannot be) and issues a new session id:
// whatever cookie came with the request is never promoted.
func (c *Console) startSession(w http.ResponseWriter, r *http.Request, p store.Principal, method string, totp bool) {
	ctx := audit.WithActor(r.Context(), map[string]string{"principal": p.ID, "via": "console", "login": method})
	// Only those the policy lets see the console sign in to it.
	d, err := c.decide(&req{s: &session{login: method}, p: p, ctx: ctx}, policy.ActionConsoleView, "overview", false)
	if err != nil {
		c.fail(w, r, nil, err)
		return
	}
	if !d.Allow {
		c.recordLoginFailure(r.Context(), p.ID, method, "not permitted to use the console: "+d.Reason(), clientIP(r))
		c.fail(w, r, nil, errorf(http.StatusForbidden, "%s may not use the console", p.ID))
		return
	}
	if err := c.record(ctx, audit.KindConsoleLogin, audit.Allow, "", map[string]string{"principal": p.ID},
		map[string]string{"method": method, "client_ip_hmac": c.cfg.Digest(clientIP(r))}); err != nil {
		c.fail(w, r, nil, errorf(http.StatusServiceUnavailable, "sign-in refused: the audit log cannot record it"))
		return
	}
	id, s := c.sessions.create(p.ID, method)
	if totp {
		c.sessions.update(s.key, func(s *session) { s.stepUp = c.cfg.Now() })
	}
	setCookie(w, r, loginCookie, "", -1)
	setCookie(w, r, sessionCookie, id, 0)
	http.Redirect(w, r, "/console/", http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	c.act("logout", false, func(w http.ResponseWriter, r *http.Request, q *req) error {
		c.sessions.remove(q.s.key)
		setCookie(w, r, sessionCookie, "", -1)
		http.Redirect(w, r, "/console/login", http.StatusSeeOther)
		return nil
	})(w, r)
}

// stepUp checks a fresh TOTP code and lets the session do destructive actions for
// StepUpFor.
func (c *Console) stepUp(w http.ResponseWriter, r *http.Request, q *req) error {
	if !c.limiter.allowed(clientIP(r), q.p.ID) {
		return errorf(http.StatusTooManyRequests, "too many attempts")
	}
	if err := c.cfg.Ops.VerifyTOTP(q.ctx, q.p.ID, strings.TrimSpace(r.PostFormValue("totp"))); err != nil {
		c.limiter.fail(clientIP(r), q.p.ID)
		if rerr := c.record(q.ctx, audit.KindConsoleStepUp, audit.Deny, "wrong TOTP code", map[string]string{"principal": q.p.ID}, nil); rerr != nil {
			return rerr
		}
		return errorf(http.StatusUnauthorized, "wrong or reused TOTP code")
	}
	if err := c.record(q.ctx, audit.KindConsoleStepUp, audit.Allow, "", map[string]string{"principal": q.p.ID}, nil); err != nil {
		return err
	}
	c.sessions.update(q.s.key, func(s *session) { s.stepUp = c.cfg.Now() })
	return c.back(w, r, q, r.PostFormValue("next"), "Step-up accepted: destructive actions are allowed for "+c.cfg.StepUpFor.String()+".")
}

var errNoReport = errors.New("incident reports are not available in this build")
