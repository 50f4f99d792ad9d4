package h1

import (
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestReqCtxEndsAsWithCancel: a request's context behaves as a context.WithCancel's —
// Err, Cause, its children (WithCancel, one under WithValue, context.AfterFunc) end with
// it — and its own AfterFunc runs once, after the end, unless stopped first.
func TestReqCtxEndsAsWithCancel(t *testing.T) {
	rc := newReqCtx()
	child, cancelChild := context.WithCancel(rc)
	defer cancelChild()
	type key struct{}
	under, cancelUnder := context.WithCancel(context.WithValue(rc, key{}, 1))
	defer cancelUnder()
	ctxRan := make(chan struct{})
	context.AfterFunc(rc, func() { close(ctxRan) })
	ran := make(chan struct{})
	var stoppedRan atomic.Bool
	stopRan := rc.AfterFunc(func() { close(ran) })
	stopStopped := rc.AfterFunc(func() { stoppedRan.Store(true) })
	if !stopStopped() {
		t.Fatal("stop before the end reported that it did not stop the function")
	}
	if stopStopped() {
		t.Fatal("a second stop reported that it stopped the function")
	}
	if rc.Err() != nil || child.Err() != nil {
		t.Fatalf("before the end: %v, child %v", rc.Err(), child.Err())
	}
	rc.cancel()
	rc.cancel() // twice: nothing more
	for name, c := range map[string]<-chan struct{}{"context": rc.Done(), "child": child.Done(), "child under a value": under.Done(), "context.AfterFunc": ctxRan, "AfterFunc": ran} {
		select {
		case <-c:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s not ended 30 s after the request's context", name)
		}
	}
	if rc.Err() != context.Canceled || context.Cause(rc) != context.Canceled || context.Cause(under) != context.Canceled {
		t.Fatalf("after the end: Err %v, Cause %v, the child's Cause %v", rc.Err(), context.Cause(rc), context.Cause(under))
	}
	if stopRan() {
		t.Fatal("stop after the function started reported that it stopped it")
	}
	late := make(chan struct{})
	if rc.AfterFunc(func() { close(late) })() {
		// The function was started at once (the context had ended): stop cannot stop it.
		t.Fatal("stop of an AfterFunc given an ended context reported that it stopped it")
	}
	<-late
	if stoppedRan.Load() {
		t.Fatal("a stopped AfterFunc ran")
	}
}

// TestReqCtxChildrenNoGoroutine: a child made under a value over a request's context is
// registered with the context, as under a WithCancel's, not watched by a goroutine of its
// own (context's fallback for contexts it does not know).
func TestReqCtxChildrenNoGoroutine(t *testing.T) {
	rc := newReqCtx()
	defer rc.cancel()
	type key struct{}
	before := runtime.NumGoroutine()
	var cancels []context.CancelFunc
	for i := 0; i < 200; i++ {
		_, cancel := context.WithCancel(context.WithValue(rc, key{}, i))
		cancels = append(cancels, cancel)
	}
	after := runtime.NumGoroutine()
	for _, c := range cancels {
		c()
	}
	if after-before >= 100 {
		t.Fatalf("200 children under a value made %d goroutines", after-before)
	}
}

// TestRequestContextEnds: through a real server, a request's context (and what waits on
// it through its AfterFunc, and through context.AfterFunc) ends when the client goes, when
// the server closes, and when the handler returns; the gateway's fast path (the context's
// own AfterFunc) is what r.Context() offers.
func TestRequestContextEnds(t *testing.T) {
	type waiter struct{ ctx, own, lib chan struct{} }
	waiters := make(chan waiter, 4)
	release := make(chan struct{})
	defer close(release)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		ctx := r.Context()
		a, ok := ctx.(interface{ AfterFunc(func()) func() bool })
		if !ok {
			t.Errorf("the request's context %T has no AfterFunc of its own", ctx)
			return
		}
		wt := waiter{make(chan struct{}), make(chan struct{}), make(chan struct{})}
		a.AfterFunc(func() { close(wt.own) })
		context.AfterFunc(ctx, func() { close(wt.lib) })
		go func() { <-ctx.Done(); close(wt.ctx) }()
		waiters <- wt
		if r.URL.Path == "/returns" {
			return
		}
		select {
		case <-ctx.Done():
		case <-release:
		}
	})
	ended := func(how string, wt waiter) {
		t.Helper()
		for name, c := range map[string]chan struct{}{"Done": wt.ctx, "its AfterFunc": wt.own, "context.AfterFunc": wt.lib} {
			select {
			case <-c:
			case <-time.After(30 * time.Second):
				t.Fatalf("%s: the request's context (%s) not ended after 30 s", how, name)
			}
		}
	}
	_, addr := serve(t, h, nil)

	c := dial(t, addr)
	io.WriteString(c, "POST /returns HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
	ended("the handler returned", <-waiters)

	gone := dial(t, addr)
	io.WriteString(gone, "POST /waits HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
	wt := <-waiters
	gone.Close()
	ended("the client went", wt)

	// The server's Close ends a running request's context itself, not through the watch
	// seeing its own connection closed: here no watch runs.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := serveOn(t, ln, h, func(s *Server) { s.WatchAfter = time.Hour })
	busy := dial(t, ln.Addr().String())
	io.WriteString(busy, "POST /waits HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
	wt = <-waiters
	s.Close()
	ended("the server closed", wt)
}

func TestDeadlineRenew(t *testing.T) {
	var dl Deadline
	now := time.Unix(1000, 0)
	d := 8 * time.Second
	at, set := dl.Renew(now, d)
	if !set || at != now.Add(9*time.Second) {
		t.Fatalf("first: %v %v", at, set)
	}
	// Within the eighth: kept, and the wait still has its whole bound.
	if at2, set := dl.Renew(now.Add(time.Second), d); set || at2 != at || at2.Sub(now.Add(time.Second)) < d {
		t.Fatalf("a second later: %v %v", at2, set)
	}
	// Past it: moved.
	if at3, set := dl.Renew(now.Add(1500*time.Millisecond), d); !set || at3 != now.Add(1500*time.Millisecond+9*time.Second) {
		t.Fatalf("1.5 s later: %v %v", at3, set)
	}
	// A shorter bound than the one set: moved in, never left longer than d+d/8.
	if at4, set := dl.Renew(now.Add(2*time.Second), time.Second); !set || at4 != now.Add(2*time.Second+1125*time.Millisecond) {
		t.Fatalf("a shorter bound: %v %v", at4, set)
	}
	dl.Forget()
	if _, set := dl.Renew(now.Add(2*time.Second), time.Second); !set {
		t.Fatal("after Forget the deadline was not set")
	}
}
