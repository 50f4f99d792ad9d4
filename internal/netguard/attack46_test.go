package netguard

// Outside attack tests, round 46: the h1 server on a guarded listener, whose connections
// read and write with raw system calls (package rawsock; raw only in non-race builds),
// plain and under TLS. Clients that reset mid-request, vanish mid-stream, pipeline, stall
// or stop reading: request contexts end, nothing hangs, every connection is released.

import (
	"bufio"
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
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/h1"
	"golang.org/x/sys/unix"
)

func a46Cert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// a46Server serves h with the guard's h1 server on a guarded listener (under TLS if
// useTLS); dial connects a client (TCP under it returned too, to reset it).
type a46Server struct {
	g    *Guard
	srv  *h1.Server
	addr string
	tls  bool
}

func a46Serve(t *testing.T, lim Limits, useTLS bool, h http.Handler) *a46Server {
	t.Helper()
	g, err := New(lim, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl := g.Listener(ln)
	if useTLS {
		gl = tls.NewListener(gl, &tls.Config{Certificates: []tls.Certificate{a46Cert(t)}})
	}
	srv := g.H1Server(h, nil)
	go srv.Serve(gl)
	t.Cleanup(func() { srv.Close() })
	return &a46Server{g: g, srv: srv, addr: ln.Addr().String(), tls: useTLS}
}

func (s *a46Server) dial(t *testing.T) (net.Conn, *net.TCPConn) {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*net.TCPConn)
	t.Cleanup(func() { c.Close() })
	if !s.tls {
		return c, tc
	}
	cc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	cc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := cc.Handshake(); err != nil {
		t.Fatal(err)
	}
	cc.SetDeadline(time.Time{})
	return cc, tc
}

// waitReleased waits (bounded) until the guard counts no open connection: each served one
// was closed and released.
func (s *a46Server) waitReleased(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.g.open.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open under the guard", s.g.open.Load())
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

func a46Modes(t *testing.T, f func(t *testing.T, useTLS bool)) {
	for _, useTLS := range []bool{false, true} {
		name := "plain"
		if useTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) { f(t, useTLS) })
	}
}

// A client sends a whole request, then resets: the request's context ends (h1 watches
// the connection), the handler returns, the connection is released.
func TestAttack46ResetAfterRequestCancels(t *testing.T) {
	a46Modes(t, func(t *testing.T, useTLS bool) {
		started := make(chan struct{}, 16)
		ended := make(chan error, 16)
		s := a46Serve(t, Limits{}, useTLS, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			started <- struct{}{}
			select {
			case <-r.Context().Done():
				ended <- nil
			case <-time.After(20 * time.Second):
				ended <- fmt.Errorf("the context never ended")
			}
		}))
		for i := range 5 {
			c, tc := s.dial(t)
			body := `{"i":` + fmt.Sprint(i) + `}`
			fmt.Fprintf(c, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("handler never started")
			}
			tc.SetLinger(0)
			tc.Close()
			select {
			case err := <-ended:
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
			case <-time.After(25 * time.Second):
				t.Fatal("handler never returned")
			}
		}
		s.waitReleased(t)
	})
}

// A client that reads part of an endless stream and then resets, and one that stops
// reading and resets: the handler's writes fail or its context ends; it returns.
func TestAttack46VanishMidStream(t *testing.T) {
	a46Modes(t, func(t *testing.T, useTLS bool) {
		ended := make(chan string, 4)
		chunk := strings.Repeat("d", 32<<10)
		s := a46Serve(t, Limits{}, useTLS, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := 0; ; i++ {
				if _, err := io.WriteString(w, chunk); err != nil {
					ended <- "write error"
					return
				}
				w.(http.Flusher).Flush()
				if r.Context().Err() != nil {
					ended <- "context"
					return
				}
				if i > 1<<16 {
					ended <- "never noticed"
					return
				}
			}
		}))
		for _, readFirst := range []int64{1 << 20, 0} {
			c, tc := s.dial(t)
			io.WriteString(c, "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
			if readFirst > 0 {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if n, err := io.CopyN(io.Discard, c, readFirst); err != nil {
					t.Fatalf("read %d of the stream: %v", n, err)
				}
			}
			tc.SetLinger(0)
			tc.Close()
			select {
			case how := <-ended:
				if how == "never noticed" {
					t.Fatal("the handler wrote 2 GiB to a client that was gone")
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the streaming handler never returned after its client reset")
			}
		}
		s.waitReleased(t)
	})
}

// Pipelined requests in one write, then more in tiny pieces: answers in order, each its
// own request's, on a raw connection.
func TestAttack46Pipelined(t *testing.T) {
	a46Modes(t, func(t *testing.T, useTLS bool) {
		s := a46Serve(t, Limits{}, useTLS, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s|%s", r.URL.Path, b)
		}))
		c, _ := s.dial(t)
		var all strings.Builder
		const n = 40
		for i := range n {
			body := strings.Repeat(fmt.Sprint(i%10), 1+i*97)
			fmt.Fprintf(&all, "POST /r%d HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", i, len(body), body)
		}
		go func() {
			raw := all.String()
			half := len(raw) / 2
			io.WriteString(c, raw[:half]) // half at once
			for i := half; i < len(raw); i += 7 {
				io.WriteString(c, raw[i:min(len(raw), i+7)]) // the rest trickled
			}
		}()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for i := range n {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("answer %d: %v", i, err)
			}
			b, err := io.ReadAll(resp.Body)
			want := fmt.Sprintf("/r%d|%s", i, strings.Repeat(fmt.Sprint(i%10), 1+i*97))
			if err != nil || string(b) != want {
				t.Fatalf("answer %d: %.60q, %v (want %.60q)", i, b, err, want)
			}
		}
		c.Close()
		s.waitReleased(t)
	})
}

// Slow clients: one that sends half a header and stalls is cut at the header timeout; one
// that sends half a body and stalls at the body timeout; one that never reads a large
// answer and then resets frees the handler. All connections are released.
func TestAttack46SlowClients(t *testing.T) {
	a46Modes(t, func(t *testing.T, useTLS bool) {
		var handled atomic.Int64
		big := strings.Repeat("z", 16<<20)
		wrote := make(chan error, 1)
		s := a46Serve(t, Limits{HeaderTimeout: 300 * time.Millisecond, BodyTimeout: 300 * time.Millisecond}, useTLS,
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				handled.Add(1)
				if r.URL.Path == "/big" {
					_, err := io.WriteString(w, big)
					wrote <- err
					return
				}
				io.Copy(io.Discard, r.Body)
			}))
		closedWithin := func(c net.Conn, what string) {
			t.Helper()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, c)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("%s: the server never closed the connection", what)
			}
		}
		c, _ := s.dial(t)
		io.WriteString(c, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Le")
		closedWithin(c, "stalled header")
		c, _ = s.dial(t)
		io.WriteString(c, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhalf")
		closedWithin(c, "stalled body")
		c, tc := s.dial(t)
		io.WriteString(c, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
		// Wait until the server's write is held by the client not reading: the client's
		// receive queue holds bytes.
		deadline := time.Now().Add(10 * time.Second)
		for {
			if n := a46Inq(t, tc); n > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no answer bytes arrived")
			}
			time.Sleep(time.Millisecond)
		}
		tc.SetLinger(0)
		tc.Close()
		select {
		case err := <-wrote:
			if err == nil {
				t.Fatal("a 16 MiB answer to a client that never read and reset was written whole")
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the handler's write to a reset client never returned")
		}
		s.waitReleased(t)
		if handled.Load() != 2 {
			t.Fatalf("handled %d requests, want 2 (the stalled header never reaches a handler)", handled.Load())
		}
	})
}

// Many clients at once, half of them resetting mid-request: answers are each their own
// client's, the guard releases every connection, and goroutines return to about where
// they were.
func TestAttack46ManyClientsNoLeak(t *testing.T) {
	a46Modes(t, func(t *testing.T, useTLS bool) {
		s := a46Serve(t, Limits{MaxConnsPerIP: 1000, MaxConns: 1000}, useTLS, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		}))
		before := runtime.NumGoroutine()
		const clients = 60
		errs := make(chan error, clients)
		for i := range clients {
			go func() {
				errs <- func() error {
					c, err := net.Dial("tcp", s.addr)
					if err != nil {
						return err
					}
					defer c.Close()
					var cc net.Conn = c
					if useTLS {
						tcc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
						tcc.SetDeadline(time.Now().Add(10 * time.Second))
						if err := tcc.Handshake(); err != nil {
							return err
						}
						cc = tcc
					}
					cc.SetDeadline(time.Now().Add(10 * time.Second))
					body := fmt.Sprintf("client-%d-%s", i, strings.Repeat("q", i*1000))
					if i%2 == 1 {
						fmt.Fprintf(cc, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", len(body)+50, body)
						c.(*net.TCPConn).SetLinger(0)
						return nil
					}
					fmt.Fprintf(cc, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
					resp, err := http.ReadResponse(bufio.NewReader(cc), nil)
					if err != nil {
						return err
					}
					got, err := io.ReadAll(resp.Body)
					if err != nil || string(got) != body {
						return fmt.Errorf("client %d: got %.40q, %v", i, got, err)
					}
					return nil
				}()
			}()
		}
		for range clients {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		s.waitReleased(t)
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before+5 {
			if time.Now().After(deadline) {
				t.Fatalf("goroutines: %d before, %d after every client left", before, runtime.NumGoroutine())
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
}

func a46Inq(t *testing.T, tc *net.TCPConn) int {
	t.Helper()
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	rc.Control(func(fd uintptr) { n, _ = unixIoctlInq(int(fd)) })
	return n
}

func unixIoctlInq(fd int) (int, error) { return unix.IoctlGetInt(fd, unix.SIOCINQ) }
