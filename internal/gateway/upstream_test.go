package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"golang.org/x/net/http/httpguts"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpEngine is an engine on a raw TCP listener whose connections are each served by serve
// (conn counted from 0). heads counts request heads the engine parsed (any connection).
type tcpEngine struct {
	ln    net.Listener
	conns atomic.Int64
	heads atomic.Int64
}

func newTCPEngine(t *testing.T, serve func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64)) *tcpEngine {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &tcpEngine{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := e.conns.Add(1) - 1
			go func() {
				defer c.Close()
				serve(e, c, bufio.NewReader(c), n)
			}()
		}
	}()
	return e
}

func (e *tcpEngine) url() string { return "http://" + e.ln.Addr().String() + "/v1" }

// readReq reads one request (head and body) and counts it.
func (e *tcpEngine) readReq(br *bufio.Reader) (*http.Request, string, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, "", err
	}
	e.heads.Add(1)
	b, err := io.ReadAll(req.Body)
	return req, string(b), err
}

// rawEngine is a tcpEngine that answers each request with answer's bytes for it (the n-th
// on its connection, counted from 0, and its body), closing the connection after it when
// answer says so.
type rawEngine struct {
	*tcpEngine
	closed chan struct{} // a connection was closed by the engine
}

func newRawEngine(t *testing.T, answer func(n int, body string) (string, bool)) *rawEngine {
	t.Helper()
	e := &rawEngine{closed: make(chan struct{}, 100)}
	e.tcpEngine = newTCPEngine(t, func(te *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		for n := 0; ; n++ {
			_, body, err := te.readReq(br)
			if err != nil {
				return
			}
			out, closeAfter := answer(n, body)
			if _, err := io.WriteString(c, out); err != nil {
				return
			}
			if closeAfter {
				c.Close()
				e.closed <- struct{}{}
				return
			}
		}
	})
	return e
}

func okAnswer(body string) string {
	return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

func engineDo(t *testing.T, cl *engineClient, ctx context.Context, url, body string) (int, string, error) {
	t.Helper()
	return engineDoFor(t, cl, "", ctx, url, body)
}

// engineDoFor is engineDo for tenant's pool.
func engineDoFor(t *testing.T, cl *engineClient, tenant string, ctx context.Context, url, body string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.DoFor(req.Context(), tenant, req, []byte(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestEngineClientReusesConnections(t *testing.T) {
	e := newRawEngine(t, func(n int, body string) (string, bool) { return okAnswer(`{"echo":` + body + `}`), false })
	cl := newEngineClient(time.Minute, http.DefaultClient)
	for i := range 50 {
		body := `{"i":` + strconv.Itoa(i) + `}`
		code, got, err := engineDo(t, cl, context.Background(), e.url(), body)
		if err != nil || code != 200 || got != `{"echo":`+body+`}` {
			t.Fatalf("request %d: %d %q %v", i, code, got, err)
		}
	}
	if n := e.conns.Load(); n != 1 {
		t.Fatalf("50 requests in a row took %d connections, want 1", n)
	}
}

// An engine that closes the connection after each answer without saying so: the peek
// before reuse finds the close, and the next request goes on a new connection.
func TestEngineClientEngineClosesIdle(t *testing.T) {
	e := newRawEngine(t, func(n int, body string) (string, bool) { return okAnswer(`{}`), true })
	cl := newEngineClient(time.Minute, http.DefaultClient)
	for i := range 5 {
		if code, _, err := engineDo(t, cl, context.Background(), e.url(), `{}`); err != nil || code != 200 {
			t.Fatalf("request %d: %d %v", i, code, err)
		}
		<-e.closed // the engine's close has happened before the next request
	}
	if n, c := e.heads.Load(), e.conns.Load(); n != 5 || c != 5 {
		t.Fatalf("engine saw %d requests on %d connections, want 5 on 5", n, c)
	}
}

// A request is sent once: an engine that reads it on a reused connection and closes
// without answering, or drops the connection after part of an answer, gets an error, not
// the request again (it may have run).
func TestEngineClientNeverResends(t *testing.T) {
	for _, second := range []string{"", "HTTP/1.1 200 OK\r\nContent-Len"} {
		e := newRawEngine(t, func(n int, body string) (string, bool) {
			if n == 0 {
				return okAnswer(`{}`), false
			}
			return second, true
		})
		cl := newEngineClient(time.Minute, http.DefaultClient)
		if code, _, err := engineDo(t, cl, context.Background(), e.url(), `{}`); err != nil || code != 200 {
			t.Fatalf("first: %d %v", code, err)
		}
		if _, _, err := engineDo(t, cl, context.Background(), e.url(), `{}`); err == nil {
			t.Fatalf("answer %q: the request succeeded", second)
		}
		if n := e.heads.Load(); n != 2 {
			t.Fatalf("answer %q: engine saw %d requests, want 2 (each once)", second, n)
		}
	}
}

// Bytes an engine sends after an answer's end — a second copy of the answer — are never
// read as the next request's answer (the pool is shared by every tenant): the peek before
// reuse finds them, also when they sit in the socket beyond what the reader buffered.
func TestEngineClientUnaskedBytesNotServed(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
	}{{"small answer", 10}, {"answer beyond the buffer", 40 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			first := `{"a":"` + strings.Repeat("x", tc.size) + `"}`
			e := newRawEngine(t, func(n int, body string) (string, bool) {
				if body == `{"t":"A"}` {
					return okAnswer(first) + okAnswer(`{"smuggled":true}`), false
				}
				return okAnswer(`{"echo":` + body + `}`), false
			})
			cl := newEngineClient(time.Minute, http.DefaultClient)
			req, _ := http.NewRequest(http.MethodPost, e.url()+"/chat/completions", nil)
			resp, err := cl.Do(req, []byte(`{"t":"A"}`))
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			buf.Grow(64 << 10) // as the gateway reads: the last read can take the body's end straight from the socket
			if _, err := buf.ReadFrom(resp.Body); err != nil || buf.String() != first {
				t.Fatalf("first answer: %d bytes, %v", buf.Len(), err)
			}
			resp.Body.Close()
			code, got, err := engineDo(t, cl, context.Background(), e.url(), `{"t":"B"}`)
			if err != nil || code != 200 || got != `{"echo":{"t":"B"}}` {
				t.Fatalf("the next request got %d %.80q %v, want its own answer", code, got, err)
			}
		})
	}
}

// An answer that asks to close, an answer read to the connection's end, bytes after the
// answer's end (a smuggled second answer), and a body the caller did not read to its end:
// none of these connections is reused.
func TestEngineClientDoesNotReuse(t *testing.T) {
	smuggled := okAnswer(`{"smuggled":true}`)
	cases := []struct {
		name   string
		answer string
		read   int // bytes of the body read before Close; -1 all
		want   string
	}{
		{"connection close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", -1, "{}"},
		{"http/1.0 to eof", "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}", -1, "{}"},
		{"bytes after the answer", okAnswer(`{}`) + smuggled, -1, "{}"},
		{"body not read", okAnswer(`{"long":"` + strings.Repeat("x", 100<<10) + `"}`), 10, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newRawEngine(t, func(n int, body string) (string, bool) {
				return tc.answer, strings.HasPrefix(tc.answer, "HTTP/1.0")
			})
			cl := newEngineClient(time.Minute, http.DefaultClient)
			for i := range 3 {
				req, _ := http.NewRequest(http.MethodPost, e.url()+"/chat/completions", nil)
				resp, err := cl.Do(req, []byte(`{}`))
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				var got []byte
				if tc.read < 0 {
					got, err = io.ReadAll(resp.Body)
				} else {
					_, err = io.ReadFull(resp.Body, make([]byte, tc.read))
				}
				resp.Body.Close()
				if err != nil || (tc.read < 0 && string(got) != tc.want) {
					t.Fatalf("request %d: %q %v", i, got, err)
				}
			}
			if n := e.conns.Load(); n != 3 {
				t.Fatalf("3 requests took %d connections, want 3", n)
			}
		})
	}
}

func TestEngineClientBadAnswers(t *testing.T) {
	t.Run("headers over 1 MiB", func(t *testing.T) {
		e := newRawEngine(t, func(n int, body string) (string, bool) {
			return "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\nContent-Length: 0\r\n\r\n", false
		})
		_, _, err := engineDo(t, newEngineClient(time.Minute, http.DefaultClient), context.Background(), e.url(), `{}`)
		if !errors.Is(err, errEngineHeaderTooLong) {
			t.Fatalf("got %v, want %v", err, errEngineHeaderTooLong)
		}
	})
	t.Run("1xx before the answer", func(t *testing.T) {
		e := newRawEngine(t, func(n int, body string) (string, bool) {
			return "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + okAnswer(`{"ok":1}`), false
		})
		code, got, err := engineDo(t, newEngineClient(time.Minute, http.DefaultClient), context.Background(), e.url(), `{}`)
		if err != nil || code != 200 || got != `{"ok":1}` {
			t.Fatalf("got %d %q %v", code, got, err)
		}
	})
	t.Run("endless 1xx", func(t *testing.T) {
		e := newRawEngine(t, func(n int, body string) (string, bool) {
			return strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 50000) + okAnswer(`{}`), false
		})
		_, _, err := engineDo(t, newEngineClient(time.Minute, http.DefaultClient), context.Background(), e.url(), `{}`)
		if !errors.Is(err, errEngineHeaderTooLong) {
			t.Fatalf("got %v, want %v", err, errEngineHeaderTooLong)
		}
	})
	t.Run("no answer in time", func(t *testing.T) {
		e := newRawEngine(t, func(n int, body string) (string, bool) { select {} })
		_, _, err := engineDo(t, newEngineClient(50*time.Millisecond, http.DefaultClient), context.Background(), e.url(), `{}`)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("got %v, want a timeout", err)
		}
	})
}

// A header value with a line break is refused before anything goes out: the engine sees
// no request (no header injection through a tenant name or a key).
func TestEngineClientRefusesHeaderInjection(t *testing.T) {
	e := newRawEngine(t, func(n int, body string) (string, bool) { return okAnswer(`{}`), false })
	cl := newEngineClient(time.Minute, http.DefaultClient)
	for _, v := range []string{"a\r\nX-Injected: 1", "a\nb", "a\x00b"} {
		req, _ := http.NewRequest(http.MethodPost, e.url()+"/chat/completions", nil)
		req.Header.Set("X-Tenant", v)
		if _, err := cl.Do(req, []byte(`{}`)); !errors.Is(err, errEngineHeader) {
			t.Fatalf("%q: got %v", v, err)
		}
	}
	if code, _, err := engineDo(t, cl, context.Background(), e.url(), `{}`); err != nil || code != 200 {
		t.Fatalf("a good request after: %d %v", code, err)
	}
	if n := e.heads.Load(); n != 1 {
		t.Fatalf("engine saw %d requests, want 1", n)
	}
}

// Cancelling the request's context while it waits for the answer ends it at once with the
// context's error, and the connection is not reused.
func TestEngineClientCancel(t *testing.T) {
	release := make(chan struct{})
	e := newRawEngine(t, func(n int, body string) (string, bool) {
		if n == 0 && body == `{"wait":1}` {
			<-release
		}
		return okAnswer(`{}`), false
	})
	defer close(release)
	cl := newEngineClient(time.Minute, http.DefaultClient)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := engineDo(t, cl, ctx, e.url(), `{"wait":1}`)
		errc <- err
	}()
	for e.heads.Load() == 0 {
		time.Sleep(time.Millisecond) // until the engine has the request
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if code, _, err := engineDo(t, cl, context.Background(), e.url(), `{}`); err != nil || code != 200 {
		t.Fatalf("after: %d %v", code, err)
	}
	if n := e.conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (the cancelled one not reused)", n)
	}
}

// The request on the wire is what the engine's parser reads: method, path, Host, length,
// headers, body.
func TestEngineClientRequestBytes(t *testing.T) {
	var seen *http.Request
	var mu sync.Mutex
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = r
		seen.Body = io.NopCloser(bytes.NewReader(b))
		mu.Unlock()
		w.Write([]byte(`{}`))
	})}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()
	cl := newEngineClient(time.Minute, http.DefaultClient)
	req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/v1/chat/completions?x=1", nil)
	req.Header.Set("Authorization", "Bearer k")
	req.Header.Add("X-Two", "a")
	req.Header.Add("X-Two", "b")
	resp, err := cl.Do(req, []byte(`{"model":"m"}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	b, _ := io.ReadAll(seen.Body)
	if seen.Method != "POST" || seen.URL.RequestURI() != "/v1/chat/completions?x=1" || seen.Host != ln.Addr().String() ||
		seen.ContentLength != 13 || string(b) != `{"model":"m"}` || seen.Header.Get("Authorization") != "Bearer k" ||
		strings.Join(seen.Header.Values("X-Two"), ",") != "a,b" {
		t.Fatalf("engine saw %s %s host %s len %d %q %v", seen.Method, seen.URL, seen.Host, seen.ContentLength, b, seen.Header)
	}
}

// answerConn is a connection whose peer, once something was written, sends answer (and
// swallows what is written).
type answerConn struct {
	net.Conn // nil: only Read, Write, Close and the deadlines are used
	r        *bytes.Reader
	once     sync.Once
	wrote    chan struct{}
}

func newAnswerConn(answer []byte) *answerConn {
	return &answerConn{r: bytes.NewReader(answer), wrote: make(chan struct{})}
}

func (c *answerConn) Read(p []byte) (int, error) { <-c.wrote; return c.r.Read(p) }
func (c *answerConn) Write(p []byte) (int, error) {
	c.once.Do(func() { close(c.wrote) })
	return len(p), nil
}
func (c *answerConn) Close() error                       { return nil }
func (c *answerConn) SetReadDeadline(time.Time) error    { return nil }
func (c *answerConn) SetDeadline(time.Time) error        { return nil }
func (c *answerConn) SetWriteDeadline(t time.Time) error { return nil }
func (c *answerConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *answerConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }

// FuzzEngineAnswer: whatever an engine answers, the engine client never reads it
// differently from net/http's Transport over the same bytes: where the Transport fails,
// the client fails; where the client reads an answer, the Transport reads the same status
// and the same body (or both fail reading it). The client may refuse more (readAnswer's
// stricter rules: bare-LF lines, repeated lengths, codings). It reuses the connection only
// when the answer was framed and nothing followed it.
// strictRefusal reports whether answer breaks one of readAnswer's rules that net/http does
// not have: a line (before the body, or a chunk line) not ending in CRLF, a CR inside a
// line, folding, control bytes, a version other than 1.0/1.1, a status code starting
// with 0, a repeated Content-Length (or one beside a coding: it is checked anyway), a
// transfer coding other than chunked or in HTTP/1.0.
func strictRefusal(answer []byte) bool {
	for {
		head, rest, _ := bytes.Cut(answer, []byte("\r\n\r\n"))
		if strictHead(head, rest) {
			return true
		}
		if len(head) < 12 || head[9] != '1' || string(head[9:12]) == "101" {
			return false
		}
		answer = rest // a 1xx answer: the next one follows
	}
}

func strictHead(head, rest []byte) bool {
	bare := func(b []byte) bool {
		return bytes.Count(b, []byte("\n")) != bytes.Count(b, []byte("\r\n")) || bytes.Count(b, []byte("\r")) != bytes.Count(b, []byte("\r\n"))
	}
	if bare(head) || !(bytes.HasPrefix(head, []byte("HTTP/1.1 ")) || bytes.HasPrefix(head, []byte("HTTP/1.0 "))) ||
		len(head) < 10 || head[9] < '1' || head[9] > '9' {
		return true
	}
	for _, c := range head {
		if c < ' ' && c != '\r' && c != '\n' && c != '\t' || c == 0x7f {
			return true // a control byte in a header
		}
	}
	lengths, codings, chunked := 0, 0, false
	for _, line := range bytes.Split(head, []byte("\r\n"))[1:] {
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			return true
		}
		name, value, _ := bytes.Cut(line, []byte(":"))
		for _, c := range name {
			if !httpguts.IsTokenRune(rune(c)) {
				return true // a name that is not a token (net/http keeps some, spaces included)
			}
		}
		switch strings.ToLower(string(name)) {
		case "content-length":
			lengths++
		case "transfer-encoding":
			codings++
			chunked = strings.EqualFold(strings.TrimSpace(string(value)), "chunked")
		}
	}
	return lengths > 1 || codings > 1 || codings > 0 && lengths > 0 || codings == 1 && (!chunked || bytes.HasPrefix(head, []byte("HTTP/1.0 "))) || chunked && bare(rest)
}

func FuzzEngineAnswer(f *testing.F) {
	for _, s := range []string{
		okAnswer(`{"ok":1}`),
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}}",
		"HTTP/1.0 200 OK\r\n\r\nuntil the end",
		"HTTP/1.1 100 Continue\r\n\r\n" + okAnswer(`{}`),
		strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 6) + okAnswer(`{}`),
		"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, answer []byte) {
		if len(answer) > 64<<10 {
			return
		}
		req := func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, "http://engine.test/v1/chat/completions", bytes.NewReader([]byte(`{}`)))
			return r
		}
		read := func(resp *http.Response, err error) (int, []byte, error, error) {
			if err != nil {
				return 0, nil, err, nil
			}
			b, berr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			return resp.StatusCode, b, nil, berr
		}
		tr := &http.Transport{DisableCompression: true, DialContext: func(context.Context, string, string) (net.Conn, error) {
			return newAnswerConn(answer), nil
		}}
		defer tr.CloseIdleConnections()
		wantCode, wantBody, wantErr, wantBodyErr := read((&http.Client{Transport: tr}).Do(req()))

		cl := newEngineClient(time.Minute, nil)
		ec := &engineConn{c: newAnswerConn(answer), pool: poolKey{addr: "engine.test:80"}, left: -1}
		ec.br = bufio.NewReaderSize(ec, 16<<10)
		ec.bw = bufio.NewWriterSize(ec.c, 8<<10)
		resp, err := cl.roundTrip(context.Background(), ec, req(), []byte(`{}`))
		code, body, err, bodyErr := read(resp, err)
		if resp != nil {
			resp.Body.Close()
		}
		if wantErr == nil && (wantCode < 200 || wantCode > 599) { // 101, or no HTTP status: refused
			if err == nil {
				t.Fatalf("answer %q: status %d taken as an answer", answer, wantCode)
			}
			return
		}
		if wantErr == nil && err != nil && strictRefusal(answer) {
			return // refused by a rule the Transport does not have
		}
		if (err == nil) != (wantErr == nil) || code != wantCode || !bytes.Equal(body, wantBody) || (bodyErr == nil) != (wantBodyErr == nil) && !(bodyErr != nil && strictRefusal(answer)) {
			t.Fatalf("answer %q:\nclient    %d %q %v %v\ntransport %d %q %v %v", answer, code, body, err, bodyErr, wantCode, wantBody, wantErr, wantBodyErr)
		}
		if len(cl.idle[poolKey{addr: "engine.test:80"}]) == 1 && (resp.Close || ec.br.Buffered() > 0 || ec.c.(*answerConn).r.Len() > 0) {
			t.Fatalf("answer %q: connection reused with bytes left over", answer)
		}
	})
}

// TestUpstreamURL: an engine URL is the base's host, the base's path and the endpoint's
// joined (one slash between, escapes kept), and the base's query; it is parsed once and
// shared by later calls, a base CheckUpstream refuses gives no URL and is not cached, and
// the cache is dropped whole at its bound.
func TestUpstreamURL(t *testing.T) {
	g := &Gateway{}
	cases := []struct{ base, endpoint, host, target string }{
		{"http://127.0.0.1:8080/v1", "chat", "127.0.0.1:8080", "/v1/chat/completions"},
		{"http://127.0.0.1:8080/v1/", "completions", "127.0.0.1:8080", "/v1/completions"},
		{"http://127.0.0.1:8080/v1//", "embeddings", "127.0.0.1:8080", "/v1/embeddings"},
		{"http://engine", "chat", "engine", "/chat/completions"},
		{"http://engine/", "models", "engine", "/models"},
		{"HTTP://Engine:80/v1", "chat", "Engine:80", "/v1/chat/completions"},
		{"https://engine.example:8443/base/v1", "chat", "engine.example:8443", "/base/v1/chat/completions"},
		{"http://[::1]:9/v1", "chat", "[::1]:9", "/v1/chat/completions"},
		{"http://e/a%20b/v1", "chat", "e", "/a%20b/v1/chat/completions"},
		{"http://e/v1?api-version=2", "chat", "e", "/v1/chat/completions?api-version=2"},
		{"http://e/v1/?api-version=2&x=a%20b", "models", "e", "/v1/models?api-version=2&x=a%20b"},
	}
	for _, c := range cases {
		got, err := g.upstreamURL(c.base, c.endpoint)
		if err != nil {
			t.Fatalf("%s %s: %v", c.base, c.endpoint, err)
		}
		if got.Host != c.host || got.RequestURI() != c.target {
			t.Fatalf("%s %s: host %q target %q, want %q %q", c.base, c.endpoint, got.Host, got.RequestURI(), c.host, c.target)
		}
		if again, _ := g.upstreamURL(c.base, c.endpoint); again != got {
			t.Fatalf("%s %s: parsed again", c.base, c.endpoint)
		}
	}
	for _, bad := range []string{"http://bad host/", "ftp://e/v1", "/v1", "http:///v1", "http:e", "http://user:s3cret@e/v1", "http://e/v1#frag", "http://e/v1#",
		"http://e/a%2Fb/v1", "http://e/v1/%2e%2e/admin", "http://e/v1/.%2E/x", "http://e/v1/%5c/x", "http://e/v1/..;/admin",
		"http://e/v1;x", "http://e/v1/./x", "http://e/v1/../x", "http://e//v1", "http://e/v1//x", `http://e/v1\x`} {
		if _, err := g.upstreamURL(bad, "chat"); err == nil {
			t.Fatalf("%q gave a URL", bad)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("the refusal repeats the password: %v", err)
		}
		if _, ok := g.urls[upstreamKey{bad, "chat"}]; ok {
			t.Fatalf("%q was cached", bad)
		}
	}
	for i := range maxUpstreamURLs + 5 {
		if _, err := g.upstreamURL(fmt.Sprintf("http://e%d/v1", i), "chat"); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(g.urls); n > maxUpstreamURLs {
		t.Fatalf("the cache holds %d URLs, more than its bound %d", n, maxUpstreamURLs)
	}
}

// TestNewRefusesUpstreams: a route whose engine URL the gateway cannot send to as written
// (credentials, a fragment, not http) is refused when the gateway is made, and the error
// does not repeat a password.
func TestNewRefusesUpstreams(t *testing.T) {
	f := newFixture(t, nil)
	for _, bad := range []string{"http://user:s3cret@127.0.0.1:9/v1", "http://127.0.0.1:9/v1#x", "ftp://127.0.0.1:9/v1", "127.0.0.1:9/v1"} {
		cfg := f.gw.cfg
		cfg.Routes = []Route{{Model: "m", Upstreams: []string{"http://127.0.0.1:9/v1", bad}}}
		_, err := New(cfg)
		if err == nil {
			t.Fatalf("%q: a route to it was made", bad)
		}
		if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "upstream 2") {
			t.Fatalf("%q: %v", bad, err)
		}
	}
}

// TestNewOwnsRoutes: a caller that changes its Config's routes after New (or reuses the
// slices for another gateway) changes nothing the gateway reads.
func TestNewOwnsRoutes(t *testing.T) {
	f := newFixture(t, nil)
	cfg := f.gw.cfg
	cfg.Routes = []Route{{Model: "m", Upstreams: []string{"http://127.0.0.1:9/v1"}, UpstreamKey: "k"}}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Routes[0].Upstreams[0] = "http://127.0.0.1:10/elsewhere"
	cfg.Routes[0].Model, cfg.Routes[0].UpstreamKey = "other", "k2"
	r := g.routes["m"]
	if r == nil || r.Model != "m" || r.UpstreamKey != "k" || len(r.Upstreams) != 1 || r.Upstreams[0] != "http://127.0.0.1:9/v1" {
		t.Fatalf("the gateway's route changed with its caller's config: %+v", r)
	}
}

// TestPooledBuffersBounded: a buffer grown for a large body or answer is not kept for reuse
// (the pool hands out only buffers at most maxPooledBuffer large).
func TestPooledBuffersBounded(t *testing.T) {
	g := &Gateway{}
	g.pool.New = func() any { return new(bytes.Buffer) }
	big := bytes.NewBuffer(make([]byte, 0, 8<<20))
	g.putBuffer(big)
	g.putBuffer(bytes.NewBuffer(make([]byte, 0, 4<<10)))
	for range 4 { // (sync.Pool may drop what it was given: only what it hands out is checked)
		if b := g.pool.Get().(*bytes.Buffer); b == big || b.Cap() > maxPooledBuffer {
			t.Fatalf("the pool handed out a %d-byte buffer", b.Cap())
		}
	}
}
