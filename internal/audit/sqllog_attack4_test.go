package audit

// Outside attacks, fourth round, on the log on a shared MariaDB engine. The attacker has
// full SQL access to the log's database (a plain database/sql connection: any statement,
// any time, KILL and named locks included) and reads /log/ and every checkpoint ever
// published, but holds neither keys/log.key nor the audit HMAC key. Replicas are opened
// with the keys, as in the earlier rounds. Every test fails when the promise it attacks is
// broken.
//
// The common thread: the signer's memory of what was signed is (a) its own process's
// s.checked/s.root, lost on restart and absent in a replica that takes over the lock, and
// (b) the Checkpoint row, which the attacker writes. An authentic older checkpoint (or no
// row at all) passes signedBy, so the signer's baseline can be rolled back; entry MACs do
// not bind positions, so authentic entries can be re-arranged (dropped, duplicated,
// reordered) into a tree that extends the rolled-back baseline and forks from what was
// signed later.

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

// a4Signed is the Checkpoint row, if it carries a valid signature of v.
func a4Signed(db *sql.DB, v note.Verifier) (log.Checkpoint, []byte, bool) {
	var raw []byte
	if err := db.QueryRow("SELECT `note` FROM `Checkpoint` WHERE `id` = 0").Scan(&raw); err != nil {
		return log.Checkpoint{}, nil, false
	}
	n, err := note.Open(raw, note.VerifierList(v))
	if err != nil {
		return log.Checkpoint{}, nil, false
	}
	var cp log.Checkpoint
	if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
		return log.Checkpoint{}, nil, false
	}
	return cp, raw, true
}

// a4Rewrite, in one transaction over plain SQL, replaces the whole tree (fewer than 256
// entries) by one over entries: leaf bundle, level-0 tile and tree state, all consistent;
// and the Checkpoint row by cp (an authentic older checkpoint), or deletes it (cp nil).
// published_at is set to 0 so that the next publication is due at once.
func a4Rewrite(t *testing.T, db *sql.DB, entries [][]byte, cp []byte) {
	t.Helper()
	tile, root := a3Tree(entries)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	qs := []struct {
		q    string
		args []any
	}{
		{"SELECT 1 FROM `TreeState` WHERE `id` = 0 FOR UPDATE", nil},
		{"UPDATE `TiledLeaves` SET `size` = ?, `data` = ? WHERE `tile_index` = 0", []any{len(entries), a3Bundle(entries)}},
		{"REPLACE INTO `Subtree` (`level`, `index`, `nodes`) VALUES (0, 0, ?)", []any{tile}},
		{"UPDATE `TreeState` SET `size` = ?, `root` = ? WHERE `id` = 0", []any{len(entries), root}},
	}
	if cp != nil {
		qs = append(qs, struct {
			q    string
			args []any
		}{"UPDATE `Checkpoint` SET `note` = ?, `published_at` = 0 WHERE `id` = 0", []any{cp}})
	} else {
		qs = append(qs, struct {
			q    string
			args []any
		}{"DELETE FROM `Checkpoint` WHERE `id` = 0", nil})
	}
	for _, q := range qs {
		if _, err := tx.Exec(q.q, q.args...); err != nil {
			t.Fatalf("%s: %v", q.q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// a4Setup records 5 entries (checkpoint s1) and 5 more (checkpoint s2) through l and
// returns both verified states and the 10 authentic leaves.
func a4Setup(t *testing.T, l *Log, v note.Verifier, db *sql.DB) (State, State, [][]byte) {
	t.Helper()
	s1, s2 := a2TwoCheckpoints(t, l, v)
	leaves := a3ReadLeaves(t, db)
	if len(leaves) != 10 {
		t.Fatalf("%d leaves", len(leaves))
	}
	for i, e := range leaves {
		if err := checkEntry(testEntryKey, l.Origin(), e); err != nil {
			t.Fatalf("leaf %d: %v", i, err)
		}
	}
	return s1, s2, leaves
}

// a4Replica opens a replica of dsn's log whose own data directory is disk, as a
// `strongroom serve` has (audit.log_dir beside log_db): a restarted replica keeps it.
func a4Replica(t *testing.T, dsn string, s note.Signer, disk string, logs *syncBuffer) *Log {
	t.Helper()
	l, err := Open(context.Background(), Config{EntryKey: testEntryKey, DB: dsn, Dir: disk, Signer: s, ShutdownTimeout: time.Second, Logger: newTextLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l
}

// a4WaitFork waits (up to d) for a checkpoint signed by the log key in the Checkpoint row
// that contradicts s2: the same size with another root, or a size below s2's that no
// honest prefix had (root differs from honest[size]). It reports what it found.
func a4WaitFork(t *testing.T, db *sql.DB, v note.Verifier, s2 State, honest [][]byte, d time.Duration) (log.Checkpoint, []byte, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cp, raw, ok := a4Signed(db, v); ok {
			switch {
			case cp.Size == s2.Size && !bytes.Equal(cp.Hash, s2.Root):
				return cp, raw, true
			case cp.Size < s2.Size && cp.Size > 0:
				if _, root := a3Tree(honest[:cp.Size]); !bytes.Equal(root, cp.Hash) {
					return cp, raw, true
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return log.Checkpoint{}, nil, false
}

// forked: authentic entries 0..4 (as signed in s1), then copies of authentic entries 0..4
// in place of 5..9: events 5..9 vanish from history; every MAC is valid.
func a4ForkedLeaves(leaves [][]byte) [][]byte {
	return append(append([][]byte{}, leaves[:5]...), leaves[:5]...)
}

// TestAttack4RestartReplayedCheckpointFork: a replica signed s1 (size 5) and s2 (size 10)
// and is restarted (deploy, crash). While it is down the attacker, with SQL only, puts the
// authentic older checkpoint s1 back into the Checkpoint row and rewrites the tree to size
// 10 with entries 5..9 replaced by copies of authentic entries 0..4 (valid MACs: they do
// not bind positions). The restarted signer has no memory; its baseline is the row, s1;
// the fork extends s1 consistently. Promise 1 + 4: no signed checkpoint forks from s2.
func TestAttack4RestartReplayedCheckpointFork(t *testing.T) {
	t.Parallel() // see sqlTestDB
	a4RestartAttack(t, "strongroom.test/attack4r", "entries 5..9 replaced by copies of 0..4", func(db *sql.DB, s1 State, leaves [][]byte) {
		a4Rewrite(t, db, a4ForkedLeaves(leaves), s1.Checkpoint)
	})
}

// TestAttack4RestartDeletedCheckpointShrink: the same with the Checkpoint row deleted (no
// checkpoint at all: checkOrigin lets the replica open, the signer's baseline is the empty
// tree) and the tree rolled back to 3 entries with one dropped: authentic entries 0, 1, 3.
// Promise 1: no signed checkpoint for a tree smaller than (and forking from) s2.
func TestAttack4RestartDeletedCheckpointShrink(t *testing.T) {
	t.Parallel() // see sqlTestDB
	a4RestartAttack(t, "strongroom.test/attack4d", "the tree shrunk to 3 entries, entry 2 dropped", func(db *sql.DB, _ State, leaves [][]byte) {
		a4Rewrite(t, db, [][]byte{leaves[0], leaves[1], leaves[3]}, nil)
	})
}

// a4RestartAttack: a replica with its own data directory signs s1 (size 5) and s2 (size 10)
// and stops; the attacker, with SQL only, rewrites the database (rewrite); the replica
// restarts. Promises 1 + 4: no checkpoint signed that forks from s2 (another root at its
// size, or a smaller tree that is no honest prefix); promise 2: an ALERT instead.
func a4RestartAttack(t *testing.T, origin, what string, rewrite func(db *sql.DB, s1 State, leaves [][]byte)) {
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, origin)
	db := testAdmin(t, dsn)
	disk := t.TempDir() // the replica's own data directory, kept across its restart
	l := a4Replica(t, dsn, s, disk, &syncBuffer{})
	s1, s2, leaves := a4Setup(t, l, v, db)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	rewrite(db, s1, leaves) // the attacker, replica down
	logs := &syncBuffer{}
	l2 := a4Replica(t, dsn, s, disk, logs) // the replica restarts
	if cp, raw, ok := a4WaitFork(t, db, v, s2, leaves, 6*time.Second); ok {
		t.Errorf("PROMISE 1/4 BROKEN: after a restart (%s), the log key signed a checkpoint of size %d, root %x, forking from the earlier signed checkpoint of size %d, root %x; ALERT logged: %v, refusals %v; checkpoint:\n%s",
			what, cp.Size, cp.Hash, s2.Size, s2.Root, strings.Contains(logs.String(), "ALERT"), testutil.ToFloat64(l2.signer.refusals), raw)
		return
	}
	if !strings.Contains(logs.String(), "ALERT audit log") {
		t.Errorf("PROMISE 2 BROKEN: nothing forked signed (%s), but no ALERT either; replica log:\n%s", what, logs.String())
	}
	t.Logf("held; replica log:\n%s", logs.String())
}

// TestAttack4FailoverReplayedCheckpointFork: no restart. Replicas a (signer: it signed s1
// and s2) and b (never signed). The attacker KILLs a's lock connection and takes the
// signer's named lock itself (GET_LOCK from its own session: nobody signs meanwhile, no
// ALERT), plants the s1 replay and the forked tree in one transaction, then releases the
// lock until b, not a, holds it (killing a's lock again at once when a wins the race; a
// replica is told apart here through the test's handles, as an attacker would through
// PROCESSLIST). b's baseline is the row: s1. Promise 1 + 4.
func TestAttack4FailoverReplayedCheckpointFork(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack4f")
	ctx := context.Background()
	db := testAdmin(t, dsn)
	logs := &syncBuffer{}
	a, _ := a3Open(t, dsn, s, logs)
	b, _ := a3Open(t, dsn, s, logs)
	if !a.Signer() || b.Signer() {
		t.Fatalf("signers: a %v b %v", a.Signer(), b.Signer())
	}
	s1, s2, leaves := a4Setup(t, a, v, db)
	// b reads each published checkpoint within a lock poll (250 ms). An attack inside that
	// window, before b has seen s2, is the documented residual (DESIGN.md, "The signer's
	// floor"; witnesses close it): this test attacks after it.
	for deadline := time.Now().Add(10 * time.Second); b.signerFloor() < s2.Size; {
		if time.Now().After(deadline) {
			t.Fatalf("replica b never saw the published checkpoint of size %d (its floor: %d)", s2.Size, b.signerFloor())
		}
		time.Sleep(10 * time.Millisecond)
	}
	dbName, err := databaseName(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	lock := signerLock(dbName)
	mine, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	// steal: KILL the holder, take the lock on the attacker's session.
	steal := func() {
		for deadline := time.Now().Add(15 * time.Second); ; { // a replica may retake it first: again
			var holder sql.NullInt64
			if err := db.QueryRow("SELECT IS_USED_LOCK(?)", lock).Scan(&holder); err != nil {
				t.Fatal(err)
			}
			if holder.Valid {
				db.Exec(fmt.Sprintf("KILL %d", holder.Int64))
			}
			var got sql.NullInt64
			err := mine.QueryRowContext(ctx, "SELECT GET_LOCK(?, 1)", lock).Scan(&got)
			if err == nil && got.Valid && got.Int64 == 1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("attacker GET_LOCK: %v %v", got, err)
			}
		}
	}
	steal()
	a4Rewrite(t, db, a4ForkedLeaves(leaves), s1.Checkpoint)
	deadline := time.Now().Add(15 * time.Second)
	for !b.Signer() {
		if time.Now().After(deadline) {
			t.Fatalf("b never took the lock")
		}
		if _, err := mine.ExecContext(ctx, "DO RELEASE_LOCK(?)", lock); err != nil {
			t.Fatal(err)
		}
		for time.Now().Before(deadline) && !a.Signer() && !b.Signer() {
			time.Sleep(2 * time.Millisecond)
		}
		if a.Signer() {
			steal()
		}
	}
	t.Logf("b holds the signer's lock; a: %v", a.Signer())
	if cp, raw, ok := a4WaitFork(t, db, v, s2, leaves, 6*time.Second); ok {
		t.Errorf("PROMISE 1/4 BROKEN: after a failover, the log key signed a checkpoint of size %d, root %x, forking from the earlier signed checkpoint of size %d, root %x; ALERT logged: %v, refusals a %v b %v; checkpoint:\n%s",
			cp.Size, cp.Hash, s2.Size, s2.Root, strings.Contains(logs.String(), "ALERT"), testutil.ToFloat64(a.signer.refusals), testutil.ToFloat64(b.signer.refusals), raw)
		return
	}
	if !strings.Contains(logs.String(), "ALERT audit log") {
		t.Errorf("PROMISE 2 BROKEN: no fork signed, but no ALERT either; replica log:\n%s", logs.String())
	}
	t.Logf("held; replica log:\n%s", logs.String())
}

// TestAttack4OldEntrySwappedBelowChecked: the signer checks entries from its baseline on
// and never again below it. After s2 (size 10) the attacker replaces authentic entry 2 in
// TiledLeaves by a forged batch entry (no MAC; tile and tree state untouched), then the
// replica appends. The signer's next checkpoint still commits to the authentic entry 2 (its
// root comes from the tiles, which were not changed), so nothing false is signed; but the
// database now serves a forged entry under it, which the signer does not look at again (a
// known limit: re-reading all history before each signature is not affordable). What
// holds: a verifier reading the log reports entry 2 as altered, and the forged record does
// not prove against any signed root.
func TestAttack4OldEntrySwappedBelowChecked(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack4o")
	ctx := context.Background()
	db := testAdmin(t, dsn)
	logs := &syncBuffer{}
	l, _ := a3Open(t, dsn, s, logs)
	_, s2, leaves := a4Setup(t, l, v, db)
	forged := a3ForgedBatch(t, db, "attacker-old-entry")
	swapped := append([][]byte{}, leaves...)
	swapped[2] = forged
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0 AND `size` = 10", a3Bundle(swapped)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Record(ctx, event(100)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		if cp, _, ok := a4Signed(db, v); ok && cp.Size > s2.Size {
			honest := append(append([][]byte{}, leaves[:10]...), a3ReadLeaves(t, db)[10:cp.Size]...)
			if _, root := a3Tree(honest); !bytes.Equal(root, cp.Hash) {
				t.Errorf("the signed root (size %d) does not commit to the authentic entries", cp.Size)
			}
			f, bundles := a2Fetch(t, l.Handler())
			_, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, Prior: &s2})
			if !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "entry 2 ") {
				t.Errorf("Verify on the log serving a forged entry 2 under a signed root: %v; want a security error naming entry 2", err)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "ALERT audit log") {
		t.Errorf("PROMISE 3 BROKEN: nothing signed past size %d in 6 s and no ALERT; replica log:\n%s", s2.Size, logs.String())
	}
}

// TestAttack4StallFlippingCheckpoints: promise 3. The stall watch restarts its clock
// whenever the published size it reads changes. The attacker keeps publication from
// happening (published_at set to "now" — within the signer's skew allowance, so
// checkPublished leaves it — every 500 ms: tessera always finds the last publication too
// recent) and at the same time cycles the Checkpoint row through four authentic old
// checkpoints (sizes 5, 10, 12, 14), one per 500 ms: the watch reads once a second, so two
// reads in a row never see the same size. Entries recorded after are durable and never
// covered.
func TestAttack4StallFlippingCheckpoints(t *testing.T) {
	t.Parallel() // see sqlTestDB; the lowered stall is this log's own
	const stall = 3 * time.Second
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack4s")
	ctx := context.Background()
	db := testAdmin(t, dsn)
	logs := &syncBuffer{}
	l, _ := a3OpenStalling(t, dsn, s, "", logs, stall)
	s1, s2, _ := a4Setup(t, l, v, db)
	for i := 10; i < 12; i++ {
		if _, err := l.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	s3 := a2WaitVerify(t, l, v, 12, &s2)
	for i := 12; i < 14; i++ {
		if _, err := l.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	s4 := a2WaitVerify(t, l, v, 14, &s3)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		cps := [][]byte{s1.Checkpoint, s2.Checkpoint, s3.Checkpoint, s4.Checkpoint}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			db.Exec("UPDATE `Checkpoint` SET `note` = ?, `published_at` = ? WHERE `id` = 0", cps[i%4], time.Now().UnixMilli())
			time.Sleep(500 * time.Millisecond)
		}
	}()
	defer func() { close(stop); <-done }()
	wait := 4 * stall
	deadline := time.Now().Add(wait)
	recorded := 0
	for i := 20; time.Now().Before(deadline); i++ {
		if _, err := l.Record(ctx, event(i)); err == nil {
			recorded++
		}
		if strings.Contains(logs.String(), "ALERT") {
			t.Logf("held: %s", firstLine(logs.String(), "ALERT"))
			return
		}
		if cp, _, ok := a4Signed(db, v); ok && cp.Size > s4.Size {
			t.Logf("held: a checkpoint of size %d was published", cp.Size)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	size, _ := l.IntegratedSize(ctx)
	t.Errorf("PROMISE 3 BROKEN: %d entries recorded (integrated size %d), no checkpoint published past size %d for %v (CheckpointStall %v), and no ALERT; replica log:\n%s",
		recorded, size, s4.Size, wait, stall, logs.String())
}
