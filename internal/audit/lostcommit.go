package audit

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/client"
)

// A lost COMMIT answer (outside round 36). On a shared engine an append's entries are
// sequenced and integrated by one transaction (tessera's storage/mysql); when the
// connection fails after the COMMIT was sent, the driver reports an error but the server
// may have committed — before the answer was lost, or later, when the COMMIT still in
// flight arrives. Taken as "not recorded", the caller refuses an operation the signed log
// says happened (and a caller that retries records it twice).
//
// So an append that fails in a way that may hide a commit is resolved before its future
// answers: the replica settles the tree — it takes the tree state's row lock, which every
// append's transaction takes first and holds to its end, so once it is held the failed
// transaction has ended, committed or rolled back, and no late COMMIT of it can come — then
// looks for the entry's leaf among the tree's leaves from the tree it trusted when it
// submitted the entry (nothing below that is rewritten) to the settled size. Found: the
// append succeeded, at that index. Not found: it did not, for good. Settling or reading
// failed (the engine unreachable): the append is reported failed, as before — and the entry
// is kept, in memory, and looked for again each second until the engine answers; one found
// then gets an audit.refused_entry record saying that the operation it records was
// refused. What is lost with the process (kill -9 while the engine is away) is not
// resolved: DESIGN.md says so.

// settleWait bounds how long resolving a failed append may take: a failed transaction's
// session holds the tree's row until the server ends it (at once when its socket is closed,
// after sessionIdle when its client vanished).
const settleWait = 3 * sessionIdle * time.Second

// maxUnresolved bounds the failed appends kept for a later look.
const maxUnresolved = 4096

type lostEntry struct {
	raw   []byte
	after uint64 // the tree trusted when it was submitted: the entry is not below it
}

// lostResolver coalesces resolutions: one settle and one scan serve every append that
// failed before it began.
type lostResolver struct {
	mu     sync.Mutex
	began  time.Time           // when the last settle began (zero: none yet)
	from   uint64              // its scan's first index
	leaves map[[32]byte]uint64 // leaf hash → index, in [from, settled size)
	err    error               // why it could not settle or read (leaves nil)

	outcomes *prometheus.CounterVec // strongroom_audit_failed_appends_resolved_total

	pendMu     sync.Mutex
	unresolved []lostEntry
	full       bool
}

// mayHideCommit says whether an append's error may follow a commit the server did: not a
// pushback (nothing was sent) and not an answer from the server (it refused, so nothing
// was committed).
func mayHideCommit(err error) bool {
	var me *mysql.MySQLError
	return !errors.Is(err, tessera.ErrPushback) && !errors.As(err, &me)
}

// resolveLost says where a failed append's entry is, if the log holds it: found false with
// a nil error means the log does not hold it and never will.
func (l *Log) resolveLost(failedAt time.Time, e lostEntry) (index uint64, found bool, err error) {
	r := &l.lost
	leaf := [32]byte(rfc6962.DefaultHasher.HashLeaf(e.raw))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.began.IsZero() || !r.began.After(failedAt) || (r.err == nil && r.from > e.after) {
		r.began = time.Now()
		r.from = e.after
		r.leaves, r.err = l.settledLeaves(e.after)
	}
	if r.err != nil {
		return 0, false, r.err
	}
	index, found = r.leaves[leaf]
	return index, found, nil
}

// settledLeaves settles the tree and returns its leaves from index from on.
func (l *Log) settledLeaves(from uint64) (map[[32]byte]uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), settleWait)
	defer cancel()
	size, err := l.settleTree(ctx)
	if err != nil {
		return nil, fmt.Errorf("settling the tree: %w", err)
	}
	leaves := map[[32]byte]uint64{}
	if from >= size {
		return leaves, nil
	}
	hs, err := client.FetchLeafHashes(ctx, l.reader.ReadTile, from, size-from, size)
	if err != nil {
		return nil, fmt.Errorf("reading the tree's leaves: %w", err)
	}
	for i, h := range hs {
		if len(h) != len([32]byte{}) {
			return nil, errors.New("a leaf hash of another size")
		}
		if _, dup := leaves[[32]byte(h)]; !dup {
			leaves[[32]byte(h)] = from + uint64(i)
		}
	}
	return leaves, nil
}

// settleTree takes and gives back the tree state's row lock, on a connection of its own
// that waits for the lock longer than the server keeps a vanished client's session, and
// returns the tree's size.
func (l *Log) settleTree(ctx context.Context) (uint64, error) {
	c, err := l.db.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer func() {
		c.Raw(func(any) error { return driver.ErrBadConn }) // its lock wait is not the pool's
		c.Close()
	}()
	if _, err := c.ExecContext(ctx, fmt.Sprintf("SET SESSION innodb_lock_wait_timeout = %d", 2*sessionIdle)); err != nil {
		return 0, err
	}
	tx, err := c.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	var size uint64
	err = tx.QueryRowContext(ctx, "SELECT `size` FROM `TreeState` WHERE `id` = 0 FOR UPDATE").Scan(&size)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil // no tree yet: nothing was committed
	}
	return size, err
}

// keepUnresolved keeps a failed append that could not be resolved, for resolveKept.
func (l *Log) keepUnresolved(e lostEntry) {
	r := &l.lost
	r.pendMu.Lock()
	defer r.pendMu.Unlock()
	if len(r.unresolved) >= maxUnresolved {
		if !r.full {
			l.log.Error("ALERT audit log: too many failed appends wait to be looked for in the log; those past the bound are not", "bound", maxUnresolved)
		}
		r.full = true
		return
	}
	r.unresolved = append(r.unresolved, e)
}

// resolveKept looks for the kept failed appends in the log once the engine answers; one
// found gets an audit.refused_entry record (its operation was refused), one settled absent
// is forgotten.
func (l *Log) resolveKept() {
	r := &l.lost
	r.pendMu.Lock()
	kept := r.unresolved
	r.unresolved = nil
	r.full = false
	r.pendMu.Unlock()
	if len(kept) == 0 {
		return
	}
	slices.SortFunc(kept, func(a, b lostEntry) int { return cmp.Compare(a.after, b.after) }) // one scan serves all
	now := time.Now()
	var again []lostEntry
	for _, e := range kept {
		index, found, err := l.resolveLost(now, e)
		switch {
		case err != nil:
			again = append(again, e)
		case found:
			l.log.Error("ALERT audit log: an entry reported not recorded (its operation refused) is in the log: its commit's answer was lost; recording that it was refused", "entry", index)
			if _, err := l.Record(context.Background(), RefusedEntryEvent(index, e.raw)); err != nil {
				again = append(again, e)
				continue
			}
			l.lost.outcomes.WithLabelValues("refused_later").Inc()
		}
	}
	for _, e := range again {
		l.keepUnresolved(e)
	}
}

// RefusedEntryEvent says that the entry at index was reported not recorded to its caller,
// which refused the operation it records.
func RefusedEntryEvent(index uint64, entry []byte) Event {
	ev := ForeignEntryEvent(index, entry, "reported not recorded to its caller, which refused the operation; the answer to its commit was lost and the log holds it")
	ev.Kind = KindRefusedEntry
	return ev
}
