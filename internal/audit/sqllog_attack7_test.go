package audit

// Outside attacks, seventh round, on the repair of a poisoned tail (repair.go, Log.Repair)
// and on copies counted once (store/auditcopies.go, log.go markCopies). The attacker has
// full SQL access to the log's MariaDB database (any statement, tessera's own driver) and
// holds neither keys/log.key nor the audit HMAC key; the operator runs Repair on a replica
// that holds the signer's lock. A test fails ("PROMISE ... BROKEN:") when the promise it
// attacks breaks; one that passes logs what held.
//
// R1  signed history is never rewritten.
// R2  after a repair, nothing no replica sealed gets covered by a signed checkpoint.
// R3  no sealed entry that was in the log before the repair is lost by it, none is
//     duplicated as a non-copy (and, as TestRepairPoisonedTail checks, they stay in order).
// R4  a failed repair leaves the log as it was; the dropped entries' bytes go to keep.
// R5  the repair refuses when P's bytes are its leaf, P is under the floor, or the lock is
//     not held — and is the operator's remedy for a poisoned tail.
// COPIES  a byte copy is counted once; the evidence names what was done.
//
// Written by an outside tester (helper17) against c04adb0, where five broke:
// RepairTreeStateCut (R3/R4: sealed entries past a lowered TreeState.size deleted, not
// re-appended, not given to keep, and the cut log then signed), RepairSealedDecoy (R4/R5:
// P's bytes replaced by a sealed copy: Repair panics on rep.Dropped[0] inside its open
// transaction), RepairEvidence (the repair entry's leaf_hash is another entry's; P's leaf
// and an overwritten replica entry's leaf are named nowhere), RepairReorders (R3: the
// attacker's order of sealed entries is re-appended and signed against the tiles' order),
// RepairLeafRewritten (R5: P's level-0 leaf rewritten too: the repair refuses, the
// acknowledgement is accepted, nothing is ever signed again). Held: CopiesAfterRepair.

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
	"github.com/transparency-dev/merkle/rfc6962"
)

// ---- helpers ----

// a7Record records n sealed entries through l, each unique (field n = from+i), submitted
// together; it returns their indexes in order.
func a7Record(t *testing.T, l *Log, from, n int) []uint64 {
	t.Helper()
	ctx := context.Background()
	var fs []Future
	for i := range n {
		ev := event(from + i)
		ev.Fields = map[string]string{"n": fmt.Sprint(from + i)}
		fs = append(fs, l.Submit(ctx, ev))
	}
	var out []uint64
	for _, f := range fs {
		i, err := f()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, i)
	}
	return out
}

// a7Leaves reads the level-0 tiles over plain SQL: index → leaf hash, as the tree holds it.
func a7Leaves(t *testing.T, l *Log) map[uint64][]byte {
	t.Helper()
	rows, err := l.db.Query("SELECT `index`, `nodes` FROM `Subtree` WHERE `level` = 0")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[uint64][]byte{}
	for rows.Next() {
		var idx uint64
		var nodes []byte
		if err := rows.Scan(&idx, &nodes); err != nil {
			t.Fatal(err)
		}
		for j := 0; 32*j+32 <= len(nodes); j++ {
			out[idx*256+uint64(j)] = bytes.Clone(nodes[32*j : 32*j+32])
		}
	}
	return out
}

// a7Poisoned is the attacker's first move (TestAttack5UnknownLeafDoS): after `before` sealed
// entries, an unsealed entry appended through tessera's driver and its bytes overwritten
// with decoy; then `after` more sealed entries. It returns the poisoned index.
func a7Poisoned(t *testing.T, dsn string, l *Log, before, after int, decoy []byte) uint64 {
	t.Helper()
	a7Record(t, l, 1000, before)
	bad := a2AppendForged(t, dsn, l.Origin(), unsealed(t, a5Forged("attacker-unknown-leaf"))).Index
	if decoy == nil {
		decoy = unsealed(t, a5Forged("decoy"))
	}
	poisonEntry(t, l.db, bad, decoy)
	a7Record(t, l, 2000, after)
	return bad
}

// a7Sealed is every sealed entry of the log from index from on, in order, as bytes.
func a7Sealed(t *testing.T, l *Log, from uint64) []string {
	t.Helper()
	es := a2Entries(t, l.reader)
	var out []string
	for i := from; i < uint64(len(es)); i++ {
		if checkEntry(testEntryKey, l.Origin(), es[i]) == nil {
			out = append(out, string(es[i]))
		}
	}
	return out
}

// a7Positions maps each entry's bytes to its indexes in the log.
func a7Positions(t *testing.T, l *Log) map[string][]uint64 {
	t.Helper()
	out := map[string][]uint64{}
	es := a2Entries(t, l.reader)
	for i := uint64(0); i < uint64(len(es)); i++ {
		out[string(es[i])] = append(out[string(es[i])], i)
	}
	return out
}

// a7Lost is the "n" field of each of sealed (entries' bytes) that l's log no longer holds.
func a7Lost(t *testing.T, l *Log, sealed []string) []string {
	t.Helper()
	after := a7Positions(t, l)
	var lost []string
	for _, e := range sealed {
		if len(after[e]) == 0 {
			lost = append(lost, a7Field([]byte(e)))
		}
	}
	return lost
}

// a7Field is the "n" field of an entry (for messages).
func a7Field(e []byte) string {
	ev, err := ParseEvent(e)
	if err != nil {
		return "?"
	}
	return ev.Fields["n"]
}

// ---- R3 / R4: the tree state cut back before the repair ----

// TestAttack7RepairTreeStateCut — PROMISE R3 and R4. After poisoning entry P (and while
// the replicas are stopped for the repair, as the operator is told), the attacker lowers
// TreeState.size to the end of P's entry bundle; the sealed entries of the next bundle stay
// in TiledLeaves and their leaves in the tiles. Repair reads the tree state's size, reads
// the entries up to it, and deletes every entry bundle and tile from P's on: the sealed
// entries past the cut must not vanish unseen — re-appended, or refused, or at least handed
// to keep and named.
func TestAttack7RepairTreeStateCut(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, _, v, db, l, _, _ := a5Start(t, "strongroom.test/attack7cut")
	bad := a7Poisoned(t, dsn, l, 20, 300, nil)
	size, _ := l.reader.IntegratedSize(ctx)
	cut := (bad/256 + 1) * 256
	if size <= cut+10 {
		t.Fatalf("log of %d entries, poisoned %d: not enough past the cut at %d", size, bad, cut)
	}
	sealedBefore := a7Sealed(t, l, bad)
	// The attacker: the tree state says the log ends at the bundle boundary.
	a6Exec(t, db, "UPDATE `TreeState` SET `size` = ? WHERE `id` = 0", cut)

	var kept RepairReport
	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"},
		func(r RepairReport) error { kept = r; return nil })
	if err != nil {
		t.Logf("held: the repair refused a tree state below the entries the database holds: %v", err)
		return
	}
	lost := a7Lost(t, l, sealedBefore)
	inEvidence := 0
	for _, d := range kept.Dropped {
		if checkEntry(testEntryKey, l.Origin(), d.Bytes) == nil {
			inEvidence++
		}
	}
	if len(lost) > 0 {
		signed := ""
		if st := a2WaitVerify(t, l, v, rep.Size, nil); st.Size >= rep.Size {
			f, bundles := a2Fetch(t, l.Handler())
			_, kerr := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, EntryKey: testEntryKey})
			signed = fmt.Sprintf("; a checkpoint of size %d was then signed over the cut log and a keyed verify says %v", st.Size, kerr)
		}
		t.Fatalf("PROMISE R3/R4 BROKEN: TreeState.size lowered from %d to %d by SQL; Repair(%d) reported old_size %d, moved %d, dropped %d, and deleted %d sealed replica entries (n=%s…%s) that were in TiledLeaves past the cut: not re-appended, %d of them handed to keep, none named in the repair entry%s",
			size, cut, bad, rep.OldSize, rep.Moved, len(rep.Dropped), len(lost), lost[0], lost[len(lost)-1], inEvidence, signed)
	}
	t.Logf("held: every sealed entry survived the repair (old size %d, moved %d)", rep.OldSize, rep.Moved)
}

// ---- R4 / R5: P's bytes overwritten with a sealed copy ----

// TestAttack7RepairSealedDecoy — PROMISE R4 (and R5: the repair is the remedy). The
// attacker overwrites the poisoned entry's bytes not with junk but with a byte copy of a
// replica's sealed entry from the tail (a valid MAC). The tree still holds the forged leaf
// nobody can show, so the signer refuses; the operator repairs P. Every entry from P on now
// carries a valid MAC, so the repair drops nothing — and must still either repair or refuse
// cleanly, leaving the log as it was (no panic, no transaction left holding the tree
// state's row).
func TestAttack7RepairSealedDecoy(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, _, v, db, l, logs, _ := a5Start(t, "strongroom.test/attack7decoy")
	bad := a7Poisoned(t, dsn, l, 20, 30, nil)
	es := a2Entries(t, l.reader)
	poisonEntry(t, db, bad, es[bad+5]) // a sealed copy of a later replica entry
	want := fmt.Sprintf("does not commit to entry %d as the log holds it", bad)
	waitFor(t, func() bool { return strings.Contains(logs.String(), want) })

	var rep RepairReport
	var err error
	var panicked any
	func() {
		defer func() { panicked = recover() }()
		rep, err = l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(RepairReport) error { return nil })
	}()
	if panicked != nil {
		// What the panic left behind: the repair's transaction, never rolled back, still holds
		// the TreeState row (every replica's appends wait on it).
		held := "unknown"
		c, cerr := db.Conn(ctx)
		if cerr == nil {
			c.ExecContext(ctx, "SET SESSION innodb_lock_wait_timeout = 1")
			_, lerr := c.ExecContext(ctx, "SELECT `size` FROM `TreeState` WHERE `id` = 0 FOR UPDATE")
			held = fmt.Sprint(lerr)
			c.Close()
		}
		// Free this test's database: end the transactions this process's leaked connection holds.
		testenv.KillSessions(t, db, "CONNECTION", "SELECT t.trx_mysql_thread_id FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id WHERE p.DB = DATABASE()")
		t.Fatalf("PROMISE R4/R5 BROKEN: Repair(%d) of an entry whose bytes the attacker replaced with a sealed copy panicked (%v) inside its transaction; the transaction was never rolled back (a FOR UPDATE on TreeState from another connection: %s)", bad, panicked, held)
	}
	if err != nil {
		t.Logf("held: the repair refused cleanly: %v", err)
		return
	}
	st := a2WaitVerify(t, l, v, rep.Size, nil)
	t.Logf("held: repaired (moved %d, dropped %d) and signed to %d", rep.Moved, len(rep.Dropped), st.Size)
}

// ---- evidence: what the repair entry and the report say ----

// TestAttack7RepairEvidence — PROMISE R4 (evidence) and R3. The attacker overwrites P's
// bytes with a sealed copy of a later replica entry, overwrites another replica entry Y in
// the tail with a sealed copy of a third, Z, and appends one plain forged entry (so that
// something is dropped). The repair removes from the tree P's leaf (the attacker's) and
// Y's leaf (a replica's record). The repair entry names P "and its leaf hash" and the
// dropped entries: the leaf it names must be P's, and every leaf the repair takes out of
// the tree must be named (index and leaf hash) in the report and the repair entry.
func TestAttack7RepairEvidence(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db, l, _, _ := a5Start(t, "strongroom.test/attack7evidence")
	bad := a7Poisoned(t, dsn, l, 20, 40, nil)
	forged := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker-later"))).Index
	a7Record(t, l, 3000, 10)
	es := a2Entries(t, l.reader)
	leaves := a7Leaves(t, l)
	size := uint64(len(es))
	y, z := bad+10, bad+20
	poisonEntry(t, db, bad, es[bad+5])
	poisonEntry(t, db, y, es[z])

	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(RepairReport) error { return nil })
	if err != nil {
		t.Logf("held: the repair refused: %v", err)
		return
	}
	a2WaitVerify(t, l, v, rep.Size, nil)
	after := a2Entries(t, l.reader)
	ev, err := ParseEvent(after[rep.At])
	if err != nil || ev.Kind != KindLogRepair {
		t.Fatalf("repair entry at %d: %v %s", rep.At, err, after[rep.At])
	}
	newLeaves := map[string]bool{}
	for i := uint64(0); i < rep.Size; i++ {
		newLeaves[string(rfc6962.DefaultHasher.HashLeaf(after[i]))] = true
	}
	named := ev.Fields["dropped_entries"]
	var unnamed []string
	for i := bad; i < size; i++ {
		if !newLeaves[string(leaves[i])] && !strings.Contains(named, fmt.Sprintf("%d:%s", i, hex.EncodeToString(leaves[i]))) {
			unnamed = append(unnamed, fmt.Sprintf("%d (leaf %s…)", i, hex.EncodeToString(leaves[i])[:12]))
		}
	}
	var problems []string
	if got, want := ev.Subject["leaf_hash"], hex.EncodeToString(leaves[bad]); got != want {
		who := "no entry's"
		for i, h := range leaves {
			if hex.EncodeToString(h) == got {
				who = fmt.Sprintf("entry %d's", i)
			}
		}
		problems = append(problems, fmt.Sprintf("the repair entry names entry %d with leaf_hash %s…, which is %s leaf (P's is %s…)", bad, got[:12], who, want[:12]))
	}
	if len(unnamed) > 0 {
		problems = append(problems, fmt.Sprintf("leaves taken out of the tree and named nowhere (report dropped %v, repair entry %q): %s", len(rep.Dropped), named, strings.Join(unnamed, ", ")))
	}
	if _, ok := a7Positions(t, l)[string(es[y])]; !ok && len(unnamed) > 0 {
		problems = append(problems, fmt.Sprintf("replica entry %d (n=%s) is gone from the log, its leaf unrecorded", y, a7Field(es[y])))
	}
	if len(problems) > 0 {
		t.Fatalf("PROMISE R4 (evidence) BROKEN: Repair(%d), forged entry %d dropped: %s", bad, forged, strings.Join(problems, "; "))
	}
	t.Logf("held: the repair entry names P's leaf and every leaf it removed")
}

// ---- R3: order ----

// TestAttack7RepairReorders — PROMISE R3 (in order, as TestRepairPoisonedTail checks). In
// the unsigned tail after P, the attacker swaps the bytes of two replica entries in their
// entry bundle (a lease revocation and the grant before it, say); the tiles still hold
// their leaves in the order the replicas appended them. The repair re-appends sealed
// entries "in the order the database holds them": the signed tree must not put a
// replica's records in an order the attacker chose, against the order the tree held.
func TestAttack7RepairReorders(t *testing.T) {
	t.Parallel() // see sqlTestDB
	a7RepairReorders(t, "strongroom.test/attack7order", false)
}

// a7RepairReorders is TestAttack7RepairReorders; with lower, the attacker also lowers
// TreeState.size to P+1 (TestAttack8RepairCutReorders), hiding the tiles' leaves after P
// from a repair that would read them only up to it.
func a7RepairReorders(t *testing.T, name string, lower bool) {
	ctx := context.Background()
	dsn, _, v, db, l, _, _ := a5Start(t, name)
	bad := a7Poisoned(t, dsn, l, 20, 30, nil)
	es := a2Entries(t, l.reader)
	first, second := bad+3, bad+6
	poisonEntry(t, db, first, es[second])
	poisonEntry(t, db, second, es[first])
	how := "the attacker swapped their bytes"
	if lower {
		a6Exec(t, db, "UPDATE `TreeState` SET `size` = ? WHERE `id` = 0", bad+1)
		how += fmt.Sprintf(" and lowered TreeState.size to %d", bad+1)
	}
	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(RepairReport) error { return nil })
	if err != nil {
		t.Logf("held: the repair refused: %v", err)
		return
	}
	st := a2WaitVerify(t, l, v, rep.Size, nil)
	pos := a7Positions(t, l)
	a, b := pos[string(es[first])], pos[string(es[second])]
	if len(a) != 1 || len(b) != 1 {
		t.Fatalf("PROMISE R3 BROKEN: after the repair entry n=%s is at %v and n=%s at %v", a7Field(es[first]), a, a7Field(es[second]), b)
	}
	if a[0] > b[0] {
		t.Fatalf("PROMISE R3 BROKEN: the tiles held n=%s (entry %d) before n=%s (entry %d); %s; Repair(%d) appended them in the attacker's order, signed (checkpoint size %d): n=%s at %d after n=%s at %d",
			a7Field(es[first]), first, a7Field(es[second]), second, how, bad, st.Size, a7Field(es[first]), a[0], a7Field(es[second]), b[0])
	}
	t.Logf("held: the sealed entries kept the tree's order (%d before %d)", a[0], b[0])
}

// ---- R5: the remedy defeated ----

// TestAttack7RepairLeafRewritten — PROMISE R5 (the repair is the remedy for a poisoned
// tail). The attacker poisons P in a level-0 tile that is complete (the tree has a level-1
// node over it), then also writes the decoy's leaf hash into the level-0 tile at P. Now
// P's bytes are its level-0 leaf: the repair refuses ("acknowledge it instead"), and an
// acknowledgement is accepted — but the level-1 node, and so every root, still commit to
// the forged leaf nobody can show. The operator must be left with a remedy that works:
// either the repair goes through, or the acknowledgement lets a checkpoint be signed.
func TestAttack7RepairLeafRewritten(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, _, v, db, l, logs, _ := a5Start(t, "strongroom.test/attack7leaf")
	decoy := unsealed(t, a5Forged("decoy"))
	bad := a7Poisoned(t, dsn, l, 20, 300, decoy)
	if size, _ := l.reader.IntegratedSize(ctx); size < 300 || bad >= 256 {
		t.Fatalf("size %d, poisoned %d: want P in a complete tile", size, bad)
	}
	var nodes []byte
	if err := db.QueryRow("SELECT `nodes` FROM `Subtree` WHERE `level` = 0 AND `index` = 0").Scan(&nodes); err != nil {
		t.Fatal(err)
	}
	copy(nodes[32*bad:], rfc6962.DefaultHasher.HashLeaf(decoy))
	a6Exec(t, db, "UPDATE `Subtree` SET `nodes` = ? WHERE `level` = 0 AND `index` = 0", nodes)
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "ALERT audit log: an entry in the shared log was not written")
	})

	_, rerr := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(RepairReport) error { return nil })
	var aerr error
	var at uint64
	if rerr != nil {
		var ack Event
		if ack, aerr = l.ForeignEntry(ctx, bad, "incident: acknowledged"); aerr == nil {
			at, aerr = l.Record(ctx, ack)
		}
	}
	size, _ := l.reader.IntegratedSize(ctx)
	if got := a5WaitSigned(t, db, v, bad, 12*time.Second, nil); got == 0 {
		lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
		var last string
		for _, ln := range lines {
			if strings.Contains(ln, "ALERT audit log: an entry") {
				last = ln[strings.Index(ln, "err="):]
			}
		}
		t.Fatalf("PROMISE R5 BROKEN: no remedy: Repair(%d) said %q; the acknowledgement (entry %d, err %v) was accepted; yet no checkpoint past entry %d is signed (log size %d) — the level-1 node still commits to the forged leaf, and no entry is left whose bytes are not its level-0 leaf; the signer's last refusal: %s",
			bad, fmt.Sprint(rerr), at, aerr, bad, size, last)
	}
	t.Logf("held: after the operator's remedy (repair: %v, acknowledgement: %v) a checkpoint past %d was signed", rerr, aerr, bad)
}

// ---- COPIES: the search index after a repair ----

// TestAttack7CopiesAfterRepair — COPIES (and ForgetAudit/re-indexing). A replica with a
// search index commits a batch of 10 request records and a lease grant after the poisoned
// entry; the attacker appends byte copies of both (valid MACs) and also overwrites P's
// bytes with a copy of the batch entry, so that after the repair the batch's bytes stand
// three times in the log, the first at P — in front of the records' true entry. After the
// repair and the index's re-read: 10 request records, one lease grant, copies listed as
// audit.copied_entry, and every indexed entry from P on is the log's entry at that index.
func TestAttack7CopiesAfterRepair(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack7copies")
	ctx := context.Background()
	l, st, logs := indexedReplica(t, dsn, s)
	db := testAdmin(t, dsn)
	if _, err := l.Record(ctx, event(0)); err != nil {
		t.Fatal(err)
	}
	bad := a7Poisoned(t, dsn, l, 5, 5, nil)
	batch, sec := batchAndGrant(t, l)
	a7Record(t, l, 5000, 5)
	es := a2Entries(t, l.reader)
	a2AppendAll(t, dsn, s.Name(), [][]byte{es[batch], es[sec]})
	a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker-later"))) // dropped: keeps the report non-empty
	a7Record(t, l, 6000, 5)
	poisonEntry(t, db, bad, es[batch])
	// The index has caught up on the log as it stood (the poisoned bytes included).
	size, _ := l.reader.IntegratedSize(ctx)
	if !a6Until(10*time.Second, func() bool { n, err := st.AuditIndexed(ctx); return err == nil && n >= size }) {
		t.Fatal("index did not catch up before the repair")
	}

	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(RepairReport) error { return nil })
	if err != nil {
		t.Logf("held: the repair refused: %v", err)
		return
	}
	last, err := l.Record(ctx, event(9999))
	if err != nil {
		t.Fatal(err)
	}
	if !a6Until(10*time.Second, func() bool { n, err := st.AuditIndexed(ctx); return err == nil && n > last }) {
		t.Fatal("index did not catch up after the repair")
	}
	a2WaitVerify(t, l, v, last+1, nil)
	var problems []string
	recs, err := st.SearchAudit(ctx, store.AuditQuery{Kind: string(KindRequest)})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 10 {
		problems = append(problems, fmt.Sprintf("%d request records indexed, want 10", len(recs)))
	}
	for _, q := range []store.AuditQuery{{Kind: string(KindLeaseGrant)}, {Principal: "runtime-1"}, {Kind: string(KindBatch)}} {
		got, err := st.SearchAudit(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			problems = append(problems, fmt.Sprintf("search %+v: %d entries, want 1", q, len(got)))
		}
	}
	copies, err := st.SearchAudit(ctx, store.AuditQuery{Kind: string(KindCopiedEntry)})
	if err != nil {
		t.Fatal(err)
	}
	if len(copies) != 3 { // the batch twice more, the grant once more
		problems = append(problems, fmt.Sprintf("%d copies listed, want 3", len(copies)))
	}
	after := a2Entries(t, l.reader)
	all, err := st.SearchAudit(ctx, store.AuditQuery{Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range all {
		if isRecord(e.Index) || e.Index < bad {
			continue
		}
		if got, ok := after[e.Index]; !ok || !bytes.Equal(got, e.Raw) {
			problems = append(problems, fmt.Sprintf("index row %d is not the log's entry %d", e.Index, e.Index))
		}
	}
	if !strings.Contains(logs.String(), "an entry repeats an earlier entry byte for byte") {
		problems = append(problems, "no ALERT naming a copy")
	}
	if len(problems) > 0 {
		t.Fatalf("PROMISE COPIES BROKEN: after Repair(%d) (moved %d) and the index's re-read: %s", bad, rep.Moved, strings.Join(problems, "; "))
	}
	t.Logf("held: after the repair the index counts the batch's 10 records and the grant once, lists %d copies", len(copies))
}

// isRecord says whether an index number is a batched request record's (RecordIndex).
func isRecord(i uint64) bool { _, _, ok := SplitRecordIndex(i); return ok }
