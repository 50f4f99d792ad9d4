package gateway

// Outside attack tests, round 46: the engine client's connections read and write with raw
// system calls (package rawsock; raw only in non-race builds). A hostile engine resets
// mid-answer, stalls mid-body, answers huge bodies, resets while pooled, or sends late
// bytes then resets; many tenants at once on one engine. No request may get another's
// bytes, errors fail closed, a blocked raw read ends on cancel.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/rawsock"
)

func a46Reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// An engine that resets halfway through a body: the body's read fails (never a clean,
// short end), and the connection is not pooled; the next request gets its own answer.
func TestAttack46EngineResetMidBody(t *testing.T) {
	body := strings.Repeat("b", 1<<20)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64) {
		for {
			_, reqBody, err := e.readReq(br)
			if err != nil {
				return
			}
			if conn == 0 {
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:len(body)/2])
				a46Reset(c)
				return
			}
			io.WriteString(c, okAnswer(`{"echo":`+reqBody+`}`))
		}
	})
	cl := newEngineClient(10*time.Second, http.DefaultClient)
	resp, err := cl.Do(a3Post(t, context.Background(), e.url(), `{}`), []byte(`{}`))
	if err == nil {
		got, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Fatalf("a body cut by a reset read as whole: %d bytes of %d", len(got), len(body))
		}
	}
	if ec := cl.a3Pooled(e.ln.Addr().String()); ec != nil {
		t.Fatal("the reset connection was pooled")
	}
	code, b, err := engineDo(t, cl, context.Background(), e.url(), `{"n":2}`)
	if err != nil || code != 200 || b != `{"echo":{"n":2}}` {
		t.Fatalf("next request: %d %q %v", code, b, err)
	}
}

// An engine that stalls halfway through a body: cancelling the request's context ends the
// raw read blocked on the socket at once (the connection is closed under it).
func TestAttack46EngineStallMidBodyCancel(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64) {
		if _, _, err := e.readReq(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("s", 300000))
		<-hold
	})
	cl := newEngineClient(time.Second, http.DefaultClient) // the header bound is lifted for the body
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := cl.Do(a3Post(t, ctx, e.url(), `{}`), []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if n, err := io.CopyN(io.Discard, resp.Body, 300000); err != nil {
		t.Fatalf("first part of the body: %d, %v", n, err)
	}
	done := make(chan error, 1)
	go func() {
		var p [4096]byte
		_, err := resp.Body.Read(p[:])
		done <- err
	}()
	// The read waits on the stalled engine: it must not end by itself (past the 1 s header
	// bound) and must end on cancel.
	select {
	case err := <-done:
		t.Fatalf("a read of a stalled body ended on its own: %v", err)
	case <-time.After(1500 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || err == io.EOF {
			t.Fatalf("a cancelled read of a stalled body: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling the context did not end a raw read blocked on the engine")
	}
	if ec := cl.a3Pooled(e.ln.Addr().String()); ec != nil {
		t.Fatal("the cancelled connection was pooled")
	}
}

// A huge answer (96 MiB, content-length and chunked) arrives whole over a raw connection,
// and the connection is then reused for the next request, which gets its own answer.
func TestAttack46EngineHugeBody(t *testing.T) {
	const size = 96 << 20
	blob := make([]byte, size)
	for i := range blob {
		blob[i] = byte(i*7 + i>>12)
	}
	want := crc32.ChecksumIEEE(blob)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64) {
		for {
			req, reqBody, err := e.readReq(br)
			if err != nil {
				return
			}
			switch req.URL.Query().Get("m") {
			case "cl":
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
				c.Write(blob)
			case "chunked":
				io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
				bw := bufio.NewWriterSize(c, 1<<20)
				for off := 0; off < size; off += 3 << 20 {
					part := blob[off:min(size, off+3<<20)]
					fmt.Fprintf(bw, "%x\r\n", len(part))
					bw.Write(part)
					bw.WriteString("\r\n")
				}
				bw.WriteString("0\r\n\r\n")
				bw.Flush()
			default:
				io.WriteString(c, okAnswer(`{"echo":`+reqBody+`}`))
			}
		}
	})
	cl := newEngineClient(10*time.Second, http.DefaultClient)
	for _, m := range []string{"cl", "chunked"} {
		req, err := http.NewRequest(http.MethodPost, e.url()+"/chat?m="+m, strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cl.Do(req, []byte(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		h := crc32.NewIEEE()
		n, err := io.CopyBuffer(h, resp.Body, make([]byte, 256<<10))
		resp.Body.Close()
		if err != nil || n != size || h.Sum32() != want {
			t.Fatalf("%s: %d bytes of %d, %v, checksum equal %v", m, n, size, err, h.Sum32() == want)
		}
		code, b, err := engineDo(t, cl, context.Background(), e.url(), `{"after":"`+m+`"}`)
		if err != nil || code != 200 || b != `{"echo":{"after":"`+m+`"}}` {
			t.Fatalf("after %s: %d %q %v", m, code, b, err)
		}
	}
	if e.conns.Load() != 1 {
		t.Fatalf("%d engine connections for answers read whole; want the one reused", e.conns.Load())
	}
}

// An engine that answers, then (once the connection is pooled) sends late bytes and
// resets, or just resets: the next request never reads those bytes and succeeds on a new
// connection (the raw peek sees the reset).
func TestAttack46EngineResetWhilePooled(t *testing.T) {
	for _, late := range []string{"", okAnswer(`{"smuggled":true}`)} {
		release := make(chan struct{})
		e := firstAnswerEngine(t, okAnswer(`{"a":1}`), func(c net.Conn) {
			<-release
			if late != "" {
				io.WriteString(c, late)
			}
			a46Reset(c)
		})
		cl := newEngineClient(10*time.Second, http.DefaultClient)
		code, b, err := engineDo(t, cl, context.Background(), e.url(), `{}`)
		if err != nil || code != 200 || b != `{"a":1}` {
			t.Fatalf("first: %d %q %v", code, b, err)
		}
		ec := cl.a3Pooled(e.ln.Addr().String())
		if ec == nil {
			t.Fatal("not pooled")
		}
		if _, ok := ec.c.(*rawsock.Conn); !ok {
			t.Fatalf("engine connection is %T", ec.c)
		}
		close(release)
		waitPending(t, ec) // the reset (or the bytes) reached the socket
		code, b, err = engineDo(t, cl, context.Background(), e.url(), `{"n":2}`)
		if err != nil || code != 200 || b != `{"echo":{"n":2}}` {
			t.Fatalf("late %q: next request %d %q %v", late, code, b, err)
		}
	}
}

// Many tenants at once, answers of many sizes, some answers chunked, some engines' answers
// ending the connection: every request gets exactly its own echo.
func TestAttack46EngineConcurrentTenants(t *testing.T) {
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64) {
		for i := 0; ; i++ {
			req, reqBody, err := e.readReq(br)
			if err != nil {
				return
			}
			pad, _ := strconv.Atoi(req.Header.Get("X-Pad"))
			out := `{"echo":` + reqBody + `,"pad":"` + strings.Repeat("p", pad) + `"}`
			switch i % 3 {
			case 0:
				io.WriteString(c, okAnswer(out))
			case 1:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(out), out)
			case 2:
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(out), out)
				return
			}
		}
	})
	cl := newEngineClient(10*time.Second, http.DefaultClient)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			tenant := "t" + strconv.Itoa(g%3)
			for i := range 40 {
				body := fmt.Sprintf(`{"g":%d,"i":%d}`, g, i)
				pad := (g*7919 + i*104729) % (300 << 10)
				req, err := http.NewRequest(http.MethodPost, e.url()+"/chat", strings.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				req.Header.Set("X-Pad", strconv.Itoa(pad))
				resp, err := cl.DoFor(context.Background(), tenant, req, []byte(body))
				if err != nil {
					t.Errorf("%d/%d: %v", g, i, err)
					return
				}
				got, err := readLikeGateway(resp)
				want := `{"echo":` + body + `,"pad":"` + strings.Repeat("p", pad) + `"}`
				if err != nil || got != want {
					t.Errorf("%d/%d: got %.80q (%d bytes), %v; want %.80q (%d)", g, i, got, len(got), err, want, len(want))
					return
				}
			}
		})
	}
	wg.Wait()
}

// An engine that never reads a large request: the raw write waits, the request's timeout
// ends it, and the error is a timeout (never a success, never a hang); nothing is pooled.
func TestAttack46EngineNeverReadsLargeRequest(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64) { <-hold })
	cl := newEngineClient(500*time.Millisecond, http.DefaultClient)
	body := bytes.Repeat([]byte("x"), 48<<20)
	req, err := http.NewRequest(http.MethodPost, e.url()+"/chat", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = cl.Do(req, body)
	var ne net.Error
	if err == nil || !(errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("a 48 MiB request to an engine that never reads: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("took %v", took)
	}
	if ec := cl.a3Pooled(e.ln.Addr().String()); ec != nil {
		t.Fatal("a timed-out connection was pooled")
	}
}
