package audit

// Outside attacks, third round, on the log on a shared MariaDB engine: the attacker has
// full SQL access to the log's database (a plain database/sql connection, any statement,
// any time) and reads /log/, but holds neither keys/log.key nor the audit HMAC key. Every
// test fails when the promise it attacks is broken.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/api"
	tmysql "github.com/transparency-dev/tessera/storage/mysql"
	"golang.org/x/mod/sumdb/note"
)

const a3AlertForged = "ALERT audit log: an entry in the shared log was not written by a replica"

// a3Open opens a replica of dsn's log (the keys' holder) logging to logs; it is closed at
// the end of the test.
func a3Open(t *testing.T, dsn string, s note.Signer, logs *syncBuffer) (*Log, *syncBuffer) {
	t.Helper()
	return a3OpenIn(t, dsn, s, "", logs)
}

// a3OpenIn is a3Open for a replica whose data directory is dir ("": none).
func a3OpenIn(t *testing.T, dsn string, s note.Signer, dir string, logs *syncBuffer) (*Log, *syncBuffer) {
	t.Helper()
	return a3OpenStalling(t, dsn, s, dir, logs, 0)
}

// a3OpenStalling is a3OpenIn with the stall ALERT's wait (Config.CheckpointStall) set for
// this log alone (0: the package's): a test that lowers it can run beside others, which
// lowering the package's CheckpointStall (lowerCheckpointStall) does not allow.
func a3OpenStalling(t *testing.T, dsn string, s note.Signer, dir string, logs *syncBuffer, stall time.Duration) (*Log, *syncBuffer) {
	t.Helper()
	l, err := Open(context.Background(), Config{EntryKey: testEntryKey, DB: dsn, Dir: dir, Signer: s, ShutdownTimeout: time.Second, Logger: newTextLogger(logs), CheckpointStall: stall})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l, logs
}

// a3Checkpoint reads the Checkpoint row's size over plain SQL (0 when absent/unreadable).
func a3CheckpointSize(db *sql.DB) uint64 {
	var note []byte
	if err := db.QueryRow("SELECT `note` FROM `Checkpoint` WHERE `id` = 0").Scan(&note); err != nil {
		return 0
	}
	n, _ := checkpointSize(note)
	return n
}

// a3Bundle encodes entries as a tlog-tiles entry bundle.
func a3Bundle(entries [][]byte) []byte {
	var b []byte
	for _, e := range entries {
		b = binary.BigEndian.AppendUint16(b, uint16(len(e)))
		b = append(b, e...)
	}
	return b
}

// a3Tree is the level-0 tile and the root of the tree over entries (fewer than 256).
func a3Tree(entries [][]byte) (tile, root []byte) {
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for _, e := range entries {
		h := rfc6962.DefaultHasher.HashLeaf(e)
		tile = append(tile, h...)
		r.Append(h, nil)
	}
	root, _ = r.GetRootHash(nil)
	return tile, root
}

// a3ForgedBatch makes a batch entry (with a made-up MAC) committing to forged request
// records, and stores its bundle as any writer of StrongroomBatch can.
func a3ForgedBatch(t *testing.T, db *sql.DB, principal string) []byte {
	t.Helper()
	rec := Event{V: 1, TS: ts0, Kind: KindRequest, Actor: map[string]string{"principal": principal},
		Subject: map[string]string{"model": "m"}, Decision: Allow, Fields: map[string]string{"status": "200", "note": "never happened"}}
	rb, err := rec.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	recs := [][]byte{rb}
	bundle, name := EncodeBundle(recs)
	if err := (SQLBundles{DB: db}).PutBundle(context.Background(), name, bundle); err != nil {
		t.Fatal(err)
	}
	entry := Event{V: 1, TS: ts0, Kind: KindBatch, Decision: Allow, Actor: map[string]string{"principal": "strongroom/gateway"},
		Subject: map[string]string{"bundle": name},
		Fields: map[string]string{"records": "1", "root": hex.EncodeToString(BatchRoot(recs)),
			"first_ts": ts0.Format(time.RFC3339Nano), "last_ts": ts0.Format(time.RFC3339Nano)},
		MAC: strings.Repeat("0", 64)}
	eb, err := entry.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return eb
}

// a3ReadLeaves reads bundle 0 (the whole log: fewer than 256 entries) over plain SQL.
func a3ReadLeaves(t *testing.T, q interface {
	QueryRow(string, ...any) *sql.Row
}) [][]byte {
	t.Helper()
	var size uint32
	var data []byte
	if err := q.QueryRow("SELECT `size`, `data` FROM `TiledLeaves` WHERE `tile_index` = 0").Scan(&size, &data); err != nil {
		t.Fatal(err)
	}
	var b api.EntryBundle
	if err := b.UnmarshalText(data); err != nil {
		t.Fatal(err)
	}
	if uint32(len(b.Entries)) < size {
		t.Fatalf("bundle 0: %d entries, row says %d", len(b.Entries), size)
	}
	return b.Entries[:size]
}

// a3AfterSigning is the end of both root-substitution attacks: once a checkpoint of size
// n+1 is signed, the decoy at index n is replaced by the forged entry; then a verifier
// (with the state it accepted before) must not accept a checkpoint covering it, and the
// signer must neither stay silent nor sign past it.
func a3AfterSigning(t *testing.T, l *Log, v note.Verifier, logs *syncBuffer, db *sql.DB, prior State, n uint64, leaves [][]byte, forged []byte) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for a3CheckpointSize(db) < n+1 {
		if time.Now().After(deadline) {
			t.Logf("held: no checkpoint of size %d was signed in 10 s (the tree with the substituted root)", n+1)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Signed. Now put the forged entry where the decoy was (the tiles and root were the
	// forged entry's all along).
	final := append(append([][]byte{}, leaves...), forged)
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(final)); err != nil {
		t.Fatal(err)
	}
	f, bundles := a2Fetch(t, l.Handler())
	st, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, Prior: &prior})
	if err != nil {
		t.Logf("held: Verify refuses the log: %v", err)
		return
	}
	got, err := ReadEntry(ctx, f, n, st.Size)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, forged) {
		t.Logf("held: entry %d under the signed checkpoint is not the forged one", n)
		return
	}
	pe, perr := Prove(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles}, st.Size, st.Root, RecordIndex(n, 0))
	t.Errorf("PROMISE 1 BROKEN: entry %d, written with SQL only (no MAC: %v), is covered by a signed checkpoint (size %d) that Verify accepts, as an extension of the state accepted before (size %d); its forged request record proves too (err %v): %s",
		n, checkEntry(testEntryKey, l.Origin(), got), st.Size, prior.Size, perr, a3Short(pe))
	// The log goes on: authentic entries after it, and checkpoints signed past it.
	idx, err := l.Record(ctx, event(900))
	if err != nil {
		t.Fatal(err)
	}
	st2 := a2WaitVerify(t, l, v, idx+1, &st)
	if st2.Size > n+1 {
		t.Errorf("PROMISE 2 BROKEN: the signer signed past the forged entry %d (checkpoint of size %d verifies)", n, st2.Size)
	}
	if out := logs.String(); !strings.Contains(out, a3AlertForged) || !strings.Contains(out, fmt.Sprintf("entry=%d", n)) {
		t.Errorf("PROMISE 2 BROKEN: no ALERT naming entry %d; replica log:\n%s", n, out)
	}
}

func a3Short(pe ProvenEntry) string {
	if pe.Record == nil {
		return "no record"
	}
	return "record " + string(pe.Record.Event)
}

// a3Plant, in one transaction over plain SQL: TiledLeaves gets a decoy at index n (a copy
// of authentic entry 0, whose MAC stays valid anywhere), Subtree and TreeState get the
// tree whose entry n is a forged request batch. It returns the n authentic leaves and
// the forged entry.
func a3Plant(t *testing.T, db *sql.DB, n uint64, principal string) ([][]byte, []byte) {
	t.Helper()
	forged := a3ForgedBatch(t, db, principal)
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var size uint64
	var root []byte
	if err := tx.QueryRow("SELECT `size`, `root` FROM `TreeState` WHERE `id` = 0 FOR UPDATE").Scan(&size, &root); err != nil {
		t.Fatal(err)
	}
	leaves := a3ReadLeaves(t, tx)
	if uint64(len(leaves)) != size || size != n || size >= 255 {
		t.Fatalf("tree size %d, %d leaves, n %d", size, len(leaves), n)
	}
	decoy := leaves[0] // authentic: its MAC binds origin and body, not the position
	tile, fakeRoot := a3Tree(append(append([][]byte{}, leaves...), forged))
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{"UPDATE `TiledLeaves` SET `size` = ?, `data` = ? WHERE `tile_index` = 0", []any{size + 1, a3Bundle(append(append([][]byte{}, leaves...), decoy))}},
		{"REPLACE INTO `Subtree` (`level`, `index`, `nodes`) VALUES (0, 0, ?)", []any{tile}},
		{"UPDATE `TreeState` SET `size` = ?, `root` = ? WHERE `id` = 0", []any{size + 1, fakeRoot}},
	} {
		if _, err := tx.Exec(q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return leaves, forged
}

// TestAttack3RootSubstitution: the signer checks the MAC of every entry it has not
// checked in TiledLeaves, but the checkpoint it signs carries the root tessera read from
// TreeState, which it never compares with those entries. The attacker, in one transaction,
// appends a decoy at index n (a byte-for-byte copy of an authentic entry: its MAC is
// valid) to TiledLeaves, while Subtree and TreeState are those of a tree whose entry n is
// a forged request batch (no MAC). The signer checks the decoy, signs the forged tree;
// the attacker then swaps the decoy for the forged entry. Promise 1: never covered.
func TestAttack3RootSubstitution(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack3")
	ctx := context.Background()
	l, logs := a3Open(t, dsn, s, &syncBuffer{})
	for i := range 3 {
		if _, err := l.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	a2Batch(t, l, 0, 3)
	n, _ := l.IntegratedSize(ctx)
	prior := a2WaitVerify(t, l, v, n, nil)

	// The attacker: a plain database connection.
	db := testAdmin(t, dsn)
	leaves, forged := a3Plant(t, db, n, "attacker")
	a3AfterSigning(t, l, v, logs, db, prior, n, leaves, forged)
}

// TestAttack3RootSubstitutionViaTessera: the same, with the forged entry appended through
// tessera's own MySQL driver (as TestAttack2ForgedAppend), race-free: the attacker holds
// the Checkpoint row (SELECT ... FOR UPDATE), so the signer's publication waits, appends
// the forged entry with the driver, replaces it by a decoy in TiledLeaves only, and lets
// the publication go; once signed, puts the forged entry back.
func TestAttack3RootSubstitutionViaTessera(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack3t")
	ctx := context.Background()
	l, logs := a3Open(t, dsn, s, &syncBuffer{})
	for i := range 4 {
		if _, err := l.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := l.IntegratedSize(ctx)
	prior := a2WaitVerify(t, l, v, n, nil)

	db := testAdmin(t, dsn)
	forged := a3ForgedBatch(t, db, "attacker-via-tessera")
	// Hold publication.
	hold, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var note []byte
	var at int64
	if err := hold.QueryRow("SELECT `note`, `published_at` FROM `Checkpoint` WHERE `id` = 0 FOR UPDATE").Scan(&note, &at); err != nil {
		t.Fatal(err)
	}
	// Append with tessera's driver (its checkpoints fail: no key).
	st, err := tmysql.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(ctx)
	defer acancel()
	app, shutdown, _, err := tessera.NewAppender(actx, st, tessera.NewAppendOptions().
		WithCheckpointSigner(failSigner{name: s.Name()}).WithCheckpointInterval(time.Minute).WithBatching(1, 10*time.Millisecond))
	if err != nil {
		hold.Rollback()
		t.Fatal(err)
	}
	idx, err := app.Add(ctx, tessera.NewEntry(forged))()
	if err != nil {
		hold.Rollback()
		t.Fatal(err)
	}
	if idx.Index != n {
		hold.Rollback()
		t.Fatalf("forged entry at %d, want %d", idx.Index, n)
	}
	leaves := a3ReadLeaves(t, db)
	decoy := append(append([][]byte{}, leaves[:n]...), leaves[0])
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(decoy)); err != nil {
		hold.Rollback()
		t.Fatal(err)
	}
	hold.Rollback() // publication goes on
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	shutdown(sctx)
	cancel()
	a3AfterSigning(t, l, v, logs, db, prior, n, leaves[:n], forged)
}

// a3Stall: with entries being recorded, the attacker does something to the Checkpoint
// table (do) and undoes it at the end (undo); promise 3: publication stops only with an
// ALERT (the log's CheckpointStall lowered to 3 s; we wait four times as long).
func a3Stall(t *testing.T, name string, do func(t *testing.T, db *sql.DB) (undo func())) {
	t.Parallel() // see sqlTestDB; the lowered stall is this log's own
	const stall = 3 * time.Second
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack3s")
	ctx := context.Background()
	l, logs := a3OpenStalling(t, dsn, s, "", &syncBuffer{}, stall)
	if _, err := l.Record(ctx, event(0)); err != nil {
		t.Fatal(err)
	}
	before := a2WaitVerify(t, l, v, 1, nil)
	db := testAdmin(t, dsn)
	defer do(t, db)() // undone before the log is closed
	wait := 4 * stall
	deadline := time.Now().Add(wait)
	recorded := 0
	for i := 1; time.Now().Before(deadline); i++ {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		if _, err := l.Record(rctx, event(i)); err == nil {
			recorded++
		}
		rcancel()
		if strings.Contains(logs.String(), "ALERT") {
			t.Logf("held (%s): %s", name, firstLine(logs.String(), "ALERT"))
			return
		}
		cctx, ccancel := context.WithTimeout(ctx, 500*time.Millisecond)
		cp, err := l.Checkpoint(cctx)
		ccancel()
		if n, ok := checkpointSize(cp); err == nil && ok && n > before.Size {
			t.Logf("held (%s): checkpoints still published (size %d)", name, n)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	// What a client of /log/ sees meanwhile.
	srv := httptest.NewServer(l.Handler())
	defer srv.Close()
	hc := &http.Client{Timeout: 2 * time.Second}
	status := "no answer"
	if resp, err := hc.Get(srv.URL + "/checkpoint"); err == nil {
		status = resp.Status
		resp.Body.Close()
	} else {
		status = err.Error()
	}
	t.Errorf("PROMISE 3 BROKEN (%s): %d entries recorded (Healthy() = %v) and no checkpoint published past size %d for %v (CheckpointStall %v), and no ALERT (GET /log/checkpoint: %s); replica log:\n%s",
		name, recorded, l.Healthy(), before.Size, wait, stall, status, logs.String())
}

func firstLine(s, sub string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

// TestAttack3StallRenameCheckpointTable: RENAME TABLE Checkpoint: tessera's publication
// fails (its error goes to the discarded klog), and the stall watch, which cannot read the
// checkpoint, returns without a word.
func TestAttack3StallRenameCheckpointTable(t *testing.T) {
	a3Stall(t, "RENAME TABLE Checkpoint", func(t *testing.T, db *sql.DB) func() {
		if _, err := db.Exec("RENAME TABLE `Checkpoint` TO `Checkpoint_gone`"); err != nil {
			t.Fatal(err)
		}
		return func() { db.Exec("RENAME TABLE `Checkpoint_gone` TO `Checkpoint`") }
	})
}

// TestAttack3StallLockTables: LOCK TABLES Checkpoint WRITE on one attacker session: every
// read of the checkpoint (the stall watch's, the publisher's, /log/checkpoint) waits; the
// watch gives up after its 1 s timeout and returns without a word.
func TestAttack3StallLockTables(t *testing.T) {
	a3Stall(t, "LOCK TABLES Checkpoint WRITE", func(t *testing.T, db *sql.DB) func() {
		c, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ExecContext(context.Background(), "LOCK TABLES `Checkpoint` WRITE"); err != nil {
			t.Fatal(err)
		}
		return func() {
			c.ExecContext(context.Background(), "UNLOCK TABLES")
			c.Close()
		}
	})
}

// TestAttack3StallPublishedAtType: published_at altered to a column whose value does not
// scan as a number (ALTER TABLE ... MODIFY, then a non-numeric value).
func TestAttack3StallPublishedAtType(t *testing.T) {
	a3Stall(t, "ALTER published_at to text", func(t *testing.T, db *sql.DB) func() {
		if _, err := db.Exec("ALTER TABLE `Checkpoint` MODIFY `published_at` VARCHAR(32) NOT NULL"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec("UPDATE `Checkpoint` SET `published_at` = 'soon' WHERE `id` = 0"); err != nil {
			t.Fatal(err)
		}
		return func() {
			db.Exec("UPDATE `Checkpoint` SET `published_at` = '0' WHERE `id` = 0")
			db.Exec("ALTER TABLE `Checkpoint` MODIFY `published_at` BIGINT NOT NULL")
		}
	})
}

// TestAttack3RootSubstitutionAcrossFailover: two replicas; the attacker kills the signer's
// lock connection (KILL, any SQL user with the privilege can) and, during the failover,
// plants the substituted tree (a3Plant). Promise 4: no window in which a forged entry
// gets signed — whichever replica signs next.
func TestAttack3RootSubstitutionAcrossFailover(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack3f")
	ctx := context.Background()
	logs := &syncBuffer{}
	open := func() *Log {
		l, _ := a3Open(t, dsn, s, logs)
		return l
	}
	a, b := open(), open()
	if !a.Signer() || b.Signer() {
		t.Fatalf("signers: a %v b %v", a.Signer(), b.Signer())
	}
	for i := range 3 {
		if _, err := b.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := b.IntegratedSize(ctx)
	prior := a2WaitVerify(t, b, v, n, nil)

	db := testAdmin(t, dsn)
	dbName, err := databaseName(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	var holder sql.NullInt64
	if err := db.QueryRow("SELECT IS_USED_LOCK(?)", signerLock(dbName)).Scan(&holder); err != nil || !holder.Valid {
		t.Fatalf("lock holder: %v %v", holder, err)
	}
	if _, err := db.Exec(fmt.Sprintf("KILL %d", holder.Int64)); err != nil {
		t.Fatal(err)
	}
	leaves, forged := a3Plant(t, db, n, "attacker-failover")
	a3AfterSigning(t, b, v, logs, db, prior, n, leaves, forged)
	t.Logf("signer after the failover: a %v, b %v; %d takeovers logged", a.Signer(), b.Signer(), strings.Count(logs.String(), "signs checkpoints now"))
}
