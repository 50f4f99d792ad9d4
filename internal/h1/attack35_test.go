package h1

// Outside attack 35: the server's notice of a client's departure while a handler runs
// (the watch), over TCP and TLS, with pipelined bytes. Every test asserts the secure
// behaviour: it fails if the weakness exists.

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const a35Wait = 10 * time.Second

// a35TLS is a server TLS config and a client one for it.
func a35TLS(t *testing.T) (srv, cli *tls.Config) {
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	srv = ts.TLS.Clone()
	tr := ts.Client().Transport.(*http.Transport)
	cli = tr.TLSClientConfig.Clone()
	ts.Close()
	srv.NextProtos = nil
	cli.NextProtos = nil
	cli.ServerName = "example.com" // httptest's certificate names it
	return srv, cli
}

// a35Ctx serves a handler that waits for its request's context to end (reported on the
// returned channel: true when it ended, false when a35Wait passed first).
func a35Ctx(t *testing.T, useTLS bool) (addr string, cli *tls.Config, gone chan bool, s *Server) {
	var srvTLS *tls.Config
	if useTLS {
		srvTLS, cli = a35TLS(t)
	}
	gone = make(chan bool, 4)
	s, addr = serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			gone <- true
		case <-time.After(a35Wait):
			gone <- false
		}
	}), srvTLS)
	return addr, cli, gone, s
}

func a35Dial(t *testing.T, addr string, cli *tls.Config) net.Conn {
	c := dial(t, addr)
	if cli == nil {
		return c
	}
	tc := tls.Client(c, cli)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc
}

// TestAttack35H1FullPipelineThenClose: a request, then more pipelined bytes than the
// connection's 4 KiB reader holds, then a close: the request's context must end — the
// client is gone whether it pipelined one byte (round 34's fix) or 8 KiB. The watch
// (watch.go) returns without cancelling once the reader is full, so nothing notices.
func TestAttack35H1FullPipelineThenClose(t *testing.T) {
	for _, extra := range []int{4<<10 - 200, 8 << 10, 64 << 10} {
		for _, useTLS := range []bool{false, true} {
			t.Run("extra="+strconv.Itoa(extra)+"/tls="+strconv.FormatBool(useTLS), func(t *testing.T) {
				addr, cli, gone, s := a35Ctx(t, useTLS)
				c := a35Dial(t, addr, cli)
				var more strings.Builder
				for more.Len() < extra {
					more.WriteString("GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
				}
				go io.WriteString(c, "GET /work HTTP/1.1\r\nHost: h\r\n\r\n"+more.String()) // 64 KiB may not fit the socket
				waitFor(t, "the watch to see the pipelined bytes", s.watchSawNext)
				c.Close()
				if !<-gone {
					t.Fatalf("request context not cancelled after the client (who pipelined %d bytes) closed", more.Len())
				}
			})
		}
	}
}

// TestAttack35H1TLSDepartures: over TLS, a close_notify alone (the TCP connection left
// open), a TCP half-close without close_notify, and a pipelined byte then a close each end
// the running request's context, as a close does over TCP.
func TestAttack35H1TLSDepartures(t *testing.T) {
	cases := map[string]func(tc *tls.Conn, raw *net.TCPConn){
		"close-notify":     func(tc *tls.Conn, _ *net.TCPConn) { tc.CloseWrite() },
		"tcp-half-close":   func(_ *tls.Conn, raw *net.TCPConn) { raw.CloseWrite() },
		"byte-then-close":  func(tc *tls.Conn, _ *net.TCPConn) { io.WriteString(tc, "G"); tc.Close() },
		"garbage-record":   func(_ *tls.Conn, raw *net.TCPConn) { raw.Write([]byte{23, 3, 3, 0, 5, 1, 2, 3, 4, 5}) },
		"handshake-record": func(_ *tls.Conn, raw *net.TCPConn) { raw.Write([]byte{22, 3, 3, 0, 4, 1, 0, 0, 0}) },
	}
	for name, leave := range cases {
		t.Run(name, func(t *testing.T) {
			addr, cli, gone, s := a35Ctx(t, true)
			c := a35Dial(t, addr, cli).(*tls.Conn)
			io.WriteString(c, "GET /work HTTP/1.1\r\nHost: h\r\n\r\n")
			waitFor(t, "the watch to start", s.watchRunning)
			leave(c, c.NetConn().(*net.TCPConn))
			if !<-gone {
				t.Fatal("request context not cancelled after the TLS client left")
			}
		})
	}
}

// TestAttack35H1TrickledPipelineBounded: during a long answer the client trickles its next
// request's head a byte at a time; after the answer the header timeout (300 ms) cuts it —
// the bytes that came during the answer do not buy time.
func TestAttack35H1TrickledPipelineBounded(t *testing.T) {
	release := make(chan struct{})
	var s *Server
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s = serveOn(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, "done")
	}), func(s *Server) { s.ReadHeaderTimeout = 300 * time.Millisecond; s.IdleTimeout = 20 * time.Second })
	c := dial(t, ln.Addr().String())
	io.WriteString(c, "GET /long HTTP/1.1\r\nHost: h\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\nX-T: ")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond): // the client's pace
				if _, err := io.WriteString(c, "a"); err != nil {
					return
				}
			}
		}
	}()
	waitFor(t, "the watch to see the trickle", s.watchSawNext)
	close(release)
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(3 * a35Wait))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	t0 := time.Now()
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, br); close(done) }()
	select {
	case <-done:
		t.Logf("cut %v after the answer", time.Since(t0).Round(time.Millisecond))
	case <-time.After(a35Wait):
		t.Fatalf("a trickled pipelined head held the connection %v past its answer (header timeout 300 ms)", a35Wait)
	}
}

// pipeListener hands out the server ends of net.Pipe connections: a pipe has no buffer,
// so a peer that stops reading blocks every write to it — a TLS close_notify included.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// TestStalledTLSPeersDoNotHoldShutdown: idle TLS connections whose clients stopped reading
// (after one answer each) do not hold up Shutdown or Close. Each used to be closed under
// the server's lock with tls.Conn.Close, whose close_notify waits up to 5 s on such a peer:
// four of them held Shutdown ~20 s (outside round 35 saw it by reading the code).
func TestStalledTLSPeersDoNotHoldShutdown(t *testing.T) {
	for _, how := range []string{"shutdown", "close"} {
		t.Run(how, func(t *testing.T) {
			srvTLS, cliTLS := a35TLS(t)
			pl := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
			s := serveOn(t, tls.NewListener(pl, srvTLS), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "ok")
			}), nil)
			const n = 4
			for range n {
				cli, srv := net.Pipe()
				t.Cleanup(func() { cli.Close() })
				pl.conns <- srv
				tc := tls.Client(cli, cliTLS)
				io.WriteString(tc, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
				if err != nil {
					t.Fatal(err)
				}
				io.ReadAll(resp.Body) // and never reads again
			}
			waitFor(t, "every connection idle", func() bool {
				s.mu.Lock()
				defer s.mu.Unlock()
				idle := 0
				for c := range s.conns {
					if c.state.Load() == stateIdle {
						idle++
					}
				}
				return idle == n
			})
			// The bound is twice one close_notify's wait, half of what four in a row took.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var err error
			if how == "shutdown" {
				err = s.Shutdown(ctx)
			} else {
				done := make(chan struct{})
				go func() { s.Close(); s.Wait(); close(done) }()
				select {
				case <-done:
				case <-ctx.Done():
					err = ctx.Err()
				}
			}
			if err != nil {
				t.Fatalf("%s with %d stalled TLS peers: %v", how, n, err)
			}
		})
	}
}
