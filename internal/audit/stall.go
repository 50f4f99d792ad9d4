package audit

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Writes that do not end. A log's storage can take connections and answer pings and still
// never finish a write: a shared engine's table locked (LOCK TABLES, a transaction holding
// a row the append needs, a long ALTER), a disk that hangs. Nothing fails, so nothing was
// refused: every request that needs a record waited for it, and new ones kept coming (with
// StrongroomBatch locked, a request record waited 20 s while the log said it was healthy).
// So the log keeps the start of each write in flight — entries appended, batch bundles,
// the journal's group commits — and its probe (every probeEvery) counts the log
// unavailable while one has been in flight for Config.AppendStall: Healthy says so (the
// gateway refuses what needs a record; /healthz and strongroom_audit_healthy say so), with
// an ALERT, until none has. The writes in flight go on; what waits on them is answered
// when they end.

// DefaultAppendStall is Config.AppendStall's default: far above a write's latency on a
// loaded engine (milliseconds; a security event's p99 to a signed checkpoint is ~2 s), and
// soon enough for an operator.
const DefaultAppendStall = 10 * time.Second

type writeWatch struct {
	stall time.Duration
	mu    sync.Mutex
	next  uint64
	start map[uint64]time.Time // writes in flight: when each began
	err   atomic.Pointer[error]
}

// beginWrite marks a write to the log's storage in flight; call end when it ends.
func (l *Log) beginWrite() (end func()) {
	w := &l.writes
	w.mu.Lock()
	id := w.next
	w.next++
	if w.start == nil {
		w.start = make(map[uint64]time.Time)
	}
	w.start[id] = time.Now()
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.start, id)
		w.mu.Unlock()
		if w.err.Load() != nil {
			// At once, not at the next probe: what this write was for goes on now (a batch
			// entry after its bundle), and must not be refused for the stall it just ended.
			l.watchWrites(time.Now())
		}
	}
}

// watchWrites (the probe's) sets the stall while a write has been in flight for the
// stall time, and clears it when none has.
func (l *Log) watchWrites(now time.Time) {
	w := &l.writes
	w.mu.Lock()
	var oldest time.Time
	for _, t := range w.start {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	n := len(w.start)
	w.mu.Unlock()
	if !oldest.IsZero() && now.Sub(oldest) >= w.stall {
		if w.err.Load() == nil {
			err := fmt.Errorf("%w: a write to the log's storage has not ended for %v (%d in flight): it takes connections, not writes", ErrUnavailable, now.Sub(oldest).Round(time.Second), n)
			w.err.Store(&err)
			l.setHealthGauge()
			l.log.Error("ALERT audit log: writes to its storage do not end; refusing what needs a record until they do", "for", now.Sub(oldest).Round(time.Second), "in_flight", n)
		}
		return
	}
	if w.err.Swap(nil) != nil {
		l.log.Warn("audit log: writes to its storage end again")
		l.setHealthGauge()
	}
}
