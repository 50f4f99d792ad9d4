package h1

// Outside review (thirty-ninth session): attacks on the answer's last bytes left unsent
// for the next request's wait (out.go, finish's leave, next, rawsock.Exchange).

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// o39Stuck reports whether some goroutine's stack holds every one of parts.
func o39Stuck(parts ...string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		all := true
		for _, p := range parts {
			if !strings.Contains(g, p) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// o39OnlyConn is the server's one connection.
func o39OnlyConn(t *testing.T, s *Server) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) != 1 {
		t.Errorf("%d connections, want 1", len(s.conns))
		return nil
	}
	for c := range s.conns {
		return c
	}
	return nil
}

// TestOutside39PipelinedAfterDrainedBody: a handler that does not read a small request
// body returns before the body arrives; the server drains the body as the answer's
// headers go out (settleBody), and the client's next request, sent with the body's last
// bytes (pipelined), is read into the connection's reader by that drain. The answer left
// unsent is then sent by Exchange, which waits for the SOCKET to be readable — but the
// next request is already in the reader, so nothing comes: the second request is not
// answered until the idle timeout closes the connection.
func TestOutside39PipelinedAfterDrainedBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const idle = 3 * time.Second
	serveOn(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "answer "+r.URL.Path) // the body is not read
	}), func(s *Server) { s.IdleTimeout = idle })
	c := dial(t, ln.Addr().String())
	br := bufio.NewReader(c)
	io.WriteString(c, "POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
	// The handler returned and finish drains the body: it waits for it.
	waitFor(t, "the server draining the unread body", func() bool { return o39Stuck("(*body).drain", "(*response).finish") })
	io.WriteString(c, "0123456789GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
	start := time.Now()
	for i := 1; i <= 2; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v after %v (idle timeout %v): the pipelined request read by the body's drain was never answered", i, err, time.Since(start).Round(time.Millisecond), idle)
		}
		b, _ := io.ReadAll(resp.Body)
		if want := fmt.Sprintf("answer /%d", i); string(b) != want {
			t.Fatalf("answer %d: %q, want %q", i, b, want)
		}
	}
}

// o39Fill writes filler to c's socket without blocking until the socket takes no more
// (its send buffer made small first), and returns how much it wrote.
func o39Fill(t *testing.T, c *conn) int {
	sc, err := c.rw.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Error(err)
		return 0
	}
	total := 0
	junk := make([]byte, 4096)
	for i := range junk {
		junk[i] = 'f'
	}
	sc.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
	})
	for stable := 0; stable < 3; {
		wrote := false
		sc.Write(func(fd uintptr) bool {
			for {
				n, err := syscall.Write(int(fd), junk)
				if n > 0 {
					total += n
					wrote = true
				}
				if err != nil || n <= 0 {
					return true
				}
			}
		})
		if wrote {
			stable = 0
		} else {
			stable++
		}
		// Acknowledgements in flight may free room: fill again until it takes nothing
		// three times (only the filler's size depends on this, not the test's verdict).
		time.Sleep(20 * time.Millisecond)
	}
	return total
}

// TestOutside39ShutdownDropsUnsentAnswer: Shutdown that starts after finish decided to
// leave the answer's last bytes unsent (the server was not shutting then) but before the
// connection's loop looks at shutting: serve returns and closes the connection without
// sending them — the client gets a cut answer although its handler completed. The window
// is held open deterministically by a client slow to read (the answer's large headers
// wait for room in the socket, after sendHeader's own look at shutting).
func TestOutside39ShutdownDropsUnsentAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var s *Server
	filled := make(chan int, 1)
	s = serveOn(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The client has not read what came before (stands for an earlier answer it is
		// slow to read): the socket is full.
		c := o39OnlyConn(t, s)
		if c == nil {
			filled <- 0
			return
		}
		filled <- o39Fill(t, c)
		w.Header().Set("X-Pad", strings.Repeat("p", 6000))
		io.WriteString(w, "complete")
	}), func(s *Server) { s.IdleTimeout = time.Minute })
	c := dial(t, ln.Addr().String())
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	n := <-filled
	if n == 0 {
		t.Fatal("could not fill the socket")
	}
	waitFor(t, "the answer's headers waiting for room", func() bool {
		return o39Stuck("(*response).finish", "(*response).sendHeader", "waitWrite")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	waitFor(t, "Shutdown to start", s.shutting.Load)
	br := bufio.NewReader(c)
	if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
		t.Fatalf("reading the filler: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the completed answer, Shutdown started while its headers were written: %v (its last bytes were left unsent and the connection closed)", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "complete" {
		t.Fatalf("the completed answer's body: %q, %v", b, err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}
