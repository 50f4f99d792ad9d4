// Package redact keeps credentials written into configured addresses — a password in a
// URL's userinfo or a DSN, a token in a webhook's path — out of messages, logs and errors
// (outside round 57: libraries quote the whole value they could not use, and a malformed
// value is the one most often quoted).
package redact

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Malformed stands for a value that does not parse, which is never shown: where its
// password begins and ends cannot be told.
const Malformed = "(a malformed address, not shown: it may hold a password)"

// URL is u for messages: its password replaced by "***", its query's values by "***"
// (DSNs carry passwords there too). A value that does not parse as an absolute URL with
// a host is not shown (Malformed).
func URL(u string) string {
	p, ok := parse(u)
	if !ok {
		return Malformed
	}
	p.RawQuery = maskQuery(p.RawQuery)
	p.Fragment, p.RawFragment = "", ""
	return p.Redacted()
}

// HTTP says whether u is an http or https URL that URL can show (not Malformed): for an
// address a library would quote, password and all, if it could not use it.
func HTTP(u string) bool {
	p, ok := parse(u)
	return ok && (p.Scheme == "http" || p.Scheme == "https")
}

// Origin is u's scheme and host only, for an address that is itself the credential (a
// webhook whose path holds its token).
func Origin(u string) string {
	p, ok := parse(u)
	if !ok {
		return Malformed
	}
	return p.Scheme + "://" + p.Host + "/…"
}

// parse reads u as an absolute URL with a host; not one that is ambiguous: white space, a
// host with a colon outside brackets (Go takes "redis://user:pw:6379" for the host
// "user:pw" — the password shown), an "@" after the host.
func parse(u string) (*url.URL, bool) {
	p, err := url.Parse(u)
	if err != nil || p.Scheme == "" || p.Hostname() == "" || p.Opaque != "" || strings.ContainsAny(u, " \t\r\n") ||
		strings.Contains(p.Hostname(), ":") && !strings.HasPrefix(p.Host, "[") ||
		p.User == nil && strings.Contains(u, "@") { // "user:1234/x@host": a password with a "/" in it
		return nil, false
	}
	return p, true
}

// DSN is a database address for messages: a URL-like DSN ("scheme://user:pass@…") keeps
// its user and address, a keyword/value one ("host=… password=…") its keys; what cannot
// be read is not shown.
func DSN(dsn string) string {
	scheme, rest, ok := strings.Cut(dsn, "://")
	if !ok {
		if KeywordValue(dsn) {
			return keywordValue(dsn)
		}
		return Malformed
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 || strings.ContainsAny(dsn, " \t\r\n") || !schemeLike(scheme) {
		return Malformed // "user:pass" with no address: the password cannot be told apart
	}
	if q := strings.Index(rest, "?"); q >= 0 && q < at {
		// An "@" after a "?": in a query value ("…?password=p@ss": pgx reads it so, and
		// everything before that "@" had been shown as the user — outside round 63), or in
		// a password holding a "?" (go-sql-driver reads "u:pa?ss@tcp(h)/db" so). Which one
		// cannot be told apart: show the scheme only.
		return scheme + "://***"
	}
	cred, _, hasPass := strings.Cut(rest[:at], ":")
	if hasPass {
		cred += ":***"
	}
	addr := rest[at:]
	if a, q, ok := strings.Cut(addr, "?"); ok {
		addr = a + "?" + maskQuery(q)
	}
	return scheme + "://" + cred + addr
}

// maskQuery is a query with every value hidden, and every part that is not key=value:
// "tls=true&x" → "tls=***&***".
func maskQuery(q string) string {
	if q == "" {
		return ""
	}
	ps := strings.Split(q, "&")
	for i, p := range ps {
		if k, _, ok := strings.Cut(p, "="); ok && !strings.ContainsAny(k, ":@/") {
			ps[i] = k + "=***"
		} else {
			ps[i] = "***"
		}
	}
	return strings.Join(ps, "&")
}

// KeywordValue says whether dsn is in PostgreSQL's keyword/value form ("host=h user=u
// password=p"): it begins with a keyword and "=".
func KeywordValue(dsn string) bool {
	k, _, ok := strings.Cut(strings.TrimLeft(dsn, " \t"), "=")
	if !ok || k == "" {
		return false
	}
	for _, r := range strings.TrimRight(k, " \t") {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '_') {
			return false
		}
	}
	return true
}

// keywordValue lists a keyword/value DSN's keys with every value hidden.
func keywordValue(dsn string) string {
	var keys []string
	for _, f := range strings.Fields(dsn) {
		if k, _, ok := strings.Cut(f, "="); ok && KeywordValue(f) {
			keys = append(keys, k+"=***")
		}
	}
	return strings.Join(keys, " ")
}

func schemeLike(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && (r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.')) {
			return false
		}
	}
	return true
}

// Scheme is the scheme of a "scheme://…" value, lower-cased, or "" when it has none.
func Scheme(s string) string {
	scheme, _, ok := strings.Cut(s, "://")
	if !ok || !schemeLike(scheme) {
		return ""
	}
	return strings.ToLower(scheme)
}

// Error is err with every occurrence of each secret-bearing value in its message — as
// written, quoted as %q quotes it, and with its userinfo or path percent-encoded or not —
// replaced by how shows it (URL, Origin, DSN). For the errors of a library that quotes
// the address it was given. errors.Is and errors.As still see err.
func Error(err error, how func(string) string, values ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := msg
	for _, v := range values {
		if v == "" {
			continue
		}
		shown := how(v)
		for _, form := range forms(v) {
			clean = strings.ReplaceAll(clean, form, shown)
		}
	}
	if clean == msg {
		return err
	}
	return &scrubbed{msg: clean, err: err}
}

// forms are the ways a value may be written into a message, longest first.
func forms(v string) []string {
	out := []string{strconv.Quote(v), v}
	if p, err := url.Parse(v); err == nil {
		out = append(out, p.String(), p.Redacted())
		if len(p.Path) >= 8 { // a token in the path (shorter ones are words of the message)
			out = append(out, p.Path)
		}
	}
	if u, e := url.PathUnescape(v); e == nil && u != v {
		out = append(out, strconv.Quote(u), u)
	}
	return out
}

type scrubbed struct {
	msg string
	err error
}

func (s *scrubbed) Error() string { return s.msg }
func (s *scrubbed) Unwrap() error { return s.err }

// StoreAddress says whether a store's configured address is a PostgreSQL DSN — a
// postgres:// or postgresql:// URL (the scheme in any case; returned lower-cased, as pgx
// wants it) or the keyword/value form — and returns it; anything else without a scheme is
// a SQLite file's path. A value with white space at either end or another scheme is
// refused without being quoted: taken for a path, it was printed whole, password and all,
// in "no such file" errors, and `init` created a SQLite file named after it (round 57).
func StoreAddress(s string) (addr string, postgres bool, err error) {
	if strings.TrimSpace(s) != s {
		return "", false, errors.New("store: the address begins or ends with white space (not shown: it may hold a password)")
	}
	switch scheme := Scheme(s); scheme {
	case "postgres", "postgresql":
		return scheme + s[len(scheme):], true, nil
	case "":
		if strings.Contains(s, "://") {
			return "", false, errors.New("store: an address with \"://\" and no scheme (not shown: it may hold a password)")
		}
		return s, KeywordValue(s), nil
	default:
		return "", false, fmt.Errorf("store: scheme %q is not postgres:// (or a SQLite file's path)", scheme)
	}
}
