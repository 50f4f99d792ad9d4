package audit

// Outside attacks, ninth round, on the shared log's durability before signing, the repair of
// a poisoned tail (repair.go) and the search index's convergence to the log (log.go:
// catchUp, validateIndex; store/auditcopies.go). The attacker has full SQL access to the
// log's MariaDB database (any statement, tessera's own driver) and holds no keys. A test
// fails ("PROMISE ... BROKEN:") when the promise it attacks breaks; one that passes logs what
// held.
//
// DURABLE  a record a replica reported durable (Record returned its index) is never lost
//          (DESIGN: "records stay durable and acknowledged meanwhile"; TestAttack2Durable*).
// R3  no sealed entry present before the repair is lost or reordered against the tree's order.
// R4  the evidence names every position whose old leaf the new tree does not hold.
// I1  after any attack and any repair, every replica's search index ends up holding each log
//     entry at its index with the log's bytes, and counts each batch's records once.
//
// R6  the repair ends in reasonable time and memory.
//
// Written by an outside tester (helper19) against 2579d6d, where all five broke:
// UnsignedRecordErased (DURABLE: a replica's durable entry cut out of the unsigned tail by
// SQL, the cut tree signed, no ALERT), RepairSwapBeforeP (R3/R4: two sealed entries between
// the floor and P swapped; the repair keeps the attacker's order, names neither position, and
// the tree is signed), IndexKeepsAlteredEntry (I1: a new replica's index validated an altered
// signed entry; once the bytes are put back it is never compared again), IndexStuckOnLostBundle
// (I1: one deleted bundle row stops a new index at entry 0 for good), RepairLargeTail (R6:
// ~400 MB of junk rows past the tree grow the repair's heap by ~1 GB).

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// a9HoldCheckpoint holds the Checkpoint row (SELECT ... FOR UPDATE) in a transaction of its
// own: no checkpoint is published until it ends (TestAttack5SwapAfterOperatorRead).
func a9HoldCheckpoint(t *testing.T, ctx context.Context, l *Log) func() {
	t.Helper()
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var cp []byte
	if err := tx.QueryRow("SELECT `note` FROM `Checkpoint` WHERE `id` = 0 FOR UPDATE").Scan(&cp); err != nil {
		tx.Rollback()
		t.Fatal(err)
	}
	return func() { tx.Rollback() }
}

// ---- DURABLE: a replica's record erased from the unsigned tail, and the erasure signed ----

// TestAttack9UnsignedRecordErased — PROMISE DURABLE. Between an append and the next
// checkpoint (1 s; the attacker holds the Checkpoint row to widen it at will) the tree past
// the signed size is the database's to rewrite. The signer checks that the new tree extends
// the signed one and that every new entry carries a replica's MAC — not that the entries
// replicas appended (and answered durable for) are still there. A fleet records a
// model.unseal (fail closed: recorded before the plaintext is written); the attacker
// rewrites the unsigned tail without it (the entries after it move down one, every MAC
// valid, tiles and tree state consistent) and lets publication go on.
func TestAttack9UnsignedRecordErased(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	_, _, v, db, l, logs, _ := a5Start(t, "strongroom.test/attack9erase")
	a7Record(t, l, 100, 5)
	size0, _ := l.reader.IntegratedSize(ctx)
	a2WaitVerify(t, l, v, size0, nil)
	if !a6Until(10*time.Second, func() bool { n, _ := l.signer.trusted(); return n >= size0 }) {
		t.Fatal("setup: the signer does not trust the first entries")
	}
	tx := holdCheckpointRow(t, db)
	victim := event(7)
	victim.Fields = map[string]string{"n": "victim-unseal"}
	x, err := l.Record(ctx, victim) // durable: the operation goes ahead
	if err != nil {
		t.Fatal(err)
	}
	a7Record(t, l, 200, 3)
	leaves := a3ReadLeaves(t, db)
	if uint64(len(leaves)) <= x || a7Field(leaves[x]) != "victim-unseal" {
		t.Fatalf("setup: entry %d of %d is not the victim", x, len(leaves))
	}
	gone := leaves[x]
	rest := append(slices.Clone(leaves[:x]), leaves[x+1:]...)
	a5RewriteTail(t, tx, rest) // commits, releasing the Checkpoint row

	signed := a5WaitSigned(t, db, v, uint64(len(rest))-1, 15*time.Second, nil)
	if signed == 0 {
		t.Logf("held: no checkpoint was signed over the tail without the durable entry %d (alerts: %v)", x, strings.Contains(logs.String(), "ALERT"))
		return
	}
	// The replica that appended it finds it missing once a checkpoint covers the rewritten
	// tail, says so, and appends it again (durable.go): it must come to be signed (15 s).
	found := func() (uint64, bool) {
		cp, _, ok := a4Signed(db, v)
		if !ok {
			return 0, false
		}
		es := a2Entries(t, l.reader)
		for i := uint64(0); i < cp.Size && i < uint64(len(es)); i++ {
			if string(es[i]) == string(gone) {
				return i, true
			}
		}
		return 0, false
	}
	var at uint64
	if a6Until(15*time.Second, func() bool { var ok bool; at, ok = found(); return ok }) {
		if !strings.Contains(logs.String(), "ALERT audit log: an entry this replica appended is not in the signed log") {
			t.Fatalf("PROMISE DURABLE BROKEN: the erased entry %d came back (at %d) without an ALERT", x, at)
		}
		t.Logf("held: the erased entry %d was appended again and signed at %d, with an ALERT", x, at)
		return
	}
	a2WaitVerify(t, l, v, signed, nil)
	t.Fatalf("PROMISE DURABLE BROKEN: Record returned index %d for a sealed model.unseal (durable); the attacker rewrote the unsigned tail without it by SQL (tiles and tree state consistent, every MAC valid) and a checkpoint of size %d was signed — the record exists nowhere, verify accepts the log, the entries recorded after it sit one index lower than their callers were told; ALERT logged by the replica that appended it: %v",
		x, signed, strings.Contains(logs.String(), "ALERT"))
}

// ---- R3 / R4: sealed entries between the floor and P swapped ----

// TestAttack9RepairSwapBeforeP — PROMISE R3 (not reordered against the tree's order) and R4
// (evidence). Entries between the signed floor and the poisoned entry P "stay in place with
// their bytes' leaves": the repair takes their order from the bytes, not the tree. The
// attacker keeps publication stalled while replicas record 20 entries, then poisons P (the
// signer refuses from P, as designed, and names P); then swaps the bytes of two sealed replica
// entries r < q < P. The operator repairs P as the ALERT says. The tiles still hold the
// replicas' order; a repair that re-leafs r and q commits the attacker's order, and the tree
// is signed.
func TestAttack9RepairSwapBeforeP(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, _, v, db, l, logs, _ := a5Start(t, "strongroom.test/attack9swap")
	release := a9HoldCheckpoint(t, ctx, l)
	idx := a7Record(t, l, 1000, 20)
	bad := a2AppendForged(t, dsn, l.Origin(), unsealed(t, a5Forged("attacker-unknown-leaf"))).Index
	poisonEntry(t, db, bad, unsealed(t, a5Forged("decoy")))
	a7Record(t, l, 2000, 10)
	release()
	want := fmt.Sprintf("does not commit to entry %d as the log holds it", bad)
	if !a6Until(15*time.Second, func() bool { return strings.Contains(logs.String(), want) }) {
		t.Fatalf("setup: the signer did not name the poisoned entry %d", bad)
	}
	floor, _ := l.signer.trusted()
	r, q := idx[5], idx[15]
	if floor > r || q >= bad {
		t.Fatalf("setup: floor %d, r %d, q %d, P %d", floor, r, q, bad)
	}
	es := a2Entries(t, l.reader)
	er, eq := es[r], es[q]
	poisonEntry(t, db, r, eq)
	poisonEntry(t, db, q, er)
	time.Sleep(3 * time.Second) // the signer looks again meanwhile (what the operator may see)
	namedR := strings.Contains(logs.String(), fmt.Sprintf("does not commit to entry %d as the log holds it", r))

	var kept RepairReport
	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(rr RepairReport) error { kept = rr; return nil })
	if err != nil {
		t.Logf("held: the repair refused: %v", err)
		return
	}
	pos := a7Positions(t, l)
	pr, pq := pos[string(er)], pos[string(eq)]
	named := map[uint64]bool{}
	for _, d := range kept.Dropped {
		named[d.Index] = true
	}
	if len(pr) == 0 || len(pq) == 0 || pr[0] > pq[0] {
		signed := a5WaitSigned(t, db, v, rep.At, 10*time.Second, nil)
		t.Fatalf("PROMISE R3 BROKEN: after the attacker swapped the bytes of sealed replica entries %d (n=%s) and %d (n=%s), both between the floor %d and P %d, Repair(%d) committed (moved %d, dropped %d) with n=%s at %v and n=%s at %v — the attacker's order, not the tree's; R4: positions %d and %d named in the evidence: %v, %v; a checkpoint of size %d signed over it (0: none in 10 s); a signer ALERT named entry %d before the repair: %v",
			r, a7Field(er), q, a7Field(eq), floor, bad, bad, rep.Moved, len(rep.Dropped), a7Field(er), pr, a7Field(eq), pq, r, q, named[r], named[q], signed, r, namedR)
	}
	t.Logf("held: the swapped entries keep the tree's order (r at %v, q at %v)", pr, pq)
}

// ---- I1: an index that followed altered signed bytes is never checked again ----

// TestAttack9IndexKeepsAlteredEntry — PROMISE I1. validateIndex compares the index with the
// log once per signed entry ("once signed it stays") and never again. The attacker overwrites
// a signed entry x with a byte copy of a later batch entry (valid MAC) — the scrubber raises
// its ALERT, as designed — while a replica with a new index (a new replica, or one whose index
// was rebuilt) indexes and validates the log; then puts x's bytes back (the log is as signed
// again). That replica's index must come to hold x's bytes at x and count the batch's
// records once, at the batch's entry.
func TestAttack9IndexKeepsAlteredEntry(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db, l, _, _ := a5Start(t, "strongroom.test/attack9alter")
	x := a7Record(t, l, 100, 3)[1]
	batch, grant := batchAndGrant(t, l)
	a7Record(t, l, 300, 2)
	size, _ := l.reader.IntegratedSize(ctx)
	a2WaitVerify(t, l, v, size, nil)
	es := a2Entries(t, l.reader)
	orig := es[x]
	poisonEntry(t, db, x, es[batch]) // signed history altered: a copy of the later batch entry

	b, st, blogs := indexedReplica(t, dsn, s)
	if !a6Until(15*time.Second, func() bool {
		b.indexMu.Lock()
		defer b.indexMu.Unlock()
		return b.validated >= size
	}) {
		t.Fatal("setup: the new replica did not validate its index")
	}
	poisonEntry(t, db, x, orig) // put back: the log is as signed
	a7Record(t, l, 500, 2)
	size2, _ := l.reader.IntegratedSize(ctx)
	a2WaitVerify(t, l, v, size2, nil)
	var wrong []string
	a6Until(10*time.Second, func() bool { wrong = a8IndexWrong(t, st, a2Entries(t, l.reader)); return len(wrong) == 0 })
	all, err := st.SearchAudit(ctx, store.AuditQuery{Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	recs := map[uint64]int{}
	for _, e := range all {
		if en, _, ok := SplitRecordIndex(e.Index); ok {
			recs[en]++
		}
	}
	if len(wrong) > 0 || recs[batch] != 10 {
		t.Fatalf("PROMISE I1 BROKEN: signed entry %d was overwritten with a copy of batch entry %d while a new replica indexed the log, then put back; 10 s after, the replica's index disagrees with the log: %s; the batch's 10 records are counted under entry %d: %d, under entry %d: %d (grant at %d); re-index warnings: %v",
			x, batch, strings.Join(wrong, ", "), batch, recs[batch], x, recs[x], grant, strings.Count(blogs.String(), "audit index: the index held entries"))
	}
	t.Logf("held: the index re-read entry %d once its bytes were put back", x)
}

// ---- I1: one batch's bundle row deleted stops every new index for good ----

// TestAttack9IndexStuckOnLostBundle — PROMISE I1 ("every replica's search index ends up
// holding each log entry"). Bundles live in the log's database (StrongroomBatch); the index
// "waits rather than skip records" when a batch's bundle cannot be read. The attacker deletes
// one bundle row. A replica whose index reads the log from before that batch (a new replica,
// a rebuilt index, or the repairing replica after ForgetAudit) must still come to index the
// entries after the batch — the lease grant and the later records are in the log and
// signed; only the batch's own records are gone.
func TestAttack9IndexStuckOnLostBundle(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db, l, _, _ := a5Start(t, "strongroom.test/attack9bundle")
	batch, grant := batchAndGrant(t, l)
	after := a7Record(t, l, 100, 3)
	size, _ := l.reader.IntegratedSize(ctx)
	a2WaitVerify(t, l, v, size, nil)
	a6Exec(t, db, "DELETE FROM `StrongroomBatch`")

	_, st, blogs := indexedReplica(t, dsn, s)
	if a6Until(20*time.Second, func() bool { n, err := st.AuditIndexed(ctx); return err == nil && n >= size }) {
		t.Logf("held: the new index reached entry %d past the batch whose bundle is gone", size-1)
		return
	}
	n, _ := st.AuditIndexed(ctx)
	t.Fatalf("PROMISE I1 BROKEN: one DELETE of StrongroomBatch's rows; a new replica's search index stops at %d entries for good (20 s): batch entry %d and everything after it — the lease grant at %d, entries %v, all signed — never indexed (audit search, incidents and counts miss them); %d warnings, the first: %s",
		n, batch, grant, after, strings.Count(blogs.String(), "audit index behind the log"), strings.SplitN(a6Lines(blogs.String(), "audit index behind the log")+"\n", "\n", 2)[0])
}

// ---- R6 / R5: a tail of large junk entries past the tree ----

// TestAttack9RepairLargeTail — PROMISE R6 (the repair ends in reasonable time and memory) and
// R5. Round 8 tried many tiny entries (512k one-byte entries, ~2 s). Entries are up to 64 KB
// each and a bundle row holds 256: the attacker inserts full rows of ~58 KB junk entries
// past the tree (a few hundred MB; the database's disk is the only bound). The repair reads
// every row from the floor on into memory, and clones every dropped entry's bytes into the
// report for keep: its heap grows with the junk, twice over — the remedy of a poisoned tail
// dies of memory at whatever size the attacker picks. Allowed here: 384 MB of heap growth
// for the repair over 256 MB of junk (the repair's own ~200 MB, and less than twice the junk).
//
// Under -race the tail is 16 MB and the heap is not judged: the full form cost ~136 s of CPU
// raced (56 s user, 72 s system, 7.5 s MariaDB's; the thirty-sixth session), a tenth of the
// race pass's, while everything else on the machine waited; the race detector has the same
// repair code to watch at 16 MB. scripts/test runs the full form without -race, beside the
// fuzz.
func TestAttack9RepairLargeTail(t *testing.T) {
	t.Parallel() // see sqlTestDB; TestAttack8RepairHugeTail, the other repair-size test, runs alone
	ctx := context.Background()
	dsn, _, v, db, l, _, _ := a5Start(t, "strongroom.test/attack9large")
	bad := a7Poisoned(t, dsn, l, 5, 5, nil)
	es := a2Entries(t, l.reader)
	var packet int64
	if err := db.QueryRow("SELECT @@max_allowed_packet").Scan(&packet); err != nil {
		t.Fatal(err)
	}
	entry := min(58000, int((packet-(1<<20))/256)) // one row per statement
	if entry < 4000 {
		t.Fatalf("setup: max_allowed_packet %d", packet)
	}
	junk := make([]byte, entry)
	for i := range junk {
		junk[i] = 'x'
	}
	var b0 [][]byte
	for i := uint64(0); i < 256; i++ {
		if e, ok := es[i]; ok {
			b0 = append(b0, e)
		} else {
			b0 = append(b0, junk)
		}
	}
	a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ?, `size` = 256 WHERE `tile_index` = 0", a3Bundle(b0))
	row := a3Bundle(slices.Repeat([][]byte{junk}, 256))
	rows := (256 << 20) / len(row) // ~256 MB of junk: read twice over, 512 MB, past the bound below
	if testenv.Race {
		rows = (16 << 20) / len(row)
	}
	for i := 1; i <= rows; i++ {
		a6Exec(t, db, "INSERT INTO `TiledLeaves` (`tile_index`, `size`, `data`) VALUES (?, 256, ?)", i, row)
	}
	junkMB := rows * len(row) >> 20

	base, stop := heapPeak(20 * time.Millisecond)
	start := time.Now()
	var kept int
	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(r RepairReport) error { kept = len(r.Dropped); return nil })
	took := time.Since(start)
	top := stop()
	grew := int64(top-min(top, base)) >> 20
	if took > 3*time.Minute || grew > 384 && !testenv.Race { // without -race, alone: ~3 s of repair, +199 MB
		t.Fatalf("PROMISE R6 BROKEN: %d rows (%d MB) of junk entries past the tree (SQL only); Repair(%d) took %v and its heap grew by %d MB (err %v; dropped %d): the remedy's memory grows with what the attacker inserts, without bound",
			rows, junkMB, bad, took.Round(time.Millisecond), grew, err, kept)
	}
	if err != nil {
		t.Logf("held (R6): the repair refused in %v, heap +%d MB: %v", took, grew, err)
		return
	}
	st := a2WaitVerify(t, l, v, rep.Size, nil)
	t.Logf("held: Repair over %d MB of junk took %v, heap +%d MB, dropped %d, signed to %d", junkMB, took, grew, len(rep.Dropped), st.Size)
}
