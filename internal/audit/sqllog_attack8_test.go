package audit

// Outside attacks, eighth round, on the rewritten repair of a poisoned tail (repair.go,
// Log.Repair) and on the search index's convergence to the log (log.go: ownIndex, indexTip,
// markCopies). The attacker has full SQL access to the log's MariaDB database (any
// statement, triggers, tessera's own driver) and holds no keys; the operator stops the other
// replicas and runs Repair on the one holding the signer's lock. A test fails
// ("PROMISE ... BROKEN:") when the promise it attacks breaks; one that passes logs what held.
//
// R1  signed history is never rewritten.
// R2  nothing without a replica's MAC ends up covered by a signed checkpoint.
// R3  no sealed entry present before the repair is lost or reordered against the tree's order.
// R4  failure leaves the log unchanged; the evidence names every position whose old leaf the
//     new tree does not hold, with the bytes the database held.
// R5  the operator always has a working remedy for a poisoned tail.
// I1  after any attack and any repair, a replica's search index ends up holding each log
//     entry at its index with the log's bytes, and counts each batch's records once.
//
// Written by an outside tester (helper18) against a72c928, where five broke: IndexTipCopy
// (I1: a byte copy at the index's tip hides a shifted tail from indexTip), RepairBundleTrigger
// (R3: a trigger rewrites the repair's entry bundles, which are not read back: a sealed entry
// lost), RepairTileTrigger (R4: a trigger alters a complete level-0 tile the read-back never
// reads), RepairCutReorders (R3: TreeState.size lowered to P+1 hides the tiles' order, the
// attacker's is signed), RepairCutEvidence (R4: the true leaf of an overwritten entry past a
// lowered TreeState.size is named nowhere). Held: RepairHugeTail (512k attacker entries, ~2 s).

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// a8Open opens a replica of dsn's log that indexes into st (a store that outlives it: the
// same data directory across a restart). Close may be called more than once.
func a8Open(t *testing.T, dsn string, s note.Signer, st store.Store) (*Log, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	l, err := Open(context.Background(), Config{EntryKey: testEntryKey, DB: dsn, Signer: s, Index: st, ShutdownTimeout: time.Second, Logger: newTextLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l, logs
}

// a8IndexWrong lists the index rows (entries, not records) whose bytes are not the log's
// entry at that index, and the log entries the index does not hold.
func a8IndexWrong(t *testing.T, st store.Store, es map[uint64][]byte) []string {
	t.Helper()
	all, err := st.SearchAudit(context.Background(), store.AuditQuery{Limit: 100000})
	if err != nil { // a search over an index that disagrees with the log can fail: not there yet
		return []string{"search: " + err.Error()}
	}
	var wrong []string
	held := map[uint64]bool{}
	for _, e := range all {
		if isRecord(e.Index) {
			continue
		}
		held[e.Index] = true
		if got, ok := es[e.Index]; !ok || string(got) != string(e.Raw) {
			wrong = append(wrong, fmt.Sprintf("%d (index n=%s, log n=%s)", e.Index, a7Field(e.Raw), a7Field(got)))
		}
	}
	for i := range es {
		if !held[i] {
			wrong = append(wrong, fmt.Sprintf("%d not indexed", i))
		}
	}
	return wrong
}

// ---- I1: indexTip fooled by a byte copy at the tip ----

// TestAttack8IndexTipCopy — PROMISE I1. indexTip compares only the last indexed entry with
// the log's entry there, and trusts everything below it when they agree. Replica B indexes
// the poisoned log up to size S and is stopped for the repair (as the operator is told).
// The attacker appends one byte copy of entry S-1 (a valid MAC: the repair keeps it). The
// repair drops the poisoned entry P, so every entry from P on moves down one: the log's
// entry S-1 is now the copy — byte for byte what B indexed at S-1. B restarts: its tip
// agrees, and the entries P..S-2 it indexed stay at their old places, each one off.
func TestAttack8IndexTipCopy(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, _, _, l, _, _ := a5Start(t, "strongroom.test/attack8tip")
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b, _ := a8Open(t, dsn, s, st)
	bad := a7Poisoned(t, dsn, l, 5, 20, nil)
	size, _ := l.reader.IntegratedSize(ctx)
	if !a6Until(15*time.Second, func() bool { n, err := st.AuditIndexed(ctx); return err == nil && n >= size }) {
		t.Fatal("replica B's index did not catch up")
	}
	if err := b.Close(ctx); err != nil {
		t.Logf("closing B: %v", err)
	}
	es := a2Entries(t, l.reader)
	a2AppendAll(t, dsn, s.Name(), [][]byte{es[size-1]}) // the attacker: a copy of the tip

	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(RepairReport) error { return nil })
	if err != nil {
		t.Fatalf("repair: %v", err)
	}
	after := a2Entries(t, l.reader)
	if string(after[size-1]) != string(es[size-1]) {
		t.Fatalf("setup: the log's entry %d after the repair is not the old tip's bytes (dropped %d)", size-1, len(rep.Dropped))
	}
	// B restarts on its data directory.
	_, blogs := a8Open(t, dsn, s, st)
	if !a6Until(15*time.Second, func() bool { n, err := st.AuditIndexed(ctx); return err == nil && n >= rep.Size }) {
		t.Fatal("replica B's index did not catch up after the repair")
	}
	// Once the repaired tree is signed, B's index must come to hold the log (15 s).
	var wrong []string
	a6Until(15*time.Second, func() bool { wrong = a8IndexWrong(t, st, a2Entries(t, l.reader)); return len(wrong) == 0 })
	if len(wrong) > 0 {
		t.Fatalf("PROMISE I1 BROKEN: after Repair(%d) (log %d → %d entries) and a restart, replica B's search index holds %d entries that are not the log's at their index (its tip %d agreed: the attacker's byte copy moved there; re-index warning logged: %v): %s",
			bad, size, rep.Size, len(wrong), size-1, strings.Contains(blogs.String(), "audit index: the index held entries"), strings.Join(wrong[:min(6, len(wrong))], ", "))
	}
	t.Logf("held: replica B's index re-read the repaired tail")
}

// ---- R3 / R5: a trigger rewrites the repair's entry bundles ----

// TestAttack8RepairBundleTrigger — PROMISE R3 (and R5: the remedy must not do harm). The
// attacker, while they still have access, installs a trigger on TiledLeaves that fires only
// on a bundle holding an audit.log_repair entry, and changes one digit of a replica's sealed
// entry in it (same length). The repair reads its tiles back before commit, not its
// bundles: it commits; the replica's entry exists nowhere any more (its old row was deleted
// by the repair, and keep was given only the dropped entries), and the tree commits to a
// leaf whose bytes are gone — the state the repair was run to end.
func TestAttack8RepairBundleTrigger(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, _, v, db, l, _, _ := a5Start(t, "strongroom.test/attack8trig")
	bad := a7Poisoned(t, dsn, l, 20, 30, nil)
	sealedBefore := a7Sealed(t, l, bad)
	a6Exec(t, db, "CREATE TRIGGER `a8_rewrite` BEFORE INSERT ON `TiledLeaves` FOR EACH ROW "+
		"SET NEW.`data` = IF(LOCATE('audit.log_repair', NEW.`data`) > 0, REPLACE(NEW.`data`, '\"n\":\"2005\"', '\"n\":\"2006\"'), NEW.`data`)")

	var kept RepairReport
	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(r RepairReport) error { kept = r; return nil })
	if err != nil {
		t.Logf("held: the repair refused: %v", err)
		return
	}
	lost := a7Lost(t, l, sealedBefore)
	inKeep := false
	for _, d := range kept.Dropped {
		if a7Field(d.Bytes) == "2005" {
			inKeep = true
		}
	}
	if len(lost) > 0 {
		signed := a5WaitSigned(t, db, v, rep.At, 8*time.Second, nil)
		t.Fatalf("PROMISE R3 BROKEN: Repair(%d) reported success (moved %d, dropped %d, repair entry %d) but a trigger on TiledLeaves rewrote the repair's bundle: sealed replica entries n=%v exist nowhere any more (in keep's evidence: %v); a checkpoint past the repair entry signed within 8 s: %v (the tree again commits to a leaf whose bytes are gone)",
			bad, rep.Moved, len(rep.Dropped), rep.At, lost, inKeep, signed != 0)
	}
	t.Logf("held: every sealed entry survived the repair's bundle writes")
}

// ---- R4: a trigger on a tile the read-back does not read ----

// TestAttack8RepairTileTrigger — PROMISE R4 ("tiles are rewritten and read back before
// commit: they must give the root computed, or nothing is changed"). The read-back fetches
// only the range nodes of the new tree: a complete level-0 tile under a level-1 node is not
// read. With the floor past 256 and the tree past 512, the repair rewrites level-0 tile 1;
// a trigger changes one leaf in it as it is inserted. The committed tiles must give every
// entry its leaf (else the tree is again one nobody can prove, and the signer refuses).
func TestAttack8RepairTileTrigger(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, _, v, db, l, logs, _ := a5Start(t, "strongroom.test/attack8tile")
	a7Record(t, l, 1000, 300)
	a2WaitVerify(t, l, v, 301, nil)
	if !a6Until(10*time.Second, func() bool { n, _ := l.signer.trusted(); return n >= 301 }) {
		t.Fatal("the signer does not trust 301 entries")
	}
	bad := a7Poisoned(t, dsn, l, 0, 260, nil)
	size, _ := l.reader.IntegratedSize(ctx)
	if bad < 256 || size < 520 {
		t.Fatalf("setup: poisoned %d, size %d", bad, size)
	}
	victim := bad + 40 // after the repair, a moved replica entry's place
	k := victim - 256
	a6Exec(t, db, fmt.Sprintf("CREATE TRIGGER `a8_leaf` BEFORE INSERT ON `Subtree` FOR EACH ROW "+
		"IF NEW.`level` = 0 AND NEW.`index` = 1 AND LENGTH(NEW.`nodes`) = 8192 THEN "+
		"SET NEW.`nodes` = CONCAT(SUBSTRING(NEW.`nodes`, 1, %d), UNHEX(SHA2('attacker', 256)), SUBSTRING(NEW.`nodes`, %d)); END IF", 32*k, 32*k+33))

	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(RepairReport) error { return nil })
	if err != nil {
		t.Logf("held: the repair saw its tiles altered and changed nothing: %v", err)
		return
	}
	es := a2Entries(t, l.reader)
	leaves := a7Leaves(t, l)
	var bad2 []string
	for i := uint64(0); i < rep.Size; i++ {
		if string(leaves[i]) != string(rfc6962.DefaultHasher.HashLeaf(es[i])) {
			bad2 = append(bad2, fmt.Sprint(i))
		}
	}
	if len(bad2) > 0 {
		signed := a5WaitSigned(t, db, v, rep.At, 8*time.Second, nil)
		t.Fatalf("PROMISE R4 BROKEN: Repair(%d) committed (size %d) after reading its tiles back, yet the committed level-0 tile 1 holds at entries %v a leaf that is not the entry's hash (a trigger on Subtree; the read-back never reads a complete level-0 tile); checkpoint past the repair entry signed: %v; signer ALERT: %v",
			bad, rep.Size, bad2, signed != 0, strings.Contains(logs.String(), "does not commit to entry"))
	}
	t.Logf("held: the committed tiles give every entry its leaf")
}

// ---- R3: the tree's order bypassed by lowering the tree state ----

// TestAttack8RepairCutReorders — PROMISE R3 (not reordered against the tree's order). The
// repair keeps "the tree's order where its leaf is still in the tree" — but reads the
// tree's leaves only up to TreeState.size, which the attacker writes. The attacker swaps
// the bytes of two replica entries after P (the tiles still hold their leaves in the
// replicas' order) and lowers TreeState.size to P+1 (within [floor, rows]: accepted). Every
// sealed entry after P is then "not in the tree" and goes in the database's order — the
// attacker's.
func TestAttack8RepairCutReorders(t *testing.T) {
	t.Parallel() // see sqlTestDB
	a7RepairReorders(t, "strongroom.test/attack8cutorder", true)
}

// ---- R4 (evidence): leaves past a lowered tree state named nowhere ----

// TestAttack8RepairCutEvidence — PROMISE R4 (the evidence names every position whose old
// leaf the new tree does not hold). The attacker overwrites a replica entry Y after P with
// junk (no MAC) and lowers TreeState.size to P+1. The tiles still hold Y's true leaf, which
// the new tree does not: the repair entry and the report must name Y with that leaf — not
// only with the hash of the junk written over it.
func TestAttack8RepairCutEvidence(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, _, _, db, l, _, _ := a5Start(t, "strongroom.test/attack8cutev")
	bad := a7Poisoned(t, dsn, l, 20, 30, nil)
	leaves := a7Leaves(t, l)
	es := a2Entries(t, l.reader)
	size := uint64(len(es))
	y := bad + 10
	poisonEntry(t, db, y, unsealed(t, a5Forged("junk-over-a-replica-entry")))
	a6Exec(t, db, "UPDATE `TreeState` SET `size` = ? WHERE `id` = 0", bad+1)

	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(RepairReport) error { return nil })
	if err != nil {
		t.Logf("held: the repair refused: %v", err)
		return
	}
	after := a2Entries(t, l.reader)
	ev, err := ParseEvent(after[rep.At])
	if err != nil || ev.Kind != KindLogRepair {
		t.Fatalf("repair entry at %d: %v", rep.At, err)
	}
	inNew := map[string]bool{}
	for i := uint64(0); i < rep.Size; i++ {
		inNew[string(rfc6962.DefaultHasher.HashLeaf(after[i]))] = true
	}
	named := ev.Fields["dropped_entries"]
	reported := map[string]bool{}
	for _, d := range rep.Dropped {
		reported[fmt.Sprintf("%d:%s", d.Index, d.LeafHash)] = true
	}
	var unnamed []string
	for i := bad; i < size; i++ {
		want := fmt.Sprintf("%d:%s", i, hex.EncodeToString(leaves[i]))
		if !inNew[string(leaves[i])] && (!strings.Contains(named, want) || !reported[want]) {
			unnamed = append(unnamed, fmt.Sprintf("%d (tile leaf %s…, in repair entry %v, in report %v)", i, hex.EncodeToString(leaves[i])[:12], strings.Contains(named, want), reported[want]))
		}
	}
	if len(unnamed) > 0 {
		t.Fatalf("PROMISE R4 (evidence) BROKEN: TreeState.size lowered to %d; Repair(%d) took out of the tree leaves it names nowhere: %s; the repair entry names %q (replica entry %d, n=%s, is gone)",
			bad+1, bad, strings.Join(unnamed, ", "), named, y, a7Field(es[y]))
	}
	t.Logf("held: every leaf the tiles held and the new tree does not is named")
}

// ---- R6 / R5: a huge attacker tail past the tree state ----

// TestAttack8RepairHugeTail — PROMISE R6 (reasonable time and memory) and R5. The repair
// reads every entry bundle row from the floor on, whatever the tree state says, into memory,
// and hands keep one Dropped (with its bytes) per unsealed entry. The attacker fills the
// poisoned entry's bundle and inserts 2000 more full rows of one-byte entries past the tree
// (512k entries, 1.5 MB of SQL). The repair must finish promptly and still be the remedy.
func TestAttack8RepairHugeTail(t *testing.T) {
	// Not parallel: its bound is on the repair's time and memory, and another test's load on
	// the same MariaDB (400 MB of inserts, replica processes) made it ten times slower.
	ctx := context.Background()
	dsn, _, v, db, l, _, _ := a5Start(t, "strongroom.test/attack8huge")
	bad := a7Poisoned(t, dsn, l, 5, 5, nil)
	es := a2Entries(t, l.reader)
	var b0 [][]byte
	for i := uint64(0); i < 256; i++ {
		if e, ok := es[i]; ok {
			b0 = append(b0, e)
		} else {
			b0 = append(b0, []byte{'x'})
		}
	}
	a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ?, `size` = 256 WHERE `tile_index` = 0", a3Bundle(b0))
	row := a3Bundle(func() (out [][]byte) {
		for range 256 {
			out = append(out, []byte{'x'})
		}
		return
	}())
	const rows = 2000
	for from := 1; from <= rows; from += 100 {
		var vals []string
		var args []any
		for i := from; i < from+100 && i <= rows; i++ {
			vals, args = append(vals, "(?, 256, ?)"), append(args, i, row)
		}
		a6Exec(t, db, "INSERT INTO `TiledLeaves` (`tile_index`, `size`, `data`) VALUES "+strings.Join(vals, ", "), args...)
	}
	start := time.Now()
	var kept int
	rep, err := l.Repair(ctx, bad, "incident: poisoned tail", map[string]string{"principal": "operator"}, func(r RepairReport) error { kept = len(r.Dropped); return nil })
	took := time.Since(start)
	if took > 3*time.Minute { // alone, under -race: ~7 s; quadratic work took far longer
		t.Fatalf("PROMISE R6 BROKEN: Repair(%d) over %d attacker rows took %v (err %v)", bad, rows, took, err)
	}
	if err != nil {
		t.Logf("held (R6): the repair refused in %v: %v", took, err)
		return
	}
	st := a2WaitVerify(t, l, v, rep.Size, nil)
	t.Logf("held: Repair over %d attacker rows (%d entries) took %v, dropped %d (keep saw %d), signed to %d", rows, rows*256, took, len(rep.Dropped), kept, st.Size)
}
