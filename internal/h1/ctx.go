package h1

import (
	"context"
	"sync"
)

// reqCtx is a request's context. It ends when its handler returns, when its client is seen
// gone (the watch, a failed write), or when the server closes (Close: its connection's
// endRequest).
//
// It is a context.WithCancel of Background, not of a context of the connection's: a child
// of one is added to that context's set of children and removed from it, under its lock,
// every request — a map's insert and delete, ~1 µs a request under load (the thirty-ninth
// session's profile). The server's end reaches a running request through the connection
// instead (endRequest: one AfterFunc a connection). Its children (WithCancel, WithTimeout,
// context.AfterFunc) are the embedded context's, as net/http's are.
//
// Its AfterFunc method is context.AfterFunc for callers that look for it (the gateway's
// engine round trip, once a request): no context, channel or map of its own.
type reqCtx struct {
	context.Context
	end context.CancelFunc // the embedded context's

	mu    sync.Mutex
	ended bool
	one   *afterHook   // mu: the first function waiting for the end
	more  []*afterHook // mu: the others (a stopped one stays, done)
}

type afterHook struct {
	rc   *reqCtx
	f    func()
	done bool // rc.mu: started or stopped
}

func newReqCtx() *reqCtx {
	rc := &reqCtx{}
	rc.Context, rc.end = context.WithCancel(context.Background())
	return rc
}

// AfterFunc arranges to call f in its own goroutine once the request's context ends (at
// once if it has), as context.AfterFunc does; stop keeps f from being called, reporting
// whether it did (false: f was started, or stopped before).
func (rc *reqCtx) AfterFunc(f func()) (stop func() bool) {
	h := &afterHook{rc: rc, f: f}
	rc.mu.Lock()
	if rc.ended {
		h.done = true
		rc.mu.Unlock()
		go f()
		return h.stop
	}
	if rc.one == nil {
		rc.one = h
	} else {
		rc.more = append(rc.more, h)
	}
	rc.mu.Unlock()
	return h.stop
}

func (h *afterHook) stop() bool {
	rc := h.rc
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if h.done {
		return false
	}
	h.done = true
	if rc.one == h {
		rc.one = nil
	}
	return true
}

// cancel ends the context, then starts what waits for its end (which sees it ended).
func (rc *reqCtx) cancel() {
	rc.end()
	rc.mu.Lock()
	if rc.ended {
		rc.mu.Unlock()
		return
	}
	rc.ended = true
	var run []func()
	if h := rc.one; h != nil && !h.done {
		h.done = true
		run = append(run, h.f)
	}
	for _, h := range rc.more {
		if !h.done {
			h.done = true
			run = append(run, h.f)
		}
	}
	rc.one, rc.more = nil, nil
	rc.mu.Unlock()
	for _, f := range run {
		go f()
	}
}

// endRequest ends the running request's context: the server closed (its base context
// ended). answer looks at the base context after it publishes the request's, so a request
// that starts as the server closes ends either here or there.
func (c *conn) endRequest() {
	c.watchMu.Lock()
	rc := c.reqCtx
	c.watchMu.Unlock()
	if rc != nil {
		rc.cancel()
	}
}
