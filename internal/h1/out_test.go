package h1

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
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
