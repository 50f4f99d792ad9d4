package h1

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// parseError is a request the server refuses to read: answered with status and msg, and
// the connection closed.
type parseError struct {
	status int
	msg    string
}

func (e *parseError) Error() string { return e.msg }

func bad(format string, a ...any) error {
	return &parseError{status: http.StatusBadRequest, msg: "h1: " + fmt.Sprintf(format, a...)}
}

var errHeaderTooLarge = &parseError{status: http.StatusRequestHeaderFieldsTooLarge, msg: "h1: request headers too large"}

// What the reader refuses that net/http's reads (each is a way two parsers on one path —
// a proxy in front, this server, the engine behind — can disagree on where a request
// ends or what it says):
//   - a line ending in a bare LF, or a CR anywhere but before the LF;
//   - an obsolete line folding (a header line that starts with a space or tab);
//   - space before a header's colon; a header name that is not a token;
//   - more than one Content-Length (even if equal), or one that is not plain digits;
//   - Transfer-Encoding other than exactly one "chunked", or with a Content-Length;
//   - more than one Host, or none in HTTP/1.1;
//   - a request target that is not origin-form ("/..."), except "*" for OPTIONS;
//   - HTTP versions other than 1.0 and 1.1 (a request line of another shape).
// Chunked bodies (body.go) take only hex sizes of up to 15 digits, a CRLF after each
// chunk, and trailers no larger than the header bound.

// readLine returns the next line without its CRLF; the line must fit in what is left of
// the header bound (*left).
func (c *conn) readLine(left *int) ([]byte, error) { return ReadLine(c.br, left) }

// ReadLine returns br's next line without its CRLF, within what is left of a bound
// (*left, which it lowers): a line ending in a bare LF, or with a CR before its end, is
// refused, and so is a line past the bound (431).
func ReadLine(br *bufio.Reader, left *int) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		// A line longer than the reader's buffer: gather it, within the bound.
		buf := append([]byte(nil), line...)
		for err == bufio.ErrBufferFull {
			if len(buf) > *left {
				return nil, errHeaderTooLarge
			}
			line, err = br.ReadSlice('\n')
			buf = append(buf, line...)
		}
		line = buf
	}
	if err != nil {
		if len(line) > 0 && err == io.EOF {
			return nil, bad("cut short")
		}
		return nil, err
	}
	*left -= len(line)
	if *left < 0 {
		return nil, errHeaderTooLarge
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, bad("a line does not end in CRLF")
	}
	line = line[:len(line)-2]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, bad("a CR inside a line")
	}
	return line, nil
}

// blankRequest is what a request is made from: (*http.Request).WithContext is the only
// way to give one its context, and it copies.
var blankRequest http.Request

// readRequest reads the next request, whose context is ctx.
func (c *conn) readRequest(ctx context.Context) (*http.Request, error) {
	left := c.s.maxHeader()
	line, err := c.readLine(&left)
	if err != nil {
		return nil, err
	}
	// An empty line where a request line belongs is refused, as net/http does (RFC 9112
	// 2.2 allows skipping it; two servers on one path must agree on where requests start).
	method, rest, ok1 := bytes.Cut(line, []byte{' '})
	target, proto, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || len(method) == 0 || !isToken(method) {
		return nil, bad("malformed request line")
	}
	r := blankRequest.WithContext(ctx)
	r.Method, r.Header, r.RemoteAddr, r.TLS = internMethod(method), make(http.Header, c.headerHint()), c.remote, c.tls
	if len(target) == 0 || (target[0] != '/' && !(string(target) == "*" && r.Method == http.MethodOptions)) {
		return nil, bad("the request target is not a path")
	}
	switch string(proto) {
	case "HTTP/1.1":
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.1", 1, 1
	case "HTTP/1.0":
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.0", 1, 0
	default:
		return nil, &parseError{status: http.StatusHTTPVersionNotSupported, msg: "h1: only HTTP/1.0 and HTTP/1.1 are served"}
	}
	r.RequestURI = c.recent.Target(target)
	if r.URL, err = url.ParseRequestURI(r.RequestURI); err != nil {
		return nil, bad("malformed request target")
	}
	if err := c.readHeaders(r, &left); err != nil {
		return nil, err
	}
	hosts := r.Header["Host"]
	switch {
	case len(hosts) > 1:
		return nil, bad("more than one Host header")
	case len(hosts) == 0 && r.ProtoMinor == 1:
		return nil, bad("no Host header")
	case len(hosts) == 1:
		if !httpguts.ValidHostHeader(hosts[0]) {
			return nil, bad("malformed Host header")
		}
		r.Host = hosts[0]
	}
	delete(r.Header, "Host") // net/http moves it to r.Host
	if p := r.Header["Pragma"]; len(p) > 0 && p[0] == "no-cache" && len(r.Header["Cache-Control"]) == 0 {
		r.Header["Cache-Control"] = []string{"no-cache"} // net/http's reading does this (RFC 7234 5.4)
	}
	if err := c.setBody(r); err != nil {
		return nil, err
	}
	r.Close = closeAfter(r)
	return r, nil
}

// closeAfter reports whether the client asked the connection to close after r: net/http's
// rule (HTTP/1.0 unless it asked to keep it, or when it said close).
func closeAfter(r *http.Request) bool {
	vs := r.Header["Connection"]
	closing := HasToken(vs, "close")
	if r.ProtoMinor == 0 {
		return closing || !HasToken(vs, "keep-alive")
	}
	return closing
}

// HasToken reports whether a comma-separated list in vs (Connection's, say) names tok,
// in ASCII case (httpguts': net/http's comparison, no Unicode folding or spaces).
func HasToken(vs []string, tok string) bool { return httpguts.HeaderValuesContainsToken(vs, tok) }

// asciiEqualFold is strings.EqualFold in ASCII only (no Unicode folding: "chun\u212Aed"
// is not "chunked").
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func (c *conn) readHeaders(r *http.Request, left *int) error {
	vals := make([]string, 0, c.headerHint()) // one backing array for the values (as net/http does)
	lines := 0
	defer func() { c.headers = lines }()
	for {
		line, err := c.readLine(left)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
		name, value, err := HeaderLine(line)
		if err != nil {
			return err
		}
		if lines++; lines > 100 {
			return errHeaderTooLarge
		}
		key := c.recent.Key(lines-1, name, internHeader, textproto.CanonicalMIMEHeaderKey)
		v := c.recent.Value(lines-1, value, commonValue)
		if vs, seen := r.Header[key]; seen {
			r.Header[key] = append(vs, v)
			continue
		}
		vals = append(vals, v)
		r.Header[key] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
}

// headerHint is how many header lines the connection's last request had (its client's
// next request mostly has as many): the size the header map and its values are made
// with. A map made for more than 8 is a table of groups from the start, made for 8 or fewer
// a single group (the thirty-ninth session's profile: a map made for 12, for requests
// that had 4, cost ~0.7 µs a request under load).
func (c *conn) headerHint() int {
	if c.headers == 0 {
		return 8
	}
	return min(c.headers, 100)
}

// HeaderLine splits a header (or trailer) line into its name and its value, trimmed:
// obsolete folding, a name that is not a token, a missing colon, space before the colon
// and control bytes in the value are refused.
func HeaderLine(line []byte) (name, value []byte, err error) {
	if line[0] == ' ' || line[0] == '\t' {
		return nil, nil, bad("obsolete line folding")
	}
	name, value, ok := bytes.Cut(line, []byte{':'})
	if !ok || len(name) == 0 || !isToken(name) {
		return nil, nil, bad("malformed header line")
	}
	value = bytes.Trim(value, " \t")
	if !validValue(value) {
		return nil, nil, bad("a header value has a control byte")
	}
	return name, value, nil
}

// validValue is httpguts.ValidHeaderFieldValue on bytes: no control byte but tab.
func validValue(b []byte) bool {
	for _, c := range b {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func isToken(b []byte) bool {
	for _, c := range b {
		if !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return true
}

// setBody gives r its body from Content-Length or chunked framing.
func (c *conn) setBody(r *http.Request) error {
	te, cl := r.Header["Transfer-Encoding"], r.Header["Content-Length"]
	switch {
	case len(te) > 0:
		if len(cl) > 0 {
			return bad("both Transfer-Encoding and Content-Length")
		}
		if len(te) != 1 || !asciiEqualFold(te[0], "chunked") || r.ProtoMinor == 0 {
			return &parseError{status: http.StatusNotImplemented, msg: "h1: unsupported Transfer-Encoding"}
		}
		r.ContentLength = -1
		r.TransferEncoding = []string{"chunked"}
		delete(r.Header, "Transfer-Encoding") // net/http's reading does the same
		r.Body = &body{c: c, req: r, chunked: true, ch: NewChunked(c.br, MaxTrailer)}
	case len(cl) > 1:
		return bad("more than one Content-Length")
	case len(cl) == 1:
		n, ok := ParseLength(cl[0])
		if !ok {
			return bad("malformed Content-Length")
		}
		r.ContentLength = n
		if n == 0 {
			r.Body = http.NoBody
		} else {
			r.Body = &body{c: c, left: n}
		}
	default:
		r.Body = http.NoBody
	}
	if _, ok := r.Header["Trailer"]; ok {
		return bad("request trailers are not accepted") // net/http's rules for them are many; no client here sends them
	}
	if ex := r.Header["Expect"]; len(ex) > 0 {
		// net/http's rule: a first Expect value naming 100-continue waits for it (HTTP/1.1,
		// with a body); any other Expect is 417.
		if !HasToken(ex[:1], "100-continue") {
			return &parseError{status: http.StatusExpectationFailed, msg: "h1: unsupported Expect"}
		}
		if b, ok := r.Body.(*body); ok && r.ProtoMinor == 1 {
			b.cont = true
		}
	}
	if r.Body != http.NoBody {
		b := r.Body.(*body)
		if b.chunked || int64(c.br.Buffered()) < b.left {
			// A body not all here gets its own deadline (BodyTimeout; none when 0), not the
			// header's or the idle one; a body that is here is read without waiting. The
			// deadline is not lifted at the body's end: only reads obey it, and after the
			// body nothing reads the connection until the watch (which clears it) or the
			// next request (which sets its own).
			var d time.Time
			if t := c.s.BodyTimeout; t > 0 {
				d = time.Now().Add(t)
			}
			c.setReadDeadline(d)
		}
	}
	return nil
}

// ParseLength reads a Content-Length: 1 to 18 digits.
func ParseLength(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, true
}

func internMethod(b []byte) string {
	switch string(b) {
	case "GET":
		return http.MethodGet
	case "POST":
		return http.MethodPost
	case "HEAD":
		return http.MethodHead
	case "OPTIONS":
		return http.MethodOptions
	case "PUT":
		return http.MethodPut
	case "DELETE":
		return http.MethodDelete
	}
	return string(b)
}

// commonHeaders are names sent with most requests (curl's, Go's, the OpenAI SDKs'),
// canonical: their keys cost no allocation.
var commonHeaders = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Host", "User-Agent", "Accept", "Accept-Encoding", "Accept-Language",
		"Authorization", "Content-Type", "Content-Length", "Connection", "Transfer-Encoding", "Expect",
		"X-Request-Id", "Openai-Organization", "Openai-Project", "Idempotency-Key", "Traceparent",
		"X-Stainless-Arch", "X-Stainless-Lang", "X-Stainless-Os", "X-Stainless-Package-Version",
		"X-Stainless-Retry-Count", "X-Stainless-Runtime", "X-Stainless-Runtime-Version",
		"X-Stainless-Timeout", "X-Stainless-Async", "X-Forwarded-For"} {
		m[k] = k
		m[strings.ToLower(k)] = k
	}
	return m
}()

func internHeader(name []byte) string { return commonHeaders[string(name)] }

// commonValues are header values common enough to share.
var commonValues = map[string]string{}

func init() {
	for _, v := range []string{"application/json", "*/*", "keep-alive", "close", "chunked", "gzip",
		"gzip, deflate", "gzip, deflate, br", "100-continue", "text/event-stream", "application/json; charset=utf-8"} {
		commonValues[v] = v
	}
}

// commonValue is b's shared string when b is a common value, else "".
func commonValue(b []byte) string { return commonValues[string(b)] }

// Recent remembers, by position, the strings made for the header lines of a connection's
// last message: the next request on a keep-alive connection (an SDK's: its User-Agent, its
// Authorization, its X-Stainless-* values), or the next answer of an engine, mostly repeats
// them byte for byte, and then shares them instead of making new ones (each was an
// allocation a header a request). Strings are immutable: sharing is safe. It holds what
// the connection last sent (lines up to RecentMax bytes), until the connection closes.
// The zero Recent is ready; it is not safe for concurrent use (one reader a connection).
type Recent struct {
	names, keys, vals [RecentLines]string
	target            string // a request's target (the server's)
}

// RecentLines is how many header lines a Recent remembers, and RecentMax the longest
// string it keeps (a line's, or the target's): an idle connection holds at most
// ~19 KiB of them — a name, its canonical key and a value a line — where a request may be
// 64 KiB (its long lines are made anew each time).
const (
	RecentLines = 24
	RecentMax   = 256
)

// Value is line i's value of the last message when b repeats it, else common(b) when that
// is not "" (common must return b's own bytes or ""), else string(b); line i's is then
// remembered. The line's own is looked at first: a compare in place, where common is a map
// lookup (the thirty-ninth session: ~0.5 µs a request in map lookups for lines that repeat).
func (r *Recent) Value(i int, b []byte, common func([]byte) string) string {
	if i >= RecentLines {
		if v := common(b); v != "" {
			return v
		}
		return string(b)
	}
	if r.vals[i] == string(b) {
		return r.vals[i]
	}
	if v := common(b); v != "" {
		r.vals[i] = v
		return v
	}
	return share(&r.vals[i], b)
}

// Target is the last request's target when b repeats it, else string(b) (then remembered).
func (r *Recent) Target(b []byte) string { return share(&r.target, b) }

// share is *kept when b repeats it (compared in place: no allocation), else string(b),
// then kept in *kept when at most RecentMax bytes.
func share(kept *string, b []byte) string {
	if *kept == string(b) {
		return *kept
	}
	s := string(b)
	if len(s) <= RecentMax {
		*kept = s
	}
	return s
}

// Key is line i's key of the last message when name repeats its name, else name's
// canonical key — common(name) when that is not "", else canon(string(name)) — then
// remembered as line i's (with the name).
func (r *Recent) Key(i int, name []byte, common func([]byte) string, canon func(string) string) string {
	if i < RecentLines && r.names[i] == string(name) && r.keys[i] != "" {
		return r.keys[i]
	}
	k, n := common(name), ""
	if k == "" {
		n = string(name)
		k = canon(n)
	}
	if i < RecentLines && len(name) <= RecentMax {
		if n == "" {
			n = string(name)
		}
		r.names[i], r.keys[i] = n, k
	}
	return k
}
