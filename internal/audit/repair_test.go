package audit

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
)

// poisonEntry overwrites entry i's bytes in its entry bundle with other bytes, as someone
// with write access to the database would after appending it: the tree keeps the leaf of
// the bytes appended, which nobody holds any more.
func poisonEntry(t *testing.T, db *sql.DB, i uint64, with []byte) {
	t.Helper()
	b := i / layout.EntryBundleWidth
	var size int
	var data []byte
	if err := db.QueryRow("SELECT `size`, `data` FROM `TiledLeaves` WHERE `tile_index` = ?", b).Scan(&size, &data); err != nil {
		t.Fatal(err)
	}
	var eb api.EntryBundle
	if err := eb.UnmarshalText(data); err != nil {
		t.Fatal(err)
	}
	eb.Entries[i%layout.EntryBundleWidth] = with
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = ?", a3Bundle(eb.Entries), b); err != nil {
		t.Fatal(err)
	}
}

// TestRepairPoisonedTail: the remedy for TestAttack5UnknownLeafDoS. After 301 signed
// entries, the attacker appends an entry and overwrites its bytes (the tree holds a leaf
// nobody can show), and later an unsealed entry; replicas append 300 sealed entries around
// them, across entry bundles and tiles, alters the tree's leaf of one of them, and a
// second replica keeps appending while the operator repairs. The signer refuses until the repair; after it, a checkpoint covers
// every sealed entry — each present once, in order, the second replica's included — and
// the repair entry; the two entries the attacker wrote are gone from the tree and returned
// as evidence; verify (which recomputes every tile from the entries) accepts the tree, and
// a keyed verify finds no foreign entry. Repairs that would rewrite signed history, or
// that have nothing to repair, are refused.
func TestRepairPoisonedTail(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db, l, logs, _ := a5Start(t, "strongroom.test/repair")
	record := func(l *Log, from, n int) {
		var fs []Future
		for i := range n {
			ev := event(from + i)
			ev.Fields = map[string]string{"n": fmt.Sprint(from + i)}
			fs = append(fs, l.Submit(ctx, ev))
		}
		for _, f := range fs {
			if _, err := f(); err != nil {
				t.Error(err)
			}
		}
	}
	record(l, 100, 300)
	st := a2WaitVerify(t, l, v, 301, nil)

	if _, err := l.Repair(ctx, 5, "below the floor", nil, nil); !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "signed history is never rewritten") {
		t.Fatalf("repair of a signed entry: %v", err)
	}
	record(l, 1000, 20)
	bad := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker-unknown-leaf"))).Index
	poisonEntry(t, db, bad, unsealed(t, a5Forged("decoy")))
	record(l, 2000, 200)
	foreign := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker-later"))).Index
	record(l, 3000, 80)
	want := fmt.Sprintf("does not commit to entry %d as the log holds it", bad)
	waitFor(t, func() bool { return strings.Contains(logs.String(), want) })

	// The sealed tail as it stands, in order: what the repair must append again.
	var tail []string
	before := a2Entries(t, l.reader)
	for i := bad + 1; i < uint64(len(before)); i++ {
		if checkEntry(testEntryKey, s.Name(), before[i]) == nil {
			tail = append(tail, string(before[i]))
		}
	}
	if len(tail) != 280 {
		t.Fatalf("%d sealed entries after the poisoned one, want 280", len(tail))
	}
	// The attacker also alters the tree's leaf for a sealed entry after it: the repair must
	// not drop a replica's entry for what the tiles say.
	alteredLeaf := bad + 7
	var nodes []byte
	if err := db.QueryRow("SELECT `nodes` FROM `Subtree` WHERE `level` = 0 AND `index` = ?", alteredLeaf/256).Scan(&nodes); err != nil {
		t.Fatal(err)
	}
	copy(nodes[32*(alteredLeaf%256):], bytes.Repeat([]byte{0xee}, 32))
	if _, err := db.Exec("UPDATE `Subtree` SET `nodes` = ? WHERE `level` = 0 AND `index` = ?", nodes, alteredLeaf/256); err != nil {
		t.Fatal(err)
	}
	// A second replica appends while the repair runs.
	l2, st2, _ := indexedReplica(t, dsn, s) // with its own search index, read before the repair
	waitFor(t, func() bool { n, _ := st2.AuditIndexed(ctx); return n > foreign })
	if _, err := l2.Repair(ctx, bad, "not the signer", nil, nil); err == nil || !strings.Contains(err.Error(), "stop every replica") {
		t.Fatalf("repair from a replica that does not hold the signer's lock: %v", err)
	}
	// The evidence is kept before the repair commits; failing to keep it undoes the repair.
	if _, err := l.Repair(ctx, bad, "evidence lost", nil, func(RepairReport) error { return errors.New("disk full") }); err == nil {
		t.Fatal("a repair whose evidence could not be kept went through")
	}
	var wg sync.WaitGroup
	wg.Go(func() { record(l2, 4000, 150) })
	var kept RepairReport
	rep, err := l.Repair(ctx, bad, "incident 9: an entry appended and then overwritten through the database", map[string]string{"principal": "operator"},
		func(r RepairReport) error { kept = r; return nil })
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// A healthy tail: nothing to repair (or, if the signer covered it meanwhile, signed).
	again, err := l.Repair(ctx, rep.At, "nothing wrong", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "nothing to repair") && !strings.Contains(err.Error(), "signed history is never rewritten") {
		t.Fatalf("repair of a healthy tail: %+v %v", again, err)
	}
	if len(kept.Dropped) != 3 {
		t.Fatalf("evidence kept: %+v", kept)
	}
	if rep.Entry != bad || len(rep.Dropped) != 3 || rep.Dropped[0].Index != bad || rep.Dropped[1].Index != alteredLeaf || rep.Dropped[2].Index != foreign ||
		!bytes.Contains(rep.Dropped[0].Bytes, []byte("decoy")) || !strings.Contains(rep.Dropped[2].Why, "entry MAC") {
		t.Fatalf("repair report: entry %d, dropped %+v", rep.Entry, rep.Dropped)
	}
	last, err := l.Record(ctx, event(9999))
	if err != nil {
		t.Fatal(err)
	}
	vs := a2WaitVerify(t, l, v, last+1, &st)
	f, bundles := a2Fetch(t, l.Handler())
	keyed, err := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: bundles, EntryKey: testEntryKey})
	if err != nil || len(keyed.Foreign) != 0 || len(keyed.Copies) != 0 {
		t.Fatalf("keyed verify after the repair: %v, foreign %v, copies %v", err, keyed.Foreign, keyed.Copies)
	}
	entries := a2Entries(t, l.reader)
	var moved []string
	theirs := map[string]bool{}
	repairs := 0
	for i := uint64(0); i < vs.Size; i++ {
		e := entries[i]
		if checkEntry(testEntryKey, s.Name(), e) != nil {
			t.Errorf("entry %d after the repair is not sealed: %q", i, e)
		}
		ev, err := ParseEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind == KindLogRepair {
			repairs++
			if i != rep.At || ev.Subject["entry"] != fmt.Sprint(bad) || ev.Fields["dropped"] != "3" || ev.Actor["principal"] != "operator" {
				t.Errorf("repair entry at %d (report %d): %s", i, rep.At, e)
			}
		}
		if slices.Contains(tail, string(e)) {
			moved = append(moved, string(e))
		}
		if n := ev.Fields["n"]; n >= "4000" && len(n) == 4 {
			if theirs[n] {
				t.Errorf("entry %d: the other replica's %s twice", i, n)
			}
			theirs[n] = true
		}
	}
	if repairs != 1 {
		t.Errorf("%d repair entries", repairs)
	}
	if !slices.Equal(moved, tail) {
		t.Errorf("the sealed tail after the repair: %d entries (equal in order: %v), want the %d before it, in order", len(moved), slices.Equal(moved, tail), len(tail))
	}
	if len(theirs) != 150 {
		t.Errorf("%d of the other replica's 150 entries in the log after the repair", len(theirs))
	}
	// The other replica's index held the tail at its old places: it must come to hold the
	// log's entries, each where the log has it.
	var diff string
	converged := func() bool {
		got, err := st2.SearchAudit(ctx, store.AuditQuery{})
		if err != nil {
			diff = err.Error()
			return false
		}
		n := 0
		for _, e := range got {
			if _, _, rec := SplitRecordIndex(e.Index); rec {
				continue
			}
			if e.Index >= vs.Size || !bytes.Equal(e.Raw, entries[e.Index]) {
				diff = fmt.Sprintf("entry %d indexed with other bytes than the log's", e.Index)
				return false
			}
			n++
		}
		diff = fmt.Sprintf("%d entries indexed, the log holds %d", n, vs.Size)
		return uint64(n) >= vs.Size
	}
	for deadline := time.Now().Add(30 * time.Second); !converged(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the other replica's index after the repair: %s", diff)
		}
	}
}

// TestRepairRetakesDroppedLock: the only replica's signer lock dropped (its connection's
// ping slower than 2 s under load) and still free: the repair takes it back at once and
// goes on (here to refuse a signed entry), instead of telling the operator that another
// replica signs — the next poll would have taken it anyway.
func TestRepairRetakesDroppedLock(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	_, _, v, _, l, _, _ := a5Start(t, "strongroom.test/repairlock")
	for i := range 3 {
		if _, err := l.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	a2WaitVerify(t, l, v, 4, nil)
	l.leader.mu.Lock()
	l.leader.drop("test: a slow ping")
	l.leader.mu.Unlock()
	_, err := l.Repair(ctx, 1, "below the floor", nil, nil)
	if err == nil || strings.Contains(err.Error(), "stop every replica") || !errors.Is(err, ErrSecurity) {
		t.Fatalf("repair after the only replica's lock dropped: %v (want the signed-history refusal)", err)
	}
	if !l.leader.held.Load() {
		t.Fatal("the repair did not take the free lock back")
	}
}
