package audit

// Outside attacks, fifth round, on the shared log's foreign-entry workflow (foreign.go,
// sqllog.go extends, verify.go, log.go markUnsealed). The attacker has full SQL access to
// the log's MariaDB database (any statement, triggers included, tessera's own driver) and
// reads /log/, but holds neither keys/log.key nor the audit HMAC key. Replicas are opened
// with both keys. A test fails when the promise it attacks is broken; one that passes is a
// regression test for an attack the code resists.
//
// Written by an outside tester (helper-15) against be4b002, where six broke: a full entry
// bundle cut short in the database let the signer skip the missing entries' checks
// (TruncatedFullBundle, TruncatedBundleAsLegacy) and made ReadEntry panic
// (ReadEntryShortBundle) — fixed in ReadEntries, which now refuses a bundle holding fewer
// entries than its place in the tree; Verify's legacy rule claimed an acknowledged foreign
// entry, and applied to shared logs (AckedForeignBeforeFirstSealed) — legacy is now opt-in
// (--legacy-unsealed) and loses to an acknowledgement; ForeignEntry acknowledged swapped
// bytes of a signed replica entry (AcknowledgeGenuineEntry) — it now refuses entries under
// the signer's trusted tree and bytes that are not the tree's leaf; UnknownLeafDoS stays a
// documented limit (see its comment).

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// a5Start opens a replica of a new shared log (its logs kept), records one entry and waits
// for a checkpoint covering it.
func a5Start(t *testing.T, name string) (dsn string, s note.Signer, v note.Verifier, db *sql.DB, l *Log, logs *syncBuffer, first uint64) {
	t.Helper()
	dsn = sqlTestDB(t)
	s, v, _ = newKeys(t, name)
	db = testAdmin(t, dsn)
	l, logs = a3Open(t, dsn, s, &syncBuffer{})
	first, err := l.Record(context.Background(), event(0))
	if err != nil {
		t.Fatal(err)
	}
	a2WaitVerify(t, l, v, first+1, nil)
	return dsn, s, v, db, l, logs, first
}

// a5Acknowledge has the operator acknowledge entry index as foreign and waits for a
// checkpoint covering the acknowledgement; it returns the acknowledgement's index.
func a5Acknowledge(t *testing.T, l *Log, v note.Verifier, index uint64, reason string) uint64 {
	t.Helper()
	ack, err := l.ForeignEntry(context.Background(), index, reason)
	if err != nil {
		t.Fatal(err)
	}
	at, err := l.Record(context.Background(), ack)
	if err != nil {
		t.Fatal(err)
	}
	a2WaitVerify(t, l, v, at+1, nil)
	return at
}

// a5Forged is an event the attacker writes (no MAC), claiming to be principal's.
func a5Forged(principal string) Event {
	return Event{V: 1, TS: ts0, Kind: KindLeaseGrant, Actor: map[string]string{"principal": principal},
		Subject: map[string]string{"model": "crown-jewels"}, Decision: Allow, Reason: "forged with SQL access only"}
}

// a5Fill records n sealed entries through l (submitted together: few batches).
func a5Fill(t *testing.T, l *Log, n int) {
	t.Helper()
	ctx := context.Background()
	var fs []Future
	for i := range n {
		fs = append(fs, l.Submit(ctx, event(i)))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
}

// a5WaitSigned waits (up to d) for a checkpoint signed by v in the Checkpoint row whose
// size exceeds past, or for stop() to be true. It returns the size signed (0: none).
func a5WaitSigned(t *testing.T, db *sql.DB, v note.Verifier, past uint64, d time.Duration, stop func() bool) uint64 {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cp, _, ok := a4Signed(db, v); ok && cp.Size > past {
			return cp.Size
		}
		if stop != nil && stop() {
			return 0
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0
}

// a5Refused returns a condition that turns true once l's signer has refused n more
// checkpoints (security refusals: strongroom_audit_signer_refusals_total) than now.
func a5Refused(l *Log, n float64) func() bool {
	base := testutil.ToFloat64(l.signer.refusals)
	return func() bool { return testutil.ToFloat64(l.signer.refusals) >= base+n }
}

// TestAttack5TruncatedFullBundle — P1 (and, through it, P2 for outsiders).
//
// The signer checks the MAC and the inclusion of every entry ReadEntries hands it between
// the last checked size and the size to sign. ReadEntries trusts a full entry bundle to
// hold 256 entries: tessera's SQL reader checks only the row's `size` column, trimReader
// checks only partial bundles, and ReadEntries silently passes fewer entries when the data
// holds fewer. The attacker installs a trigger on TiledLeaves that, when bundle 0 becomes
// full, cuts the last entry out of its data (the row still says 256), and appends a forged
// entry at index 255 with tessera's own driver. Tiles and tree state commit to the forged
// leaf; the signer reads 255 entries, never sees entry 255, and signs size 256 — with no
// ALERT at all. The attacker then drops the trigger and puts the bytes back: every verifier
// without the HMAC key accepts a signed checkpoint covering a forged, unacknowledged entry.
func TestAttack5TruncatedFullBundle(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack5t")
	ctx := context.Background()
	db := testAdmin(t, dsn)
	l, logs := a3Open(t, dsn, s, &syncBuffer{})
	a5Fill(t, l, 255)
	prior := a2WaitVerify(t, l, v, 255, nil)
	if prior.Size != 255 {
		t.Fatalf("checkpoint of size %d; want 255", prior.Size)
	}

	forged := unsealed(t, a5Forged("attacker-truncated-bundle"))
	framed := a3Bundle([][]byte{forged}) // uint16 length + bytes, as in the bundle
	trigger := fmt.Sprintf("CREATE TRIGGER `a5_hide` BEFORE INSERT ON `TiledLeaves` FOR EACH ROW "+
		"SET NEW.`data` = IF(NEW.`size` = 256 AND RIGHT(NEW.`data`, %d) = X'%s', LEFT(NEW.`data`, LENGTH(NEW.`data`) - %d), NEW.`data`)",
		len(framed), hex.EncodeToString(framed), len(framed))
	if _, err := db.Exec(trigger); err != nil {
		t.Fatalf("create trigger: %v", err)
	}
	bad := a2AppendForged(t, dsn, s.Name(), forged).Index
	if bad != 255 {
		t.Fatalf("forged entry at %d; want 255", bad)
	}
	var rowSize uint32
	var data []byte
	if err := db.QueryRow("SELECT `size`, `data` FROM `TiledLeaves` WHERE `tile_index` = 0").Scan(&rowSize, &data); err != nil {
		t.Fatal(err)
	}
	t.Logf("bundle 0: row size %d, %d bytes (the forged entry's %d bytes cut out by the trigger)", rowSize, len(data), len(framed))

	signed := a5WaitSigned(t, db, v, bad, 15*time.Second, func() bool { return strings.Contains(logs.String(), "ALERT audit log") })
	if signed == 0 {
		t.Logf("held: nothing signed past entry %d; replica log:\n%s", bad, logs.String())
		return
	}
	alerted := firstLine(logs.String(), "was not written by a replica") // the signer's refusal ALERT; "" : none
	// Signed. Put the bytes back, as if nothing happened.
	if _, err := db.Exec("DROP TRIGGER `a5_hide`"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = CONCAT(`data`, ?) WHERE `tile_index` = 0 AND `size` = 256", framed); err != nil {
		t.Fatal(err)
	}
	f, bundles := a2Fetch(t, l.Handler())
	st, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, Prior: &prior})
	if err != nil {
		t.Fatalf("signed size %d, but Verify fails: %v", signed, err)
	}
	got, err := ReadEntry(ctx, f, bad, st.Size)
	if err != nil {
		t.Fatal(err)
	}
	_, keyErr := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, EntryKey: testEntryKey})
	t.Errorf("PROMISE P1 BROKEN: entry %d (%s), appended with SQL access only and never acknowledged (MAC check: %v), is covered by a checkpoint of size %d signed by the log key; Verify without the HMAC key accepts it as an extension of size %d; signer refusal ALERT logged: %q; Verify with the key: %v",
		bad, got, checkEntry(testEntryKey, l.Origin(), got), st.Size, prior.Size, alerted, keyErr)
}

// a5AppendMany appends entries to a new log through tessera's own MySQL driver in one
// sequencing batch (one transaction: the bundle rows are written once), at 0, 1, ...
func a5AppendMany(t *testing.T, dsn, origin string, entries [][]byte) {
	t.Helper()
	for i, idx := range a2AppendAll(t, dsn, origin, entries) {
		if idx.Index != uint64(i) {
			t.Fatalf("entry %d appended at %d", i, idx.Index)
		}
	}
}

// TestAttack5TruncatedBundleAsLegacy — P1 and P2 (the keyed verifier too).
//
// The trick of TestAttack5TruncatedFullBundle on a new shared log (a deployment's log
// database the attacker can write before, or while, the fleet starts): 256 forged entries,
// none with a "mac" member, appended in one tessera batch while a trigger empties bundle
// 0's data as it is written (the row says 256). The signer reads no entry and signs size
// 256 without an ALERT. The attacker puts the bytes back. Verify with the HMAC key
// (`audit verify --hmac-key`) must fail on 256 unacknowledged foreign entries; its legacy
// rule takes them for entries "from before entry MACs" and passes.
func TestAttack5TruncatedBundleAsLegacy(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack5b")
	ctx := context.Background()
	db := testAdmin(t, dsn)
	l, logs := a3Open(t, dsn, s, &syncBuffer{})
	var forged [][]byte
	for i := range 256 {
		ev := a5Forged(fmt.Sprintf("attacker-%d", i))
		ev.TS = ts0.Add(time.Duration(i) * time.Second)
		forged = append(forged, unsealed(t, ev))
	}
	if _, err := db.Exec("CREATE TRIGGER `a5_empty` BEFORE INSERT ON `TiledLeaves` FOR EACH ROW SET NEW.`data` = IF(NEW.`tile_index` = 0 AND NEW.`size` = 256, '', NEW.`data`)"); err != nil {
		t.Fatalf("create trigger: %v", err)
	}
	a5AppendMany(t, dsn, s.Name(), forged)
	signed := a5WaitSigned(t, db, v, 255, 15*time.Second, func() bool { return strings.Contains(logs.String(), "ALERT audit log") })
	if signed == 0 {
		t.Logf("held: nothing signed past 255 forged entries; replica log:\n%s", logs.String())
		return
	}
	alerted := firstLine(logs.String(), "was not written by a replica") // the signer's refusal ALERT; "" : none
	if _, err := db.Exec("DROP TRIGGER `a5_empty`"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(forged)); err != nil {
		t.Fatal(err)
	}
	// The fleet goes on writing; its entries are sealed.
	idx, err := l.Record(ctx, event(1))
	if err != nil {
		t.Fatal(err)
	}
	a2WaitVerify(t, l, v, idx+1, nil)
	f, bundles := a2Fetch(t, l.Handler())
	keyed, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, EntryKey: testEntryKey})
	t.Errorf("PROMISE P1 BROKEN: 256 entries written with SQL only, none acknowledged, are covered by a checkpoint of size %d signed by the log key (signer refusal ALERT logged: %q)", signed, alerted)
	if err == nil {
		t.Errorf("PROMISE P2 BROKEN: Verify with the HMAC key accepts the log (size %d): foreign %v, %d entries \"from before entry MACs\" — the 256 forged ones", keyed.Size, keyed.Foreign, keyed.Unsealed)
	}
}

// TestAttack5UnknownLeafDoS — DoS that `audit acknowledge` cannot clear (a known limit).
//
// The attacker appends a forged entry F (tessera's driver), then overwrites F's bytes in
// TiledLeaves with other bytes X. The tree (tiles, TreeState) commits to hash(F); nobody
// but the attacker holds F. The signer refuses every later tree with an ALERT ("does not
// commit to entry N as the log holds it"). When this round was written, `audit
// acknowledge --entry N` read X and acknowledged hash(X), which the tree does not hold:
// a useless statement in the log, and the signer still refused. Now ForeignEntry checks
// the bytes against the tree's level-0 tile and refuses, saying the database must be
// repaired (the tree has a leaf whose bytes only the attacker had); `audit repair` does
// that (repair.go, TestRepairPoisonedTail). What holds: nothing false is signed, and no
// acknowledgement of bytes the tree does not hold is written.
func TestAttack5UnknownLeafDoS(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db, l, logs, _ := a5Start(t, "strongroom.test/attack5d")

	forged := unsealed(t, a5Forged("attacker-unknown-leaf"))
	bad := a2AppendForged(t, dsn, s.Name(), forged).Index
	leaves := a3ReadLeaves(t, db)
	leaves[bad] = unsealed(t, a5Forged("decoy"))
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0 AND `size` = ?", a3Bundle(leaves), len(leaves)); err != nil {
		t.Fatal(err)
	}
	clear(forged) // the attacker forgets F: no one holds the preimage of leaf `bad`
	if _, err := l.Record(ctx, event(1)); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("does not commit to entry %d as the log holds it", bad)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no ALERT %q in 15 s; replica log:\n%s", want, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The operator follows the workflow, and is told it cannot work here.
	ack, err := l.ForeignEntry(ctx, bad, "database write by an attacker; incident 9")
	if err != nil {
		if !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "must be repaired") {
			t.Errorf("`audit acknowledge --entry %d` refused with %v; want the security error saying the database must be repaired", bad, err)
		}
		if cp, _, _ := a4Signed(db, v); cp.Size > bad {
			t.Errorf("a checkpoint of size %d covers the entry whose bytes nobody holds", cp.Size)
		}
		return
	}
	at, err := l.Record(ctx, ack)
	if err != nil {
		t.Fatal(err)
	}
	after, err := l.Record(ctx, event(2))
	if err != nil {
		t.Fatal(err)
	}
	signed := a5WaitSigned(t, db, v, bad, 15*time.Second, a5Refused(l, 2))
	if signed == 0 {
		cp, _, _ := a4Signed(db, v)
		t.Errorf("DoS (not clearable by `audit acknowledge`): after the operator acknowledged entry %d (acknowledgement at %d, leaf_hash %s of the bytes the bundle table shows), no checkpoint was signed past size %d in 15 s while entries up to %d wait; the signer keeps refusing: %q. Replica log:\n%s",
			bad, at, ack.Subject["leaf_hash"], cp.Size, after, firstLine(logs.String(), "does not commit"), logs.String())
	}
}

// TestAttack5AckedForeignBeforeFirstSealed — P2.
//
// On a new shared log, the attacker appends a forged entry at index 0, before any replica
// writes. It has no MAC and no "mac" member. The signer stops before it; the operator
// acknowledges it, and checkpoints resume. P2: Verify with the key reports the
// acknowledged entry in State.Foreign. Verify's legacy rule (no "mac" member, before the
// first sealed entry) takes it first: it is reported as one entry "from before entry
// MACs" (State.Unsealed), and Foreign is empty — `audit verify --hmac-key` tells the
// operator the log was clean apart from a pre-MAC entry.
func TestAttack5AckedForeignBeforeFirstSealed(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack5l")
	ctx := context.Background()
	l, logs := a3Open(t, dsn, s, &syncBuffer{})
	forged := unsealed(t, a5Forged("attacker-first"))
	bad := a2AppendForged(t, dsn, s.Name(), forged).Index
	if bad != 0 {
		t.Fatalf("forged entry at %d; want 0", bad)
	}
	if _, err := l.Record(ctx, event(1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "entry 0: log entry not written by a replica") })
	at := a5Acknowledge(t, l, v, bad, "written before the fleet started")
	f, bundles := a2Fetch(t, l.Handler())
	keyed, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, EntryKey: testEntryKey})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keyed.Foreign, []uint64{bad}) || keyed.Unsealed != 0 {
		t.Errorf("PROMISE P2 BROKEN: entry %d was written with SQL only and acknowledged by a sealed entry (%d); Verify with the key reports foreign %v and %d entries from before entry MACs; want foreign [%d], 0",
			bad, at, keyed.Foreign, keyed.Unsealed, bad)
	}
}

// TestAttack5AcknowledgeGenuineEntry — P4.
//
// ForeignEntry reads the entry's bytes from the bundle table and never checks them
// against the tree. Entry 3 was written by a replica and is covered by a signed
// checkpoint. The attacker replaces its bytes in TiledLeaves by unsealed ones (Verify now
// reports entry 3 altered, which sends an operator to look at it). ForeignEntry(3) must
// refuse: a replica wrote entry 3. If it produces an acknowledgement, the log gets the
// fleet's sealed word that a genuine, signed record is forged; the attacker puts the bytes
// back and every check passes again, the false acknowledgement staying in the log.
func TestAttack5AcknowledgeGenuineEntry(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack5g")
	ctx := context.Background()
	db := testAdmin(t, dsn)
	l, _ := a3Open(t, dsn, s, &syncBuffer{})
	_, s2 := a2TwoCheckpoints(t, l, v)
	leaves := a3ReadLeaves(t, db)
	const target = 3
	if err := checkEntry(testEntryKey, l.Origin(), leaves[target]); err != nil {
		t.Fatalf("entry %d: %v", target, err)
	}
	swapped := slices.Clone(leaves)
	swapped[target] = unsealed(t, a5Forged("decoy"))
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0 AND `size` = ?", a3Bundle(swapped), len(leaves)); err != nil {
		t.Fatal(err)
	}
	ack, err := l.ForeignEntry(ctx, target, "verify said entry 3 was altered")
	if err != nil {
		t.Logf("held: %v", err)
		return
	}
	at, err := l.Record(ctx, ack)
	if err != nil {
		t.Fatal(err)
	}
	now := a3ReadLeaves(t, db)
	now[target] = leaves[target] // the bytes put back
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0 AND `size` = ?", a3Bundle(now), len(now)); err != nil {
		t.Fatal(err)
	}
	st := a2WaitVerify(t, l, v, at+1, &s2)
	f, bundles := a2Fetch(t, l.Handler())
	keyed, kerr := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, EntryKey: testEntryKey})
	t.Errorf("PROMISE P4 BROKEN: ForeignEntry(%d) acknowledged an entry a replica wrote (valid MAC, covered by the signed checkpoint of size %d): leaf_hash %s is of the bytes the attacker put in the bundle table, not of entry %d (%x). The acknowledgement is entry %d under the signed checkpoint of size %d; after the bytes are put back, Verify with the key: foreign %v, err %v",
		target, s2.Size, ack.Subject["leaf_hash"], target, rfc6962.DefaultHasher.HashLeaf(leaves[target]), at, st.Size, keyed.Foreign, kerr)
}

// a5RewriteTail, in one transaction that already holds the Checkpoint row (so that no
// checkpoint is published meanwhile), replaces the tree (fewer than 256 entries) by one
// over entries — leaf bundle, level-0 tile, tree state, all consistent — and commits.
func a5RewriteTail(t *testing.T, tx *sql.Tx, entries [][]byte) {
	t.Helper()
	tile, root := a3Tree(entries)
	for _, q := range []struct {
		q    string
		args []any
	}{
		{"SELECT 1 FROM `TreeState` WHERE `id` = 0 FOR UPDATE", nil},
		{"UPDATE `TiledLeaves` SET `size` = ?, `data` = ? WHERE `tile_index` = 0", []any{len(entries), a3Bundle(entries)}},
		{"REPLACE INTO `Subtree` (`level`, `index`, `nodes`) VALUES (0, 0, ?)", []any{tile}},
		{"UPDATE `TreeState` SET `size` = ?, `root` = ? WHERE `id` = 0", []any{len(entries), root}},
	} {
		if _, err := tx.Exec(q.q, q.args...); err != nil {
			t.Fatalf("%s: %v", q.q, err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestAttack5SwapAfterOperatorRead — P1, racing the operator.
//
// A forged entry F1 sits at n; the signer stops there. The attacker holds the Checkpoint
// row (SELECT ... FOR UPDATE: tessera cannot publish) while the operator runs `audit
// acknowledge --entry n` (ForeignEntry reads F1, the acknowledgement names hash(F1) and is
// appended). Before publication resumes, the attacker rewrites the unsigned tail so that n
// holds F2 (another forged entry) and the acknowledgement — a byte copy, its MAC still
// valid — follows it; then releases the row. P1: no signed checkpoint covers F2.
func TestAttack5SwapAfterOperatorRead(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db, l, logs, _ := a5Start(t, "strongroom.test/attack5s")
	f1 := unsealed(t, a5Forged("harmless-looking"))
	bad := a2AppendForged(t, dsn, s.Name(), f1).Index
	if _, err := l.Record(ctx, event(1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), fmt.Sprintf("entry %d: log entry not written by a replica", bad))
	})
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var cpNote []byte
	if err := tx.QueryRow("SELECT `note` FROM `Checkpoint` WHERE `id` = 0 FOR UPDATE").Scan(&cpNote); err != nil {
		t.Fatal(err)
	}
	ack, err := l.ForeignEntry(ctx, bad, "looked at it: harmless test write")
	if err != nil {
		t.Fatal(err)
	}
	at, err := l.Record(ctx, ack)
	if err != nil {
		t.Fatal(err)
	}
	leaves := a3ReadLeaves(t, db) // through another connection: TiledLeaves is not locked
	if uint64(len(leaves)) != at+1 {
		t.Fatalf("%d leaves, acknowledgement at %d", len(leaves), at)
	}
	leaves[bad] = unsealed(t, a5Forged("attacker-swapped-after-read"))
	refused := a5Refused(l, 2) // no signature can happen while the row is held
	a5RewriteTail(t, tx, leaves)
	signed := a5WaitSigned(t, db, v, bad, 10*time.Second, refused)
	if signed > bad {
		f, _ := a2Fetch(t, l.Handler())
		got, _ := ReadEntry(ctx, f, bad, signed)
		t.Errorf("PROMISE P1 BROKEN: the checkpoint of size %d covers entry %d = %s, though the acknowledgement (entry %d) names the bytes the operator read", signed, bad, got, at)
		return
	}
	cp, _, _ := a4Signed(db, v)
	t.Logf("held: after the swap the signer refused %v checkpoints in all; the published checkpoint stays at size %d (forged entry at %d)", testutil.ToFloat64(l.signer.refusals), cp.Size, bad)
}

// TestAttack5AckReplayedForCopy — P1, replaying an acknowledgement.
//
// A forged entry F at n is acknowledged by the operator and checkpoints resume. The
// attacker appends F again (same bytes, index n2) followed by a byte copy of the sealed
// acknowledgement (valid MAC: it does not bind its position). The copy names n, not n2:
// the signer must not sign past n2.
func TestAttack5AckReplayedForCopy(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack5r")
	ctx := context.Background()
	db := testAdmin(t, dsn)
	l, logs := a3Open(t, dsn, s, &syncBuffer{})
	if _, err := l.Record(ctx, event(0)); err != nil {
		t.Fatal(err)
	}
	forged := unsealed(t, a5Forged("attacker-replay"))
	bad := a2AppendForged(t, dsn, s.Name(), forged).Index
	at := a5Acknowledge(t, l, v, bad, "incident 11")
	ackBytes := a3ReadLeaves(t, db)[at]
	if err := checkEntry(testEntryKey, l.Origin(), ackBytes); err != nil {
		t.Fatal(err)
	}
	again := a2AppendForged(t, dsn, s.Name(), forged).Index
	a2AppendForged(t, dsn, s.Name(), ackBytes)
	if _, err := l.Record(ctx, event(3)); err != nil {
		t.Fatal(err)
	}
	refused := a5Refused(l, 2)
	signed := a5WaitSigned(t, db, v, again, 10*time.Second, func() bool {
		return refused() && strings.Contains(logs.String(), fmt.Sprintf("entry %d: log entry not written by a replica", again))
	})
	if signed > again {
		t.Errorf("PROMISE P1 BROKEN: a copy of entry %d's acknowledgement let the checkpoint of size %d cover the re-appended forged entry %d", bad, signed, again)
		return
	}
	cp, _, _ := a4Signed(db, v)
	t.Logf("held: the published checkpoint stays at size %d (re-appended forged entry at %d, acknowledgement copy after it); %s", cp.Size, again, firstLine(logs.String(), fmt.Sprintf("entry %d: log entry", again)))
}

// TestAttack5IndexForged — P3. A forged entry (kind lease.grant, principal
// "attacker-index") and a forged request batch (one record of principal "attacker-batch")
// are appended with SQL only. The search index must list both as audit.unsealed_entry with
// no principal, and index none of the batch's records.
func TestAttack5IndexForged(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, _, _ := newKeys(t, "strongroom.test/attack5i")
	ctx := context.Background()
	db := testAdmin(t, dsn)
	l, st, _ := indexedReplica(t, dsn, s)
	if _, err := l.Record(ctx, event(0)); err != nil {
		t.Fatal(err)
	}
	e1 := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker-index"))).Index
	e2 := a2AppendForged(t, dsn, s.Name(), a3ForgedBatch(t, db, "attacker-batch")).Index
	last, err := l.Record(ctx, event(1))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := st.AuditIndexed(ctx)
		if err == nil && n > last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("index at %d (%v); want > %d", n, err, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, q := range []store.AuditQuery{{Principal: "attacker-index"}, {Principal: "attacker-batch"}, {Kind: string(KindLeaseGrant)}, {Kind: string(KindRequest)}, {Kind: string(KindBatch)}} {
		got, err := st.SearchAudit(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 {
			t.Errorf("PROMISE P3 BROKEN: search %+v returns %d events, first index %d kind %s principal %q", q, len(got), got[0].Index, got[0].Kind, got[0].Principal)
		}
	}
	got, err := st.SearchAudit(ctx, store.AuditQuery{Kind: string(KindUnsealedEntry)})
	if err != nil {
		t.Fatal(err)
	}
	var idx []uint64
	for _, e := range got {
		idx = append(idx, e.Index)
		if e.Principal != "" {
			t.Errorf("unsealed entry %d indexed with principal %q", e.Index, e.Principal)
		}
	}
	if !slices.Equal(idx, []uint64{e1, e2}) {
		t.Errorf("unsealed entries in the index: %v; want [%d %d]", idx, e1, e2)
	}
}

// a5Fetcher serves one entry bundle.
type a5Fetcher struct{ bundle []byte }

func (f a5Fetcher) ReadCheckpoint(context.Context) ([]byte, error) { return nil, errors.New("none") }
func (f a5Fetcher) ReadTile(context.Context, uint64, uint64, uint8) ([]byte, error) {
	return nil, errors.New("none")
}
func (f a5Fetcher) ReadEntryBundle(context.Context, uint64, uint8) ([]byte, error) {
	return f.bundle, nil
}

// TestAttack5ReadEntryShortBundle — side finding (robustness of the readers behind
// `audit proof`, `scan`, the console's proof page and incident reports). A full entry
// bundle served with fewer than 256 entries (the trick of TestAttack5TruncatedFullBundle,
// or any tampered mirror) must give an error from ReadEntry, not a panic.
func TestAttack5ReadEntryShortBundle(t *testing.T) {
	var entries [][]byte
	for i := range 255 {
		entries = append(entries, []byte(fmt.Sprintf(`{"i":%d}`, i)))
	}
	f := a5Fetcher{bundle: a3Bundle(entries)}
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("ReadEntry(255) of a log of size 256 whose full bundle 0 holds 255 entries panics: %v", r)
		}
	}()
	if _, err := ReadEntry(context.Background(), f, 255, 256); err == nil {
		t.Error("ReadEntry(255) of a short bundle: no error")
	}
}
