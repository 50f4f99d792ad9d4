package h1

// Outside attack 34: the per-request context and keep-alive state of the server. Every
// test asserts the secure behaviour: it fails if the bug exists.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const a34Wait = 30 * time.Second

type a34Key struct{}

// TestAttack34H1FreshContextPerRequest: each request on a kept-alive connection has a
// context of its own — not the previous one's (cancelled when its handler returned), no
// deadline, no value a handler added — its read and write deadlines are not the previous
// handler's, and the last request's context still ends when the client leaves.
func TestAttack34H1FreshContextPerRequest(t *testing.T) {
	var s *Server
	var mu sync.Mutex
	var prev context.Context
	var problems []string
	gone := make(chan bool, 1)
	s, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		mu.Lock()
		if ctx.Err() != nil {
			problems = append(problems, r.URL.Path+": context ended at the start")
		}
		if _, ok := ctx.Deadline(); ok {
			problems = append(problems, r.URL.Path+": context has a deadline")
		}
		if ctx.Value(a34Key{}) != nil {
			problems = append(problems, r.URL.Path+": context carries a previous request's value")
		}
		if prev != nil && prev.Err() == nil {
			problems = append(problems, r.URL.Path+": previous request's context still live")
		}
		prev = context.WithValue(ctx, a34Key{}, "x")
		mu.Unlock()
		if r.URL.Path == "/last" {
			select {
			case <-ctx.Done():
				gone <- true
			case <-time.After(a34Wait):
				gone <- false
			}
			return
		}
		// Outlast WatchAfter so the watch runs on every request.
		waitFor(t, "the watch to start", s.watchRunning)
		rc := http.NewResponseController(w)
		if r.URL.Path == "/deadlines" {
			// The whole answer out first, then both deadlines in the past: the next request
			// fails if they outlive this handler. (A write deadline 1 ms ahead, set before the
			// answer, raced the answer's own write on a loaded machine: CI, forty-fifth
			// session, "/deadlines: unexpected EOF".)
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
			if err := rc.Flush(); err != nil {
				mu.Lock()
				problems = append(problems, "/deadlines: flush: "+err.Error())
				mu.Unlock()
			}
			rc.SetReadDeadline(time.Unix(1, 0))
			rc.SetWriteDeadline(time.Unix(1, 0))
			return
		}
		if ctx.Err() != nil {
			mu.Lock()
			problems = append(problems, r.URL.Path+": context ended while the client waits")
			mu.Unlock()
		}
		io.WriteString(w, r.URL.Path)
	}), nil)
	c := dial(t, addr)
	c.SetDeadline(time.Now().Add(a34Wait))
	br := bufio.NewReader(c)
	for _, p := range []string{"/a", "/deadlines", "/b", "/c"} {
		io.WriteString(c, "GET "+p+" HTTP/1.1\r\nHost: h\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || (p != "/deadlines" && string(b) != p) {
			t.Fatalf("%s: %d %q", p, resp.StatusCode, b)
		}
	}
	io.WriteString(c, "GET /last HTTP/1.1\r\nHost: h\r\n\r\n")
	waitFor(t, "the watch on /last", s.watchRunning)
	c.Close()
	select {
	case ok := <-gone:
		if !ok {
			t.Error("the last request's context did not end when its client left")
		}
	case <-time.After(2 * a34Wait):
		t.Error("the last request's handler never finished")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
}

// TestAttack34H1PipelinedByteThenClose: a client sends a request and one byte of the
// next, then closes: its request's context must end (the handler's engine call is work
// for nobody). The watch ends at the byte and never sees the close.
func TestAttack34H1PipelinedByteThenClose(t *testing.T) {
	var s *Server
	gone := make(chan bool, 1)
	s, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			gone <- true
		case <-time.After(a34Wait):
			gone <- false
		}
	}), nil)
	c := dial(t, addr)
	io.WriteString(c, "GET /work HTTP/1.1\r\nHost: h\r\n\r\nG")
	waitFor(t, "the watch to see the byte", s.watchSawNext)
	c.Close()
	if !<-gone {
		t.Fatal("request context not cancelled after the client closed (a pipelined byte stopped the watch)")
	}
}

// a34Drip sends a request head that never ends, a line at a time, and reports whether the
// server closed the connection within a34Wait.
func a34Drip(c net.Conn, start string) bool {
	io.WriteString(c, start)
	closed := make(chan struct{})
	go func() {
		c.SetReadDeadline(time.Now().Add(a34Wait))
		io.Copy(io.Discard, c) // until the server closes (or the deadline)
		close(closed)
	}()
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	end := time.After(a34Wait)
	for i := 0; ; i++ {
		select {
		case <-closed:
			return true
		case <-end:
			return false
		case <-tk.C:
			if _, err := io.WriteString(c, "X-Drip-"+strconv.Itoa(i)+": y\r\n"); err != nil {
				<-closed
				return true
			}
		}
	}
}

// TestAttack34H1SlowHeadersAfterGoodRequest: a second request whose headers trickle in
// forever is cut by the header timeout, on a kept-alive connection, also when its start
// came pipelined behind a request that outlasted the watch (the watch clears deadlines).
func TestAttack34H1SlowHeadersAfterGoodRequest(t *testing.T) {
	var s *Server
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	s = serveOn(t, ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			waitFor(t, "the watch to see the next request's start", s.watchSawNext)
		}
		io.WriteString(w, "ok")
	}), func(s *Server) {
		s.ReadHeaderTimeout = 500 * time.Millisecond
		s.IdleTimeout = 20 * time.Second
	})
	t.Run("sequential", func(t *testing.T) {
		c := dial(t, addr)
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
		br := bufio.NewReader(c)
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%v", err)
		}
		if !a34Drip(c, "GET /second HTTP/1.1\r\nHost: h\r\n") {
			t.Fatal("a trickled second request head held the connection past the header timeout")
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		c := dial(t, addr)
		defer c.Close()
		if !a34Drip(c, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n") {
			t.Fatal("a trickled pipelined request head held the connection past the header timeout")
		}
	})
}

// TestAttack34H1MalformedAfterGood: a malformed request behind a good one on one
// connection: the good one is answered whole, the bad one refused (400), never handled,
// and the connection closes.
func TestAttack34H1MalformedAfterGood(t *testing.T) {
	var handled atomic.Int64
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handled.Add(1)
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Path", r.URL.Path)
		w.Write(b)
	}), nil)
	for _, bad := range []string{
		"GET /bad HTTP/1.1\nHost: h\n\n",
		"GET /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /bad HTTP/1.1\r\nHost: h\r\n X-Fold: y\r\n\r\n",
		"GET /bad HTTP/1.1\r\nHost: h\r\nX-Nul: a\x00b\r\n\r\n",
		"\r\nGET /bad HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		handled.Store(0)
		c := dial(t, addr)
		c.SetDeadline(time.Now().Add(a34Wait))
		io.WriteString(c, "POST /good HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"+bad)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: good request: %v", bad, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "hello" || resp.Header.Get("X-Path") != "/good" {
			t.Fatalf("%q: good request answered %d %q", bad, resp.StatusCode, b)
		}
		resp, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: no refusal: %v", bad, err)
		}
		io.ReadAll(resp.Body)
		if resp.StatusCode != 400 || resp.Header.Get("X-Path") != "" {
			t.Errorf("%q: bad request answered %d", bad, resp.StatusCode)
		}
		if n, err := br.ReadByte(); err == nil {
			t.Errorf("%q: connection still open after the refusal (read %q)", bad, n)
		}
		if n := handled.Load(); n != 1 {
			t.Errorf("%q: handler ran %d times", bad, n)
		}
		c.Close()
	}
}

// TestAttack34H1LateWriteFromLeftoverGoroutine: a goroutine the previous handler left
// behind writes, flushes and sets deadlines while the next request on the connection is
// answered: none of it reaches that answer or that connection's deadlines.
func TestAttack34H1LateWriteFromLeftoverGoroutine(t *testing.T) {
	leftover := make(chan http.ResponseWriter, 1)
	wrote := make(chan []error, 1)
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/first" {
			leftover <- w
			io.WriteString(w, "first")
			return
		}
		old := <-leftover
		rc := http.NewResponseController(old)
		var errs []error
		_, err := io.WriteString(old, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
		errs = append(errs, err, rc.Flush(), rc.SetWriteDeadline(time.Unix(1, 0)), rc.SetReadDeadline(time.Unix(1, 0)))
		old.Header().Set("X-Evil", "1")
		wrote <- errs
		io.WriteString(w, "second")
	}), nil)
	c := dial(t, addr)
	c.SetDeadline(time.Now().Add(a34Wait))
	br := bufio.NewReader(c)
	for _, p := range []string{"/first", "/second"} {
		io.WriteString(c, "GET "+p+" HTTP/1.1\r\nHost: h\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != strings.TrimPrefix(p, "/") || resp.Header.Get("X-Evil") != "" {
			t.Fatalf("%s answered %q %v", p, b, resp.Header)
		}
	}
	for i, err := range <-wrote {
		if err == nil {
			t.Errorf("leftover call %d succeeded after its handler returned", i)
		}
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if b, err := br.ReadByte(); err == nil {
		t.Errorf("stray byte %q after the answers", b)
	}
}

// TestAttack34H1ConcurrentKeepAlive: many kept-alive connections, answers small and long,
// flushed (chunked) and not, handlers that outlast the watch: every answer is its own
// request's (run under -race).
func TestAttack34H1ConcurrentKeepAlive(t *testing.T) {
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		id := r.Header.Get("X-Id")
		w.Header().Set("X-Id", id)
		q := r.URL.Query()
		if q.Get("slow") == "1" {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(30 * time.Millisecond): // outlast the watch (20 ms)
			}
		}
		n, _ := strconv.Atoi(q.Get("n"))
		for i := 0; i < n; i++ {
			fmt.Fprintf(w, "%s:%s:%d;", id, b, i)
			if q.Get("flush") == "1" {
				w.(http.Flusher).Flush()
			}
		}
		if r.Context().Err() != nil {
			w.Header().Set("X-Cancelled", "1")
		}
	}), nil)
	tr := &http.Transport{MaxIdleConnsPerHost: 16, MaxConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: a34Wait}
	var wg sync.WaitGroup
	errs := make(chan string, 1000)
	for g := 0; g < 24; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				id := fmt.Sprintf("g%d-%d", g, i)
				n := []int{1, 3, 700}[(g+i)%3]
				u := fmt.Sprintf("http://%s/x?n=%d&flush=%d&slow=%d", addr, n, i%2, (g+i)%4/3)
				req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader("body-"+id))
				req.Header.Set("X-Id", id)
				resp, err := client.Do(req)
				if err != nil {
					errs <- id + ": " + err.Error()
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var want strings.Builder
				for k := 0; k < n; k++ {
					fmt.Fprintf(&want, "%s:body-%s:%d;", id, id, k)
				}
				if resp.Header.Get("X-Id") != id || string(b) != want.String() {
					errs <- fmt.Sprintf("%s: answered X-Id %q, %d bytes (want %d)", id, resp.Header.Get("X-Id"), len(b), want.Len())
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
