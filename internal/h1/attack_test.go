package h1

// Outside attack tests (helper-24): each TestAttack24... probes one of the promises the
// h1 server makes, over real TCP connections on 127.0.0.1, often against Go's own
// net/http server given the same bytes and the same handler (a differential test).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// a24Wait bounds a poll for something that should happen at once (a cancellation, a
// close, an answer): on a busy 2-core machine it happens in milliseconds; 30 s for
// correctness waits, a24Quick where a missing event is the expected failure and a 30 s
// wait per failure would blow the file's time budget.
const (
	a24Wait  = 30 * time.Second
	a24Quick = 5 * time.Second
)

// a24H1 runs h on an h1 Server (configured by cfg) over a loopback listener.
func a24H1(t *testing.T, h http.Handler, cfg func(*Server)) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, ln, h, cfg), ln.Addr().String()
}

// a24Std runs h on net/http's server over a loopback listener.
func a24Std(t *testing.T, h http.Handler, cfg func(*http.Server)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	if cfg != nil {
		cfg(s)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ln.Addr().String()
}

func a24Dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(a24Wait))
	return c
}

func a24Poll(t *testing.T, within time.Duration, what string, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("waited %v for %s", within, what)
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// a24Exchange writes raw on a new connection (in the background, a write error
// ignored: a server may close early) and returns every byte the server sends until it
// closes the connection (or a24Wait passes).
func a24Exchange(t *testing.T, addr, raw string) []byte {
	t.Helper()
	c := a24Dial(t, addr)
	go io.WriteString(c, raw)
	out, _ := io.ReadAll(c)
	return out
}

// a24Responses splits a byte stream into responses (heads and bodies) as a net/http
// client reads them; a stream that does not parse ends the list with an error entry.
func a24Responses(out []byte, methods ...string) []string {
	br := bufio.NewReader(bytes.NewReader(out))
	var list []string
	for i := 0; ; i++ {
		if _, err := br.Peek(1); err != nil {
			return list
		}
		var req *http.Request
		if i < len(methods) {
			req = &http.Request{Method: methods[i]}
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			rest, _ := io.ReadAll(br)
			return append(list, fmt.Sprintf("UNPARSEABLE(%v) %q", err, rest))
		}
		b, err := io.ReadAll(resp.Body)
		s := fmt.Sprintf("%d close=%v body=%q", resp.StatusCode, resp.Close, b)
		if err != nil {
			s += " bodyerr=" + err.Error()
		}
		list = append(list, s)
	}
}

// a24Seen is what a handler saw of one request.
type a24Seen struct {
	mu      sync.Mutex
	list    []string
	running atomic.Int32 // handlers started and not yet recorded
}

// take returns what was recorded, once no handler is still running (a handler whose
// client has gone records its body's error a moment after the client sees the close).
func (s *a24Seen) take() []string {
	deadline := time.Now().Add(30 * time.Second)
	for s.running.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.list
	s.list = nil
	return l
}

// handler records each request as one line: everything a handler can see of what was
// read (method, target, host, proto, framing, headers, body, trailers, close).
func (s *a24Seen) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.running.Add(1)
		defer s.running.Add(-1)
		b, err := io.ReadAll(r.Body)
		line := fmt.Sprintf("%s %s path=%q query=%q host=%q %s cl=%d te=%v close=%v header=%s body=%q bodyerr=%v trailer=%s",
			r.Method, r.RequestURI, r.URL.Path, r.URL.RawQuery, r.Host, r.Proto, r.ContentLength, r.TransferEncoding,
			r.Close, a24Hdr(r.Header), b, err != nil, a24Hdr(r.Trailer))
		s.mu.Lock()
		s.list = append(s.list, line)
		s.mu.Unlock()
		io.WriteString(w, r.URL.Path)
	})
}

func a24Hdr(h http.Header) string {
	if h == nil {
		return "{}"
	}
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("{")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q;", k, h[k])
	}
	b.WriteString("}")
	return b.String()
}

// a24Pair is an h1 server and a net/http server running the same recording handler.
type a24Pair struct {
	h1, std         a24Seen
	h1Addr, stdAddr string
}

func a24NewPair(t *testing.T) *a24Pair {
	p := &a24Pair{}
	_, p.h1Addr = a24H1(t, p.h1.handler(), func(s *Server) { s.ReadHeaderTimeout = 2 * time.Second })
	p.stdAddr = a24Std(t, p.std.handler(), func(s *http.Server) { s.ReadHeaderTimeout = 2 * time.Second; s.IdleTimeout = 2 * time.Second })
	return p
}

// closer ends every exchange: a request that asks the server to close, so that reading
// to EOF ends as soon as both servers are done.
const a24Closer = "GET /closer HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

// run sends raw (plus the closer) to both servers; it returns what each one's handler
// saw and the status of each answer.
func (p *a24Pair) run(t *testing.T, raw string) (h1Seen, stdSeen, h1Resp, stdResp []string) {
	t.Helper()
	h1Out := a24Exchange(t, p.h1Addr, raw+a24Closer)
	h1Seen = p.h1.take()
	stdOut := a24Exchange(t, p.stdAddr, raw+a24Closer)
	stdSeen = p.std.take()
	return h1Seen, stdSeen, a24Statuses(h1Out), a24Statuses(stdOut)
}

func a24Statuses(out []byte) []string {
	var st []string
	for _, r := range a24Responses(out) {
		st = append(st, strings.SplitN(r, " ", 2)[0])
	}
	return st
}

// a24Differ reports the first request h1 read that net/http did not read the same way
// ("" when every request h1's handler saw, net/http's saw identically and in the same
// place in the sequence).
func a24Differ(h1Seen, stdSeen []string) string {
	for i, s := range h1Seen {
		if i >= len(stdSeen) {
			return fmt.Sprintf("h1's handler saw request #%d that net/http never served:\n  h1:  %s", i+1, s)
		}
		if s != stdSeen[i] {
			return fmt.Sprintf("request #%d read differently:\n  h1:  %s\n  std: %s", i+1, s, stdSeen[i])
		}
	}
	return ""
}

// TestAttack24DifferentialReading (promise 1, 2): byte streams sent to h1 and to
// net/http with the same recording handler. Every request h1's handler sees must be one
// net/http's handler sees identically (method, target, host, headers, body, trailers,
// close), in the same position; h1 may serve fewer (refusing more).
func TestAttack24DifferentialReading(t *testing.T) {
	p := a24NewPair(t)
	cases := []struct{ name, raw string }{
		// Controls: the harness itself must agree on ordinary traffic.
		{"control-get", "GET /a?b=c HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"},
		{"control-pipelined-cl-chunked", "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcPOST /q HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=\"x\"\r\nabc\r\n0\r\n\r\n"},
		{"control-http10", "GET /ten HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n"},
		{"control-unread-body-keepalive", "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 37\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"control-bad-chunk-then-smuggled", "POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXXGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"control-te-tab-and-case", "POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tCHUNKED \r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{"control-transfer_encoding-underscore", "POST /u HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{"control-head-with-cl-body", "HEAD /h HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /g HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"control-chunk-ext-quoted-crlf-free", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b;c\";d\r\nabc\r\n0;z\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n"},
		// Transfer-Encoding "chunked" spelled with U+212A KELVIN SIGN: strings.EqualFold
		// folds it to 'k', net/http's ASCII comparison does not (it answers 501).
		{"te-kelvin-sign", "POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chun\u212Aed\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n"},
		// Connection tokens compared with Unicode folding / Unicode space trimming.
		{"conn-close-long-s", "GET /c HTTP/1.1\r\nHost: a\r\nConnection: clo\u017Fe\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"conn-close-nbsp", "GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\u00a0\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"http10-keepalive-kelvin", "GET /k HTTP/1.0\r\nConnection: \u212Aeep-alive\r\n\r\nGET /second HTTP/1.0\r\n\r\n"},
		{"http10-keepalive-and-close", "GET /k HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\nGET /second HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"},
		// Trailers: net/http moves a declared Trailer into r.Trailer (and out of
		// r.Header), fills r.Trailer from the trailer section, and refuses forbidden
		// trailer names.
		{"declared-trailer", "POST /t HTTP/1.1\r\nHost: a\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: v\r\n\r\n"},
		{"undeclared-trailer", "POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-U: u\r\n\r\n"},
		{"trailer-content-length", "POST /t HTTP/1.1\r\nHost: a\r\nTrailer: Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n"},
		// Expect other than 100-continue on a bodiless request: net/http answers 417.
		{"expect-unknown-no-body", "GET /e HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n"},
		// An empty line before the first request: net/http skips CR/LF only after a POST.
		{"leading-crlf-first-request", "\r\nGET /lead HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"crlf-after-get", "GET /one HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h1Seen, stdSeen, h1Resp, stdResp := p.run(t, tc.raw)
			if d := a24Differ(h1Seen, stdSeen); d != "" {
				t.Errorf("input %q\n%s\n  answers h1 %v, net/http %v", tc.raw, d, h1Resp, stdResp)
			}
			if strings.HasPrefix(tc.name, "control") && len(h1Seen) != len(stdSeen) {
				t.Errorf("control %q: h1 served %d, net/http %d:\n h1 %q\n std %q", tc.raw, len(h1Seen), len(stdSeen), h1Seen, stdSeen)
			}
		})
	}
}

// a24First sends raw on a fresh connection and returns the first answer's status and
// whether it said Connection: close, plus whether the connection then closed with
// nothing more (a refused request must end its connection).
func a24First(t *testing.T, addr, raw string) (status int, closeHdr bool, rest []byte, err error) {
	t.Helper()
	c := a24Dial(t, addr)
	go io.WriteString(c, raw)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, false, nil, err
	}
	io.ReadAll(resp.Body)
	if resp.Close || resp.StatusCode >= 400 {
		rest, _ = io.ReadAll(br) // the server must close: read to its EOF
	}
	return resp.StatusCode, resp.Close, rest, nil
}

// TestAttack24HeaderLineCount (promise 3): over 100 header lines are refused with 431 —
// also when the lines repeat one name (the bound counts distinct names only, so 150
// "X-Dup" lines, 1.5 KB, are read and handed on).
func TestAttack24HeaderLineCount(t *testing.T) {
	var calls atomic.Int32
	_, addr := a24H1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		fmt.Fprintf(w, "lines=%d", len(r.Header["X-Dup"]))
	}), nil)
	distinct := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "X-H%d: v\r\n", i)
		}
		return b.String()
	}
	for _, tc := range []struct {
		name string
		raw  string
		want int
	}{
		{"100 lines (Host + 99 distinct)", "GET / HTTP/1.1\r\nHost: a\r\n" + distinct(99) + "\r\n", 200},
		{"101 lines (Host + 100 distinct)", "GET / HTTP/1.1\r\nHost: a\r\n" + distinct(100) + "\r\n", 431},
		{"151 lines (Host + 150 x X-Dup)", "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-Dup: v\r\n", 150) + "\r\n", 431},
		{"1001 lines (Host + 1000 x X-Dup)", "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-Dup: v\r\n", 1000) + "\r\n", 431},
		{"151 lines (Host + 50 distinct, each 2 more times)", "GET / HTTP/1.1\r\nHost: a\r\n" + distinct(50) + distinct(50) + distinct(50) + "\r\n", 431},
	} {
		before := calls.Load()
		st, closeHdr, rest, err := a24First(t, addr, tc.raw)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if st != tc.want {
			t.Errorf("%s (%d bytes): status %d, want %d (handler ran %d times)", tc.name, len(tc.raw), st, tc.want, calls.Load()-before)
			continue
		}
		if tc.want == 431 && (!closeHdr || len(rest) != 0 || calls.Load() != before) {
			t.Errorf("%s: 431 without Connection: close (%v) or more after it (%q) or a handler ran", tc.name, closeHdr, rest)
		}
	}
}

// TestAttack24HeaderBytes (promise 3): request line + headers over 64 KiB are refused
// with 431 (Connection: close) and the client gets that answer even while it is still
// sending — by one long line, many lines, a long target; 63 KiB is served.
func TestAttack24HeaderBytes(t *testing.T) {
	_, addr := a24H1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), nil)
	pad := func(n int) string { return strings.Repeat("v", n) }
	ok := "GET / HTTP/1.1\r\nHost: a\r\nX: " + pad(63<<10) + "\r\n\r\n"
	if st, _, _, err := a24First(t, addr, ok); err != nil || st != 200 {
		t.Errorf("63 KiB of headers: %d %v, want 200", st, err)
	}
	for _, tc := range []struct{ name, raw string }{
		{"one 65 KiB line", "GET / HTTP/1.1\r\nHost: a\r\nX: " + pad(65<<10) + "\r\n\r\n"},
		{"one 1 MiB line, then more", "GET / HTTP/1.1\r\nHost: a\r\nX: " + pad(1<<20) + "\r\n\r\n"},
		{"a 65 KiB target", "GET /" + pad(65<<10) + " HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"many 1 KiB lines (90 KiB)", "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X: "+pad(1020)+"\r\n", 90) + "\r\n"},
		{"no newline at all, 2 MiB", "GET /" + pad(2<<20)},
	} {
		st, closeHdr, _, err := a24First(t, addr, tc.raw)
		if err != nil || st != 431 || !closeHdr {
			t.Errorf("%s: status %d close %v err %v; want 431 with Connection: close", tc.name, st, closeHdr, err)
		}
	}
}

// TestAttack24ContinueAfterAnswerStarted (promise 2, 5): a client that sends
// "Expect: 100-continue" with its body already on the way (allowed: it need not wait),
// and a handler that starts its answer (headers flushed) before reading the body. net/http
// never sends 100 Continue once the final answer has begun; h1 writes
// "HTTP/1.1 100 Continue" into the middle of the answer, where a client reads it as
// answer bytes — with a Content-Length answer, the next answer on the connection is
// misframed (desync).
func TestAttack24ContinueAfterAnswerStarted(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/up" {
			w.Header().Set("Content-Length", "5")
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			io.ReadAll(r.Body)
			io.WriteString(w, "hello")
			return
		}
		io.WriteString(w, r.URL.Path)
	})
	_, h1Addr := a24H1(t, h, nil)
	stdAddr := a24Std(t, h, nil)
	raw := "POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc" +
		"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
	// Either the whole exchange (hello, then /next) or the first answer and a close
	// (net/http's choice: it never sent the 100, so it does not reuse the connection).
	want := []string{`200 close=false body="hello"`, `200 close=true body="/next"`}
	wantClosed := []string{`200 close=true body="hello"`}
	for _, srv := range []struct{ name, addr string }{{"net/http", stdAddr}, {"h1", h1Addr}} {
		out := a24Exchange(t, srv.addr, raw)
		got := a24Responses(out)
		if fmt.Sprint(got) != fmt.Sprint(want) && fmt.Sprint(got) != fmt.Sprint(wantClosed) {
			t.Errorf("%s: input %q\n answers as a client reads them: %q\n want %q (or the first and a close)\n raw bytes: %q", srv.name, raw, got, want, out)
		}
	}
}

// TestAttack24ContinueHTTP10 (promise 2): an HTTP/1.0 client cannot take a 100
// (RFC 9110 15.2: a server must not send 1xx to an HTTP/1.0 client); net/http sends none
// and reads the body. A 1.0 client that keeps the connection reads "100 Continue" as
// the answer and everything after it out of step.
func TestAttack24ContinueHTTP10(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s:%s", r.URL.Path, b)
	})
	_, h1Addr := a24H1(t, h, nil)
	stdAddr := a24Std(t, h, nil)
	raw := "POST /one HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc" +
		"GET /two HTTP/1.0\r\n\r\n"
	for _, srv := range []struct{ name, addr string }{{"net/http", stdAddr}, {"h1", h1Addr}} {
		out := a24Exchange(t, srv.addr, raw)
		if bytes.Contains(out, []byte(" 100 ")) {
			t.Errorf("%s: an HTTP/1.0 client was sent a 100: %q", srv.name, out)
		}
	}
}

// TestAttack24UnreadBodyAnswerSaysClose (promise 2; net/http's behaviour): when the
// server will close the connection after an answer because the handler left the body
// unread (over 256 KiB, or an Expect: 100-continue body never asked for), net/http says
// so in the answer (Connection: close); a client that is not told reuses the connection
// and its next request is lost.
func TestAttack24UnreadBodyAnswerSaysClose(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, "no")
	})
	_, h1Addr := a24H1(t, h, nil)
	stdAddr := a24Std(t, h, nil)
	for _, tc := range []struct{ name, raw string }{
		{"expect-continue never asked", "POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"},
		{"1 MiB Content-Length body unread", "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n" + strings.Repeat("x", 64<<10)},
	} {
		for _, srv := range []struct{ name, addr string }{{"net/http", stdAddr}, {"h1", h1Addr}} {
			c := a24Dial(t, srv.addr)
			io.WriteString(c, tc.raw)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Errorf("%s, %s: %v", tc.name, srv.name, err)
				continue
			}
			io.ReadAll(resp.Body)
			if srv.name == "h1" {
				// h1 closes after this answer (net/http may linger, having said close).
				if _, err := br.ReadByte(); err == nil {
					t.Errorf("%s, %s: the connection stayed open", tc.name, srv.name)
				}
			}
			if !resp.Close {
				t.Errorf("%s, %s: status %d, the server closed the connection but the answer did not say Connection: close (header %v)", tc.name, srv.name, resp.StatusCode, resp.Header)
			}
		}
	}
}

// TestAttack24UnreadLargeBodyAnswerDelivered (promise 2, 5): a gateway's commonest early
// answer — 401 to a client still uploading a large body the handler never reads. The
// client (Go's own http.Client) must get the 401, not a connection reset.
func TestAttack24UnreadLargeBodyAnswerDelivered(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
	})
	_, h1Addr := a24H1(t, h, nil)
	stdAddr := a24Std(t, h, nil)
	for _, srv := range []struct{ name, addr string }{{"net/http", stdAddr}, {"h1", h1Addr}} {
		var fails []string
		for i := range 40 {
			tr := &http.Transport{}
			cl := &http.Client{Transport: tr, Timeout: a24Wait}
			resp, err := cl.Post("http://"+srv.addr+"/v1/audio", "application/octet-stream", bytes.NewReader(make([]byte, 8<<20)))
			if err != nil {
				fails = append(fails, fmt.Sprintf("try %d: %v", i, err))
			} else {
				io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 401 {
					fails = append(fails, fmt.Sprintf("try %d: status %d", i, resp.StatusCode))
				}
			}
			tr.CloseIdleConnections()
		}
		if len(fails) > 0 {
			t.Errorf("%s: an 8 MiB POST answered 401 without reading: %d of 40 tries failed: %v", srv.name, len(fails), fails)
		}
	}
}

// a24Pipeline sends the requests of raw (their methods in order) on one
// connection, reads the answers as a client would and returns them.
func a24Pipeline(t *testing.T, addr, raw string, methods ...string) []string {
	t.Helper()
	return a24Responses(a24Exchange(t, addr, raw), methods...)
}

// TestAttack24AnswerFraming (promise 5, 2): whatever the handler does, each answer is
// framed so that the answer after it on the connection is read intact. Each case is a
// request to a misbehaving handler followed by a pipelined GET /next (Connection: close):
// the client must read the first answer and then either "/next" or the end of the
// connection — never bytes of one answer in another.
func TestAttack24AnswerFraming(t *testing.T) {
	big := strings.Repeat("b", 10<<10)
	handlers := map[string]func(w http.ResponseWriter, r *http.Request){
		"/short":   func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "tiny") },
		"/exact4k": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, strings.Repeat("e", holdBytes)) },
		"/long":    func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, big) },
		"/flushed": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "a")
			w.(http.Flusher).Flush()
			io.WriteString(w, "b")
		},
		"/emptyflush": func(w http.ResponseWriter, r *http.Request) {
			w.(http.Flusher).Flush()
			w.Write(nil)
			io.WriteString(w, "")
		},
		"/clfewer": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, "abc")
		},
		"/clfewerbig": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "20000")
			io.WriteString(w, big)
		},
		"/clmore": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "3")
			io.WriteString(w, "abcdefGET /x")
		},
		"/clmoresplit": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "3")
			io.WriteString(w, "ab")
			io.WriteString(w, "cdef")
		},
		"/cllate": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			w.Header().Set("Content-Length", "1000")
			io.WriteString(w, "late")
		},
		"/cltwice": func(w http.ResponseWriter, r *http.Request) {
			w.Header()["Content-Length"] = []string{"3", "300"}
			io.WriteString(w, "abc")
		},
		"/clbad": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "3, 3")
			io.WriteString(w, "abc")
		},
		"/teset": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Transfer-Encoding", "chunked")
			io.WriteString(w, "abc")
		},
		"/connka": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "keep-alive")
			io.WriteString(w, "abc")
		},
		"/204body": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(204)
			io.WriteString(w, "oops")
			w.(http.Flusher).Flush()
		},
		"/304body": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(304); io.WriteString(w, big) },
		"/204cl": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "7")
			w.WriteHeader(204)
		},
		"/1xx": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(103)
			w.WriteHeader(100)
			io.WriteString(w, "after 1xx")
		},
		"/head": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, big)
			w.(http.Flusher).Flush()
			io.WriteString(w, big)
		},
		"/headcl":    func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Content-Length", "50000") },
		"/headshort": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") },
		"/status999": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(999); io.WriteString(w, "odd") },
		"/next":      func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "/next") },
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handlers[r.URL.Path](w, r) })
	_, addr := a24H1(t, h, nil)
	next := "GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
	for _, tc := range []struct {
		method, path, proto string
		first               string // the first answer's body as read, "" to skip
	}{
		{"GET", "/short", "1.1", "tiny"},
		{"GET", "/exact4k", "1.1", strings.Repeat("e", holdBytes)},
		{"GET", "/long", "1.1", big},
		{"GET", "/flushed", "1.1", "ab"},
		{"GET", "/emptyflush", "1.1", ""},
		{"GET", "/clfewer", "1.1", ""},
		{"GET", "/clfewerbig", "1.1", ""},
		{"GET", "/clmore", "1.1", ""},
		{"GET", "/clmoresplit", "1.1", ""},
		{"GET", "/cllate", "1.1", "late"},
		{"GET", "/cltwice", "1.1", "abc"},
		{"GET", "/clbad", "1.1", "abc"},
		{"GET", "/teset", "1.1", "abc"},
		{"GET", "/connka", "1.1", "abc"},
		{"GET", "/204body", "1.1", ""},
		{"GET", "/304body", "1.1", ""},
		{"GET", "/204cl", "1.1", ""},
		{"GET", "/1xx", "1.1", "after 1xx"},
		{"HEAD", "/head", "1.1", ""},
		{"HEAD", "/headcl", "1.1", ""},
		{"HEAD", "/headshort", "1.1", ""},
		{"GET", "/status999", "1.1", "odd"},
		{"GET", "/long", "1.0", big},
		{"GET", "/flushed", "1.0", "ab"},
		{"GET", "/short", "1.0", "tiny"},
	} {
		conn := ""
		if tc.proto == "1.0" {
			conn = "Connection: keep-alive\r\n"
		}
		raw := fmt.Sprintf("%s %s HTTP/%s\r\nHost: a\r\n%s\r\n", tc.method, tc.path, tc.proto, conn) + next
		got := a24Pipeline(t, addr, raw, tc.method, "GET")
		bad := len(got) == 0 || len(got) > 2 || strings.HasPrefix(got[len(got)-1], "UNPARSEABLE") ||
			// A short answer (the handler wrote less than its Content-Length, or more and
			// was refused) ends with the connection: promised, and no desync.
			strings.Contains(got[0], "bodyerr") && !strings.Contains(tc.path, "fewer") && !strings.Contains(tc.path, "more") ||
			len(got) == 2 && got[1] != `200 close=true body="/next"`
		if tc.first != "" && len(got) > 0 && !strings.Contains(got[0], fmt.Sprintf("body=%q", tc.first)) {
			bad = true
		}
		if bad {
			t.Errorf("%s %s HTTP/%s then GET /next: answers read %q", tc.method, tc.path, tc.proto, a24Trunc(got))
		}
	}
}

func a24Trunc(l []string) []string {
	out := make([]string, len(l))
	for i, s := range l {
		if len(s) > 300 {
			s = s[:300] + "..."
		}
		out[i] = s
	}
	return out
}

// TestAttack24AnswerHeaderInjection (promise 5): header values with CR/LF cannot add
// header lines or split the answer; invalid header names are dropped; and the server's
// own framing headers (Content-Length, Transfer-Encoding, Connection) cannot be doubled
// by a handler — also when it sets them under a non-canonical key (w.Header()["content-length"],
// as a proxy copying an engine's raw header names would).
func TestAttack24AnswerHeaderInjection(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/values":
			w.Header().Set("X-A", "v\r\nX-Injected: 1")
			w.Header().Set("X-B", "v\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
			w.Header().Set("X-C", "v\nX-Injected2: 1")
			w.Header()["X-Bad Name"] = []string{"1"}
			w.Header()["X-Bad\r\nX-Injected3"] = []string{"1"}
			w.Header()["X-Bad:Colon"] = []string{"1"}
			io.WriteString(w, "values")
		case "/lowercl":
			w.Header()["content-length"] = []string{"1000"}
			io.WriteString(w, "abc")
		case "/lowerte":
			w.Header()["transfer-encoding"] = []string{"chunked"}
			io.WriteString(w, "abc")
		case "/lowerconn":
			w.Header()["connection"] = []string{"keep-alive"}
			w.Header().Set("Connection", "close")
			io.WriteString(w, "abc")
		default:
			io.WriteString(w, r.URL.Path)
		}
	})
	_, addr := a24H1(t, h, nil)
	next := "GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
	out := a24Exchange(t, addr, "GET /values HTTP/1.1\r\nHost: a\r\n\r\n"+next)
	head, _, _ := bytes.Cut(out, []byte("\r\n\r\n"))
	for _, bad := range []string{"\r\nX-Injected", "\r\nHTTP/1.1 200", "X-Bad Name", "X-Bad:Colon", "\r\nX-Injected3"} {
		if bytes.Contains(head, []byte(bad)) {
			t.Errorf("/values: answer head contains %q: %q", bad, head)
		}
	}
	if got := a24Responses(out); len(got) != 2 || got[1] != `200 close=true body="/next"` {
		t.Errorf("/values then /next: %q", got)
	}
	for _, path := range []string{"/lowercl", "/lowerte", "/lowerconn"} {
		out := a24Exchange(t, addr, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n"+next)
		head, _, _ := bytes.Cut(out, []byte("\r\n\r\n"))
		lines := strings.Split(strings.ToLower(string(head)), "\r\n")
		n := map[string]int{}
		for _, l := range lines {
			for _, f := range []string{"content-length:", "transfer-encoding:", "connection:"} {
				if strings.HasPrefix(l, f) {
					n[f]++
				}
			}
		}
		if n["content-length:"]+n["transfer-encoding:"] != 1 || n["connection:"] > 1 {
			t.Errorf("%s: the answer carries %d Content-Length, %d Transfer-Encoding, %d Connection lines (want one framing header, at most one Connection): %q",
				path, n["content-length:"], n["transfer-encoding:"], n["connection:"], head)
		}
	}
}

// a24ClosedAfter reports how long the server took to close c (reading until EOF or an
// error), while feed (if set) keeps sending.
func a24ClosedAfter(c net.Conn) (time.Duration, error) {
	start := time.Now()
	_, err := io.Copy(io.Discard, c)
	return time.Since(start), err
}

// TestAttack24Slowloris (promise 3): a client that trickles its request line and headers
// (a byte every 20 ms, forever) is cut by ReadHeaderTimeout; one that stays silent
// after an answer by IdleTimeout; one that never starts a TLS handshake by the header
// timeout. Timeouts 300 ms; each must close within 5 s.
func TestAttack24Slowloris(t *testing.T) {
	_, addr := a24H1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		func(s *Server) { s.ReadHeaderTimeout = 300 * time.Millisecond; s.IdleTimeout = 300 * time.Millisecond })
	check := func(name string, c net.Conn, feed string) {
		stop := make(chan struct{})
		defer close(stop)
		if feed != "" {
			go func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					if _, err := c.Write([]byte{feed[i%len(feed)]}); err != nil {
						return
					}
				}
			}()
		}
		d, err := a24ClosedAfter(c)
		if d > a24Quick || err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s: connection closed after %v (%v); want about 300 ms", name, d, err)
		}
	}
	// A trickled request line and headers that never end.
	c := a24Dial(t, addr)
	check("trickled headers", c, "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "+strings.Repeat("z", 1<<20))
	// Trickled headers after a first request was answered (the idle wait is over once
	// the first byte comes; the header timeout then runs).
	c = a24Dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
	}
	check("trickled second request", c, "GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "+strings.Repeat("z", 1<<20))
	// Idle after an answer.
	c = a24Dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br = bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
	}
	check("idle after an answer", c, "")
	// Connected, never a byte.
	check("silent from the start", a24Dial(t, addr), "")
	// A chunked body whose handler never reads it, trickled forever: the drain after
	// the answer must not wait for it unbounded.
	c = a24Dial(t, addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
	check("trickled unread chunked body", c, "1;"+strings.Repeat("e", 100)+"\r\nx\r\n")
}

// TestAttack24TLSHandshakeSilent (promise 3): a TLS client that connects and never sends
// a ClientHello is cut by the header timeout.
func TestAttack24TLSHandshakeSilent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	tc := ts.TLS.Clone()
	ts.Close()
	s := &Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 300 * time.Millisecond}
	go s.Serve(tls.NewListener(ln, tc))
	defer s.Close()
	c := a24Dial(t, ln.Addr().String())
	if d, _ := a24ClosedAfter(c); d > a24Quick {
		t.Errorf("a silent TLS client was kept %v", d)
	}
}

// TestAttack24SlowBodyUpload (promise 1): a request body that arrives slower than
// ReadHeaderTimeout (a large upload on a slow link — an audio transcription, a long
// prompt). ReadHeaderTimeout is, by its name and net/http's meaning, a bound on the
// headers; net/http's handler reads the whole body. Headers are sent at once; 10 body
// bytes follow 100 ms apart; ReadHeaderTimeout is 300 ms on both servers.
func TestAttack24SlowBodyUpload(t *testing.T) {
	type result struct {
		body string
		err  error
	}
	for _, name := range []string{"net/http", "h1"} {
		got := make(chan result, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body)
			got <- result{string(b), err}
			io.WriteString(w, "ok")
		})
		var addr string
		if name == "h1" {
			_, addr = a24H1(t, h, func(s *Server) { s.ReadHeaderTimeout = 300 * time.Millisecond })
		} else {
			addr = a24Std(t, h, func(s *http.Server) { s.ReadHeaderTimeout = 300 * time.Millisecond })
		}
		c := a24Dial(t, addr)
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
		go func() {
			for i := range 10 {
				time.Sleep(100 * time.Millisecond) // the client's pace, not a wait for the server
				if _, err := c.Write([]byte{'0' + byte(i)}); err != nil {
					return
				}
			}
		}()
		select {
		case r := <-got:
			if r.err != nil || r.body != "0123456789" {
				t.Errorf("%s: the handler read %q, %v; want the whole 10-byte body", name, r.body, r.err)
			}
		case <-time.After(a24Wait):
			t.Errorf("%s: the handler never finished reading", name)
		}
	}
}

// a24GoneHandler reads the body with read (or not at all), signals started, then waits
// for the request's context to end (or 30 s) and reports whether it ended.
func a24GoneHandler(read func(io.Reader), started chan<- struct{}, cancelled chan<- bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if read != nil {
			read(r.Body)
		}
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			cancelled <- true
		case <-time.After(a24Wait):
			cancelled <- false
		}
		io.WriteString(w, "late")
	})
}

// TestAttack24ClientGoneBodyShapes (promise 4): a client that sends its request and goes
// away while the handler works (after WatchAfter) must end the request's context — with
// a Content-Length body read by io.ReadAll, with a chunked body a JSON decoder reads
// (it stops at the value's end: the last-chunk marker is already in the server's buffer,
// but no Read returned EOF), with a Content-Length JSON body and a trailing newline, and
// with no body. net/http runs the same handler as the reference.
func TestAttack24ClientGoneBodyShapes(t *testing.T) {
	readAll := func(r io.Reader) { io.ReadAll(r) }
	decode := func(r io.Reader) { var v any; json.NewDecoder(r).Decode(&v) }
	for _, tc := range []struct {
		name string
		read func(io.Reader)
		raw  string
	}{
		{"no body", nil, "GET /g HTTP/1.1\r\nHost: a\r\n\r\n"},
		{"content-length, ReadAll", readAll, "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}"},
		{"content-length, json.Decoder", decode, "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}"},
		{"chunked, ReadAll", readAll, "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n{\"model\":\"m\"}\r\n0\r\n\r\n"},
		{"chunked, json.Decoder", decode, "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n{\"model\":\"m\"}\r\n0\r\n\r\n"},
	} {
		for _, name := range []string{"net/http", "h1"} {
			started, cancelled := make(chan struct{}, 1), make(chan bool, 1)
			h := a24GoneHandler(tc.read, started, cancelled)
			var addr string
			if name == "h1" {
				_, addr = a24H1(t, h, nil)
			} else {
				addr = a24Std(t, h, nil)
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, tc.raw)
			<-started
			c.Close()
			select {
			case ok := <-cancelled:
				if !ok {
					t.Errorf("%s, %s: the context outlived its client", tc.name, name)
				}
			case <-time.After(a24Quick):
				t.Errorf("%s, %s: %v after the client closed, the request's context has not ended (input %q)", tc.name, name, a24Quick, tc.raw)
			}
		}
	}
}

// TestAttack24ClientGoneTLS (promise 4): over TLS, a client that goes away — with a
// close_notify alert, or by dropping the TCP connection under it — ends the request's
// context, with and without a body.
func TestAttack24ClientGoneTLS(t *testing.T) {
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	tc := ts.TLS.Clone()
	ts.Close()
	tc.NextProtos = nil
	for _, k := range []struct {
		name  string
		raw   string
		read  func(io.Reader)
		alert bool
	}{
		{"no body, close_notify", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", nil, true},
		{"no body, TCP close", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", nil, false},
		{"body, close_notify", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", func(r io.Reader) { io.ReadAll(r) }, true},
		{"body, TCP close", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", func(r io.Reader) { io.ReadAll(r) }, false},
	} {
		started, cancelled := make(chan struct{}, 1), make(chan bool, 1)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := &Server{Handler: a24GoneHandler(k.read, started, cancelled), WatchAfter: 20 * time.Millisecond}
		go s.Serve(tls.NewListener(ln, tc))
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
		io.WriteString(c, k.raw)
		<-started
		if k.alert {
			c.Close()
		} else {
			raw.Close()
		}
		select {
		case ok := <-cancelled:
			if !ok {
				t.Errorf("TLS, %s: the context outlived its client", k.name)
			}
		case <-time.After(a24Quick):
			t.Errorf("TLS, %s: the request's context did not end when its client left", k.name)
		}
		s.Close()
	}
}

// TestAttack24HalfClose (promise 4, "decide and report"): a client that sends its request
// and then shuts down its write side (as `nc -N`, some proxies and scripted clients do)
// while still waiting for the answer. Reported as found: the request's context ends,
// and the answer still reaches the client; net/http does the same. Asserts that h1 and
// net/http agree (but for h1's Connection: close, added after the round), and that the
// client gets the answer.
func TestAttack24HalfClose(t *testing.T) {
	type outcome struct {
		cancelled bool
		answer    string
	}
	run := func(name string) outcome {
		ctxEnded := make(chan bool, 1)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
				ctxEnded <- true
			case <-time.After(time.Second): // the engine's work; longer than a watch takes
				ctxEnded <- false
			}
			io.WriteString(w, "answer")
		})
		var addr string
		if name == "h1" {
			_, addr = a24H1(t, h, nil)
		} else {
			addr = a24Std(t, h, nil)
		}
		c := a24Dial(t, addr)
		io.WriteString(c, "GET /half HTTP/1.1\r\nHost: a\r\n\r\n")
		c.(*net.TCPConn).CloseWrite()
		out, _ := io.ReadAll(c)
		got := a24Responses(out)
		return outcome{<-ctxEnded, fmt.Sprint(got)}
	}
	std, h1 := run("net/http"), run("h1")
	t.Logf("half-close: net/http cancelled=%v answer=%s; h1 cancelled=%v answer=%s", std.cancelled, std.answer, h1.cancelled, h1.answer)
	// h1 says Connection: close on the answer, since it knows the client has gone and
	// closes after it; net/http closes without saying so. Otherwise the two agree.
	if std.cancelled != h1.cancelled || strings.Replace(h1.answer, "close=true", "close=false", 1) != std.answer {
		t.Errorf("half-close differs: net/http %+v, h1 %+v", std, h1)
	}
	if !strings.Contains(h1.answer, `body="answer"`) {
		t.Errorf("h1: a half-closed client did not get its answer: %s", h1.answer)
	}
}

// TestAttack24WatchStopRace (promise 4, 2): a handler that returns just as the sweep
// starts watching its connection. The watch goroutine's first act is to clear the
// connection's read deadline; unwatch stops a running watch by setting a deadline in
// the past. If unwatch runs first, the watch clears that deadline and then blocks in
// Peek with none — and unwatch waits for it before the answer is flushed: the answer
// is held until the client sends another byte or goes away. Each try: a fresh
// connection, one GET, a handler that returns as soon as its connection's watch is
// marked running; the answer must arrive within 5 s (it normally takes microseconds);
// if it does not, one more byte from the client releasing it is the proof.
func TestAttack24WatchStopRace(t *testing.T) {
	var s *Server
	var handlerDone atomic.Int32
	s, addr := a24H1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		deadline := time.Now().Add(a24Wait)
		for !s.a24Watching() && time.Now().Before(deadline) {
			runtime.Gosched()
		}
		io.WriteString(w, "ok")
		handlerDone.Add(1)
	}), func(s *Server) { s.WatchAfter = 2 * time.Millisecond })
	const tries = 200
	start := time.Now()
	for i := range tries {
		if time.Since(start) > 8*time.Second {
			t.Logf("stopped after %d tries (time budget)", i)
			break
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /race HTTP/1.1\r\nHost: a\r\n\r\n")
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(a24Quick))
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			io.ReadAll(resp.Body)
			c.Close()
			continue
		}
		// No answer in 5 s: the handler has returned? and the connection's state.
		done := handlerDone.Load() == int32(i+1)
		state := s.a24WatchStuck()
		c.SetReadDeadline(time.Now().Add(a24Wait))
		io.WriteString(c, "\r\n") // one more byte (an empty line, skipped before a request)
		resp, err2 := http.ReadResponse(br, nil)
		released := err2 == nil && resp.StatusCode == 200
		c.Close()
		t.Fatalf("try %d: no answer %v after the request (%v); handler returned: %v; connection state: %s; answer released by one more client byte: %v",
			i, a24Quick, err, done, state, released)
	}
}

// a24Watching reports whether some connection's watch has been started (c.watching).
func (s *Server) a24Watching() bool { return s.someWatch(func(*conn) bool { return true }) }

// a24WatchStuck describes the watch state of the server's connections.
func (s *Server) a24WatchStuck() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for c := range s.conns {
		c.watchMu.Lock()
		w, d, end := c.watching, c.watchDone, c.watchEnd
		c.watchMu.Unlock()
		ended := false
		if end != nil {
			select {
			case <-end:
				ended = true
			default:
			}
		}
		out = append(out, fmt.Sprintf("watching=%v handlerReturned(watchDone)=%v watchGoroutineEnded=%v", w, d, ended))
	}
	return strings.Join(out, "; ")
}

// TestAttack24Panic (promise 5): a handler that panics — before writing, after a
// flushed partial answer, after reading part of a body — closes only its own
// connection; a keep-alive connection opened before and kept open is still served, and
// new ones are.
func TestAttack24Panic(t *testing.T) {
	_, addr := a24H1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			panic("boom")
		case "/panic-flushed":
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic("boom")
		case "/panic-body":
			r.Body.Read(make([]byte, 1))
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "fine")
	}), nil)
	other := a24Dial(t, addr)
	obr := bufio.NewReader(other)
	ask := func(what string) {
		io.WriteString(other, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
		resp, err := http.ReadResponse(obr, nil)
		if err != nil {
			t.Fatalf("%s: the other connection: %v", what, err)
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != "fine" {
			t.Fatalf("%s: the other connection got %q", what, b)
		}
	}
	ask("before")
	for _, raw := range []string{
		"GET /panic HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /panic-flushed HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /panic-body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcdeGET /ok HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		out := a24Exchange(t, addr, raw) // returns at the connection's close
		if bytes.Contains(out, []byte("fine")) {
			t.Errorf("%q: the request after a panic was served on its connection: %q", raw, out)
		}
		ask("after " + strings.SplitN(raw, " ", 3)[1])
	}
	if st, _, _, err := a24First(t, addr, "GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"); err != nil || st != 200 {
		t.Errorf("a new connection after the panics: %d %v", st, err)
	}
}

// TestAttack24ShutdownAndClose (promise 6): Shutdown closes idle connections (also a
// connection that was answered and is mid-way between requests), waits for busy ones
// — a streaming answer already flushed, a request still being read — whose answers
// carry Connection: close, and Serve returns ErrServerClosed; Serve on a shut server
// returns ErrServerClosed at once. Close cuts a busy connection and ends its context.
func TestAttack24ShutdownAndClose(t *testing.T) {
	release := make(chan struct{})
	started := make(chan string, 4)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			started <- r.URL.Path
			<-release
		case "/upload":
			started <- r.URL.Path
			io.ReadAll(r.Body)
		case "/ctx":
			started <- r.URL.Path
			<-r.Context().Done()
			return
		}
		io.WriteString(w, "ok")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	addr := ln.Addr().String()

	idle := a24Dial(t, addr)
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	ibr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ibr, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
	}
	never := a24Dial(t, addr) // connected, never sent a byte
	busy := a24Dial(t, addr)
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	uploading := a24Dial(t, addr)
	io.WriteString(uploading, "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
	<-started

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	for name, c := range map[string]net.Conn{"idle": idle, "never": never} {
		if d, _ := a24ClosedAfter(c); d > a24Quick {
			t.Errorf("%s connection closed %v after Shutdown", name, d)
		}
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned while requests ran: %v", err)
	default:
	}
	if err := s.Serve(ln); err != ErrServerClosed {
		t.Errorf("Serve after Shutdown: %v", err)
	}
	io.WriteString(uploading, "cd")
	for name, c := range map[string]net.Conn{"upload": uploading, "slow": busy} {
		if name == "slow" {
			close(release)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != "ok" || !resp.Close {
			t.Errorf("%s: answer %q close %v; want ok with Connection: close", name, b, resp.Close)
		}
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(a24Wait):
		t.Fatal("Shutdown did not return after the busy requests ended")
	}
	select {
	case err := <-served:
		if err != ErrServerClosed {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(a24Wait):
		t.Fatal("Serve did not return")
	}

	// Close: a handler waiting on its context.
	s2, addr2 := a24H1(t, h, nil)
	c := a24Dial(t, addr2)
	io.WriteString(c, "GET /ctx HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	s2.Close()
	if d, _ := a24ClosedAfter(c); d > a24Quick {
		t.Errorf("Close left a busy connection open %v", d)
	}
	waited := make(chan struct{})
	go func() { s2.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(a24Wait):
		t.Error("Wait did not return after Close (the handler's context did not end?)")
	}
}

// a24Settled polls until the goroutine count is at most want (then returns it), or
// returns the last count after a24Wait.
func a24Settled(want int) int {
	deadline := time.Now().Add(a24Wait)
	n := runtime.NumGoroutine()
	for n > want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}

// TestAttack24NoGoroutinesLeft (promise 3): connections in every state, closed by their
// clients, leave no goroutine behind (the server still running); then the server's
// Close leaves none of its own. States: idle after an answer, mid-headers, mid-body
// (handler reading), watched (handler waiting on its context), pipelined, refused,
// mid-TLS-handshake, a chunked body left unread.
func TestAttack24NoGoroutinesLeft(t *testing.T) {
	// Whatever runs now (earlier tests' servers winding down), once it stops changing.
	before := runtime.NumGoroutine()
	for i, stable := 0, 0; stable < 5 && i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
		n := runtime.NumGoroutine()
		if n == before {
			stable++
		} else {
			before, stable = n, 0
		}
	}
	started := make(chan struct{}, 16)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/read":
			started <- struct{}{}
			io.ReadAll(r.Body)
		case "/ctx":
			io.ReadAll(r.Body)
			started <- struct{}{}
			<-r.Context().Done()
			return
		}
		io.WriteString(w, "ok")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	tc := ts.TLS.Clone()
	ts.Close()
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: h, WatchAfter: 10 * time.Millisecond}
	served := make(chan error, 2)
	go func() { served <- s.Serve(ln) }()
	go func() { served <- s.Serve(tls.NewListener(tlsLn, tc)) }()
	addr := ln.Addr().String()
	withServer := a24Settled(before + 3) // Serve x2 (+ the TLS listener's nothing)

	for round := range 3 {
		var conns []net.Conn
		dial := func(a, raw string) net.Conn {
			c, err := net.Dial("tcp", a)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, raw)
			conns = append(conns, c)
			return c
		}
		c := dial(addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			io.ReadAll(resp.Body)
		}
		dial(addr, "GET / HTTP/1.1\r\nHost: a\r\nX-Half: ")
		dial(addr, "POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
		<-started
		dial(addr, "POST /ctx HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}")
		<-started
		dial(addr, strings.Repeat("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 20))
		dial(addr, "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
		dial(tlsLn.Addr().String(), "\x16\x03\x01") // a TLS record header, then nothing
		dial(addr, "POST /ignored HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\nabc")
		a24Poll(t, a24Wait, "the server to hold the connections", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return len(s.conns) >= 6
		})
		for _, c := range conns {
			c.Close()
		}
		if n := a24Settled(withServer); n > withServer {
			t.Errorf("round %d: %d goroutines 30 s after every client closed, %d with the server idle:\n%s", round, n, withServer, a24Stacks())
			break
		}
	}
	s.Close()
	for range 2 {
		<-served
	}
	s.Wait()
	if n := a24Settled(before); n > before {
		t.Errorf("%d goroutines after Close, %d before the server:\n%s", n, before, a24Stacks())
	}
}

func a24Stacks() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "internal/h1") && !strings.Contains(g, "TestAttack24NoGoroutinesLeft") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// TestAttack24WatchAfterTiny (configuration robustness): WatchAfter is documented as a
// duration (0: 50 ms); a positive value under 2 ns makes the sweep's ticker interval
// WatchAfter/2 zero, and time.NewTicker panics on its goroutine — the whole process
// (the gateway) dies at the first request. Run in a child process.
func TestAttack24WatchAfterTiny(t *testing.T) {
	if os.Getenv("A24_CHILD") == "1" {
		_, addr := a24H1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
			func(s *Server) { s.WatchAfter = time.Nanosecond })
		for range 3 {
			if st, _, _, err := a24First(t, addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"); err != nil || st != 200 {
				t.Fatalf("%d %v", st, err)
			}
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAttack24WatchAfterTiny$", "-test.count=1")
	cmd.Env = append(os.Environ(), "A24_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		first, _, _ := strings.Cut(string(out), "\n\n")
		t.Errorf("a server with WatchAfter = 1 ns: the process failed (%v):\n%s", err, first)
	}
}

// TestAttack24WriteDeadlineCarriesOver (http.ResponseController, which h1 says it
// takes): a handler bounds its own answer's writes with SetWriteDeadline; net/http
// clears the deadline when the handler returns, so the next request on the keep-alive
// connection is answered. In h1 the deadline stays on the connection: once it passes,
// the next request's answer cannot be written and the client sees the connection drop.
func TestAttack24WriteDeadlineCarriesOver(t *testing.T) {
	var dl atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bounded" {
			d := time.Now().Add(100 * time.Millisecond)
			dl.Store(d.UnixNano())
			http.NewResponseController(w).SetWriteDeadline(d)
		}
		io.WriteString(w, r.URL.Path)
	})
	_, h1Addr := a24H1(t, h, func(s *Server) { s.IdleTimeout = 10 * time.Second })
	stdAddr := a24Std(t, h, nil)
	for _, srv := range []struct{ name, addr string }{{"net/http", stdAddr}, {"h1", h1Addr}} {
		c := a24Dial(t, srv.addr)
		br := bufio.NewReader(c)
		var got []string
		for _, path := range []string{"/bounded", "/next"} {
			if path == "/next" {
				// The client's next request comes after the first handler's deadline.
				for time.Now().UnixNano() <= dl.Load()+int64(50*time.Millisecond) {
					time.Sleep(10 * time.Millisecond)
				}
			}
			io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				got = append(got, "error: "+err.Error())
				break
			}
			b, _ := io.ReadAll(resp.Body)
			got = append(got, string(b))
		}
		if fmt.Sprint(got) != "[/bounded /next]" {
			t.Errorf("%s: answers %q; want [/bounded /next]", srv.name, got)
		}
	}
}

// TestAttack24PipelinedWhileWatched (promise 4): a POST whose body was read, a handler
// that runs past WatchAfter (so its connection is watched), and the client sending its
// next request — a POST with a body — while the first is still being answered. The
// first must not be cancelled, and both must be answered in order with the right bodies.
func TestAttack24PipelinedWhileWatched(t *testing.T) {
	var s *Server
	var cancelled atomic.Bool
	next := make(chan struct{})
	s, addr := a24H1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/first" {
			a24Poll(t, a24Wait, "the watch to start", s.a24Watching)
			next <- struct{}{}
			<-next
			a24Poll(t, a24Wait, "the watch to see the next request", s.watchSawNext)
			cancelled.Store(r.Context().Err() != nil)
		}
		fmt.Fprintf(w, "%s:%s", r.URL.Path, b)
	}), nil)
	c := a24Dial(t, addr)
	io.WriteString(c, "POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\none")
	<-next
	io.WriteString(c, "POST /second HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\nGET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	next <- struct{}{}
	out, _ := io.ReadAll(c)
	got := a24Responses(out)
	want := []string{`200 close=false body="/first:one"`, `200 close=false body="/second:two"`, `200 close=true body="/third:"`}
	if fmt.Sprint(got) != fmt.Sprint(want) || cancelled.Load() {
		t.Errorf("answers %q (first cancelled: %v); want %q", got, cancelled.Load(), want)
	}
}
