package gateway

// Attack tests (outside review, round 3) against engineClient: a hostile or buggy engine
// on a pooled keep-alive connection shared by all tenants. Written against a version that
// skipped the idle peek for connections back in the pool under 50 ms, resent a request
// after a write failure, wrote before checking headers and had no write deadline: four of
// them broke it (one tenant read another's answer; a 32 MiB request sent twice; an engine
// that never reads held a request past its timeout; 8 KiB reached the engine before a bad
// header was refused). Fixed in upstream.go; every test here passes now.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// readLikeGateway reads an answer's body as proxy does (bytes.Buffer.ReadFrom through a
// LimitReader) into a buffer that already has room (a warm pool buffer), and closes it.
func readLikeGateway(resp *http.Response) (string, error) {
	defer resp.Body.Close()
	buf := bytes.NewBuffer(make([]byte, 0, 1<<20))
	_, err := buf.ReadFrom(io.LimitReader(resp.Body, 64<<20))
	return buf.String(), err
}

func a3Post(t *testing.T, ctx context.Context, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return req
}

// pooled returns the one idle connection kept for addr, whichever tenant's (nil if none).
func (cl *engineClient) a3Pooled(addr string) *engineConn {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var found []*engineConn
	for k, l := range cl.idle {
		if k.addr == addr {
			found = append(found, l...)
		}
	}
	if len(found) == 1 {
		return found[0]
	}
	return nil
}

// waitPending waits (bounded) until bytes the engine sent sit unread in ec's socket.
func waitPending(t *testing.T, ec *engineConn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for idleOpen(ec.c) {
		if time.Now().After(deadline) {
			t.Fatal("the engine's late bytes never reached the gateway's socket")
		}
	}
}

// Attack 1 (promise 1, no timing): the engine answers request 0 with a 40 KiB body and,
// in the same write, a complete second answer. The body is read as proxy reads it (into a
// warm buffer): the last read of the body goes straight from the socket for exactly the
// body's remaining length, so the smuggled answer never enters the bufio buffer; Close
// sees Buffered()==0 and pools the connection. The next request (another tenant) must not
// take the smuggled answer as its own (the peek before every reuse finds it).
func TestAttack3SmuggledAnswerBeyondBuffer(t *testing.T) {
	written := make(chan struct{}, 1)
	pad := strings.Repeat("x", 40<<10)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		for i := 0; ; i++ {
			_, body, err := e.readReq(br)
			if err != nil {
				return
			}
			out := okAnswer(`{"echo":` + body + `}`)
			tenantA := body == `{"tenant":"A"}`
			if tenantA {
				out = okAnswer(`{"echo":`+body+`,"pad":"`+pad+`"}`) + okAnswer(`{"smuggled":"tenant A's answer"}`)
			}
			if _, err := io.WriteString(c, out); err != nil {
				return
			}
			if tenantA {
				written <- struct{}{}
			}
		}
	})
	cl := newEngineClient(time.Minute, http.DefaultClient)
	resp, err := cl.Do(a3Post(t, context.Background(), e.url(), `{"tenant":"A"}`), []byte(`{"tenant":"A"}`))
	if err != nil {
		t.Fatal(err)
	}
	<-written // all of the engine's bytes are in (or on their way to) the gateway's socket
	a, err := readLikeGateway(resp)
	if err != nil || !strings.HasPrefix(a, `{"echo":{"tenant":"A"}`) {
		t.Fatalf("tenant A: %.60q %v", a, err)
	}
	pooled := cl.a3Pooled(e.ln.Addr().String())
	t.Logf("connection pooled after A's answer: %v", pooled != nil)
	var got [2]string
	for i, who := range []string{"B", "C"} {
		body := `{"tenant":"` + who + `"}`
		code, b, err := engineDo(t, cl, context.Background(), e.url(), body)
		got[i] = fmt.Sprintf("%d %s %v", code, b, err)
		if err == nil && b != `{"echo":`+body+`}` {
			t.Errorf("tenant %s received another request's answer: %d %q (want its own echo)", who, code, b)
		}
	}
	t.Logf("B got %s; C got %s; engine connections %d", got[0], got[1], e.conns.Load())
}

// Attack 2 (promise 1, late bytes): the engine answers request 0 with a correctly framed
// answer, waits until the gateway has pooled the connection, then sends a complete second
// answer (a buggy engine repeating itself). The next request, sent moments later, must
// not read it. One case per framing of the first answer.
func TestAttack3LateBytesAfterAnswer(t *testing.T) {
	late := okAnswer(`{"smuggled":"tenant A's answer"}`)
	cases := []struct {
		name, first string
		peek        bool
	}{
		{"peeked control", okAnswer(`{"a":1}`), true},
		{"content-length", okAnswer(`{"a":1}`), false},
		{"chunked with extension and trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7;ext=1\r\n{\"a\":1}\r\n0\r\nX-Trailer: t\r\n\r\n", false},
		{"http/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 7\r\n\r\n{\"a\":1}", false},
		{"1xx then answer", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n" + okAnswer(`{"a":1}`), false},
		{"content-length and chunked", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n", false},
		{"204", "HTTP/1.1 204 No Content\r\n\r\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			e := firstAnswerEngine(t, tc.first, func(c net.Conn) {
				<-release
				io.WriteString(c, late)
			})
			defer func() {
				select {
				case <-release:
				default:
					close(release)
				}
			}()
			cl := newEngineClient(time.Minute, http.DefaultClient)
			resp, err := cl.Do(a3Post(t, context.Background(), e.url(), `{}`), []byte(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := readLikeGateway(resp); err != nil {
				t.Fatal(err)
			}
			ec := cl.a3Pooled(e.ln.Addr().String())
			if ec == nil {
				t.Skip("the first answer's connection was not pooled: nothing to smuggle into")
			}
			close(release)
			waitPending(t, ec)
			idle := time.Since(ec.since)
			code, b, err := engineDo(t, cl, context.Background(), e.url(), `{"tenant":"B"}`)
			if err == nil && b != `{"echo":{"tenant":"B"}}` {
				t.Fatalf("tenant B (sent %v after the connection was pooled) received %d %q", idle, code, b)
			}
			t.Logf("B: %d %q %v (idle %v)", code, b, err, idle)
		})
	}
}

// Attack 2b (promise 1, whole gateway): a buggy engine sends its answer to alice's chat
// request twice (the second copy after the gateway pooled the connection). Bob's request,
// made right after by an outside HTTP client, must get bob's answer, never alice's.
func TestAttack3GatewayDuplicateAnswerLeaksToNextTenant(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce atomic.Bool
	answer := func(body string) string {
		var in struct {
			Messages []struct{ Content string } `json:"messages"`
		}
		json.Unmarshal([]byte(body), &in)
		content := "?"
		if len(in.Messages) > 0 {
			content = "answer to " + in.Messages[len(in.Messages)-1].Content
		}
		b, _ := json.Marshal(map[string]any{
			"id": "x", "object": "chat.completion", "created": 1, "model": "demo",
			"choices": []any{map[string]any{"index": 0, "finish_reason": "stop",
				"message": map[string]any{"role": "assistant", "content": content}}},
			"usage": map[string]any{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
		})
		return okAnswer(string(b))
	}
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		for {
			req, body, err := e.readReq(br)
			if err != nil {
				return
			}
			if req.Method == http.MethodGet {
				io.WriteString(c, okAnswer(`{"object":"list","data":[{"id":"demo","object":"model"}]}`))
				continue
			}
			out := answer(body)
			if _, err := io.WriteString(c, out); err != nil {
				return
			}
			if strings.Contains(body, "alice-secret") && releaseOnce.CompareAndSwap(false, true) {
				<-release
				io.WriteString(c, out) // the engine repeats alice's answer
			}
		}
	})
	f := newFixture(t, func(c *Config) {
		c.Routes = []Route{{Model: "demo", Upstreams: []string{e.url()}, UpstreamKey: engineKey}}
	})
	defer func() {
		if !releaseOnce.Load() {
			return
		}
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	post := func(key, msg string) (int, string) {
		b := `{"model":"demo","messages":[{"role":"user","content":"` + msg + `"}],"max_tokens":4}`
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/chat/completions", strings.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	code, a := post(f.alice, "alice-secret")
	if code != 200 || !strings.Contains(a, "answer to alice-secret") {
		t.Fatalf("alice: %d %s", code, a)
	}
	addr := e.ln.Addr().String()
	var ec *engineConn
	for deadline := time.Now().Add(5 * time.Second); ec == nil; { // the handler's deferred Close pools it
		if ec = f.gw.engines.a3Pooled(addr); ec == nil && time.Now().After(deadline) {
			t.Fatal("alice's engine connection was never pooled")
		}
	}
	close(release)
	waitPending(t, ec)
	t0 := ec.since
	code, b := post(f.bob, "bob-question")
	t.Logf("bob (gateway reused the connection %v after pooling it at most): %d %s", time.Since(t0), code, b)
	if strings.Contains(b, "alice-secret") {
		t.Fatalf("bob received alice's answer: %d %s", code, b)
	}
	if code == 200 && !strings.Contains(b, "answer to bob-question") {
		t.Fatalf("bob's answer is not his own: %s", b)
	}
}

// Attack 3 (promise 1): junk pipelined in the same write as the answer (small answers:
// the junk is in the bufio buffer), for several framings; the next request gets its own
// answer on a new connection.
func TestAttack3PipelinedJunkInBuffer(t *testing.T) {
	smug := okAnswer(`{"smuggled":1}`)
	cases := []struct{ name, first string }{
		{"chunked trailer then answer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2;a=b\r\n{}\r\n0;z\r\nX-T: 1\r\n\r\n" + smug},
		{"204 with a body", "HTTP/1.1 204 No Content\r\nContent-Length: " + strconv.Itoa(len(smug)) + "\r\n\r\n" + smug},
		{"304 with a body", "HTTP/1.1 304 Not Modified\r\nContent-Length: " + strconv.Itoa(len(smug)) + "\r\n\r\n" + smug},
		{"http/1.0 keep-alive then answer", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}" + smug},
		{"http/1.0 chunked (TE ignored)", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}" + smug},
		{"cl shorter than chunked", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + smug},
		{"101 then answer", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n" + smug},
		{"status 600", "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n" + smug},
		{"status 099", "HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n" + smug},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := firstAnswerEngine(t, tc.first, nil)
			cl := newEngineClient(time.Minute, http.DefaultClient)
			code, a, err := engineDo(t, cl, context.Background(), e.url(), `{"t":"A"}`)
			t.Logf("A: %d %q %v", code, a, err)
			if err == nil && (strings.Contains(a, "smuggled") || code < 200 || code > 599) {
				t.Fatalf("A accepted %d %q", code, a)
			}
			for _, who := range []string{"B", "C"} {
				body := `{"t":"` + who + `"}`
				code, b, err := engineDo(t, cl, context.Background(), e.url(), body)
				if err != nil || code != 200 || b != `{"echo":`+body+`}` {
					t.Fatalf("%s: %d %q %v", who, code, b, err)
				}
			}
		})
	}
}

// Attack 4 (promises 2 and 6): on a reused connection, the engine answers a large request
// early (413 after its head, before reading the body) and closes. The engine did send an
// answer, so the request must not be sent again; net/http's Transport returns the 413.
func TestAttack3EarlyAnswerThenCloseIsNotResent(t *testing.T) {
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			e.heads.Add(1)
			if req.ContentLength > 1<<20 {
				io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large")
				return // closes with the body unread (RST)
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, okAnswer(`{}`))
		}
	})
	cl := newEngineClient(time.Minute, http.DefaultClient)
	if code, _, err := engineDo(t, cl, context.Background(), e.url(), `{}`); err != nil || code != 200 {
		t.Fatalf("first: %d %v", code, err)
	}
	big := bytes.Repeat([]byte("a"), 32<<20)
	req := a3Post(t, context.Background(), e.url(), "")
	resp, err := cl.Do(req, big)
	code := 0
	if err == nil {
		code = resp.StatusCode
		resp.Body.Close()
	}
	t.Logf("large request: status %d err %v; engine saw %d heads on %d connections", code, err, e.heads.Load(), e.conns.Load())
	if n := e.heads.Load(); n != 2 {
		t.Fatalf("the engine answered the large request (413) and still received it %d times (want once)", n-1)
	}
}

// Attack 5 (promise 4): an engine that takes the request's head but never reads its body
// nor answers. The header timeout is 200 ms: the client must give up within it (the
// gateway's slot and the client's goroutine are held meanwhile).
func TestAttack3EngineNeverReadsBody(t *testing.T) {
	for _, size := range []int{4 << 20, 64 << 20} { // 4 MiB: the gateway's default MaxBody
		t.Run(strconv.Itoa(size>>20)+"MiB", func(t *testing.T) { a3NeverReadsBody(t, size) })
	}
}

func a3NeverReadsBody(t *testing.T, size int) {
	hold := make(chan struct{})
	defer close(hold)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		<-hold
	})
	cl := newEngineClient(200*time.Millisecond, http.DefaultClient)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	body := bytes.Repeat([]byte("a"), size) // made before the clock starts: 64 MiB under -race on a loaded machine took seconds (the suite, once)
	start := time.Now()
	go func() {
		resp, err := cl.Do(a3Post(t, ctx, e.url(), ""), body)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("no error")
		}
		t.Logf("gave up after %v: %v", time.Since(start), err)
	case <-time.After(3 * time.Second):
		cancel()
		err := <-done
		t.Fatalf("engine held the request %v past a 200ms header timeout (still writing the body); after cancel: %v", time.Since(start), err)
	}
}

// Attack 6 (promise 4): headers trickled one byte at a time, and an endless trickle of
// 100 Continue: the header timeout is absolute.
func TestAttack3TrickledHeaders(t *testing.T) {
	for _, tc := range []struct{ name, unit string }{{"trickled header", "a"}, {"trickled 1xx", "HTTP/1.1 100 Continue\r\n\r\n"}} {
		t.Run(tc.name, func(t *testing.T) {
			stop := make(chan struct{})
			defer close(stop)
			e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
				if _, _, err := e.readReq(br); err != nil {
					return
				}
				if tc.unit == "a" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Slow: ")
				}
				tick := time.NewTicker(5 * time.Millisecond) // the engine's pace, not a wait of the test
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						if _, err := io.WriteString(c, tc.unit); err != nil {
							return
						}
					}
				}
			})
			cl := newEngineClient(200*time.Millisecond, http.DefaultClient)
			done := make(chan error, 1)
			start := time.Now()
			go func() { _, _, err := engineDo(t, cl, context.Background(), e.url(), `{}`); done <- err }()
			select {
			case err := <-done:
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Fatalf("got %v, want a timeout", err)
				}
				t.Logf("timed out after %v", time.Since(start))
			case <-time.After(3 * time.Second):
				t.Fatal("a trickling engine held the client past its header timeout")
			}
		})
	}
}

// Attack 7 (promise 5): a header value with CR LF after 9 KiB of valid header: nothing of
// the request may reach the engine. The engine reports every byte it got on the
// connection once the client closed it.
func TestAttack3HeaderInjectionAfterBufferFlush(t *testing.T) {
	got := make(chan int, 4)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		n, _ := io.Copy(io.Discard, br)
		got <- int(n)
	})
	cl := newEngineClient(time.Minute, http.DefaultClient)
	for _, tc := range []struct {
		name string
		h    http.Header
	}{
		{"bad value after a big one", http.Header{"X-Tenant-Note": {strings.Repeat("a", 9<<10), "x\r\nX-Injected: 1"}}},
		{"bad value after a big one, NUL", http.Header{"X-Tenant-Note": {strings.Repeat("a", 9<<10), "x\x00y"}}},
	} {
		req := a3Post(t, context.Background(), e.url(), "")
		req.Header = tc.h
		_, err := cl.Do(req, []byte(`{}`))
		if !errors.Is(err, errEngineHeader) {
			t.Fatalf("%s: got %v, want errEngineHeader", tc.name, err)
		}
		if e.conns.Load() == 0 {
			continue // refused before a connection was even taken: nothing reached the engine
		}
		if n := <-got; n != 0 {
			t.Errorf("%s: refused, but the engine already received %d bytes of the request", tc.name, n)
		}
	}
}

// Attack 8 (promise 2): the engine reads a request on a reused connection in full, then
// closes without a byte of answer (it may have run it). The client does not send it again
// (an earlier version resent it once; the Transport would not resend a POST either).
func TestAttack3ResendAfterSilentClose(t *testing.T) {
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64) {
		for i := 0; ; i++ {
			if _, _, err := e.readReq(br); err != nil {
				return
			}
			if conn == 0 && i == 0 {
				io.WriteString(c, okAnswer(`{}`))
				continue
			}
			return // read in full, no answer, close
		}
	})
	cl := newEngineClient(time.Minute, http.DefaultClient)
	if code, _, err := engineDo(t, cl, context.Background(), e.url(), `{}`); err != nil || code != 200 {
		t.Fatalf("first: %d %v", code, err)
	}
	_, _, err := engineDo(t, cl, context.Background(), e.url(), `{"charge":"card"}`)
	if err == nil {
		t.Fatal("no error")
	}
	if n := e.heads.Load() - 1; n != 1 {
		t.Fatalf("the engine received the request %d times, want once", n)
	}
}

// Attack 9 (promise 3): the caller cancels mid-body (directly), and an outside client goes
// away while the gateway waits for headers and mid-body: the engine sees its connection
// closed.
func TestAttack3CancelMidBody(t *testing.T) {
	closed := make(chan struct{}, 1)
	sent := make(chan struct{}, 1)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		if _, _, err := e.readReq(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{\"partial\":")
		sent <- struct{}{}
		io.Copy(io.Discard, br) // until the client's close
		closed <- struct{}{}
	})
	cl := newEngineClient(time.Minute, http.DefaultClient)
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := cl.Do(a3Post(t, ctx, e.url(), `{}`), []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	<-sent
	rerr := make(chan error, 1)
	go func() { _, err := io.ReadAll(resp.Body); rerr <- err }()
	cancel()
	select {
	case <-closed:
	case <-time.After(3 * time.Second):
		t.Fatal("engine connection still open after the caller cancelled mid-body")
	}
	if err := <-rerr; err == nil {
		t.Fatal("body read ended without error")
	}
	resp.Body.Close()
}

func TestAttack3GatewayClientGoesAway(t *testing.T) {
	for _, phase := range []string{"waiting for headers", "mid-body"} {
		t.Run(phase, func(t *testing.T) {
			closed := make(chan struct{}, 4)
			got := make(chan struct{}, 4)
			e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
				req, _, err := e.readReq(br)
				if err != nil {
					return
				}
				if req.Method == http.MethodGet {
					io.WriteString(c, okAnswer(`{"object":"list","data":[]}`))
					return
				}
				if phase == "mid-body" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
				}
				got <- struct{}{}
				io.Copy(io.Discard, br)
				closed <- struct{}{}
			})
			f := newFixture(t, func(c *Config) {
				c.Routes = []Route{{Model: "demo", Upstreams: []string{e.url()}, UpstreamKey: engineKey}}
				c.UpstreamTimeout = time.Minute
			})
			conn, err := net.Dial("tcp", f.srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			b := `{"model":"demo","messages":[{"role":"user","content":"hi"}]}`
			fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", f.alice, len(b), b)
			select {
			case <-got:
			case <-time.After(5 * time.Second):
				t.Fatal("the engine never got the request")
			}
			conn.Close()
			select {
			case <-closed:
			case <-time.After(3 * time.Second):
				t.Fatal("the engine's connection stayed open after the client went away")
			}
		})
	}
}

// Controls: net/http's Transport over the same hostile engines (what promise 6 compares
// against). Late bytes on an idle connection: the Transport's read loop finds them and
// drops the connection (waited for: the engine sees its close), so B gets its own answer.
// An early 413 on a large request: the Transport returns the 413 or an error, and does
// not resend. An engine that never reads the body: the Transport hangs too (logged only).
func TestAttack3TransportControls(t *testing.T) {
	t.Run("late bytes", func(t *testing.T) {
		release := make(chan struct{})
		dropped := make(chan struct{}, 1)
		e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64) {
			for i := 0; ; i++ {
				_, body, err := e.readReq(br)
				if err != nil {
					return
				}
				io.WriteString(c, okAnswer(`{"echo":`+body+`}`))
				if conn == 0 && i == 0 {
					<-release
					io.WriteString(c, okAnswer(`{"smuggled":"tenant A's answer"}`))
					io.Copy(io.Discard, br)
					dropped <- struct{}{}
					return
				}
			}
		})
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr}
		do := func(body string) string {
			resp, err := hc.Do(a3Post(t, context.Background(), e.url(), body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(b)
		}
		do(`{"t":"A"}`)
		close(release)
		select {
		case <-dropped:
		case <-time.After(5 * time.Second):
			t.Fatal("the Transport kept the connection with unsolicited bytes")
		}
		if b := do(`{"t":"B"}`); b != `{"echo":{"t":"B"}}` {
			t.Fatalf("Transport: B got %q", b)
		}
	})
	t.Run("early 413", func(t *testing.T) {
		e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				e.heads.Add(1)
				if req.ContentLength > 1<<20 {
					io.WriteString(c, "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 9\r\n\r\ntoo large")
					return
				}
				io.Copy(io.Discard, req.Body)
				io.WriteString(c, okAnswer(`{}`))
			}
		})
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr}
		resp, err := hc.Do(a3Post(t, context.Background(), e.url(), `{}`))
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
		resp, err = hc.Do(a3Post(t, context.Background(), e.url(), strings.Repeat("a", 32<<20)))
		code := 0
		if err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		}
		t.Logf("Transport: %d %v, engine heads %d", code, err, e.heads.Load())
		if n := e.heads.Load(); n != 2 {
			t.Fatalf("Transport sent the large request %d times", n-1)
		}
	})
	t.Run("never reads body", func(t *testing.T) {
		hold := make(chan struct{})
		defer close(hold)
		e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
			if _, err := http.ReadRequest(br); err == nil {
				<-hold
			}
		})
		tr := &http.Transport{ResponseHeaderTimeout: 200 * time.Millisecond}
		defer tr.CloseIdleConnections()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			resp, err := (&http.Client{Transport: tr}).Do(a3Post(t, ctx, e.url(), strings.Repeat("a", 4<<20)))
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			t.Logf("Transport gave up: %v", err)
		case <-time.After(time.Second):
			cancel()
			t.Logf("Transport also held past ResponseHeaderTimeout (1s); after cancel: %v", <-done)
		}
	})
}

// firstAnswerEngine answers the first request on its first connection with the raw bytes
// first, then calls after (if any) on that connection; every other request gets an echo.
func firstAnswerEngine(t *testing.T, first string, after func(c net.Conn)) *tcpEngine {
	return newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, conn int64) {
		for i := 0; ; i++ {
			_, body, err := e.readReq(br)
			if err != nil {
				return
			}
			out := okAnswer(`{"echo":` + body + `}`)
			firstOne := conn == 0 && i == 0
			if firstOne {
				out = first
			}
			if _, err := io.WriteString(c, out); err != nil {
				return
			}
			if firstOne && after != nil {
				after(c)
			}
		}
	})
}
