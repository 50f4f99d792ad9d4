package h1

// Outside attack tests, second round (helper-25): each TestAttack25... probes one of the
// h1 server's promises over real TCP connections on 127.0.0.1, reusing the first round's
// differential harness (a24NewPair & co. in attack_test.go).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// a25Chunks is a chunked body of n one-byte chunks, each with an extension of extLen bytes.
func a25Chunks(n, extLen int) string {
	var b strings.Builder
	ext := ";" + strings.Repeat("e", extLen)
	for i := 0; i < n; i++ {
		b.WriteString("1" + ext + "\r\nx\r\n")
	}
	b.WriteString("0\r\n\r\n")
	return b.String()
}

// TestAttack25ChunkedDifferential (promises 1, 2): chunked bodies of the shapes the first
// round did not send — many tiny chunks with long extensions, a long trailer section,
// leading zeros, uppercase hex, a size line at the bound — each followed by a pipelined
// request. Every request h1's handler sees must be seen identically (body, body error,
// trailer) and in the same position by net/http's handler.
func TestAttack25ChunkedDifferential(t *testing.T) {
	p := a24NewPair(t)
	post := "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	after := "GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
	cases := []struct{ name, raw string }{
		{"control-upper-hex", post + "A\r\n0123456789\r\n0\r\n\r\n" + after},
		{"control-leading-zeros-15", post + "00000000000000A\r\n0123456789\r\n000\r\n\r\n" + after},
		{"control-many-tiny-chunks", post + a25Chunks(2000, 0) + after},
		{"control-size-line-4094", post + "3;" + strings.Repeat("e", 4092) + "\r\nabc\r\n0\r\n\r\n" + after},
		{"size-line-4095", post + "3;" + strings.Repeat("e", 4093) + "\r\nabc\r\n0\r\n\r\n" + after},
		// net/http allows 16 bytes of overhead per chunk plus twice its data, and fails a
		// body once the excess passes 16 KiB ("chunked encoding contains too much
		// non-data"): 300 one-byte chunks with 100-byte extensions.
		{"tiny-chunks-long-extensions", post + a25Chunks(300, 100) + after},
		{"one-chunk-long-extensions-then-data", post + a25Chunks(40, 4000) + after},
		// net/http's trailer must fit its 4 KiB read buffer ("suspiciously long trailer").
		{"long-trailer-5000", post + "5\r\nhello\r\n0\r\nX-T: " + strings.Repeat("t", 5000) + "\r\n\r\n" + after},
		{"many-trailer-lines", post + "5\r\nhello\r\n0\r\n" + strings.Repeat("X-T: tttttttttttttttttttttttttttttt\r\n", 200) + "\r\n" + after},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h1Seen, stdSeen, h1Resp, stdResp := p.run(t, tc.raw)
			if d := a24Differ(h1Seen, stdSeen); d != "" {
				t.Errorf("input (%d bytes) %.300q...\n%.2000s\n  answers h1 %v, net/http %v", len(tc.raw), tc.raw, d, h1Resp, stdResp)
			}
			if strings.HasPrefix(tc.name, "control") && len(h1Seen) != len(stdSeen) {
				t.Errorf("control: h1 served %d, net/http %d", len(h1Seen), len(stdSeen))
			}
		})
	}
}

// a25Pair is an h1 server and a net/http server with the same handler h (which records
// into seen lines tagged by the server).
func a25Pair(t *testing.T, h func(tag string) http.Handler) (h1Addr, stdAddr string) {
	_, h1Addr = a24H1(t, h("h1"), func(s *Server) { s.ReadHeaderTimeout = 2 * time.Second })
	stdAddr = a24Std(t, h("std"), func(s *http.Server) { s.ReadHeaderTimeout = 2 * time.Second; s.IdleTimeout = 2 * time.Second })
	return
}

// TestAttack25MaxBytesReaderKeepAlive (promise 1: keep-alive vs close): a handler caps
// the body with http.MaxBytesReader and answers 413 when it is over. net/http then closes
// the connection (the writer's requestTooLarge: "Connection: close"), so a request
// pipelined behind the over-limit body is never served; h1 must not serve it either.
func TestAttack25MaxBytesReaderKeepAlive(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][]string{}
	h := func(tag string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, 8)
			b, err := io.ReadAll(r.Body)
			mu.Lock()
			seen[tag] = append(seen[tag], fmt.Sprintf("%s %s body=%q err=%v", r.Method, r.URL.Path, b, err != nil))
			mu.Unlock()
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				http.Error(w, "too large", http.StatusRequestEntityTooLarge)
				return
			}
			io.WriteString(w, "ok")
		})
	}
	h1Addr, stdAddr := a25Pair(t, h)
	after := "GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, raw := range []string{
		"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n123456789" + after,
		"POST /ch HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n0\r\n\r\n" + after,
		"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + strings.Repeat("z", 1000) + after,
	} {
		h1Out := a24Exchange(t, h1Addr, raw+a24Closer)
		stdOut := a24Exchange(t, stdAddr, raw+a24Closer)
		mu.Lock()
		h1Seen, stdSeen := seen["h1"], seen["std"]
		seen = map[string][]string{}
		mu.Unlock()
		if d := a24Differ(h1Seen, stdSeen); d != "" {
			t.Errorf("input %.120q\n%s\n  answers h1 %q\n  net/http %q", raw, d, a24Responses(h1Out), a24Responses(stdOut))
		}
	}
}

// TestAttack25WrappedBodySmuggling (promise 2; request smuggling): a handler that
// replaces r.Body with a wrapper — http.MaxBytesReader(w, r.Body, n), the standard idiom
// for a size cap, or io.NopCloser(io.LimitReader(r.Body, n)) — and stops before the body's
// end. What is left of the body must be drained (or the connection closed); it must never
// be read as the next request. The body here is itself a request for /smuggled.
func TestAttack25WrappedBodySmuggling(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.Method+" "+r.URL.Path)
		mu.Unlock()
		switch r.URL.Path {
		case "/maxbytes":
			r.Body = http.MaxBytesReader(w, r.Body, 4)
			if _, err := io.ReadAll(r.Body); err != nil {
				http.Error(w, "too large", http.StatusRequestEntityTooLarge)
				return
			}
		case "/limit":
			r.Body = io.NopCloser(io.LimitReader(r.Body, 4))
			io.ReadAll(r.Body)
		case "/wrap-unread":
			r.Body = io.NopCloser(r.Body)
		}
		io.WriteString(w, "ok")
	})
	_, addr := a24H1(t, h, func(s *Server) { s.ReadHeaderTimeout = 2 * time.Second })
	pad := strings.Repeat("z", 4)
	inner := pad + "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, path := range []string{"/maxbytes", "/limit", "/wrap-unread"} {
		for _, framing := range []string{
			fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(inner), inner),
			"Transfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(inner), inner),
		} {
			raw := "POST " + path + " HTTP/1.1\r\nHost: a\r\n" + framing
			out := a24Exchange(t, addr, raw+a24Closer)
			mu.Lock()
			got := paths
			paths = nil
			mu.Unlock()
			for _, p := range got {
				if strings.Contains(p, "smuggled") || !strings.HasPrefix(p, "POST "+path) && p != "GET /closer" {
					t.Errorf("input %q\n  body bytes served as a request: %q (all served: %q)\n  answers %q", raw, p, got, a24Responses(out))
				}
			}
		}
	}
}

// TestAttack25BodyMisuseNoDesync (promise 2): handlers that misuse the body — read part,
// write past the held 4 KiB (the answer's headers go), read again; flush then read; close
// then read; read after a failed read — must never let body bytes be read as a request:
// the pipelined request behind is served as /after or not at all, and no request has a
// path other than the two sent.
func TestAttack25BodyMisuseNoDesync(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	big := strings.Repeat("w", 5000)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		buf := make([]byte, 7)
		switch r.URL.Path {
		case "/half-write-read":
			r.Body.Read(buf)
			io.WriteString(w, big)
			io.ReadAll(r.Body)
		case "/flush-read":
			r.Body.Read(buf)
			w.(http.Flusher).Flush()
			io.ReadAll(r.Body)
		case "/close-read":
			r.Body.Read(buf)
			r.Body.Close()
			io.ReadAll(r.Body)
		case "/write-only":
			io.WriteString(w, big)
			io.WriteString(w, big)
		case "/flush-then-close":
			w.(http.Flusher).Flush()
			r.Body.Close()
		}
		io.WriteString(w, "end")
	})
	_, addr := a24H1(t, h, func(s *Server) { s.ReadHeaderTimeout = 2 * time.Second })
	// A body that is itself a request, in both framings.
	inner := "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	chunk := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(inner), inner)
	after := "GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, path := range []string{"/half-write-read", "/flush-read", "/close-read", "/write-only", "/flush-then-close"} {
		for _, framing := range []string{
			fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(inner), inner),
			"Transfer-Encoding: chunked\r\n\r\n" + chunk,
		} {
			raw := "POST " + path + " HTTP/1.1\r\nHost: a\r\n" + framing + after + a24Closer
			out := a24Exchange(t, addr, raw)
			mu.Lock()
			got := paths
			paths = nil
			mu.Unlock()
			for _, p := range got {
				if p != path && p != "/after" && p != "/closer" {
					t.Errorf("%s %q: body read as a request %q (served %q)", path, framing[:10], p, got)
				}
			}
			resps := a24Responses(out)
			for _, r := range resps {
				if strings.HasPrefix(r, "UNPARSEABLE") {
					t.Errorf("%s: answer stream does not parse: %q", path, resps)
				}
			}
			if len(got) != len(resps) {
				t.Errorf("%s: %d requests served, %d answers: %q", path, len(got), len(resps), resps)
			}
		}
	}
}

// TestAttack25ManyConnsResources (promise 3): 300 concurrent connections, half sending
// maximal header blocks fast, a quarter trickling (cut by ReadHeaderTimeout), a quarter
// idle; after all close, the server holds no connection and goroutines return to their
// level, and heap growth per connection stays bounded.
func TestAttack25ManyConnsResources(t *testing.T) {
	base := a24Settled(runtime.NumGoroutine())
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})
	s, addr := a24H1(t, h, func(s *Server) {
		s.ReadHeaderTimeout = 1 * time.Second
		s.IdleTimeout = 1 * time.Second
		s.MaxHeaderBytes = 16 << 10
	})
	var hdr strings.Builder
	hdr.WriteString("GET / HTTP/1.1\r\nHost: a\r\n")
	for i := 0; i < 90; i++ { // under the 100-line bound and the 16 KiB one
		hdr.WriteString("X-Pad: " + strings.Repeat("p", 160) + "\r\n")
	}
	maxReq := hdr.String() + "\r\n"
	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	const n = 300
	var wg sync.WaitGroup
	var ok, cut atomic.Int32
	conns := make([]net.Conn, n)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(a24Wait))
		conns[i] = c
		wg.Add(1)
		go func(i int, c net.Conn) {
			defer wg.Done()
			switch i % 4 {
			case 0, 1:
				io.WriteString(c, maxReq)
				if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil && resp.StatusCode == 200 {
					io.ReadAll(resp.Body)
					ok.Add(1)
				}
			case 2:
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n")
				for j := 0; j < 40; j++ {
					if _, err := io.WriteString(c, "X: y\r\n"); err != nil {
						cut.Add(1)
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(make([]byte, 1)); err != nil || true {
					cut.Add(1)
				}
			case 3:
			}
		}(i, c)
	}
	a24Poll(t, a24Wait, "the server to hold connections", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns) > 0
	})
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	if grow := int64(m1.HeapAlloc) - int64(m0.HeapAlloc); grow > n*200<<10 {
		t.Errorf("heap grew %d bytes for %d connections (> 200 KiB each)", grow, n)
	}
	wg.Wait()
	if ok.Load() != n/2 {
		t.Errorf("%d of %d fast clients with maximal headers answered 200", ok.Load(), n/2)
	}
	for _, c := range conns {
		c.Close()
	}
	a24Poll(t, a24Wait, "every connection to end", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns) == 0
	})
	if got := a24Settled(base + 2); got > base+2 {
		t.Errorf("%d goroutines after all 300 clients closed, %d before:\n%.4000s", got, base, a24Stacks())
	}
}

// TestAttack25ShutdownMidPipeline (promises 1, 2): a client pipelines three requests; the
// first's handler is running when Shutdown starts. The first is answered (and its answer
// says Connection: close, as net/http's does during Shutdown), the pipelined ones are not
// served, and Shutdown returns once the handler is done.
func TestAttack25ShutdownMidPipeline(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 4)
	var served atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, r.URL.Path)
	})
	s, addr := a24H1(t, h, nil)
	c := a24Dial(t, addr)
	io.WriteString(c, "POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}GET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), a24Wait)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	waitFor(t, "Shutdown to begin", s.shutting.Load)
	close(release)
	out, _ := io.ReadAll(c)
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	resps := a24Responses(out)
	if len(resps) != 1 || !strings.HasPrefix(resps[0], "200 close=true") || served.Load() != 1 {
		t.Errorf("pipelined during Shutdown: answers %q, %d served; want one 200 with Connection: close", resps, served.Load())
	}
}

// FuzzAttack25Differential (promises 1, 2): the same bytes to an h1 server and a net/http
// server over TCP; every request h1's handler saw must have been seen identically, in the
// same position, by net/http's. Run briefly: go test -run XXX -fuzz FuzzAttack25 -fuzztime 60s.
func FuzzAttack25Differential(f *testing.F) {
	post := "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	after := "GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, s := range []string{
		"GET /a?b=c HTTP/1.1\r\nHost: a\r\n\r\n" + after,
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" + after,
		post + "3;x=y\r\nabc\r\n0\r\nX-T: v\r\n\r\n" + after,
		post + "00000003\r\nabc\r\n0\r\n\r\n" + after,
		"GET /ten HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + after,
		"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx" + after,
		"GET / HTTP/1.1\r\nHost: a\r\nPragma: no-cache\r\nConnection: keep-alive, Close\r\n\r\n" + after,
		"HEAD /h HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx" + after,
		post + a25Chunks(30, 100) + after,
	} {
		f.Add([]byte(s))
	}
	var h1s, stds a24Seen
	var once sync.Once
	var h1Addr, stdAddr string
	f.Fuzz(func(t *testing.T, data []byte) {
		once.Do(func() {
			// Servers live for the whole fuzz run (a t.Cleanup would end them after the
			// first input); the process ends with them.
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			s := &Server{Handler: h1s.handler(), ReadHeaderTimeout: time.Second, WatchAfter: 20 * time.Millisecond}
			go s.Serve(ln)
			h1Addr = ln.Addr().String()
			ln2, _ := net.Listen("tcp", "127.0.0.1:0")
			ss := &http.Server{Handler: stds.handler(), ReadHeaderTimeout: time.Second, IdleTimeout: time.Second}
			ss.ErrorLog = log.New(io.Discard, "", 0)
			go ss.Serve(ln2)
			stdAddr = ln2.Addr().String()
		})
		if len(data) > 64<<10 {
			return
		}
		raw := string(data) + a24Closer
		ex := func(addr string) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			go io.WriteString(c, raw)
			io.Copy(io.Discard, c)
		}
		ex(h1Addr)
		ex(stdAddr)
		a, b := h1s.take(), stds.take()
		// A chunked body h1 fails where net/http reads further (h1's stricter chunk
		// syntax: "1 " with trailing space) is a refusal, allowed: compare what precedes
		// the body, and require that h1 served nothing after it.
		for i := range a {
			if j := strings.Index(a[i], " body="); j >= 0 && strings.Contains(a[i], "bodyerr=true") {
				if i+1 < len(a) {
					t.Fatalf("input %q\nh1 served %q after a failed body", data, a[i+1:])
				}
				a[i] = a[i][:j]
				if i < len(b) {
					if k := strings.Index(b[i], " body="); k >= 0 {
						b[i] = b[i][:k]
					}
				}
			}
		}
		if d := a24Differ(a, b); d != "" {
			t.Fatalf("input %q\n%s", data, d)
		}
	})
}
