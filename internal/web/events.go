package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

func pathEscape(s string) string { return url.PathEscape(s) }

// state is what the live pages follow: when a figure changes, the page reloads its view.
type state struct {
	Leases    string `json:"leases"` // live lease ids, in order
	Approvals int    `json:"approvals"`
	Incidents int    `json:"incidents"`
	Sanctions int    `json:"sanctions"`
	Log       uint64 `json:"log"`
}

func (c *Console) snapshot(ctx context.Context) (state, error) {
	var st state
	ls, err := c.cfg.Store.ListLeases(ctx, store.LeaseQuery{LiveAt: c.cfg.Now()})
	if err != nil {
		return st, err
	}
	for _, l := range ls {
		st.Leases += l.ID + " "
	}
	ps, err := c.cfg.Store.ListApprovals(ctx, store.StatePending)
	if err != nil {
		return st, err
	}
	st.Approvals = len(ps)
	in, err := c.cfg.Store.ListIncidents(ctx, "open")
	if err != nil {
		return st, err
	}
	st.Incidents = len(in)
	ss, err := c.cfg.Store.ListSanctions(ctx, c.cfg.Now())
	if err != nil {
		return st, err
	}
	st.Sanctions = len(ss)
	if st.Log, err = c.cfg.Store.AuditIndexed(ctx); err != nil {
		return st, err
	}
	return st, nil
}

// hub reads the state once per Events interval while any stream is open — not once per
// stream — and wakes every stream when it changes. The state is the same for every
// user (it says only that something changed; the page itself is authorized).
type hub struct {
	mu      sync.Mutex
	subs    int
	state   []byte
	changed chan struct{} // closed and replaced at each change
	stop    chan struct{} // the running poller's: closed when the last stream ends
}

func (c *Console) subscribe() func() {
	h := &c.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.changed == nil {
		h.changed = make(chan struct{})
	}
	h.subs++
	if h.subs == 1 {
		h.state = nil // the last poller's state may be old: streams wait for a fresh one
		h.stop = make(chan struct{})
		go c.poll(h.stop)
	}
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.subs--; h.subs == 0 {
			close(h.stop)
		}
	}
}

func (c *Console) poll(stop chan struct{}) {
	h := &c.hub
	t := time.NewTicker(c.cfg.Events)
	defer t.Stop()
	for {
		if st, err := c.snapshot(context.Background()); err == nil {
			b, _ := json.Marshal(st)
			h.mu.Lock()
			if !bytes.Equal(b, h.state) {
				h.state = b
				close(h.changed)
				h.changed = make(chan struct{})
			}
			h.mu.Unlock()
		} else {
			c.cfg.Log.Error("console: live state", "err", err)
		}
		select {
		case <-stop:
			return
		case <-c.stop:
			return
		case <-t.C:
		}
	}
}

func (c *Console) current() ([]byte, chan struct{}) {
	c.hub.mu.Lock()
	defer c.hub.mu.Unlock()
	return c.hub.state, c.hub.changed
}

// events streams server-sent events: the state, then each change, with a comment every
// 15 s to keep the connection open. A session holds at most a few streams; a stream ends
// with its session (checked every few seconds) and at shutdown.
func (c *Console) events(w http.ResponseWriter, r *http.Request, q *req) error {
	fl, ok := w.(http.Flusher)
	if !ok {
		return errorf(http.StatusInternalServerError, "streaming unsupported")
	}
	over := false
	c.sessions.update(q.s.key, func(s *session) {
		if s.streams >= c.sessions.maxPerSession {
			over = true
			return
		}
		s.streams++
	})
	if over {
		return errorf(http.StatusTooManyRequests, "too many live streams for this session")
	}
	defer c.sessions.update(q.s.key, func(s *session) { s.streams-- })
	defer c.subscribe()()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	check := time.NewTicker(5 * time.Second)
	defer check.Stop()
	var last []byte
	quiet := time.Now()
	for {
		rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		cur, changed := c.current()
		if cur != nil && !bytes.Equal(cur, last) {
			if _, err := fmt.Fprintf(w, "event: state\ndata: %s\n\n", cur); err != nil {
				return nil
			}
			fl.Flush()
			last, quiet = cur, time.Now()
		}
		if time.Since(quiet) > 15*time.Second {
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
			fl.Flush()
			quiet = time.Now()
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-c.stop:
			return nil
		case <-changed:
		case <-check.C:
			if !c.sessions.alive(readCookie(r, sessionCookie)) {
				fmt.Fprint(w, "event: signedout\ndata: {}\n\n")
				fl.Flush()
				return nil
			}
		}
	}
}
