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
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
)

// A lost COMMIT answer (outside rounds 36 and 37). On a shared engine an append's entries
// are sequenced and integrated by one transaction (tessera's storage/mysql); when the
// connection fails after the COMMIT was sent, the driver reports an error but the server
// may have committed — before the answer was lost, or later, when the COMMIT still in
// flight arrives. Taken as "not recorded", the caller refuses an operation the signed log
// says happened (and a caller that retries records it twice).
//
// So an append that fails in a way that may hide a commit is resolved before its future
// answers. The replica settles the tree: it takes the tree state's row lock, which every
// append's transaction takes first and holds to its end, so once it is held the failed
// transaction has ended, committed or rolled back, and no late COMMIT of it can come. It
// then waits for a checkpoint signed by the log key that covers the settled tree, and
// looks for the entry's leaf among that tree's leaves from the tree it trusted when it
// submitted the entry (nothing below that is rewritten), the leaves proven against the
// checkpoint's root — not the database's rows, which an insider can write for the moment
// of the look (round 37 planted a leaf hash, and lowered the tree state's size). An
// occurrence this replica already acknowledged (the same bytes appended twice) does not
// count. Found: the append succeeded, at that index. Otherwise it is reported failed and
// the entry is watched: looked for in every newer signed tree for watchFor after it was
// first seen absent (or until the engine answers, if it could not be looked for at all);
// found, it gets an audit.refused_entry record saying that the operation it records was
// refused. Close looks once more for the watched entries it can. What a replica killed
// while it watches entries knew is lost with it (memory only): DESIGN.md says so.

// settleWait bounds how long resolving a failed append may take: a failed transaction's
// session holds the tree's row until the server ends it (at once when its socket is closed,
// after sessionIdle when its client vanished), then a signed checkpoint must cover the tree.
const settleWait = sessionIdle*time.Second + 5*time.Second

// watchFor is how long a failed append's entry is looked for after it was first proven
// absent.
const watchFor = 2 * time.Minute

// maxWatched bounds the failed appends watched.
const maxWatched = 4096

// maxAcked bounds the acknowledged entries remembered for telling a duplicate apart.
const maxAcked = 1 << 16

// lostEntry is an append whose outcome is not known: its entry, and the tree it is not below.
type lostEntry struct {
	raw   []byte
	after uint64
}

type watchedEntry struct {
	raw     []byte
	leaf    [32]byte
	after   uint64    // the entry is not below this index
	scanned uint64    // looked for, in proven trees, up to here
	until   time.Time // zero: not yet proven absent; else forgotten after it
}

// lostResolver coalesces resolutions — one settle and one proof serve every append that
// failed before it began — and keeps the watched entries.
type lostResolver struct {
	mu     sync.Mutex
	began  time.Time // when the last resolution began (zero: none yet)
	from   uint64    // its leaves' first index,
	size   uint64    // and the proven tree's size
	leaves map[[32]byte][]uint64
	err    error // why it could not settle or prove (leaves nil)

	outcomes *prometheus.CounterVec // strongroom_audit_failed_appends_resolved_total

	wmu     sync.Mutex
	watched []watchedEntry
	full    bool
	acked   map[[32]byte][]uint64 // indices this replica acknowledged, by leaf
	nacked  int
	roundMu sync.Mutex // one watch round at a time (the loop's, Close's)
}

// mayHideCommit says whether an append's error may follow a commit the server did: not a
// pushback (nothing was sent) and not an answer from the server (it refused, so nothing
// was committed).
func mayHideCommit(err error) bool {
	var me *mysql.MySQLError
	return !errors.Is(err, tessera.ErrPushback) && !errors.As(err, &me)
}

// acknowledged remembers that this replica acknowledged raw's append at index.
func (l *Log) acknowledged(leaf [32]byte, index uint64) {
	r := &l.lost
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.acked == nil || r.nacked >= maxAcked {
		// Acknowledgements far below any append still in doubt are dropped together.
		r.acked, r.nacked = map[[32]byte][]uint64{}, 0
	}
	r.acked[leaf] = append(r.acked[leaf], index)
	r.nacked++
}

// unacknowledged forgets an acknowledgement its caller did not wait for.
func (l *Log) unacknowledged(leaf [32]byte, index uint64) {
	r := &l.lost
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.acked[leaf] = slices.DeleteFunc(r.acked[leaf], func(i uint64) bool { return i == index })
}

// unacked is the first index in occ (proven occurrences of leaf in [lo, hi)) that this
// replica did not acknowledge, if there are more occurrences than acknowledgements there.
func (l *Log) unacked(leaf [32]byte, occ []uint64, lo, hi uint64) (uint64, bool) {
	r := &l.lost
	r.wmu.Lock()
	defer r.wmu.Unlock()
	var mine []uint64
	for _, i := range r.acked[leaf] {
		if i >= lo && i < hi {
			mine = append(mine, i)
		}
	}
	var in []uint64
	for _, i := range occ {
		if i >= lo && i < hi {
			in = append(in, i)
		}
	}
	if len(in) <= len(mine) {
		return 0, false
	}
	for _, i := range in {
		if !slices.Contains(mine, i) {
			return i, true
		}
	}
	return 0, false
}

// resolveLost says where a failed append's entry is, if the log holds it, with the size
// of the proven tree it was looked for in: found false with a nil error means it is not
// there.
func (l *Log) resolveLost(failedAt time.Time, raw []byte, after uint64) (index, size uint64, found bool, err error) {
	r := &l.lost
	leaf := [32]byte(rfc6962.DefaultHasher.HashLeaf(raw))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.began.IsZero() || !r.began.After(failedAt) || (r.err == nil && r.from > after) {
		r.began = time.Now()
		r.from = after
		r.size, r.leaves, r.err = l.settledLeaves(after)
	}
	if r.err != nil {
		return 0, 0, false, r.err
	}
	index, found = l.unacked(leaf, r.leaves[leaf], after, r.size)
	return index, r.size, found, nil
}

// settledLeaves settles the tree, waits for a signed checkpoint covering it, and returns
// that tree's size and its leaves from index from on, proven against the checkpoint.
func (l *Log) settledLeaves(from uint64) (uint64, map[[32]byte][]uint64, error) {
	ctx, cancel := context.WithTimeout(l.lostCtx, settleWait) // Close's end cuts it short
	defer cancel()
	size, err := l.settleTree(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("settling the tree: %w", err)
	}
	c, err := l.signedCovering(ctx, max(size, from))
	if err != nil {
		return 0, nil, err
	}
	leaves, err := l.provenLeaves(ctx, from, c)
	if err != nil {
		return 0, nil, fmt.Errorf("reading the signed tree's leaves: %w", err)
	}
	return c.Size, leaves, nil
}

// settleTree takes and gives back the tree state's row lock and returns the tree's size.
// The lock may be held for as long as the server keeps a vanished client's session
// (sessionIdle), and the settle's own connection may go dead (round 38): it asks in short
// attempts, each on a new connection, until ctx ends.
func (l *Log) settleTree(ctx context.Context) (uint64, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, settleAttempt)
		size, err := l.settleOnce(actx)
		timedOut := actx.Err() != nil // whatever error the driver made of it
		cancel()
		var me *mysql.MySQLError
		retry := timedOut || errors.As(err, &me) && me.Number == 1205 // lock wait timeout
		if err == nil || !retry || ctx.Err() != nil {
			return size, err
		}
	}
}

// settleAttempt bounds one attempt to settle the tree (its lock wait: 1 s).
const settleAttempt = 2 * time.Second

func (l *Log) settleOnce(ctx context.Context) (uint64, error) {
	c, err := l.db.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer func() {
		c.Raw(func(any) error { return driver.ErrBadConn }) // its lock wait is not the pool's
		c.Close()
	}()
	if _, err := c.ExecContext(ctx, "SET SESSION innodb_lock_wait_timeout = 1"); err != nil {
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

// signedCovering waits for the published checkpoint to be signed by the log key and to
// cover size entries.
func (l *Log) signedCovering(ctx context.Context, size uint64) (log.Checkpoint, error) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if cp, err := l.reader.ReadCheckpoint(ctx); err == nil && signedBy(l.signer.Signer, cp) {
			var c log.Checkpoint
			if _, err := c.Unmarshal(cp); err == nil && c.Size >= size {
				return c, nil
			}
		}
		select {
		case <-ctx.Done():
			return log.Checkpoint{}, fmt.Errorf("no checkpoint signed by the log key covers the settled tree (%d entries): %w", size, ctx.Err())
		case <-t.C:
		}
	}
}

// watch keeps a failed append's entry to be looked for in newer signed trees.
func (l *Log) watch(raw []byte, after, scanned uint64, absent bool) {
	w := watchedEntry{raw: raw, leaf: [32]byte(rfc6962.DefaultHasher.HashLeaf(raw)), after: after, scanned: max(after, scanned)}
	if absent {
		w.until = time.Now().Add(watchFor)
	}
	r := &l.lost
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if len(r.watched) >= maxWatched {
		if !r.full {
			l.log.Error("ALERT audit log: too many failed appends are watched for in the log; those past the bound are not", "bound", maxWatched)
		}
		r.full = true
		return
	}
	r.watched = append(r.watched, w)
}

// watchRound looks for the watched entries in the tree of cp (published, signed by the
// log key; nil: nothing to look in). One found gets an audit.refused_entry record; one
// proven absent for watchFor is forgotten. It says how many are still watched.
func (l *Log) watchRound(cp []byte) int {
	r := &l.lost
	r.roundMu.Lock()
	defer r.roundMu.Unlock()
	r.wmu.Lock()
	ws := slices.Clone(r.watched)
	r.wmu.Unlock()
	if len(ws) == 0 || cp == nil {
		return len(ws)
	}
	var c log.Checkpoint
	if _, err := c.Unmarshal(cp); err != nil {
		return len(ws)
	}
	from := slices.MinFunc(ws, func(a, b watchedEntry) int { return cmp.Compare(a.scanned, b.scanned) }).scanned
	now := time.Now()
	var leaves map[[32]byte][]uint64
	if c.Size > from {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		leaves, err = l.provenLeaves(ctx, from, c)
		cancel()
		if err != nil {
			return len(ws) // the next round reads again
		}
	}
	done := map[[32]byte]bool{}
	// The refusals found this round are submitted together (one batch), then waited for.
	type refusal struct {
		leaf [32]byte
		f    Future
	}
	var refusals []refusal
	for i := range ws {
		w := &ws[i]
		if c.Size > w.scanned {
			if index, found := l.unacked(w.leaf, leaves[w.leaf], w.scanned, c.Size); found {
				l.log.Error("ALERT audit log: an entry reported not recorded (its operation refused) is in the log: its commit's answer was lost; recording that it was refused", "entry", index)
				refusals = append(refusals, refusal{w.leaf, l.submit(context.Background(), RefusedEntryEvent(index, w.raw), true)})
				continue
			}
			w.scanned = c.Size
			if w.until.IsZero() {
				w.until = now.Add(watchFor)
			}
		}
		if !w.until.IsZero() && now.After(w.until) {
			done[w.leaf] = true
		}
	}
	for _, r := range refusals {
		if _, err := r.f(); err != nil {
			continue // looked for again next round
		}
		l.lost.outcomes.WithLabelValues("refused_later").Inc()
		done[r.leaf] = true
	}
	// Put back what is still watched, with its progress; entries watched meanwhile stay.
	r.wmu.Lock()
	defer r.wmu.Unlock()
	byLeaf := map[[32]byte]watchedEntry{}
	for _, w := range ws {
		byLeaf[w.leaf] = w
	}
	kept := r.watched[:0]
	for _, w := range r.watched {
		if done[w.leaf] {
			delete(done, w.leaf) // one watched copy per refusal or expiry
			continue
		}
		if u, ok := byLeaf[w.leaf]; ok && u.after == w.after {
			w.scanned, w.until = u.scanned, u.until
		}
		kept = append(kept, w)
	}
	r.watched = kept
	r.full = len(kept) >= maxWatched
	return len(kept)
}

// drainWatched, as the log closes, looks for the watched entries until each was looked
// for in a signed tree or ctx ends, and says what it leaves.
func (l *Log) drainWatched(ctx context.Context) {
	r := &l.lost
	unproven := func() int {
		r.wmu.Lock()
		defer r.wmu.Unlock()
		n := 0
		for _, w := range r.watched {
			if w.until.IsZero() {
				n++
			}
		}
		return n
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for unproven() > 0 {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		cp, err := l.reader.ReadCheckpoint(rctx)
		cancel()
		if err == nil && signedBy(l.signer.Signer, cp) {
			l.watchRound(cp)
		}
		select {
		case <-ctx.Done():
			l.log.Error("ALERT audit log: closing with failed appends never looked for in the log; if their commits happened, the log holds them with no refusal record", "entries", unproven())
			return
		case <-t.C:
		}
	}
}

// RefusedEntryEvent says that the entry at index was reported not recorded to its caller,
// which refused the operation it records.
func RefusedEntryEvent(index uint64, entry []byte) Event {
	ev := ForeignEntryEvent(index, entry, "reported not recorded to its caller, which refused the operation; the answer to its commit was lost and the log holds it")
	ev.Kind = KindRefusedEntry
	return ev
}

// A session that holds the tree and never falls silent. The server ends a session idle for
// its wait_timeout (sessionIdle), rolling back what it held — but a replica whose path to
// the engine trickles a statement's bytes (a few every second or two, as over a path losing
// most packets) is never idle to it while its transaction holds the tree's row, and every
// replica's appends wait (round 37). The signer, once the tree's row has been held for
// sessionIdle/2 seconds, asks the engine which transaction the appends waiting on the tree
// state wait for (information_schema.INNODB_LOCK_WAITS, INNODB_LOCKS, INNODB_TRX: the PROCESS
// privilege) and ends its session if that session is asleep — between statements, or in
// the middle of receiving one — for longer than the log's wait_timeout: no log session in
// a transaction can be. Only the log's own sessions are candidates (its database user, on
// its database): another party's session that holds the tree (an administrator's) is the
// stall round 13 tests, answered by refusing, not by ending it. A holder busy in a
// statement (a repair's work) is left alone, and so is every session that holds nothing
// (round 38 steered the first version, which ended every long-asleep session of its user,
// to an operator's idle one).
const holderQuery = "SELECT DISTINCT t.`trx_mysql_thread_id`, p.`TIME` FROM information_schema.INNODB_LOCK_WAITS w " +
	"JOIN information_schema.INNODB_LOCKS k ON k.`lock_id` = w.`requested_lock_id` " +
	"JOIN information_schema.INNODB_TRX t ON t.`trx_id` = w.`blocking_trx_id` " +
	"JOIN information_schema.PROCESSLIST p ON p.`ID` = t.`trx_mysql_thread_id` " +
	"WHERE k.`lock_table` LIKE '%`TreeState`' AND p.`COMMAND` = 'Sleep' AND p.`TIME` > ? " +
	"AND p.`USER` = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) AND p.`DB` = DATABASE()"

// reapHolders is the signer's check, once a watch round (indexLoop).
func (l *Log) reapHolders(now time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var me *mysql.MySQLError
	if err := l.treeLockable(ctx); err == nil || !errors.As(err, &me) {
		l.treeHeldSince = time.Time{} // free, or the engine away: nothing held to end
		return
	}
	if l.treeHeldSince.IsZero() {
		l.treeHeldSince = now
	}
	if now.Sub(l.treeHeldSince) < sessionIdle*time.Second/2 {
		return
	}
	rows, err := l.db.QueryContext(ctx, holderQuery, sessionIdle)
	if err != nil {
		if !l.reapDenied {
			l.reapDenied = true
			l.log.Warn("audit log: the tree's row is held and the engine does not say by whom (the log's database user needs the PROCESS privilege): a session trickling its bytes cannot be ended", "err", err)
		}
		return
	}
	type stuck struct{ id, secs int64 }
	var ss []stuck
	for rows.Next() {
		var s stuck
		if rows.Scan(&s.id, &s.secs) == nil {
			ss = append(ss, s)
		}
	}
	rows.Close()
	for _, s := range ss {
		if _, err := l.db.ExecContext(ctx, fmt.Sprintf("KILL CONNECTION %d", s.id)); err == nil {
			l.log.Error("ALERT audit log: ended a database session that held the tree without falling silent (a replica's path trickling, or a transaction left open); the fleet's appends were waiting on it",
				"session", s.id, "asleep_s", s.secs, "tree_held_for", now.Sub(l.treeHeldSince).Round(time.Second))
		}
	}
}
