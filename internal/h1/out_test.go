package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/rawsock"
)

// unsentServer serves a one-word answer with the idle timeout given; requests on a
// keep-alive connection have their answers' last bytes sent by the next request's wait (out.go).
func unsentServer(t *testing.T, idle time.Duration) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := serveOn(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		io.WriteString(w, "ok")
	}), func(s *Server) { s.IdleTimeout = idle })
	return s, ln.Addr().String()
}

func roundTrips(t *testing.T, c net.Conn, br *bufio.Reader, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		io.WriteString(c, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
			t.Fatalf("request %d: answer %q", i, b)
		}
	}
}

func unsentSends(s *Server) (n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		n += int(c.unsentSends.Load())
	}
	return n
}

// TestUnsentAnswerShutdown: a connection waiting for its next request after an answer left unsent
// counts as idle — Shutdown closes it at once and returns, well before the idle timeout
// (a minute) — and the client has every answer.
func TestUnsentAnswerShutdown(t *testing.T) {
	s, addr := unsentServer(t, time.Minute)
	c := dial(t, addr)
	br := bufio.NewReader(c)
	roundTrips(t, c, br, 3)
	waitFor(t, "the third answer's wait", func() bool { return unsentSends(s) == 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with a connection waiting after an answer left unsent: %v", err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the connection after Shutdown: %v", err)
	}
}

// TestUnsentAnswerIdleTimeout: the wait after an answer left unsent ends at the idle timeout: the
// connection closes, the answers all delivered.
func TestUnsentAnswerIdleTimeout(t *testing.T) {
	_, addr := unsentServer(t, 100*time.Millisecond)
	c := dial(t, addr)
	br := bufio.NewReader(c)
	roundTrips(t, c, br, 2)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("the idle connection: %v", err)
	}
}

type netConnWrapper struct{ net.Conn }

func (w netConnWrapper) NetConn() net.Conn { return w.Conn }

// TestRawOf: the raw socket is found under wrappers that give their NetConn (netguard's
// listener gives a raw one), a plain TCP connection is made raw, and nothing is found
// under TLS (its bytes are not the socket's) or under a pipe.
func TestRawOf(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tcp := dial(t, ln.Addr().String())
	r := rawOf(tcp)
	if r == nil || r.TCPConn != tcp {
		t.Fatalf("a plain TCP connection: %v", r)
	}
	wrapped := rawsock.Wrap(tcp).(*rawsock.Conn)
	if got := rawOf(netConnWrapper{netConnWrapper{wrapped}}); got != wrapped {
		t.Fatalf("under two wrappers: %v, want the raw connection", got)
	}
	if got := rawOf(tls.Client(netConnWrapper{wrapped}, &tls.Config{})); got != nil {
		t.Fatalf("under TLS: %v, want none", got)
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if got := rawOf(p1); got != nil {
		t.Fatalf("a pipe: %v, want none", got)
	}
}
