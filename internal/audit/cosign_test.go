package audit

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/tessera"
)

// TestWitnessRoundHoldsNoAppend: a shared log's witnesses are asked outside tessera's
// transaction (cosign.go). While the only witness of a 1-of-1 policy holds a round open
// (its timeout 30 s), both replicas' Records complete and tessera's own checkpoint covers
// them; the log serves no checkpoint without the witness's cosignature meanwhile; once the
// witness answers, the served checkpoint is cosigned and every acknowledged record is in
// it. Before, the round ran inside the transaction holding the tree state's row: every
// Record waited for the witness (outside rounds 39 and 40).
func TestWitnessRoundHoldsNoAppend(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/cosign")
	w := newA40Witness(t, s, v)
	g := tessera.NewWitnessGroup(1, w.w)
	open := func(buf *syncBuffer) *Log {
		l, err := Open(context.Background(), Config{EntryKey: testEntryKey, DB: dsn, Dir: t.TempDir(), Signer: s, Witnesses: &g,
			WitnessTimeout: 30 * time.Second, ShutdownTimeout: 2 * time.Second, Logger: newTextLogger(buf)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a36Close(l) })
		return l
	}
	lb := &syncBuffer{}
	b := open(lb)
	if !a36WaitFor(5*time.Second, func() bool { return b.Signer() }) {
		t.Fatal("premise: replica b does not sign")
	}
	a := open(&syncBuffer{})
	a40FirstCosigned(t, a, b, w)
	ctx := context.Background()
	cp0, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}

	w.mode.Store(4)
	outs := a37Submit(a, "a", 2)
	if !a36WaitFor(15*time.Second, func() bool { return w.holding.Load() > 0 }) {
		t.Fatalf("premise: no witness round for the new entry; signer log:\n%s", lb.String())
	}
	stopCP := make(chan struct{})
	cps := a40WatchCPs(b, w, stopCP)
	// The witness holds its answer: records go on, on both replicas. (5 s each: before, a
	// Record waited until the signer ended the publication's session, asleep in the
	// witness round for sessionIdle, 10 s — reapHolders.)
	for i := range 5 {
		for j, l := range []*Log{a, b} {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			t0 := time.Now()
			idx, err := l.Record(rctx, a36Event(100+2*i+j))
			cancel()
			if err != nil {
				t.Fatalf("CLAIM BROKEN (a witness round holds no append): Record on replica %c failed after %v while the witness held its answer: %v",
					'a'+j, time.Since(t0).Round(time.Millisecond), err)
			}
			outs = append(outs, a37Outcome{id: 100 + 2*i + j, replica: string(rune('a' + j)), idx: idx, took: time.Since(t0)})
		}
	}
	if w.holding.Load() == 0 {
		t.Fatal("premise: the witness round ended before the records (its timeout is 30 s)")
	}
	size, err := b.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// tessera's checkpoint (what the replicas check among themselves) went on.
	if !a36WaitFor(10*time.Second, func() bool {
		cp, err := b.reader.ReadCheckpoint(ctx)
		return err == nil && cpSize(cp) >= size
	}) {
		t.Errorf("tessera's checkpoint does not cover %d entries while the witness holds its answer", size)
	}
	if cp, err := b.Checkpoint(ctx); err != nil || cpSize(cp) != cpSize(cp0) || !w.cosigned(cp) {
		t.Errorf("CLAIM BROKEN (the log serves only cosigned checkpoints): served %q (%v) while the witness held its answer, before %d", cp, err, cpSize(cp0))
	}

	close(w.release)
	if !a36WaitFor(15*time.Second, func() bool {
		cp, err := b.Checkpoint(ctx)
		return err == nil && cpSize(cp) >= size && w.cosigned(cp)
	}) {
		t.Fatalf("no cosigned checkpoint of %d entries after the witness answered; signer log:\n%s", size, lb.String())
	}
	close(stopCP)
	uncosig, _, _ := cps.snapshot()
	if len(uncosig) > 0 {
		t.Errorf("CLAIM BROKEN (the log serves only cosigned checkpoints): served without the cosignature: sizes %s", strings.Join(uncosig, ", "))
	}
	a37Report(t, a37Settled(t, b, v, outs, 15*time.Second))
}

// TestWitnessedRowTampered: an insider with write access to the log's database puts a
// checkpoint no key signed, claiming the largest tree, in the witnessed row. The log never
// serves it, the signer says so (ALERT) and writes the last good checkpoint back at once
// (the row is not kept by its claimed size), and later checkpoints are published as usual.
func TestWitnessedRowTampered(t *testing.T) {
	a, b, w, _, lb, dsn, _ := a40Fleet(t)
	admin := testAdmin(t, dsn)
	ctx := context.Background()
	a40FirstCosigned(t, a, b, w)
	good, err := b.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Each replica has seen it (its watch reads the row every second).
	if !a36WaitFor(5*time.Second, func() bool {
		g := a.goodCP.Load()
		return g != nil && string(g.note) == string(good)
	}) {
		t.Fatal("premise: replica a never saw the cosigned checkpoint")
	}
	forged := []byte(b.origin + "\n18446744073709551615\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u2014 x AAAA\n")
	if _, err := admin.Exec("UPDATE `"+witnessedTable+"` SET `size` = 18446744073709551615, `note` = ? WHERE `id` = 0", forged); err != nil {
		t.Fatal(err)
	}
	for _, l := range []*Log{a, b} {
		if cp, err := l.Checkpoint(ctx); err != nil || string(cp) != string(good) {
			t.Errorf("served %q (%v) with the forged row, want the last good checkpoint", cp, err)
		}
	}
	if !a36WaitFor(10*time.Second, func() bool {
		return strings.Contains(lb.String(), "ALERT audit log: the witnessed checkpoint is not signed by the log key")
	}) {
		t.Errorf("no ALERT naming the unsigned witnessed checkpoint; signer log:\n%s", lb.String())
	}
	if !a36WaitFor(5*time.Second, func() bool { return string(checkpointRow(t, admin)) == string(good) }) {
		t.Errorf("the row was not written back: %q", checkpointRow(t, admin))
	}
	a37Submit(a, "a", 2, 3)
	size, err := b.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !a36WaitFor(15*time.Second, func() bool {
		cp, err := b.Checkpoint(ctx)
		return err == nil && cpSize(cp) >= size && w.cosigned(cp)
	}) {
		cp, _ := b.Checkpoint(ctx)
		t.Fatalf("no cosigned checkpoint of the later entries: served %q; signer log:\n%s", cp, lb.String())
	}
}
