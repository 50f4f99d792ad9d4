package gateway

// Outside attack 35: the gateway's HTTP front (internal/h1, served as `strongroom serve`
// serves it: netguard's listener and H1Server) and its path to the engine. Clients are
// raw TCP sockets, crypto/tls clients and net/http; engines are raw TCP listeners whose
// bytes are observed. Every test asserts the secure behaviour: it fails if the weakness
// exists.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/h1"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/netguard"
	"github.com/strongroom/strongroom/internal/store"
)

// a35Auth: the token "a35-TENANT" is a principal of TENANT.
type a35Auth struct{}

func (a35Auth) Authenticate(_ context.Context, tok string) (*authn.Principal, error) {
	t, ok := strings.CutPrefix(tok, "a35-")
	if !ok {
		return nil, authn.ErrUnauthenticated
	}
	return &authn.Principal{Principal: store.Principal{ID: "u-" + t, Tenant: t, Roles: []string{"researcher"}, Screening: "clear"}, KeyID: "k-" + t}, nil
}

// a35Wait bounds every poll: what a secure gateway does here takes milliseconds.
const a35Wait = 10 * time.Second

func a35Poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !a35Until(a35Wait, cond) {
		t.Fatalf("timed out (%v) waiting for: %s", a35Wait, what)
	}
}

func a35Until(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// a35Route adds model name served at base (public).
func a35Route(name, base string) func(*Config) {
	return func(c *Config) {
		c.Auth = a35Auth{}
		c.Routes = append(c.Routes, Route{Model: name, Upstreams: []string{base}, UpstreamKey: engineKey})
		c.Models.(records)[name] = modelrec.Attrs{Classification: "public"}
	}
}

func a35Routes(fs ...func(*Config)) func(*Config) {
	return func(c *Config) {
		for _, f := range fs {
			f(c)
		}
	}
}

func a35Body(model string, stream bool) string {
	return `{"model":"` + model + `","stream":` + strconv.FormatBool(stream) + `,"messages":[{"role":"user","content":"hi"}]}`
}

// a35Post is a whole raw chat request.
func a35Post(model, auth string, stream bool) string {
	body := a35Body(model, stream)
	return "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + auth + "\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// a35Front is the gateway served as in production: netguard's listener (connection caps,
// peer timeout), TLS optionally, netguard's H1Server (header, body and idle timeouts).
type a35Front struct {
	addr string
	tls  *tls.Config // the client's, when the front is TLS
	srv  *h1.Server
}

func a35Limits() netguard.Limits {
	return netguard.Limits{MaxConnsPerIP: 4096, MaxConns: 8192, HeaderTimeout: time.Second, BodyTimeout: time.Second,
		IdleTimeout: time.Second, PeerTimeout: 2 * time.Second}
}

func a35Serve(t *testing.T, h http.Handler, useTLS bool, lim netguard.Limits) *a35Front {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g, err := netguard.New(lim, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &a35Front{addr: ln.Addr().String()}
	l := g.Listener(ln)
	if useTLS {
		cert := a35Cert(t)
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}})
		pool := x509.NewCertPool()
		pool.AddCert(cert.Leaf)
		f.tls = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	}
	f.srv = g.H1Server(h, nil)
	go f.srv.Serve(l)
	t.Cleanup(func() {
		f.srv.Close()
		f.srv.Wait()
	})
	return f
}

// a35Cert is a self-signed certificate for 127.0.0.1.
func a35Cert(t *testing.T) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(35), Subject: pkix.Name{CommonName: "a35"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// a35Dial connects to the front: the connection to use, and the TCP one under it.
func (f *a35Front) a35Dial(t *testing.T) (net.Conn, *net.TCPConn) {
	t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	raw := c.(*net.TCPConn)
	if f.tls == nil {
		return c, raw
	}
	tc := tls.Client(c, f.tls)
	tc.SetDeadline(time.Now().Add(a35Wait))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tc.SetDeadline(time.Time{})
	return tc, raw
}

// a35HoldEngine reads one request per connection and holds it, unanswered (or streaming an
// event every 20 ms when stream), until the gateway closes the connection; closed counts
// those closes.
func a35HoldEngine(t *testing.T, stream bool) (*tcpEngine, *atomic.Int64, *atomic.Int64) {
	var got, closed atomic.Int64
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		if _, _, err := e.readReq(br); err != nil {
			return
		}
		got.Add(1)
		end := time.Now().Add(3 * a35Wait)
		if stream {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
			ev := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n"
			chunk := fmt.Sprintf("%x\r\n%s\r\n", len(ev), ev)
			for time.Now().Before(end) {
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
		c.SetReadDeadline(end)
		if _, err := br.ReadByte(); err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				closed.Add(1)
			}
		}
	})
	return e, &got, &closed
}

// newA35OKEngine answers every request with a small completion and keeps the raw request
// heads (round 34's raw engine, on a fresh loopback listener).
func newA35OKEngine(t *testing.T) *a34RawEngine {
	return newA34RawEngine(t, a34Listen(t, "tcp", "127.0.0.1:0"))
}

// a35ReadsToClose reports (on the channel) when c's reads end: the server closed it.
func a35ReadsToClose(c net.Conn) chan struct{} {
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(done)
	}()
	return done
}

func a35Closed(ch chan struct{}) func() bool {
	return func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
}

// ---- Threat 1: trickling clients -------------------------------------------------------

// TestAttack35TrickleNextDuringStream: while its streamed answer runs, a client trickles its
// next pipelined request's head one byte at a time, forever. Once the answer ends, the
// connection must be cut within the header timeout (1 s here): the trickle must not hold
// the connection (and its goroutine) past the answer.
func TestAttack35TrickleNextDuringStream(t *testing.T) {
	const events = 40
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		for {
			if _, _, err := e.readReq(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
			for i := 0; i < events; i++ {
				ev := fmt.Sprintf("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%d\"}}]}\n\n", i)
				fmt.Fprintf(c, "%x\r\n%s\r\n", len(ev), ev)
				time.Sleep(20 * time.Millisecond) // the engine's pace, not an assertion
			}
			ev := "data: [DONE]\n\n"
			fmt.Fprintf(c, "%x\r\n%s\r\n0\r\n\r\n", len(ev), ev)
		}
	})
	f := newFixture(t, a35Route("s", e.url()))
	front := a35Serve(t, f.gw, false, a35Limits())
	for _, useTLS := range []bool{false, true} {
		t.Run("tls="+strconv.FormatBool(useTLS), func(t *testing.T) {
			front := front
			if useTLS {
				front = a35Serve(t, f.gw, true, a35Limits())
			}
			c, _ := front.a35Dial(t)
			io.WriteString(c, a35Post("s", "a35-acme", true))
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Trickle: ")
				tk := time.NewTicker(20 * time.Millisecond)
				defer tk.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tk.C:
						if _, err := io.WriteString(c, "a"); err != nil {
							return
						}
					}
				}
			}()
			c.SetReadDeadline(time.Now().Add(3 * a35Wait))
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil || !strings.Contains(string(b), "[DONE]") {
				t.Fatalf("stream: %v %q", err, b)
			}
			ended := time.Now()
			gone := make(chan struct{})
			go func() {
				io.Copy(io.Discard, br)
				close(gone)
			}()
			if !a35Until(a35Wait, a35Closed(gone)) {
				t.Fatalf("a trickled pipelined head held the connection %v past its answer's end (header timeout 1 s)", time.Since(ended))
			}
			t.Logf("connection cut %v after the answer ended", time.Since(ended).Round(time.Millisecond))
		})
	}
}

// TestAttack35TrickledBody: a client trickles a request body one byte every 20 ms: cut by
// the body timeout (1 s); the engine never sees the request. Also with Expect:
// 100-continue and no body at all.
func TestAttack35TrickledBody(t *testing.T) {
	e, got, _ := a35HoldEngine(t, false)
	f := newFixture(t, a35Route("hold", e.url()))
	front := a35Serve(t, f.gw, false, a35Limits())
	for _, expect := range []string{"", "Expect: 100-continue\r\n"} {
		t.Run("expect="+strconv.FormatBool(expect != ""), func(t *testing.T) {
			c, _ := front.a35Dial(t)
			body := a35Body("hold", false) + strings.Repeat(" ", 4000)
			io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer a35-acme\r\n"+expect+"Content-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
			gone := a35ReadsToClose(c)
			start := time.Now()
			if expect == "" {
				go func() {
					for i := 0; i < len(body); i++ {
						if _, err := c.Write([]byte{body[i]}); err != nil {
							return
						}
						time.Sleep(20 * time.Millisecond) // the client's pace
					}
				}()
			}
			if !a35Until(a35Wait, a35Closed(gone)) {
				t.Fatalf("a trickled body held the connection %v (body timeout 1 s)", time.Since(start))
			}
			if n := got.Load(); n != 0 {
				t.Fatalf("engine got %d requests from a body never sent whole", n)
			}
		})
	}
}

// TestAttack35GoneAfterTrickle: a client sends its request, then trickles bytes (the next
// request's start) while the engine works, then closes: the engine's connection closes.
func TestAttack35GoneAfterTrickle(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run("tls="+strconv.FormatBool(useTLS), func(t *testing.T) {
			e, got, closed := a35HoldEngine(t, false)
			f := newFixture(t, a35Route("hold", e.url()))
			front := a35Serve(t, f.gw, useTLS, a35Limits())
			c, _ := front.a35Dial(t)
			io.WriteString(c, a35Post("hold", "a35-acme", false))
			a35Poll(t, "the engine to get the request", func() bool { return got.Load() == 1 })
			next := "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
			for i := 0; i < len(next); i++ {
				c.Write([]byte{next[i]})
				time.Sleep(10 * time.Millisecond) // the client's pace
			}
			c.Close()
			a35Poll(t, "the engine's connection to close after the client left", func() bool { return closed.Load() == 1 })
		})
	}
}

// TestAttack35GoneAfterFullPipeline: a client sends its request and 8 KiB of pipelined
// bytes (more than the server's 4 KiB read buffer) and closes. It is gone all the same:
// the engine must not go on working for nobody (round 34's pipelined-byte fix stops the
// watch at a full reader, so the close is never seen).
func TestAttack35GoneAfterFullPipeline(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run("tls="+strconv.FormatBool(useTLS), func(t *testing.T) {
			e, got, closed := a35HoldEngine(t, false)
			f := newFixture(t, a35Route("hold", e.url()))
			front := a35Serve(t, f.gw, useTLS, a35Limits())
			c, _ := front.a35Dial(t)
			// The pipelined bytes are well-formed requests (a client pipelining its next
			// requests), so that nothing about them is malformed before it is read.
			var more strings.Builder
			for more.Len() < 8<<10 {
				more.WriteString("GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer a35-acme\r\n\r\n")
			}
			io.WriteString(c, a35Post("hold", "a35-acme", false)+more.String())
			a35Poll(t, "the engine to get the request", func() bool { return got.Load() == 1 })
			c.Close()
			a35Poll(t, "the engine's connection to close after the client (who pipelined > 4 KiB) left", func() bool { return closed.Load() == 1 })
		})
	}
}

// ---- Threat 2: TLS departures --------------------------------------------------------------

// TestAttack35TLSDepartures: over TLS, a client's departure — a pipelined byte then a
// close, a close_notify alone (the TCP connection kept open), a TCP half-close with no
// close_notify — ends its request's work at the engine, as over plain TCP; a close_notify
// in the middle of the body means the engine never gets the request.
func TestAttack35TLSDepartures(t *testing.T) {
	cases := []struct {
		name  string
		tls   bool
		leave func(c net.Conn, raw *net.TCPConn)
	}{
		{"tls-pipelined-byte-close", true, func(c net.Conn, _ *net.TCPConn) { io.WriteString(c, "G"); c.Close() }},
		{"tls-close-notify", true, func(c net.Conn, _ *net.TCPConn) { c.(*tls.Conn).CloseWrite() }},
		{"tls-tcp-half-close", true, func(_ net.Conn, raw *net.TCPConn) { raw.CloseWrite() }},
		{"tcp-half-close", false, func(_ net.Conn, raw *net.TCPConn) { raw.CloseWrite() }},
		{"tls-abrupt-close", true, func(_ net.Conn, raw *net.TCPConn) { raw.Close() }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, got, closed := a35HoldEngine(t, false)
			f := newFixture(t, a35Route("hold", e.url()))
			front := a35Serve(t, f.gw, tc.tls, a35Limits())
			c, raw := front.a35Dial(t)
			io.WriteString(c, a35Post("hold", "a35-acme", false))
			a35Poll(t, "the engine to get the request", func() bool { return got.Load() == 1 })
			tc.leave(c, raw)
			a35Poll(t, "the engine's connection to close after the client left", func() bool { return closed.Load() == 1 })
		})
	}
	t.Run("tls-close-notify-mid-body", func(t *testing.T) {
		e, got, _ := a35HoldEngine(t, false)
		f := newFixture(t, a35Route("hold", e.url()))
		front := a35Serve(t, f.gw, true, a35Limits())
		c, _ := front.a35Dial(t)
		body := a35Body("hold", false)
		io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer a35-acme\r\nContent-Length: "+strconv.Itoa(len(body)+10)+"\r\n\r\n"+body)
		c.(*tls.Conn).CloseWrite()
		gone := a35ReadsToClose(c)
		a35Poll(t, "the server to end the connection", a35Closed(gone))
		if n := got.Load(); n != 0 {
			t.Fatalf("engine got %d requests from a body cut by close_notify", n)
		}
	})
}

// ---- Threat 3: a stream to a client that stops reading -------------------------------------

// TestAttack35StalledStreamReader: an engine sends a large stream as fast as it can to a
// client that never reads (receive buffer 4 KiB). The gateway must stop reading the engine
// (backpressure: bounded bytes taken, bounded heap), serve other clients meanwhile, and
// release the engine connection once the peer timeout (2 s) drops the client.
func TestAttack35StalledStreamReader(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run("tls="+strconv.FormatBool(useTLS), func(t *testing.T) {
			var written, got, closed atomic.Int64
			flood := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
				if _, _, err := e.readReq(br); err != nil {
					return
				}
				got.Add(1)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
				ev := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + strings.Repeat("x", 1000) + "\"}}]}\n\n"
				chunk := []byte(fmt.Sprintf("%x\r\n%s\r\n", len(ev), ev))
				var batch []byte
				for len(batch) < 64<<10 {
					batch = append(batch, chunk...)
				}
				c.SetWriteDeadline(time.Now().Add(6 * a35Wait))
				for written.Load() < 1<<30 {
					n, err := c.Write(batch)
					written.Add(int64(n))
					if err != nil {
						if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
							closed.Add(1)
						}
						return
					}
				}
			})
			ok := newA35OKEngine(t)
			f := newFixture(t, a35Routes(a35Route("flood", flood.url()), a35Route("ok", ok.url())))
			front := a35Serve(t, f.gw, useTLS, a35Limits())
			runtime.GC()
			var m0 runtime.MemStats
			runtime.ReadMemStats(&m0)

			ta, _ := net.ResolveTCPAddr("tcp", front.addr)
			raw, err := net.DialTCP("tcp", nil, ta)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			raw.SetReadBuffer(4096)
			var c net.Conn = raw
			if useTLS {
				tc := tls.Client(raw, front.tls)
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				c = tc
			}
			io.WriteString(c, a35Post("flood", "a35-acme", true))
			a35Poll(t, "the engine to get the request", func() bool { return got.Load() == 1 })
			// Wait until the engine's writes stop moving (backpressure reached it).
			last, since := int64(-1), time.Now()
			a35Poll(t, "the engine's writes to stall (backpressure)", func() bool {
				if w := written.Load(); w != last {
					last, since = w, time.Now()
					return false
				}
				return time.Since(since) > 300*time.Millisecond
			})
			runtime.GC()
			var m1 runtime.MemStats
			runtime.ReadMemStats(&m1)
			grew := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
			t.Logf("engine wrote %d KiB before stalling; heap grew %d KiB", written.Load()>>10, grew>>10)
			if w := written.Load(); w > 32<<20 {
				t.Errorf("the gateway took %d MiB of the engine's stream for a client that reads nothing", w>>20)
			}
			if grew > 16<<20 {
				t.Errorf("heap grew %d MiB while a client stalled a stream", grew>>20)
			}
			// Another client is served meanwhile.
			t0 := time.Now()
			other, _ := front.a35Dial(t)
			other.SetDeadline(time.Now().Add(a35Wait))
			io.WriteString(other, a35Post("ok", "a35-other", false))
			resp, err := http.ReadResponse(bufio.NewReader(other), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("another client while one stalls a stream: %v %v", resp, err)
			}
			if d := time.Since(t0); d > 5*time.Second {
				t.Errorf("another client waited %v", d)
			}
			// The stalled client is dropped (peer timeout 2 s) and the engine released.
			if !a35Until(3*a35Wait, func() bool { return closed.Load() == 1 }) {
				t.Fatalf("engine connection still held %v after the client stopped reading (peer timeout 2 s); engine wrote %d KiB", 3*a35Wait, written.Load()>>10)
			}
		})
	}
}

// ---- Threat 4: engine base URLs ------------------------------------------------------------

// TestAttack35BaseURLAmbiguous: an engine base with dot segments (literal or
// percent-encoded), encoded slashes around them, or empty segments is either refused when
// the gateway is made, or sends the engine a target every parser reads the same: no
// segment that decodes to "." or ".." (or Tomcat's "..;"), no empty segment. (Literal dot
// segments and double slashes are normalized by the gateway itself — logged, not failed.)
func TestAttack35BaseURLAmbiguous(t *testing.T) {
	cases := []string{
		"/v1/%2e%2e/admin",
		"/v1/%2E%2E/admin",
		"/v1/.%2e/admin",
		"/v1%2F..%2Fadmin",
		"/v1%2f%2e%2e%2fadmin",
		"/v1/%2e/x",
		"/v1/./x",
		"/v1/../admin",
		"//v1",
		"/v1//x",
		"/v1/..;/admin",
	}
	for i, p := range cases {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			e := newA35OKEngine(t)
			base := "http://" + e.ln.Addr().String() + p
			f := newFixture(t, nil)
			cfg := f.gw.cfg
			a35Route("m", base)(&cfg)
			gw, err := New(cfg)
			if err != nil {
				t.Logf("refused: %v", err)
				return
			}
			front := a35Serve(t, gw, false, a35Limits())
			c, _ := front.a35Dial(t)
			c.SetDeadline(time.Now().Add(a35Wait))
			io.WriteString(c, a35Post("m", "a35-acme", false))
			if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
				t.Fatalf("no answer: %v", err)
			} else {
				io.ReadAll(resp.Body)
			}
			heads := e.all()
			if len(heads) != 1 {
				t.Fatalf("engine got %d requests", len(heads))
			}
			line, _, _ := strings.Cut(heads[0], "\r\n")
			target := strings.TrimSuffix(strings.TrimPrefix(line, "POST "), " HTTP/1.1")
			var problems []string
			dec, err := url.PathUnescape(target)
			if err != nil {
				dec = target
			}
			segs := strings.Split(strings.TrimPrefix(dec, "/"), "/")
			for i, s := range segs {
				if s == "." || s == ".." || strings.HasPrefix(s, "..;") {
					problems = append(problems, "a dot segment "+strconv.Quote(s)+" (decoded)")
				}
				if s == "" && i < len(segs)-1 {
					problems = append(problems, "an empty segment")
				}
			}
			t.Logf("base path %q: engine target %q", p, target)
			if len(problems) > 0 {
				t.Errorf("base %q accepted silently; engine got target %q: %s", base, target, strings.Join(problems, "; "))
			}
		})
	}
}

// ---- Threat 5: many connections ------------------------------------------------------------

// TestAttack35ManyIdleAndHalfOpen: 512 idle keep-alive connections (each answered once) and
// 512 half-open ones (connected, nothing sent): a legitimate client is answered promptly,
// and the server reaps them all (idle and header timeouts, 1 s) — every one of them sees
// its connection closed — and its goroutines go back to where they were.
func TestAttack35ManyIdleAndHalfOpen(t *testing.T) {
	ok := newA35OKEngine(t)
	f := newFixture(t, a35Route("ok", ok.url()))
	front := a35Serve(t, f.gw, false, a35Limits())
	before := runtime.NumGoroutine()
	const n = 512
	var conns []net.Conn
	var closedCh []chan struct{}
	for i := 0; i < 2*n; i++ {
		c, err := net.Dial("tcp", front.addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if i < n {
			c.SetDeadline(time.Now().Add(a35Wait))
			io.WriteString(c, "GET /v1/none HTTP/1.1\r\nHost: gw\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("idle connection %d: %v", i, err)
			}
			io.ReadAll(resp.Body)
			c.SetDeadline(time.Time{})
			if resp.Close {
				t.Fatalf("connection %d not kept alive", i)
			}
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		closedCh = append(closedCh, a35ReadsToClose(c))
	}
	t0 := time.Now()
	hc := &http.Client{Timeout: a35Wait}
	req, _ := http.NewRequest(http.MethodPost, "http://"+front.addr+"/v1/chat/completions", strings.NewReader(a35Body("ok", false)))
	req.Header.Set("Authorization", "Bearer a35-legit")
	resp, err := hc.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("legitimate client among %d idle connections: %v %v", 2*n, resp, err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("legitimate client waited %v among %d idle connections", d, 2*n)
	}
	a35Poll(t, "every idle and half-open connection reaped", func() bool {
		for _, ch := range closedCh {
			if !a35Closed(ch)() {
				return false
			}
		}
		return true
	})
	a35Poll(t, "the server's goroutines to return", func() bool { return runtime.NumGoroutine() <= before+20 })
}

// TestAttack35PerIPFlood: one address fills its per-address cap (256, the default) with
// half-open connections, and keeps trying: a client from another address is served.
func TestAttack35PerIPFlood(t *testing.T) {
	ok := newA35OKEngine(t)
	f := newFixture(t, a35Route("ok", ok.url()))
	lim := a35Limits()
	lim.MaxConnsPerIP = 0 // the default
	lim.HeaderTimeout = 5 * time.Second
	front := a35Serve(t, f.gw, false, lim)
	for i := 0; i < 400; i++ {
		c, err := net.Dial("tcp", front.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: a35Wait}
	c, err := d.Dial("tcp", front.addr)
	if err != nil {
		t.Skipf("cannot dial from 127.0.0.2: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(a35Wait))
	io.WriteString(c, a35Post("ok", "a35-legit", false))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a client from another address while one floods: %v %v", resp, err)
	}
}

// ---- Threat 6: smuggling and request forms -------------------------------------------------

// TestAttack35SmugglingForms: requests two parsers could read differently, and request
// target forms other than origin-form, each carrying an authorized request for the engine
// in a place where only a desynchronized reader would find it: refused (4xx/5xx), the
// connection closed, and nothing reaches the engine.
func TestAttack35SmugglingForms(t *testing.T) {
	ok := newA35OKEngine(t)
	f := newFixture(t, a35Route("ok", ok.url()))
	front := a35Serve(t, f.gw, false, a35Limits())
	inner := a35Post("ok", "a35-acme", false)
	body := a35Body("ok", false)
	cl := strconv.Itoa(len(body))
	hdr := "Host: gw\r\nAuthorization: Bearer a35-acme\r\n"
	cases := map[string]string{
		"cl-te":            "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + inner,
		"te-cl":            "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\nContent-Length: " + strconv.Itoa(len(inner)) + "\r\n\r\n" + inner,
		"te-twice":         "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + inner,
		"te-list":          "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n" + inner,
		"te-xchunked":      "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + inner,
		"te-http10":        "POST /v1/chat/completions HTTP/1.0\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + inner,
		"cl-twice":         "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Content-Length: " + cl + "\r\nContent-Length: " + cl + "\r\n\r\n" + body + inner,
		"cl-plus":          "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Content-Length: +" + cl + "\r\n\r\n" + body + inner,
		"cl-list":          "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Content-Length: " + cl + ", " + cl + "\r\n\r\n" + body + inner,
		"cl-space-colon":   "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Content-Length : 0\r\n\r\n" + inner,
		"obs-fold-te":      "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "X-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n" + inner,
		"nul-in-header":    "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "X-A: b\x00c\r\nContent-Length: 0\r\n\r\n" + inner,
		"bare-lf":          "POST /v1/chat/completions HTTP/1.1\n" + strings.ReplaceAll(hdr, "\r\n", "\n") + "Content-Length: 0\n\n" + inner,
		"chunk-bare-lf":    "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + inner,
		"chunk-size-0x":    "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + inner,
		"chunk-size-space": "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n" + inner,
		"absolute-form":    "POST http://gw/v1/chat/completions HTTP/1.1\r\n" + hdr + "Content-Length: " + cl + "\r\n\r\n" + body,
		"authority-form":   "CONNECT " + ok.ln.Addr().String() + " HTTP/1.1\r\n" + hdr + "\r\n" + inner,
		"asterisk-post":    "POST * HTTP/1.1\r\n" + hdr + "Content-Length: " + cl + "\r\n\r\n" + body,
		"http09":           "POST /v1/chat/completions\r\n\r\n" + inner,
		"http2-version":    "POST /v1/chat/completions HTTP/2.0\r\n" + hdr + "Content-Length: " + cl + "\r\n\r\n" + body,
		"two-hosts":        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n" + hdr + "Content-Length: " + cl + "\r\n\r\n" + body,
		// The body (an authorized request) of an unauthorized Expect request is never read
		// as a request: the server must close rather than read on.
		"expect-unauth": "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer nope\r\nExpect: 100-continue\r\nContent-Length: " +
			strconv.Itoa(len(inner)) + "\r\n\r\n" + inner,
		"unauth-body-is-request": "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer nope\r\nContent-Length: " +
			strconv.Itoa(len(inner)) + "\r\n\r\n" + inner,
		"expect-unknown": "POST /v1/chat/completions HTTP/1.1\r\n" + hdr + "Expect: 101-switch\r\nContent-Length: " + strconv.Itoa(len(inner)) + "\r\n\r\n" + inner,
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel() // each waits for its connection's close; none may reach the engine
			before := len(ok.all())
			c, _ := front.a35Dial(t)
			c.SetDeadline(time.Now().Add(a35Wait))
			io.WriteString(c, raw)
			br := bufio.NewReader(c)
			var statuses []int
			for {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					break
				}
				io.ReadAll(resp.Body)
				statuses = append(statuses, resp.StatusCode)
			}
			if got := len(ok.all()) - before; got != 0 {
				t.Errorf("engine got %d requests (answers %v):\n%q", got, statuses, ok.all()[before:])
			}
			if name == "unauth-body-is-request" {
				// Read and dropped (under 256 KiB): one 401, and the body never a request.
				if len(statuses) != 1 || statuses[0] != 401 {
					t.Errorf("answers %v", statuses)
				}
				return
			}
			if len(statuses) != 1 || statuses[0] < 400 {
				t.Errorf("answers %v, want one refusal and the connection closed", statuses)
			}
		})
	}
}

// TestAttack35ContinueNoBody: a client asks for 100 Continue with a good request, gets it,
// and never sends its body: the body timeout (1 s) ends the request; the engine gets
// nothing; and a client that sends a pipelined request as its "body" after a 100 Continue
// gets only its own request run.
func TestAttack35ContinueNoBody(t *testing.T) {
	ok := newA35OKEngine(t)
	f := newFixture(t, a35Route("ok", ok.url()))
	front := a35Serve(t, f.gw, false, a35Limits())
	c, _ := front.a35Dial(t)
	body := a35Body("ok", false)
	io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer a35-acme\r\nExpect: 100-continue\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(a35Wait))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("no 100 Continue: %q %v", line, err)
	}
	start := time.Now()
	gone := make(chan struct{})
	go func() { io.Copy(io.Discard, br); close(gone) }()
	if !a35Until(a35Wait, a35Closed(gone)) {
		t.Fatalf("a body promised by Expect and never sent held the connection %v", time.Since(start))
	}
	if n := len(ok.all()); n != 0 {
		t.Fatalf("engine got %d requests", n)
	}
}

// TestEscapedEndpointPaths: an inference endpoint written with percent-escapes in its path
// ("/v1/chat%2Fcompletions", an escaped letter) is not served: a proxy in front that allows
// or refuses by the raw path would read it as another path than the gateway's router,
// which reads the decoded one (outside round 35, by reading the code). The plain path is
// served, and a model id may still be escaped in /v1/models/{id}.
func TestEscapedEndpointPaths(t *testing.T) {
	ok := newA35OKEngine(t)
	f := newFixture(t, a35Route("ok", ok.url()))
	front := a35Serve(t, f.gw, false, a35Limits())
	body := a35Body("ok", false)
	ask := func(method, target string, body string) int {
		c, _ := front.a35Dial(t)
		c.SetDeadline(time.Now().Add(a35Wait))
		io.WriteString(c, method+" "+target+" HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer a35-acme\r\nContent-Type: application/json\r\nContent-Length: "+
			strconv.Itoa(len(body))+"\r\n\r\n"+body)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s %s: %v", method, target, err)
		}
		io.ReadAll(resp.Body)
		return resp.StatusCode
	}
	for _, target := range []string{"/v1/chat%2Fcompletions", "/v1/chat%2fcompletions", "/v1/chat/complet%69ons", "/v1%2Fchat/completions", "/v1/embedding%73"} {
		if code := ask("POST", target, body); code != http.StatusNotFound {
			t.Errorf("POST %s: %d, want 404", target, code)
		}
	}
	if n := len(ok.all()); n != 0 {
		t.Fatalf("the engine got %d requests for escaped endpoint paths", n)
	}
	if code := ask("POST", "/v1/chat/completions", body); code != http.StatusOK {
		t.Fatalf("the plain path: %d", code)
	}
	if code := ask("GET", "/v1/models/o%6B", ""); code != http.StatusOK {
		t.Fatalf("an escaped model id: %d", code)
	}
}
