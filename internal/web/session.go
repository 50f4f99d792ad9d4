package web

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"sync"
	"time"
)

// Sessions live in the memory of the process that signed the user in: a restart signs
// everyone out, and behind a load balancer the console must be pinned to one replica
// (sticky sessions) — another replica does not know the session and asks to sign in again.
// The cookie holds a random 256-bit id; the server keeps only its SHA-256, so the table
// does not hold usable cookies. A session is created only at sign-in (never accepted from
// the client), so an id planted before sign-in is never authenticated (no fixation).
type session struct {
	key       [32]byte // SHA-256 of the cookie value
	csrf      string
	principal string
	login     string // "api_key_totp" or "oidc"
	created   time.Time
	seen      time.Time
	stepUp    time.Time // last TOTP step-up; zero: none
	streams   int       // open event streams
	flash     string    // one-time message after an action
}

type sessions struct {
	mu            sync.Mutex
	m             map[[32]byte]*session
	idle, maxAge  time.Duration
	now           func() time.Time
	lastSweep     time.Time
	maxPerSession int
}

func newSessions(idle, maxAge time.Duration, now func() time.Time) *sessions {
	return &sessions{m: map[[32]byte]*session{}, idle: idle, maxAge: maxAge, now: now, maxPerSession: 8}
}

// create starts a signed-in session and returns its cookie value.
func (s *sessions) create(principal, login string) (string, *session) {
	id := randomToken()
	now := s.now()
	ss := &session{key: sha256.Sum256([]byte(id)), csrf: randomToken(), principal: principal, login: login, created: now, seen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(now)
	s.m[ss.key] = ss
	return id, ss
}

// get returns the live session of cookie value id and marks it seen; nil if none.
func (s *sessions) get(id string) *session {
	if id == "" {
		return nil
	}
	k := sha256.Sum256([]byte(id))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.m[k]
	if ss == nil {
		return nil
	}
	if now.Sub(ss.seen) > s.idle || now.Sub(ss.created) > s.maxAge {
		delete(s.m, k)
		return nil
	}
	ss.seen = now
	cp := *ss
	return &cp
}

// alive reports whether cookie value id names a live session, without marking it seen
// (an open live-update stream does not keep a session from its idle expiry).
func (s *sessions) alive(id string) bool {
	k := sha256.Sum256([]byte(id))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.m[k]
	return ss != nil && now.Sub(ss.seen) <= s.idle && now.Sub(ss.created) <= s.maxAge
}

func (s *sessions) update(key [32]byte, fn func(*session)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.m[key]; ss != nil {
		fn(ss)
	}
}

func (s *sessions) remove(key [32]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, key)
}

// sweep drops expired sessions, at most once a minute.
func (s *sessions) sweep(now time.Time) {
	if now.Sub(s.lastSweep) < time.Minute {
		return
	}
	s.lastSweep = now
	for k, ss := range s.m {
		if now.Sub(ss.seen) > s.idle || now.Sub(ss.created) > s.maxAge {
			delete(s.m, k)
		}
	}
}

// Cookies: HttpOnly, SameSite=Strict, path /console/; over TLS Secure with the __Host-
// prefix (which also pins them to this host and path /).
func cookieName(r *http.Request, base string) string {
	if r.TLS != nil {
		return "__Host-" + base
	}
	return base
}

func setCookie(w http.ResponseWriter, r *http.Request, base, value string, maxAge int) {
	c := &http.Cookie{Name: cookieName(r, base), Value: value, Path: "/console/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: maxAge}
	if r.TLS != nil {
		c.Secure, c.Path = true, "/"
	}
	http.SetCookie(w, c)
}

func readCookie(r *http.Request, base string) string {
	c, err := r.Cookie(cookieName(r, base))
	if err != nil {
		return ""
	}
	return c.Value
}

const (
	sessionCookie = "strongroom_session"
	loginCookie   = "strongroom_login" // the sign-in form's double-submit token (and OIDC state)
)

func equalTokens(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// limiter counts sign-in failures per client address and per principal (or key id) in a
// sliding window: past the limit, sign-in is refused without checking the credentials.
type limiter struct {
	mu       sync.Mutex
	fails    map[string][]time.Time
	now      func() time.Time
	window   time.Duration
	perIP    int
	perActor int
}

func newLimiter(now func() time.Time) *limiter {
	return &limiter{fails: map[string][]time.Time{}, now: now, window: 15 * time.Minute, perIP: 20, perActor: 5}
}

// allowed reports whether sign-in may be tried from ip for the actors named (a key id, a
// principal; "" is skipped).
func (l *limiter) allowed(ip string, actors ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.recent("ip:"+ip, now)) >= l.perIP {
		return false
	}
	for _, a := range actors {
		if a != "" && len(l.recent("who:"+a, now)) >= l.perActor {
			return false
		}
	}
	return true
}

func (l *limiter) recent(k string, now time.Time) []time.Time {
	ts := l.fails[k]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > l.window {
		i++
	}
	ts = ts[i:]
	if len(ts) == 0 {
		delete(l.fails, k)
		return nil
	}
	l.fails[k] = ts
	return ts
}

func (l *limiter) fail(ip string, actors ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if len(l.fails) > 100_000 { // bounded memory: drop windows that have run out first
		for k := range l.fails {
			l.recent(k, now)
		}
	}
	l.fails["ip:"+ip] = append(l.recent("ip:"+ip, now), now)
	for _, a := range actors {
		if a != "" {
			l.fails["who:"+a] = append(l.recent("who:"+a, now), now)
		}
	}
}
