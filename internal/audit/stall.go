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
	kinds [writeKinds]writeKind
	err   atomic.Pointer[error]
}

// A write's kind: the storage's paths an append takes, each of which can stop alone (a
// locked bundle table, the tree state's row, the journal's disk).
const (
	writeEntry = iota
	writeBundle
	writeJournal
	writeKinds
)

var writeKindNames = [writeKinds]string{"entry", "batch bundle", "journal"}

// writeKind is one kind's writes in flight (when each began) and when the last ended.
type writeKind struct {
	start   map[uint64]time.Time
	lastEnd time.Time
}

// beginWrite marks a write of a kind to the log's storage in flight; call end when it ends.
func (l *Log) beginWrite(kind int) (end func()) {
	w := &l.writes
	now := time.Now()
	w.mu.Lock()
	id := w.next
	w.next++
	k := &w.kinds[kind]
	if k.start == nil {
		k.start = make(map[uint64]time.Time)
	}
	if len(k.start) == 0 {
		k.lastEnd = now // the kind's wait starts now: none was in flight
	}
	k.start[id] = now
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(k.start, id)
		k.lastEnd = time.Now()
		w.mu.Unlock()
		if w.err.Load() != nil {
			// At once, not at the next probe: what this write was for goes on now (a batch
			// entry after its bundle), and must not be refused for the stall it just ended.
			l.watchWrites(time.Now())
		}
	}
}

// watchWrites (the probe's) sets the stall while, for one kind, a write has been in
// flight for the stall time and none of that kind ended meanwhile — stuck, not slow: a
// backlog whose writes go on ending (tessera integrating thousands of entries under load)
// is not a stall, and an outside-load test was refused when the oldest write's age alone
// counted — and clears it when no kind is so.
func (l *Log) watchWrites(now time.Time) {
	w := &l.writes
	w.mu.Lock()
	stuck, n, age := -1, 0, time.Duration(0)
	for i := range w.kinds {
		k := &w.kinds[i]
		if len(k.start) == 0 || now.Sub(k.lastEnd) < w.stall {
			continue
		}
		var oldest time.Time
		for _, t := range k.start {
			if oldest.IsZero() || t.Before(oldest) {
				oldest = t
			}
		}
		if now.Sub(oldest) >= w.stall {
			stuck, n, age = i, len(k.start), now.Sub(k.lastEnd)
			break
		}
	}
	w.mu.Unlock()
	if stuck >= 0 {
		if w.err.Load() == nil {
			err := fmt.Errorf("%w: no %s write to the log's storage has ended for %v (%d in flight): it takes connections, not writes", ErrUnavailable, writeKindNames[stuck], age.Round(time.Second), n)
			w.err.Store(&err)
			l.log.Error("ALERT audit log: writes to its storage do not end; refusing what needs a record until they do", "kind", writeKindNames[stuck], "for", age.Round(time.Second), "in_flight", n)
		}
		return
	}
	if w.err.Swap(nil) != nil {
		l.log.Warn("audit log: writes to its storage end again")
	}
}
