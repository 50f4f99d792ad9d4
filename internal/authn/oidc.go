package authn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/strongroom/strongroom/internal/redact"
)

// OIDCConfig names the identity provider whose bearer tokens (JWTs) the gateway accepts.
type OIDCConfig struct {
	Issuer         string        `json:"issuer"`
	Audience       string        `json:"audience"`
	JWKSURL        string        `json:"jwks_url"`
	PrincipalClaim string        `json:"principal_claim,omitempty"` // default "sub"
	ClockSkew      time.Duration `json:"clock_skew,omitempty"`      // default 60s
}

// OIDC verifies JWT bearer tokens against the provider's JWKS (signature, issuer,
// audience, expiry with clock skew). The token's principal must be registered in the
// store, so that screening and tenant attributes apply to federated users too.
type OIDC struct {
	v     *oidc.IDTokenVerifier
	st    Store
	claim string
	urls  []string // hidden in errors (redact.Error)
}

// NewOIDC returns a verifier; keys are fetched from the JWKS URL on first use and refreshed
// when a token names an unknown key id.
func NewOIDC(ctx context.Context, cfg OIDCConfig, st Store, now func() time.Time) (*OIDC, error) {
	if cfg.Issuer == "" || cfg.Audience == "" || cfg.JWKSURL == "" {
		return nil, fmt.Errorf("oidc: issuer, audience and jwks_url are required")
	}
	// go-oidc quotes a URL it cannot use in every token's error, password and all, and
	// the gateway logs those (round 57): a malformed one is refused here, unquoted.
	if !redact.HTTP(cfg.JWKSURL) {
		return nil, errors.New("oidc: jwks_url is not an http(s) URL (not shown: it may hold a password)")
	}
	if now == nil {
		now = time.Now
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = time.Minute
	}
	if cfg.PrincipalClaim == "" {
		cfg.PrincipalClaim = "sub"
	}
	ks := oidc.NewRemoteKeySet(ctx, cfg.JWKSURL)
	skew := cfg.ClockSkew
	v := oidc.NewVerifier(cfg.Issuer, ks, &oidc.Config{
		ClientID:             cfg.Audience,
		SupportedSigningAlgs: []string{oidc.RS256, oidc.ES256, oidc.ES384, oidc.EdDSA},
		// Expiry is checked against a clock set back by the allowed skew.
		Now: func() time.Time { return now().Add(-skew) },
	})
	return &OIDC{v: v, st: st, claim: cfg.PrincipalClaim, urls: []string{cfg.JWKSURL, cfg.Issuer}}, nil
}

// Authenticate verifies a JWT and returns the registered principal it names.
func (o *OIDC) Authenticate(ctx context.Context, tok string) (*Principal, error) {
	idt, err := o.v.Verify(ctx, tok)
	if err != nil {
		return nil, fmt.Errorf("%w: jwt: %v", ErrUnauthenticated, redact.Error(err, redact.URL, o.urls...))
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return nil, fmt.Errorf("%w: jwt claims: %v", ErrUnauthenticated, err)
	}
	id, _ := claims[o.claim].(string)
	if id == "" {
		return nil, fmt.Errorf("%w: jwt has no %q claim", ErrUnauthenticated, o.claim)
	}
	p, err := o.st.GetPrincipal(ctx, id)
	if err != nil {
		return nil, lookupErr("jwt principal "+id, err)
	}
	// Its own key scope for limits (key_limits: "key:jwt:ID"), as an API key or a client
	// certificate has: one shared "jwt" let any federated user use up every other's, across
	// tenants (outside round 56).
	out := &Principal{Principal: p, KeyID: "jwt:" + p.ID}
	if rs, ok := claims["roles"].([]any); ok {
		for _, r := range rs {
			if s, ok := r.(string); ok && !slices.Contains(out.Roles, s) {
				out.Roles = append(out.Roles, s)
			}
		}
	}
	if amr, ok := claims["amr"].([]any); ok && slices.ContainsFunc(amr, func(v any) bool { return v == "mfa" || v == "otp" || v == "hwk" }) {
		if at, ok := claims["auth_time"].(float64); ok {
			out.MFAAt = time.Unix(int64(at), 0)
		}
	}
	return out, nil
}

// Chain sends strongroom API keys to Keys and anything else to OIDC (if configured).
type Chain struct {
	Keys *Keys
	OIDC *OIDC
}

// Request authenticates an HTTP request's bearer token (API key or, with OIDC, a JWT): the
// one reading of Authorization for every listener that takes one (gateway, control API).
func (c Chain) Request(r *http.Request) (*Principal, error) {
	tok, err := Bearer(r)
	if err != nil {
		return nil, err
	}
	return c.Authenticate(r.Context(), tok)
}

// Bearer is the request's bearer token (RFC 6750 Authorization header).
func Bearer(r *http.Request) (string, error) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return "", fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	return strings.TrimSpace(tok), nil
}

// Authenticate implements the gateway's Authenticator.
func (c Chain) Authenticate(ctx context.Context, tok string) (*Principal, error) {
	if strings.HasPrefix(tok, tokenPrefix) || c.OIDC == nil {
		return c.Keys.Authenticate(ctx, tok)
	}
	return c.OIDC.Authenticate(ctx, tok)
}

// Login is an OpenID Connect provider for interactive sign-in (the console): its
// endpoints, found by discovery, and a check of the ID tokens it issues to one client.
type Login struct {
	AuthURL, TokenURL string
	v                 *oidc.IDTokenVerifier
	claim             string
}

// DiscoverLogin reads issuer's discovery document (through hc, nil: the default client)
// and returns its login endpoints and ID-token check for clientID; claim names the
// principal (default "sub").
func DiscoverLogin(ctx context.Context, issuer, clientID, claim string, hc *http.Client) (*Login, error) {
	if issuer == "" || clientID == "" {
		return nil, fmt.Errorf("oidc login: issuer and client_id are required")
	}
	if hc != nil {
		ctx = oidc.ClientContext(ctx, hc)
	}
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("oidc login: discovery: %w", err)
	}
	if claim == "" {
		claim = "sub"
	}
	// The key set fetches keys with the client given to discovery, for the provider's lifetime.
	return &Login{AuthURL: p.Endpoint().AuthURL, TokenURL: p.Endpoint().TokenURL, claim: claim,
		v: p.VerifierContext(oidc.ClientContext(context.Background(), clientOrDefault(hc)), &oidc.Config{ClientID: clientID})}, nil
}

func clientOrDefault(hc *http.Client) *http.Client {
	if hc == nil {
		return http.DefaultClient
	}
	return hc
}

// Verify checks an ID token (signature, issuer, audience, expiry) and returns the
// principal it names and its nonce.
func (l *Login) Verify(ctx context.Context, raw string) (principal, nonce string, err error) {
	idt, err := l.v.Verify(ctx, raw)
	if err != nil {
		return "", "", fmt.Errorf("%w: id token: %v", ErrUnauthenticated, err)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return "", "", fmt.Errorf("%w: id token claims: %v", ErrUnauthenticated, err)
	}
	id, _ := claims[l.claim].(string)
	if id == "" {
		return "", "", fmt.Errorf("%w: id token has no %q claim", ErrUnauthenticated, l.claim)
	}
	return id, idt.Nonce, nil
}
