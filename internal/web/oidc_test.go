package web_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/web"
)

// fakeIdP is an OpenID Connect provider in the test: discovery, JWKS, an authorization
// endpoint that signs in whoever `sub` names at once, and a token endpoint that enforces
// PKCE (S256) and issues ES256-signed ID tokens.
type fakeIdP struct {
	srv   *httptest.Server
	key   *ecdsa.PrivateKey
	mu    sync.Mutex
	sub   string
	nonce string // if set, put in ID tokens instead of the one asked for
	codes map[string]grant
}

type grant struct{ challenge, nonce, sub, redirect string }

func newIdP(t *testing.T) *fakeIdP {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p := &fakeIdP{key: k, codes: map[string]grant{}}
	m := http.NewServeMux()
	m.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"issuer": p.srv.URL, "authorization_endpoint": p.srv.URL + "/authorize",
			"token_endpoint": p.srv.URL + "/token", "jwks_uri": p.srv.URL + "/jwks", "response_types_supported": []string{"code"},
			"subject_types_supported": []string{"public"}, "id_token_signing_alg_values_supported": []string{"ES256"}})
	})
	m.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &p.key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	})
	m.HandleFunc("/authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("response_type") != "code" || q.Get("client_id") != "console" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("nonce") == "" {
			http.Error(w, "bad authorization request: "+q.Encode(), http.StatusBadRequest)
			return
		}
		code := randomString()
		p.mu.Lock()
		p.codes[code] = grant{challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), sub: p.sub, redirect: q.Get("redirect_uri")}
		p.mu.Unlock()
		http.Redirect(w, r, q.Get("redirect_uri")+"?"+url.Values{"code": {code}, "state": {q.Get("state")}}.Encode(), http.StatusFound)
	})
	m.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		p.mu.Lock()
		g, ok := p.codes[r.PostFormValue("code")]
		delete(p.codes, r.PostFormValue("code"))
		nonce := p.nonce
		p.mu.Unlock()
		sum := sha256.Sum256([]byte(r.PostFormValue("code_verifier")))
		if !ok || base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge || r.PostFormValue("redirect_uri") != g.redirect {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"invalid_grant"}`)
			return
		}
		if nonce == "" {
			nonce = g.nonce
		}
		sig, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: p.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
		claims, _ := json.Marshal(map[string]any{"iss": p.srv.URL, "sub": g.sub, "aud": "console", "exp": time.Now().Add(5 * time.Minute).Unix(),
			"iat": time.Now().Unix(), "nonce": nonce})
		jws, _ := sig.Sign(claims)
		tok, _ := jws.CompactSerialize()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": tok})
	})
	p.srv = httptest.NewServer(m)
	t.Cleanup(p.srv.Close)
	return p
}

func randomString() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// TestOIDCSignIn: the authorization code flow with PKCE against a provider; only a
// registered principal the policy lets in gets a session, and the state, the nonce and the
// PKCE verifier each bind the answer to this browser's sign-in.
func TestOIDCSignIn(t *testing.T) {
	h := newHarness(t, nil)
	idp := newIdP(t)
	login, err := authn.DiscoverLogin(t.Context(), idp.srv.URL, "console", "sub", nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Start()
	t.Cleanup(srv.Close)
	vkey, _ := h.e.App.LogVKey()
	con, err := web.New(web.Config{Ops: h.e.App, Store: h.e.App.Store, LogVKey: vkey, OIDC: &web.OIDC{AuthURL: login.AuthURL, TokenURL: login.TokenURL,
		ClientID: "console", RedirectURL: srv.URL + "/console/oidc/callback", Verify: login.Verify}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = con.Handler()
	client := func() *http.Client {
		jar, _ := cookiejar.New(nil)
		return &http.Client{Jar: jar}
	}
	get := func(c *http.Client, u string) (*http.Response, string) {
		t.Helper()
		res, err := c.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	// The whole flow, redirects followed.
	idp.sub = h.admin.ID
	c := client()
	if res, body := get(c, srv.URL+"/console/oidc/start"); res.StatusCode != http.StatusOK || !strings.Contains(body, `id="user">`+h.admin.ID+"<") {
		t.Fatalf("sign-in through the provider: %s\n%s", res.Status, body)
	}
	// Someone the provider knows but Strongroom does not.
	idp.sub = "stranger"
	if res, _ := get(client(), srv.URL+"/console/oidc/start"); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unregistered principal: %s", res.Status)
	}
	// A code issued to another sign-in (another PKCE challenge) is refused at the token endpoint.
	idp.sub = h.admin.ID
	noFollow := func() *http.Client {
		c := client()
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		return c
	}
	victim, attacker := noFollow(), noFollow()
	res, _ := get(victim, srv.URL+"/console/oidc/start")
	res, _ = get(victim, res.Header.Get("Location"))
	stolen, _ := url.Parse(res.Header.Get("Location"))
	res, _ = get(attacker, srv.URL+"/console/oidc/start")
	authz, _ := url.Parse(res.Header.Get("Location"))
	q := url.Values{"code": {stolen.Query().Get("code")}, "state": {authz.Query().Get("state")}}
	if res, _ := get(attacker, srv.URL+"/console/oidc/callback?"+q.Encode()); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a code issued for another PKCE challenge: %s", res.Status)
	}
	// The right code with another browser's state.
	if res, _ := get(attacker, srv.URL+"/console/oidc/callback?"+url.Values{"code": {"x"}, "state": {"forged"}}.Encode()); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("forged state: %s", res.Status)
	}
	// An ID token whose nonce is not this sign-in's.
	idp.nonce = "replayed"
	if res, _ := get(client(), srv.URL+"/console/oidc/start"); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong nonce: %s", res.Status)
	}
	var allow, deny int
	for _, e := range h.events(t, store.AuditQuery{Kind: "console.login"}) {
		var ev struct {
			Decision string            `json:"decision"`
			Fields   map[string]string `json:"fields"`
		}
		json.Unmarshal(e.Raw, &ev)
		if ev.Fields["method"] != "oidc" {
			continue
		}
		if ev.Decision == "allow" {
			allow++
		} else {
			deny++
		}
	}
	if allow != 1 || deny != 4 {
		t.Fatalf("oidc sign-ins recorded: %d allowed, %d refused; want 1 and 4", allow, deny)
	}
}
