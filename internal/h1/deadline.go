package h1

import "time"

// Deadline is the deadline a connection was given last, for a wait bounded afresh before
// every request (a client's next request, an engine's answer): setting a deadline updates
// a runtime timer under its lock, ~0.5 µs a request under load (the thirty-ninth session's
// profile). Renew keeps the deadline set while it still gives the wait its whole bound and
// at most an eighth more, so a connection busy with many requests moves it a few times a
// second at most. Whoever sets the connection's deadline another way calls Forget.
type Deadline struct{ at time.Time }

// Renew is the deadline for a wait of at least d from now, and whether it must be set:
// the one set last when it is between now+d and now+d+d/8, else now+d+d/8 (remembered).
func (dl *Deadline) Renew(now time.Time, d time.Duration) (time.Time, bool) {
	if !dl.at.IsZero() {
		if left := dl.at.Sub(now); left >= d && left <= d+d/8 {
			return dl.at, false
		}
	}
	dl.at = now.Add(d + d/8)
	return dl.at, true
}

// Forget drops what Renew remembers: the connection's deadline was set (or lifted) another way.
func (dl *Deadline) Forget() { dl.at = time.Time{} }

// readWithin bounds the connection's next read at d from now, moving its read deadline
// only when it must (Deadline).
func (c *conn) readWithin(d time.Duration) {
	if at, set := c.readBy.Renew(time.Now(), d); set {
		c.rw.SetReadDeadline(at)
	}
}

// setReadDeadline sets the connection's read deadline another way than readWithin (a
// body's bound, a lift), so that the next readWithin sets its own. The connection's
// goroutine's only: the watch's goroutine sets the deadline directly, and unwatch forgets.
func (c *conn) setReadDeadline(t time.Time) {
	c.rw.SetReadDeadline(t)
	c.readBy.Forget()
}
