package audit

import (
	"database/sql"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// TestKilledReplicaErasedEntry: DURABLE across a crash. A replica records an entry (the
// operation it guards goes ahead) and is killed with SIGKILL before a checkpoint covers
// it; the attacker, holding the Checkpoint row so that nothing is published meanwhile,
// rewrites the unsigned tail without the entry (every MAC valid, tiles and tree state
// consistent) and lets the other replica sign it. The replica that appended the entry had
// kept it on its own disk: when it comes back it finds the entry missing from the signed
// log, says so, and appends it again (before, its copy died with it and the entry was lost
// for good: TestAttack9UnsignedRecordErased covered only a replica that stays up).
func TestKilledReplicaErasedEntry(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	skey, s, v := a11Key(t, "strongroom.test/killed-erased")
	db := testAdmin(t, dsn)
	b, _ := a3Open(t, dsn, s, &syncBuffer{}) // the other replica: it signs
	a7Record(t, b, 100, 5)
	a2WaitVerify(t, b, v, 5, nil)

	tx := holdCheckpointRow(t, db)
	dir := t.TempDir()
	x, leaves := a11KilledAfterVictim(t, db, dsn, skey, dir) // a replica process (TestAttack11ReplicaProcess)
	gone := leaves[x]
	rest := append(leaves[:x:x], leaves[x+1:]...)
	a5RewriteTail(t, tx, rest) // commits, releasing the Checkpoint row
	if a5WaitSigned(t, db, v, uint64(len(rest))-1, 15*time.Second, nil) == 0 {
		t.Fatal("setup: no checkpoint was signed over the tail without the entry")
	}

	// The killed replica comes back (same data directory).
	a2, logs := a3OpenDir(t, dsn, s, dir)
	found := func() bool {
		cp, _, ok := a4Signed(db, v)
		if !ok {
			return false
		}
		es := a2Entries(t, a2.reader)
		for i := uint64(0); i < cp.Size && i < uint64(len(es)); i++ {
			if string(es[i]) == string(gone) {
				return true
			}
		}
		return false
	}
	if !a6Until(20*time.Second, found) {
		t.Fatalf("DURABLE BROKEN: entry %d, acknowledged by a replica killed before a checkpoint covered it, was erased through the database and is not in the signed log after the replica came back (ALERT: %v)",
			x, strings.Contains(logs.String(), "ALERT"))
	}
	if !strings.Contains(logs.String(), "ALERT audit log: an entry this replica appended is not in the signed log") {
		t.Fatalf("the erased entry came back without an ALERT:\n%s", logs.String())
	}
}

// a3OpenDir is a3Open for a replica with a data directory of its own.
func a3OpenDir(t *testing.T, dsn string, s note.Signer, dir string) (*Log, *syncBuffer) {
	t.Helper()
	return a3OpenIn(t, dsn, s, dir, &syncBuffer{})
}

// FuzzParseMine: the kept entries read back as written; any bytes (a file cut or damaged
// on the replica's disk) parse without panicking, into at most what they hold.
func FuzzParseMine(f *testing.F) {
	var b []byte
	for i, raw := range []string{"{\"v\":1}", "x", strings.Repeat("y", 300)} {
		b = appendMineFrame(b, mineEntry{index: uint64(10 + i), after: uint64(i), raw: []byte(raw)})
	}
	f.Add(b)
	f.Add(b[:len(b)-1])
	f.Fuzz(func(t *testing.T, b []byte) {
		ms := parseMine(b)
		var again []byte
		for _, m := range ms {
			if m.after > m.index || len(m.raw) == 0 {
				t.Fatalf("entry %+v", m)
			}
			again = appendMineFrame(again, m)
		}
		if len(again) > len(b) {
			t.Fatalf("%d entries re-encode to %d bytes, more than the %d read", len(ms), len(again), len(b))
		}
		if back := parseMine(again); len(back) != len(ms) {
			t.Fatalf("%d entries re-encoded read back as %d", len(ms), len(back))
		}
	})
}

// holdCheckpointRow holds the shared log's Checkpoint row (SELECT ... FOR UPDATE) in a
// transaction: no checkpoint is published until it commits or the test ends.
func holdCheckpointRow(t *testing.T, db *sql.DB) *sql.Tx {
	t.Helper()
	// The row is the first publication's: on a loaded machine it may not be there yet
	// (TestMineDiskFull failed so, "no rows in result set", in a full suite run).
	waitFor(t, func() bool {
		var n int
		return db.QueryRow("SELECT COUNT(*) FROM `Checkpoint` WHERE `id` = 0").Scan(&n) == nil && n > 0
	})
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback() })
	var cp []byte
	if err := tx.QueryRow("SELECT `note` FROM `Checkpoint` WHERE `id` = 0 FOR UPDATE").Scan(&cp); err != nil {
		t.Fatal(err)
	}
	return tx
}
