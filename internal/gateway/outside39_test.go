package gateway

// Outside review (thirty-ninth session): the reused connection's peek made inside the
// request's last write (engineConn.Write -> rawsock.Exchange), errStale, and DoFor's retry.

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// o39Engine answers every request with "for:" and the request's body's first 16 bytes.
// After its first answer on its first connection, it does what spoil says (bytes no
// request asked for, a close, a reset) and then records how many bytes of a further
// request reached that connection (written: -1 until known).
func o39Engine(t *testing.T, release <-chan struct{}, spoil func(c net.Conn)) (*tcpEngine, *atomic.Int64) {
	var written atomic.Int64
	written.Store(-1)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, n int64) {
		for {
			_, body, err := e.readReq(br)
			if err != nil {
				return
			}
			io.WriteString(c, okAnswer("for:"+body[:min(16, len(body))]))
			if n == 0 && spoil != nil {
				<-release // the answer's connection is pooled
				spoil(c)
				c.SetReadDeadline(time.Now().Add(8 * time.Second))
				m, _ := io.Copy(io.Discard, br)
				written.Store(m)
				return
			}
		}
	})
	return e, &written
}

func o39Do(t *testing.T, cl *engineClient, url, body string) string {
	t.Helper()
	code, b, err := engineDo(t, cl, context.Background(), url, body)
	if err != nil || code != 200 {
		t.Fatalf("request %.16q: %d %v", body, code, err)
	}
	return b
}

// TestOutside39StalePooledConnection: a pooled connection the engine spoiled (late bytes,
// a close, a reset) is not used for the next request, small (the peek in Exchange) or
// larger than the 8 KiB writer (the peek at the first write): the next request gets its
// own answer on a new connection, and not a byte of it reached the spoiled one.
func TestOutside39StalePooledConnection(t *testing.T) {
	spoils := map[string]func(c net.Conn){
		"late bytes": func(c net.Conn) { io.WriteString(c, okAnswer("for:SMUGGLED-ANSWER")) },
		"half-close": func(c net.Conn) { c.(*net.TCPConn).CloseWrite() },
		"reset": func(c net.Conn) {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		},
	}
	for name, spoil := range spoils {
		for _, size := range []int{64, 8 << 10, 20 << 10} {
			t.Run(name+"/"+strconv.Itoa(size), func(t *testing.T) {
				release := make(chan struct{})
				e, written := o39Engine(t, release, spoil)
				defer func() {
					select {
					case <-release:
					default:
						close(release)
					}
				}()
				cl := newEngineClient(10*time.Second, http.DefaultClient)
				if b := o39Do(t, cl, e.url(), "first-request..."); b != "for:first-request..." {
					t.Fatalf("first answer %q", b)
				}
				ec := cl.a3Pooled(e.ln.Addr().String())
				if ec == nil {
					t.Fatal("the first connection was not pooled")
				}
				close(release)
				waitPending(t, ec)
				second := "second-request.." + strings.Repeat("x", size)
				if b := o39Do(t, cl, e.url(), second); b != "for:second-request.." {
					t.Fatalf("second request (%d bytes of body) after the pooled connection was spoiled (%s): answer %q", len(second), name, b)
				}
				if name == "late bytes" {
					deadline := time.Now().Add(9 * time.Second)
					for written.Load() < 0 && time.Now().Before(deadline) {
						time.Sleep(time.Millisecond)
					}
					if w := written.Load(); w != 0 {
						t.Fatalf("%d bytes of the second request reached the spoiled connection (want none: the peek refuses it before writing)", w)
					}
				}
				if got := e.conns.Load(); got != 2 {
					t.Fatalf("%d engine connections, want 2", got)
				}
			})
		}
	}
}

// TestOutside39EarlyAnswerLargeRequest: the engine answers a 64 KiB request after its
// headers, before reading the body (the answer is there before the request's last write),
// then reads the body. The answer is the request's own, and the next request on the pooled
// connection gets its own answer, not a shifted one.
func TestOutside39EarlyAnswerLargeRequest(t *testing.T) {
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, n int64) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			head := make([]byte, 16)
			if _, err := io.ReadFull(req.Body, head); err != nil {
				return
			}
			io.WriteString(c, okAnswer("for:"+string(head)))
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
		}
	})
	cl := newEngineClient(10*time.Second, http.DefaultClient)
	for i, p := range []string{"request-number-1", "request-number-2", "request-number-3"} {
		body := p + strings.Repeat("y", 64<<10)
		if i == 2 {
			body = p // small: its peek and write are one Exchange
		}
		if b := o39Do(t, cl, e.url(), body); b != "for:"+p {
			t.Fatalf("request %d: answer %q, want %q", i+1, b, "for:"+p)
		}
	}
	if got := e.conns.Load(); got != 1 {
		t.Logf("%d engine connections", got)
	}
}

// TestOutside39CancelDuringExchangeWait: a request whose engine never answers is ended by
// its context while Exchange waits for the answer: DoFor returns the context's error
// promptly, and the connection is not pooled.
func TestOutside39CancelDuringExchangeWait(t *testing.T) {
	got := make(chan struct{}, 4)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, n int64) {
		if _, _, err := e.readReq(br); err != nil {
			return
		}
		got <- struct{}{}
		io.Copy(io.Discard, br)
	})
	cl := newEngineClient(time.Minute, http.DefaultClient)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := engineDo(t, cl, ctx, e.url(), "never answered")
		done <- err
	}()
	<-got
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("DoFor after its context was cancelled: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("DoFor still waits in Exchange 30 s after its context was cancelled")
	}
	if ec := cl.a3Pooled(e.ln.Addr().String()); ec != nil {
		t.Fatal("the cancelled request's connection was pooled")
	}
}
