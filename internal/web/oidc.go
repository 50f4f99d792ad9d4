package web

import (
	"context"
	"net/http"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// OIDC is sign-in through the organisation's identity provider: the authorization code flow
// with PKCE (S256) and a nonce, the ID token verified by Verify (signature against the
// issuer's keys, issuer, audience = ClientID, expiry, nonce), and the principal it names
// must be registered (screening and roles apply as to everyone).
type OIDC struct {
	AuthURL, TokenURL string
	ClientID          string
	ClientSecret      string // "" for a public client (PKCE alone)
	RedirectURL       string // this console's /console/oidc/callback as the provider knows it
	Scopes            []string
	// Verify checks a raw ID token and returns the principal it names and its nonce claim.
	Verify func(ctx context.Context, rawIDToken string) (principal, nonce string, err error)
	// HTTPClient reaches the token endpoint (nil: http.DefaultClient).
	HTTPClient *http.Client
}

func (o *OIDC) config() *oauth2.Config {
	scopes := o.Scopes
	if len(scopes) == 0 {
		scopes = []string{"openid"}
	}
	return &oauth2.Config{ClientID: o.ClientID, ClientSecret: o.ClientSecret, RedirectURL: o.RedirectURL, Scopes: scopes,
		Endpoint: oauth2.Endpoint{AuthURL: o.AuthURL, TokenURL: o.TokenURL, AuthStyle: oauth2.AuthStyleInParams}}
}

const oidcCookie = "strongroom_oidc" // state.nonce.verifier of one sign-in in progress (10 min)

// oidcStart sends the browser to the provider with a fresh state, nonce and PKCE verifier,
// which stay in an HttpOnly cookie (SameSite=Lax: the provider's redirect back is a
// top-level cross-site navigation, which Strict would strip).
func (c *Console) oidcStart(w http.ResponseWriter, r *http.Request) {
	o := c.cfg.OIDC
	state, nonce, verifier := randomToken(), randomToken(), oauth2.GenerateVerifier()
	ck := &http.Cookie{Name: cookieName(r, oidcCookie), Value: state + "." + nonce + "." + verifier, Path: "/console/", MaxAge: 600,
		HttpOnly: true, SameSite: http.SameSiteLaxMode}
	if r.TLS != nil {
		ck.Secure, ck.Path = true, "/"
	}
	http.SetCookie(w, ck)
	http.Redirect(w, r, o.config().AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", nonce)), http.StatusSeeOther)
}

func (c *Console) oidcCallback(w http.ResponseWriter, r *http.Request) {
	o := c.cfg.OIDC
	parts := strings.Split(readCookie(r, oidcCookie), ".")
	clear := &http.Cookie{Name: cookieName(r, oidcCookie), Value: "", Path: "/console/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode}
	if r.TLS != nil {
		clear.Secure, clear.Path = true, "/"
	}
	http.SetCookie(w, clear)
	ip := clientIP(r)
	if !c.limiter.allowed(ip) {
		c.fail(w, r, nil, errorf(http.StatusTooManyRequests, "too many attempts"))
		return
	}
	refuse := func(who, reason string) {
		c.limiter.fail(ip, who)
		c.recordLoginFailure(r.Context(), who, "oidc", reason, ip)
		c.fail(w, r, nil, errorf(http.StatusUnauthorized, "sign-in failed: %s", reason))
	}
	if len(parts) != 3 || !equalTokens(parts[0], r.URL.Query().Get("state")) {
		refuse("", "state does not match this browser's sign-in")
		return
	}
	if e := r.URL.Query().Get("error"); e != "" {
		refuse("", "the identity provider refused")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if o.HTTPClient != nil {
		ctx = context.WithValue(ctx, oauth2.HTTPClient, o.HTTPClient)
	}
	tok, err := o.config().Exchange(ctx, r.URL.Query().Get("code"), oauth2.VerifierOption(parts[2]))
	if err != nil {
		refuse("", "the authorization code was not accepted")
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		refuse("", "no ID token")
		return
	}
	who, nonce, err := o.Verify(ctx, raw)
	if err != nil {
		refuse("", "the ID token does not verify")
		return
	}
	if !equalTokens(nonce, parts[1]) {
		refuse(who, "the ID token's nonce is not this sign-in's")
		return
	}
	if !c.limiter.allowed(ip, who) {
		refuse(who, "too many attempts")
		return
	}
	p, err := c.cfg.Store.GetPrincipal(ctx, who)
	if err != nil {
		refuse(who, "not a registered principal")
		return
	}
	c.startSession(w, r, p, "oidc", false)
}
