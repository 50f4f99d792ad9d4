package gateway

// Outside attack 34: the path client -> gateway -> engine and back. Every test asserts
// the secure behaviour: it fails if the bug exists.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/engineauth"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// a34Auth: the token "a34-TENANT" is a principal of TENANT ("a34-raw:" + tenant taken as is).
type a34Auth struct{}

func (a34Auth) Authenticate(_ context.Context, tok string) (*authn.Principal, error) {
	t, ok := strings.CutPrefix(tok, "a34-")
	if !ok {
		return nil, authn.ErrUnauthenticated
	}
	if alias, ok := strings.CutPrefix(t, "raw:"); ok {
		v, _ := a34Tenants.Load(alias)
		t, _ = v.(string)
	}
	return &authn.Principal{Principal: store.Principal{ID: "u-" + t, Tenant: t, Roles: []string{"researcher"}, Screening: "clear"}, KeyID: "k-" + t}, nil
}

const a34Wait = 30 * time.Second

func a34Poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(a34Wait); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for: %s", what)
}

// a34Route adds model name served at base (public).
func a34Route(name string, base string, watermark bool) func(*Config) {
	return func(c *Config) {
		c.Auth = a34Auth{}
		c.Routes = append(c.Routes, Route{Model: name, Upstreams: []string{base}, UpstreamKey: engineKey})
		c.Models.(records)[name] = modelrec.Attrs{Classification: "public", Watermark: watermark}
	}
}

func a34Prompt(body []byte) string {
	var m struct {
		Messages []struct {
			Content string `json:"content"`
		} `json:"messages"`
	}
	json.Unmarshal(body, &m)
	if len(m.Messages) == 0 {
		return ""
	}
	return m.Messages[0].Content
}

// TestAttack34TenantIsolationConcurrent: many tenants, concurrent keep-alive clients,
// streams and non-streams mixed, tracing on, a watermarking route: every answer is the
// asker's, every engine connection carries one tenant, every tenant header the engine
// gets is the prompt's tenant, signed.
func TestAttack34TenantIsolationConcurrent(t *testing.T) {
	var mu sync.Mutex
	connTenant := map[string]string{} // engine-side remote addr -> tenant
	var bad []string
	var engineHost string
	engine := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		nonce := a34Prompt(b)
		tenant, _, _ := strings.Cut(nonce, "|")
		mu.Lock()
		if prev, ok := connTenant[r.RemoteAddr]; ok && prev != tenant {
			bad = append(bad, fmt.Sprintf("engine connection %s carried tenants %q and %q", r.RemoteAddr, prev, tenant))
		}
		connTenant[r.RemoteAddr] = tenant
		if got := r.Header.Get(engineauth.TenantHeader); got != tenant {
			bad = append(bad, fmt.Sprintf("engine told tenant %q for a prompt of %q", got, tenant))
		} else if !engineauth.VerifyTenant([]byte(engineKey), got, r.Header.Get(engineauth.TenantSigHeader), b) {
			bad = append(bad, "tenant signature does not verify for "+tenant)
		}
		if r.URL.Path != "/v1/chat/completions" || r.Host != engineHost {
			bad = append(bad, "engine request to "+r.Host+r.URL.String())
		}
		mu.Unlock()
		w.Header().Set("X-Request-Id", nonce)
		w.Header().Set(engineauth.WatermarkHeader, "applied")
		if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			w.Header().Set("Content-Type", "text/event-stream")
			for _, part := range strings.SplitAfter(nonce, "|") {
				fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", part)
				w.(http.Flusher).Flush()
			}
			io.WriteString(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`, nonce)
	}))
	engineHost = engine.Listener.Addr().String()
	engine.Start()
	t.Cleanup(engine.Close)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	f := newFixture(t, func(c *Config) {
		a34Route("iso", engine.URL+"/v1", true)(c)
		c.Tracer = tp.Tracer("a34")
	})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, MaxConnsPerHost: 16}}
	t.Cleanup(client.CloseIdleConnections)
	const tenants, per = 6, 24
	var wg sync.WaitGroup
	var failures atomic.Int64
	errs := make(chan string, tenants*per)
	for ti := 0; ti < tenants; ti++ {
		for i := 0; i < per; i++ {
			wg.Add(1)
			go func(ti, i int) {
				defer wg.Done()
				tenant := "tenant" + strconv.Itoa(ti)
				nonce := tenant + "|" + strconv.Itoa(i) + "|" + strconv.FormatInt(time.Now().UnixNano(), 36)
				stream := i%2 == 0
				body := fmt.Sprintf(`{"model":"iso","stream":%v,"messages":[{"role":"user","content":%q}]}`, stream, nonce)
				req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/chat/completions", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer a34-"+tenant)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("traceparent", fmt.Sprintf("00-%032x-%016x-01", ti*1000+i+1, i+1))
				resp, err := client.Do(req)
				if err != nil {
					failures.Add(1)
					errs <- err.Error()
					return
				}
				out, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Sprintf("status %d: %s", resp.StatusCode, out)
					return
				}
				if got := resp.Header.Get("X-Request-Id"); got != nonce {
					errs <- fmt.Sprintf("%s got X-Request-Id %q", nonce, got)
				}
				var content string
				if stream {
					for _, line := range strings.Split(string(out), "\n") {
						p, ok := strings.CutPrefix(line, "data: ")
						if !ok || p == "[DONE]" {
							continue
						}
						var ev struct {
							Choices []struct {
								Delta struct{ Content string } `json:"delta"`
							} `json:"choices"`
						}
						json.Unmarshal([]byte(p), &ev)
						for _, c := range ev.Choices {
							content += c.Delta.Content
						}
					}
				} else {
					var m struct {
						Choices []struct {
							Message struct{ Content string } `json:"message"`
						} `json:"choices"`
					}
					json.Unmarshal(out, &m)
					if len(m.Choices) > 0 {
						content = m.Choices[0].Message.Content
					}
				}
				if content != nonce {
					errs <- fmt.Sprintf("asked with %q, answered %q (stream %v)", nonce, content, stream)
				}
			}(ti, i)
		}
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Error(b)
	}
}

// a34RawEngine records each request's raw head (request line and header lines) and answers
// a small JSON completion.
type a34RawEngine struct {
	*tcpEngine
	mu    sync.Mutex
	heads []string
}

func newA34RawEngine(t *testing.T, ln net.Listener) *a34RawEngine {
	e := &a34RawEngine{tcpEngine: &tcpEngine{ln: ln}}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					var head strings.Builder
					cl := 0
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						head.WriteString(line)
						if line == "\r\n" {
							break
						}
						if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "Content-Length") {
							cl, _ = strconv.Atoi(strings.TrimSpace(v))
						}
					}
					if _, err := io.CopyN(io.Discard, br, int64(cl)); err != nil {
						return
					}
					e.mu.Lock()
					e.heads = append(e.heads, head.String())
					e.mu.Unlock()
					const ans = `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`
					io.WriteString(c, okAnswer(ans))
				}
			}()
		}
	}()
	return e
}

func (e *a34RawEngine) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.heads...)
}

func a34Listen(t *testing.T, network, addr string) net.Listener {
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	return ln
}

// a34RawRequest sends raw bytes on a new connection and returns everything read until the
// server closes or the deadline passes.
func a34RawRequest(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(a34Wait))
	io.WriteString(c, raw)
	// One answer: read the head, then Content-Length bytes or chunks until 0.
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return strconv.Itoa(resp.StatusCode) + " " + string(b)
}

func a34Post(model, auth, extra string) string {
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
	return "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + auth + "\r\nContent-Type: application/json\r\n" +
		extra + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// TestAttack34EngineSeesNoClientHeaders: nothing a client puts in its headers reaches the
// engine request but the trace context (rebuilt by the gateway); the engine's Host is its
// own; no header repeats.
func TestAttack34EngineSeesNoClientHeaders(t *testing.T) {
	e := newA34RawEngine(t, a34Listen(t, "tcp", "127.0.0.1:0"))
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	f := newFixture(t, func(c *Config) {
		a34Route("raw", e.url(), true)(c)
		c.Tracer = tp.Tracer("a34")
	})
	addr := f.srv.Listener.Addr().String()
	extras := []string{
		"X-Strongroom-Tenant: evil\r\nX-Strongroom-Tenant-Sig: evil\r\nX-Strongroom-Watermark: applied\r\n",
		"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nTraceParent: 00-11111111111111111111111111111111-2222222222222222-01\r\ntracestate: evil=x,EVILKEY\r\n",
		"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: a=b\x00c, evil2=1\r\n",
		"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: a=b\r\ntracestate: evil3=injected\r\nbaggage: evil4=1\r\n",
		"X-Forwarded-Host: evil.example\r\nForwarded: host=evil.example\r\nX-Evil-5: 1\r\nConnection: keep-alive, X-Evil-5\r\n",
	}
	for i, x := range extras {
		got := a34RawRequest(t, addr, a34Post("raw", "a34-acme", x))
		t.Logf("request %d: %.60s", i, got)
	}
	heads := e.all()
	if len(heads) == 0 {
		t.Fatal("engine got no request")
	}
	for _, h := range heads {
		low := strings.ToLower(h)
		for _, evil := range []string{"evil", "injected", "\x00", "baggage", "forwarded"} {
			if strings.Contains(low, evil) {
				t.Errorf("engine request carries client data %q:\n%q", evil, h)
			}
		}
		seen := map[string]bool{}
		lines := strings.Split(strings.TrimSuffix(h, "\r\n\r\n"), "\r\n")
		if !strings.HasPrefix(lines[0], "POST /v1/chat/completions HTTP/1.1") {
			t.Errorf("request line %q", lines[0])
		}
		for _, l := range lines[1:] {
			k, v, _ := strings.Cut(l, ":")
			k = strings.ToLower(k)
			if seen[k] {
				t.Errorf("header %s repeated:\n%q", k, h)
			}
			seen[k] = true
			if k == "host" && strings.TrimSpace(v) != e.ln.Addr().String() {
				t.Errorf("engine Host %q", v)
			}
			if k == "x-strongroom-tenant" && strings.TrimSpace(v) != "acme" {
				t.Errorf("engine tenant %q", v)
			}
		}
	}
}

// TestAttack34TenantNameInjection: a tenant name with CR/LF/NUL (the store's, not the
// client's, but any bytes) never adds a header or request to the engine's connection.
func TestAttack34TenantNameInjection(t *testing.T) {
	e := newA34RawEngine(t, a34Listen(t, "tcp", "127.0.0.1:0"))
	f := newFixture(t, a34Route("raw", e.url(), true))
	addr := f.srv.Listener.Addr().String()
	for _, tenant := range []string{"t\r\nX-Injected: 1", "t\nX-Injected: 2", "t\x00X-Injected: 3", "t\r\n\r\nGET /injected HTTP/1.1\r\nHost: x"} {
		a34Tenants.Store("alias", tenant)
		got := a34RawRequest(t, addr, a34Post("raw", "a34-raw:alias", ""))
		t.Logf("tenant %q: %.40s", tenant, got)
	}
	for _, h := range e.all() {
		if strings.Contains(strings.ToLower(h), "injected") {
			t.Errorf("engine request carries an injected header:\n%q", h)
		}
	}
}

// a34Tenants: the token "a34-raw:ALIAS" is a principal of the tenant stored under ALIAS
// (a tenant name can hold any bytes; a client's header cannot).
var a34Tenants sync.Map

// TestAttack34BaseURLForms: the engine request goes to the base's host and to the base's
// path + the endpoint, for every form of base an operator may write (or the route is
// refused when the gateway is made).
func TestAttack34BaseURLForms(t *testing.T) {
	cases := []struct {
		name, network, listen, base string // base: %s is the engine's host:port
		wantPath                    string
	}{
		{"trailing-slash", "tcp", "127.0.0.1:0", "http://%s/v1/", "/v1/chat/completions"},
		{"prefix", "tcp", "127.0.0.1:0", "http://%s/tenant-a/engine/v1", "/tenant-a/engine/v1/chat/completions"},
		{"escaped-prefix", "tcp", "127.0.0.1:0", "http://%s/a%%2Fb/v1", ""}, // refused by New since round 35 (an encoded slash)
		{"escaped-space", "tcp", "127.0.0.1:0", "http://%s/a%%20b/v1", "/a%20b/v1/chat/completions"},
		{"query", "tcp", "127.0.0.1:0", "http://%s/v1?api-version=2", "/v1/chat/completions"},
		{"fragment", "tcp", "127.0.0.1:0", "http://%s/v1#frag", ""},        // refused by New
		{"userinfo", "tcp", "127.0.0.1:0", "http://user:s3cret@%s/v1", ""}, // refused by New
		{"upper-scheme", "tcp", "127.0.0.1:0", "HTTP://%s/v1", "/v1/chat/completions"},
		{"ipv6", "tcp6", "[::1]:0", "http://%s/v1", "/v1/chat/completions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newA34RawEngine(t, a34Listen(t, c.network, c.listen))
			hostport := e.ln.Addr().String()
			base := fmt.Sprintf(c.base, hostport)
			// A second route to a second engine: neither gets the other's requests.
			e2 := newA34RawEngine(t, a34Listen(t, "tcp", "127.0.0.1:0"))
			if c.wantPath == "" {
				// A base the gateway cannot send to as written is refused when it is made,
				// without repeating a password (the fix after this round).
				f := newFixture(t, nil)
				cfg := f.gw.cfg
				a34Route("m", base, false)(&cfg)
				if _, err := New(cfg); err == nil || strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("New with base %q: %v", base, err)
				}
				return
			}
			f := newFixture(t, func(cf *Config) {
				a34Route("m", base, false)(cf)
				a34Route("other", e2.url()+"/", false)(cf)
			})
			addr := f.srv.Listener.Addr().String()
			got := a34RawRequest(t, addr, a34Post("m", "a34-acme", ""))
			got2 := a34RawRequest(t, addr, a34Post("other", "a34-acme", ""))
			if !strings.HasPrefix(got, "200") || !strings.HasPrefix(got2, "200") {
				t.Errorf("answers %.80q / %.80q", got, got2)
			}
			heads := e.all()
			if len(heads) != 1 {
				t.Fatalf("engine got %d requests, want 1", len(heads))
			}
			line, rest, _ := strings.Cut(heads[0], "\r\n")
			if want := "POST " + c.wantPath + " HTTP/1.1"; line != want && !strings.HasPrefix(line, "POST "+c.wantPath+"?") {
				t.Errorf("engine request line %q, want %q (base %s)", line, want, base)
			}
			if !strings.Contains(rest, "Host: "+hostport+"\r\n") {
				t.Errorf("engine Host wrong for base %s:\n%q", base, heads[0])
			}
			if strings.Contains(heads[0], "s3cret") {
				t.Errorf("userinfo in the engine request:\n%q", heads[0])
			}
			for _, h := range e2.all() {
				if !strings.HasPrefix(h, "POST /v1/chat/completions HTTP/1.1\r\n") {
					t.Errorf("other route's engine got %q", h)
				}
			}
			if n := len(e2.all()); n != 1 {
				t.Errorf("other engine got %d requests", n)
			}
		})
	}
}

// TestAttack34UpstreamCredentialsNotLogged: a base URL with userinfo does not put its
// password in the gateway's logs when the engine is found down. (After this round such a
// base is refused when the gateway is made — the health probe logged it, and sent it as
// Basic auth, the probe only —, and the refusal does not repeat the password; no route
// can hold one, so no log line can.)
func TestAttack34UpstreamCredentialsNotLogged(t *testing.T) {
	ln := a34Listen(t, "tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	f := newFixture(t, nil)
	cfg := f.gw.cfg
	a34Route("m", "http://user:s3cret@"+dead+"/v1", false)(&cfg)
	if _, err := New(cfg); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("New with a credentialed engine URL: %v", err)
	}
}

// a34HoldEngine reads one request per connection and holds it, unanswered (or streaming
// an event every 20 ms when stream), until the gateway closes the connection; closed counts
// those closes.
func a34HoldEngine(t *testing.T, stream bool) (*tcpEngine, *atomic.Int64, *atomic.Int64) {
	var got, closed atomic.Int64
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		if _, _, err := e.readReq(br); err != nil {
			return
		}
		got.Add(1)
		if stream {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
			ev := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n"
			chunk := fmt.Sprintf("%x\r\n%s\r\n", len(ev), ev)
			for end := time.Now().Add(2 * a34Wait); time.Now().Before(end); {
				if _, err := io.WriteString(c, chunk); err != nil {
					closed.Add(1)
					return
				}
				c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				if _, err := br.ReadByte(); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						continue
					}
					closed.Add(1)
					return
				}
			}
			return
		}
		c.SetReadDeadline(time.Now().Add(2 * a34Wait))
		if _, err := br.ReadByte(); err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				closed.Add(1)
			}
		}
	})
	return e, &got, &closed
}

// TestAttack34ClientGoneNonStream: a client that leaves while the engine works on its
// (non-streamed) request gets the engine's connection closed.
func TestAttack34ClientGoneNonStream(t *testing.T) {
	e, got, closed := a34HoldEngine(t, false)
	f := newFixture(t, a34Route("hold", e.url(), false))
	c, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, a34Post("hold", "a34-acme", ""))
	a34Poll(t, "the engine to get the request", func() bool { return got.Load() == 1 })
	c.Close()
	a34Poll(t, "the engine's connection to close after the client left", func() bool { return closed.Load() == 1 })
}

// TestAttack34ClientGoneStream: the same for a stream, with a raw client that reads the
// first bytes and leaves.
func TestAttack34ClientGoneStream(t *testing.T) {
	e, got, closed := a34HoldEngine(t, true)
	f := newFixture(t, a34Route("hold", e.url(), false))
	c, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"hold","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer a34-acme\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	a34Poll(t, "the engine to get the request", func() bool { return got.Load() == 1 })
	c.SetReadDeadline(time.Now().Add(a34Wait))
	if _, err := c.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	a34Poll(t, "the engine's connection to close after the client left", func() bool { return closed.Load() == 1 })
}

// TestAttack34ClientGoneAfterPipelinedByte: a client that sends its request and the first
// byte of another, then leaves, is gone all the same: the engine must not go on working
// for nobody (the watch stops at the pipelined byte and never sees the close).
func TestAttack34ClientGoneAfterPipelinedByte(t *testing.T) {
	e, got, closed := a34HoldEngine(t, false)
	f := newFixture(t, a34Route("hold", e.url(), false))
	c, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, a34Post("hold", "a34-acme", "")+"G")
	a34Poll(t, "the engine to get the request", func() bool { return got.Load() == 1 })
	c.Close()
	a34Poll(t, "the engine's connection to close after the client left", func() bool { return closed.Load() == 1 })
}

// TestAttack34KeepAliveRequests: on one client connection, requests that outlast the
// watch are each answered (none sees the previous one's end as its cancellation), and a
// malformed request after a good one is refused without reaching the engine.
func TestAttack34KeepAliveRequests(t *testing.T) {
	var n atomic.Int64
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		for {
			req, _, err := e.readReq(br)
			if err != nil {
				return
			}
			n.Add(1)
			// Outlast the gateway's watch (50 ms): a timer, not a synchronization.
			<-time.After(150 * time.Millisecond)
			ans := fmt.Sprintf(`{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"stop"}]}`, req.URL.Path)
			io.WriteString(c, okAnswer(ans))
		}
	})
	f := newFixture(t, a34Route("slow", e.url(), false))
	c, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(a34Wait))
	br := bufio.NewReader(c)
	for i := 0; i < 4; i++ {
		io.WriteString(c, a34Post("slow", "a34-acme", ""))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d on a kept-alive connection: %d %s", i, resp.StatusCode, b)
		}
	}
	// Pipelined: two good requests then a malformed one, in one write.
	io.WriteString(c, a34Post("slow", "a34-acme", "")+a34Post("slow", "a34-acme", "")+"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
	for i := 0; i < 3; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("pipelined answer %d: %v", i, err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		want := 200
		if i == 2 {
			want = 400
		}
		if resp.StatusCode != want {
			t.Fatalf("pipelined answer %d: %d, want %d", i, resp.StatusCode, want)
		}
	}
	if got := n.Load(); got != 6 {
		t.Fatalf("engine got %d requests, want 6", got)
	}
}
