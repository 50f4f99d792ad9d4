package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
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

func (c *Console) snapshot(q *req) (state, error) {
	var st state
	ls, err := c.cfg.Store.ListLeases(q.ctx, store.LeaseQuery{LiveAt: c.cfg.Now()})
	if err != nil {
		return st, err
	}
	for _, l := range ls {
		st.Leases += l.ID + " "
	}
	ps, err := c.cfg.Store.ListApprovals(q.ctx, store.StatePending)
	if err != nil {
		return st, err
	}
	st.Approvals = len(ps)
	in, err := c.cfg.Store.ListIncidents(q.ctx, "open")
	if err != nil {
		return st, err
	}
	st.Incidents = len(in)
	ss, err := c.cfg.Store.ListSanctions(q.ctx, c.cfg.Now())
	if err != nil {
		return st, err
	}
	st.Sanctions = len(ss)
	if st.Log, err = c.cfg.Store.AuditIndexed(q.ctx); err != nil {
		return st, err
	}
	return st, nil
}

// events streams server-sent events: the state now, then each change (looked for every
// Events interval), with a comment every 15 s to keep the connection open. A session holds
// at most a few streams; the stream ends when the session does.
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
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	var last []byte
	tick := time.NewTicker(c.cfg.Events)
	defer tick.Stop()
	quiet := time.Now()
	for {
		rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if c.sessions.get(readCookie(r, sessionCookie)) == nil {
			fmt.Fprint(w, "event: signedout\ndata: {}\n\n")
			fl.Flush()
			return nil
		}
		st, err := c.snapshot(q)
		if err == nil {
			b, _ := json.Marshal(st)
			if string(b) != string(last) {
				if _, err := fmt.Fprintf(w, "event: state\ndata: %s\n\n", b); err != nil {
					return nil
				}
				fl.Flush()
				last, quiet = b, time.Now()
			}
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
		case <-tick.C:
		}
	}
}
