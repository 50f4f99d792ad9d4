package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serve runs h on a Server over a loopback listener (TLS when tc is set) and returns its
// address.
func serve(t *testing.T, h http.Handler, tc *tls.Config) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	return serveOn(t, ln, h, nil), ln.Addr().String()
}

// serveOn serves h on ln (cfg, if set, adjusts the Server first) until the test ends;
// Serve must then return ErrServerClosed.
func serveOn(t *testing.T, ln net.Listener, h http.Handler, cfg func(*Server)) *Server {
	t.Helper()
	s := &Server{Handler: h, WatchAfter: 20 * time.Millisecond}
	if cfg != nil {
		cfg(s)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// waitFor polls cond until it holds; a slow machine only makes it wait longer.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30 s for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "body: "+err.Error(), 400)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "%s %s %s body=%s", r.Method, r.URL.Path, r.Host, b)
})

// TestKeepAliveAndPipelining: requests sent back to back on one connection are answered
// in order on it, each with a Content-Length, and the connection stays open.
func TestKeepAliveAndPipelining(t *testing.T) {
	_, addr := serve(t, echo, nil)
	c := dial(t, addr)
	io.WriteString(c, "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nonePOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n")
	br := bufio.NewReader(c)
	for _, want := range []string{"POST /a h body=one", "POST /b h body=two", "GET /c h body="} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want || resp.ContentLength != int64(len(want)) || resp.Close {
			t.Fatalf("answer %q (length %d, close %v), want %q with its length, kept open", b, resp.ContentLength, resp.Close, want)
		}
	}
}

// TestStreamedAnswer: an answer flushed as it is written reaches a net/http client
// chunk by chunk, before the handler returns; a long answer is chunked and intact.
func TestStreamedAnswer(t *testing.T) {
	next := make(chan struct{})
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			<-next
		}
		w.Write([]byte(strings.Repeat("x", 3*holdBytes)))
	}), nil)
	resp, err := http.Post("http://"+addr+"/s", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("transfer encoding %v", resp.TransferEncoding)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("data: %d\n", i) {
			t.Fatalf("event %d: %q %v", i, line, err)
		}
		br.ReadString('\n')
		next <- struct{}{} // the handler waits: the event came before it returned
	}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != strings.Repeat("x", 3*holdBytes) {
		t.Fatalf("the long part: %d bytes, %v", len(rest), err)
	}
}

// TestClientGoneCancels: a client that goes away while its request is answered ends the
// request's context (the engine call behind it is cancelled).
func TestClientGoneCancels(t *testing.T) {
	started, cancelled := make(chan struct{}), make(chan struct{})
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		close(started)
		<-r.Context().Done()
		close(cancelled)
	}), nil)
	c := dial(t, addr)
	io.WriteString(c, "POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
	<-started
	c.Close()
	select {
	case <-cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("the request's context outlived its client by 30 s")
	}
}

// TestPipelinedNotCancelled: a request whose client sends its next request before the
// answer (pipelining) is not taken as gone, and the next request is answered.
func TestPipelinedNotCancelled(t *testing.T) {
	var s *Server
	var cancelled atomic.Bool
	watching, sent := make(chan struct{}), make(chan struct{})
	s, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			waitFor(t, "the watch to start", s.watchRunning)
			close(watching)
			<-sent
			waitFor(t, "the watch to see the next request", s.watchSawNext)
			cancelled.Store(r.Context().Err() != nil)
		}
		io.WriteString(w, r.URL.Path)
	}), nil)
	c := dial(t, addr)
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
	<-watching
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
	close(sent)
	br := bufio.NewReader(c)
	for _, want := range []string{"/slow", "/next"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Fatalf("got %q, want %q", b, want)
		}
	}
	if cancelled.Load() {
		t.Fatal("a pipelined request cancelled the one before it")
	}
}

// someWatch reports whether f holds for some connection whose watch was started (f is
// called with the connection's watchMu held).
func (s *Server) someWatch(f func(c *conn) bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.watchMu.Lock()
		ok := c.watching && f(c)
		c.watchMu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// watchSawNext reports whether a connection's watch has seen bytes of the next request
// (pipelined) come in.
func (s *Server) watchSawNext() bool {
	return s.someWatch(func(c *conn) bool { return c.watchSaw.Load() > 0 })
}

// watchRunning reports whether a connection's watch runs (started, not ended).
func (s *Server) watchRunning() bool {
	return s.someWatch(func(c *conn) bool {
		select {
		case <-c.watchEnd:
			return false
		default:
			return true
		}
	})
}

// TestRefusalCloses: a request that cannot be read unambiguously gets one answer (400)
// and the connection closes: nothing after it is read as a request, no handler runs.
func TestRefusalCloses(t *testing.T) {
	var calls atomic.Int32
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }), nil)
	c := dial(t, addr)
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	if resp.StatusCode != 400 || !resp.Close {
		t.Fatalf("status %d close %v", resp.StatusCode, resp.Close)
	}
	if rest, err := io.ReadAll(br); len(rest) != 0 || err != nil {
		t.Fatalf("after the refusal: %q %v", rest, err)
	}
	if calls.Load() != 0 {
		t.Fatal("a handler ran")
	}
}

// TestExpectContinue: a client that waits for 100 Continue gets it when the handler reads
// the body, and its answer after.
func TestExpectContinue(t *testing.T) {
	_, addr := serve(t, echo, nil)
	c := dial(t, addr)
	io.WriteString(c, "POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("%q %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "body")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "POST /e h body=body" {
		t.Fatalf("%q", b)
	}
}

// TestHTTP10AndHead: an HTTP/1.0 client gets a whole answer and the connection closed
// unless it asked to keep it; HEAD gets headers only.
func TestHTTP10AndHead(t *testing.T) {
	_, addr := serve(t, echo, nil)
	c := dial(t, addr)
	io.WriteString(c, "GET /old HTTP/1.0\r\n\r\n")
	all, _ := io.ReadAll(c)
	if !strings.HasSuffix(string(all), "GET /old  body=") || !strings.Contains(string(all), "Connection: close\r\n") {
		t.Fatalf("%q", all)
	}
	c = dial(t, addr)
	io.WriteString(c, "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "HEAD"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "GET /after h body=" {
		t.Fatalf("after HEAD: %q", b)
	}
}

// TestTLSClientCert: over TLS, the handler sees the connection's state with the client's
// certificate, and a net/http client over TLS keeps one connection.
func TestTLSClientCert(t *testing.T) {
	ts := httptest.NewUnstartedServer(nil)
	ts.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	ts.StartTLS()
	tc, client := ts.TLS.Clone(), ts.Client()
	ts.Close()
	tc.NextProtos = nil
	var peers atomic.Int32
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || !r.TLS.HandshakeComplete {
			http.Error(w, "no TLS state", 500)
			return
		}
		peers.Store(int32(len(r.TLS.PeerCertificates)))
		io.WriteString(w, r.TLS.ServerName)
	}), tc)
	tr := client.Transport.(*http.Transport)
	tr.TLSClientConfig.Certificates = tc.Certificates // present the server's pair as a client certificate
	var conns atomic.Int32
	tr.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		conns.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	for range 3 {
		resp, err := client.Get("https://example.com/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "example.com" {
			t.Fatalf("%d %q", resp.StatusCode, b)
		}
	}
	if peers.Load() != 1 || conns.Load() != 1 {
		t.Fatalf("peer certificates %d, connections %d", peers.Load(), conns.Load())
	}
}

// TestShutdown: Shutdown closes idle connections at once and waits for a request being
// answered to end.
func TestShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	s, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	}), nil)
	idle := dial(t, addr)
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	ibr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ibr, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
	}
	busy := dial(t, addr)
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
	<-started
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	if _, err := ibr.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection after Shutdown: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned while a request ran: %v", err)
	default:
	}
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "ok" || !resp.Close {
		t.Fatalf("the busy request's answer %q, close %v", b, resp.Close)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSlowClientsCut: a client that sends half its headers, or half its body, and stalls
// is cut by the header or body timeout; a body read in full lifts the body timeout, so a
// handler that answers long after it is not cut.
func TestSlowClientsCut(t *testing.T) {
	bodyErr := make(chan error, 1)
	var answered atomic.Int32
	release, started := make(chan struct{}), make(chan struct{})
	s := &Server{ReadHeaderTimeout: 200 * time.Millisecond, BodyTimeout: 200 * time.Millisecond, WatchAfter: time.Hour,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/ok" {
				started <- struct{}{} // the body is sent only now: it was not read in with the headers
			}
			_, err := io.ReadAll(r.Body)
			if r.URL.Path == "/stall" {
				bodyErr <- err
				return
			}
			<-release // past the body timeout
			answered.Add(1)
			io.WriteString(w, "late")
		})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	addr := ln.Addr().String()

	half := dial(t, addr)
	io.WriteString(half, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Le")
	if _, err := io.ReadAll(half); err != nil {
		t.Fatalf("half headers: %v", err) // EOF: the server closed it
	}

	stall := dial(t, addr)
	io.WriteString(stall, "POST /stall HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n{\"a\":")
	if err := <-bodyErr; err == nil {
		t.Fatal("a stalled body was read without error")
	}

	whole := dial(t, addr)
	io.WriteString(whole, "POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n")
	<-started
	io.WriteString(whole, "{}")
	time.Sleep(400 * time.Millisecond) // twice the body timeout, then the answer
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(whole), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "late" {
		t.Fatalf("%q", b)
	}
}

// TestBadBodyClosesConnection: a chunked body whose framing breaks fails the handler's
// read, and whatever the handler does next — closing the body, answering — the
// connection closes after the answer: nothing after the broken body is read as a request.
func TestBadBodyClosesConnection(t *testing.T) {
	var calls atomic.Int32
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if _, err := io.ReadAll(r.Body); err == nil {
			t.Errorf("%s: a broken body read without error", r.URL.Path)
		}
		r.Body.Close()
		http.Error(w, "bad body", 400)
	}), nil)
	status, closed, rest, err := a24First(t, addr, "POST /broken HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXXGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if status != 400 || !closed {
		t.Fatalf("status %d, close %v", status, closed)
	}
	if len(rest) != 0 || calls.Load() != 1 {
		t.Fatalf("after the broken body: %q, %d handler calls", rest, calls.Load())
	}
}

// writeCounter counts the writes to its connections.
type writeCounter struct {
	net.Listener
	writes atomic.Int64
}

func (l *writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, writes: &l.writes}, nil
}

type countedConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestStreamFlushOneWrite: once an answer is chunked (flushed by its handler before its end), a
// flush of 20 KiB of events goes to the connection in one write, not one per 4 KiB (the
// connection's own buffer); after the stream the connection answers its next request
// byte for byte through its own buffer again.
func TestStreamFlushOneWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wc := &writeCounter{Listener: ln}
	event := "data: " + strings.Repeat("e", 500) + "\n\n"
	var flushWrites, nextBuf atomic.Int64
	serveOn(t, wc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			nextBuf.Store(int64(w.(*response).c.bw.Size())) // the serve goroutine's: no race
			io.WriteString(w, "small answer")
			return
		}
		io.WriteString(w, event)
		w.(http.Flusher).Flush()
		before := wc.writes.Load()
		for range 40 {
			io.WriteString(w, event)
		}
		w.(http.Flusher).Flush()
		flushWrites.Store(wc.writes.Load() - before)
		io.WriteString(w, event)
	}), nil)
	c := dial(t, ln.Addr().String())
	io.WriteString(c, "GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != strings.Repeat(event, 42) {
		t.Fatalf("streamed answer: %d bytes (want %d), %v", len(b), 42*len(event), err)
	}
	if n := flushWrites.Load(); n != 1 {
		t.Errorf("a flush of %d bytes took %d writes, want 1", 40*len(event), n)
	}
	io.WriteString(c, "GET /small HTTP/1.1\r\nHost: h\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	if string(b) != "small answer" || resp.ContentLength != int64(len(b)) {
		t.Fatalf("next answer %q (length %d)", b, resp.ContentLength)
	}
	if n := nextBuf.Load(); n != 4<<10 {
		t.Errorf("after the stream the connection writes through a buffer of %d bytes, want its own 4 KiB", n)
	}
}
