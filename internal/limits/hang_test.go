package limits

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/strongroom/strongroom/internal/testenv"
)

// hangingRedis is a TCP proxy to the real Redis that, once paused, forwards nothing more in
// either direction: a Redis that hangs (SIGSTOP, a partition that drops packets), for the
// connections that go through it.
type hangingRedis struct {
	ln     net.Listener
	paused atomic.Bool
}

func newHangingRedis(t *testing.T) *hangingRedis {
	opt, err := redis.ParseURL(testenv.Get(t, "STRONGROOM_TEST_REDIS"))
	if err != nil {
		t.Fatal(err)
	}
	h := &hangingRedis{}
	h.ln = testenv.FakeRedis(t, func(c net.Conn) {
		up, err := net.Dial("tcp", opt.Addr)
		if err != nil {
			c.Close()
			return
		}
		defer up.Close()
		go h.forward(up, c)
		h.forward(c, up)
	})
	return h
}

// forward copies from to to while not paused (what it reads when paused is dropped), until
// either fails; a read that fails but for the end closes to.
func (h *hangingRedis) forward(from, to net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !h.paused.Load() {
			if _, err := to.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				to.Close()
			}
			return
		}
	}
}

// client is a go-redis client through the proxy as the app makes one (the context's deadline
// reaches the socket) but with no read or write timeout of its own and no retries: only the
// limiter's own deadline can end a wait.
func (h *hangingRedis) client(t *testing.T) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: h.ln.Addr().String(), ReadTimeout: -1, WriteTimeout: -1, MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// returns runs f and fails the test if it has not returned within bound (a hang, not a
// timing measure: the limiter's deadline here is 200 ms).
func returns(t *testing.T, what string, bound time.Duration, f func()) {
	t.Helper()
	ch := make(chan struct{})
	go func() { f(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(bound):
		t.Fatalf("%s: still waiting for a Redis that hangs after %v", what, bound)
	}
}

// TestRedisHangingIsAnError: an admission and a release on a Redis that stopped answering
// end at the limiter's deadline (Timeout) with an error — the gateway refuses a restricted
// model then — instead of waiting as long as the client would (here: for ever; with
// go-redis's defaults ~10 s a request, every request held that long).
func TestRedisHangingIsAnError(t *testing.T) {
	h := newHangingRedis(t)
	r := NewRedis(h.client(t), uniquePrefix(), nil)
	r.Timeout = 200 * time.Millisecond
	sc := []Scope{{Name: "key:k", Limits: Limits{RPM: 100, Concurrent: 2}}, {Name: "model:restricted", Limits: Limits{Concurrent: 1}}}
	// Admitted while Redis answers; then it hangs before the release.
	done, d, err := r.Admit(context.Background(), sc, 5)
	if err != nil || d != nil {
		t.Fatalf("premise: %v %v", d, err)
	}
	h.paused.Store(true)
	returns(t, "the release", time.Minute, func() { done(5) })
	r.mu.Lock()
	kept := r.nUnsent
	r.mu.Unlock()
	if kept == 0 {
		t.Error("the release that did not reach Redis is not kept for the next heartbeat")
	}
	returns(t, "an admission", time.Minute, func() {
		_, d, err := r.Admit(context.Background(), sc, 5)
		var ne net.Error
		if d != nil || !(errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("admission on a hanging Redis: denied %v, err %v; want an error of the deadline", d, err)
		}
	})
}
