package audit

// Outside attacks, sixth round, on the history walk of a log on a shared MariaDB engine
// (scrub.go) and on the checkpoint watch (log.go watchCheckpoint, sqllog.go observe). The
// attacker has full SQL access to the log's database (any statement, views, stored
// functions, triggers, named locks, tessera's own driver) but holds neither keys/log.key
// nor the audit HMAC key. Replicas hold both. A test that fails demonstrates a broken
// promise (S1–S5 below); one that passes is an attack the code resists.
//
// Written by an outside tester (helper-16) against 6604049, where nine failed. Fixed in
// scrub.go, log.go and sqllog.go: tiles are checked as they are read (deleted, malformed,
// too many or too few hashes are alterations, not retries: tessera's proof builder turns
// its fetcher's errors into text); a bundle that does not parse is a security error; every
// entry of a step is proved and all failures named; a clean walk clears the last cause; a
// walk ends where the trusted tree ended when it began (growth cannot keep it at the
// head); the batch walk has its own stall clock; most reads failing in a window of 300
// steps, or a walk over four times its pace, is an ALERT; the checkpoint watch ignores a
// row not signed by the log key; only the watch judges rollbacks (the lock poll and the
// signer only raise the floor).
//
// S1  after a checkpoint covers them, any change to an entry's bytes (TiledLeaves), to the
//     tiles (Subtree) or to a batch's bundle (StrongroomBatch), or deleting those rows, is
//     reported by every replica's walk with the ALERT "the shared log's history was
//     altered after it was signed" naming the entry, within one walk, and counted in
//     strongroom_audit_scrub_failures_total.
// S2  no ALERT on a log the attacker has not altered, whatever its normal activity.
// S3  a walk that cannot advance raises "has not advanced" after 300 steps; the attacker
//     cannot freeze the walk silently.
// S4  "the published checkpoint went back to an older one" fires when the Checkpoint row
//     goes below one the replica read before, and not otherwise.
// S5  entry bundles holding fewer entries than their place (or a full one holding more)
//     are refused by every reader (ReadEntries).
//
// Written by an outside tester (helper, attack6) against 6604049. Broken there:
//   S1 TilesAndBundleBytes, FullTileAndBundle (3 of 4): a deleted or shortened tile row
//      (tessera's proof builder flattens os.ErrNotExist with %v), a tile or bundle that no
//      longer parses, or a full tile with a 257th hash is never reported as an alteration
//      (stall ALERT only, or nothing), never counted;
//   S1 SecondAlterationMasked (a second altered entry in a bundle is never named),
//      RealteredAfterRepair (sc.alerted is never cleared: a new incident on the same
//      entry raises no ALERT), WalkOutrunByGrowth (a log growing > 256 entries a step keeps
//      the walk at the head: old history is never checked again);
//   S3 BatchWalkFrozen (a batch bundle read failing with a plain error freezes the batch
//      walk forever without the stall ALERT), WalkThrottled (reads failing except 8 ms a
//      second: the walk 100× slower, no ALERT), WalkNeverStarts (no trusted tree: the walk
//      does nothing and says nothing; an unsigned Checkpoint row hides the lag too);
//   S4 RollbackAlertFromJitter (reads by two goroutines compared in the order handled:
//      false rollback ALERT under uneven latency).
// Held: S2 NormalActivityNoAlert, S5 ShortBundlesRefused, FullTileAndBundle's 257th entry.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/api"
	"golang.org/x/mod/sumdb/note"
)

const (
	a6Altered = "the shared log's history was altered after it was signed"
	a6Stalled = "the walk over the shared log's history has not advanced"
	a6Back    = "the published checkpoint went back to an older one"
)

// ---- helpers ----

// a6Replica opens a replica of dsn's log whose walk takes one step every `every`, logging
// to a buffer of its own; it is closed at the end of the test.
func a6Replica(t *testing.T, dsn string, s note.Signer, every time.Duration) (*Log, *syncBuffer) {
	t.Helper()
	return a6ReplicaStalling(t, dsn, s, every, 0)
}

// a6ReplicaStalling is a6Replica with its own stall ALERT wait (Config.CheckpointStall;
// 0: the package's).
func a6ReplicaStalling(t *testing.T, dsn string, s note.Signer, every, stall time.Duration) (*Log, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	l, err := Open(context.Background(), Config{EntryKey: testEntryKey, DB: dsn, Signer: s, ShutdownTimeout: time.Second,
		Logger: newTextLogger(logs), ScrubEvery: every, CheckpointStall: stall})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l, logs
}

// a6Log is a new shared log with n sealed entries, a replica that trusts a checkpoint
// covering them all, and proof that its walk went over them (several steps) without an
// ALERT.
func a6Log(t *testing.T, name string, n int, every time.Duration) (dsn string, v note.Verifier, db *sql.DB, l *Log, logs *syncBuffer) {
	t.Helper()
	dsn = sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/"+name)
	db = testAdmin(t, dsn)
	l, logs = a6Replica(t, dsn, s, every)
	a5Fill(t, l, n)
	a2WaitVerify(t, l, v, uint64(n), nil)
	if !a6Until(10*time.Second, func() bool { size, _ := l.signer.trusted(); return size >= uint64(n) }) {
		t.Fatalf("the replica does not trust a tree of %d entries", n)
	}
	if every < time.Minute {
		a6Steps(t, l, 3)
	}
	if out := logs.String(); strings.Contains(out, "ALERT") {
		t.Fatalf("ALERT on an unaltered log:\n%s", out)
	}
	return dsn, v, db, l, logs
}

// a6Until polls cond every 10 ms for at most d.
func a6Until(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// a6Steps waits until l's walk has advanced n more steps (30 s at most).
func a6Steps(t *testing.T, l *Log, n int64) {
	t.Helper()
	base := l.scrub.steps.Load()
	// 60 s: a bound for a walk that stopped, not its pace (900 steps of 5 ms took over 30 s
	// once, in a suite that ran three test processes on two cores).
	if !a6Until(60*time.Second, func() bool { return l.scrub.steps.Load() >= base+n }) {
		t.Fatalf("the walk did not advance %d steps in 60 s (from %d, at %d)", n, base, l.scrub.steps.Load())
	}
}

// a6Outcome waits (20 s at most) until the walk raises either of its ALERTs and returns
// the lines (empty: not raised).
func a6Outcome(logs *syncBuffer) (altered, stalled string) {
	a6Until(20*time.Second, func() bool {
		out := logs.String()
		altered, stalled = firstLine(out, a6Altered), firstLine(out, a6Stalled)
		return altered != "" || stalled != ""
	})
	return altered, stalled
}

// a6Verify is what an outside verifier reading the replica's /log/ says.
func a6Verify(t *testing.T, l *Log, v note.Verifier) error {
	f, bundles := a2Fetch(t, l.Handler())
	_, err := Verify(context.Background(), f, VerifyOptions{LogKey: v, Bundles: bundles})
	return err
}

// a6Bundle reads entry bundle i's row and decodes its data.
func a6Bundle(t *testing.T, db *sql.DB, i int) [][]byte {
	t.Helper()
	var data []byte
	if err := db.QueryRow("SELECT `data` FROM `TiledLeaves` WHERE `tile_index` = ?", i).Scan(&data); err != nil {
		t.Fatal(err)
	}
	var b api.EntryBundle
	if err := b.UnmarshalText(data); err != nil {
		t.Fatal(err)
	}
	return b.Entries
}

func a6Exec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// a6Forged is an entry the attacker writes in place of another (no MAC).
func a6Forged(principal string) []byte {
	ev := a5Forged(principal)
	b, _ := ev.Marshal()
	return b
}

// ---- S1: alterations the walk does not report as alterations ----

// TestAttack6TilesAndBundleBytes — S1. The attacker deletes a tile's row, cuts a hash off
// it, or changes an entry bundle's bytes so that they no longer parse (the last entry cut
// short, a length prefix off by one). Every one is a change to what a signed checkpoint
// covers, and every outside verifier reports it. The walk must raise the alteration ALERT
// and count it. tessera's proof builder formats its tile fetcher's error with %v (the
// os.ErrNotExist of a missing tile is lost, so scrub.go's deleted() cannot see it), and a
// bundle that does not parse is a plain error: the walk retries the same place in silence,
// counts nothing and, 300 steps later, says only that it "has not advanced".
func TestAttack6TilesAndBundleBytes(t *testing.T) {
	t.Parallel() // see sqlTestDB
	cases := []struct {
		name string
		do   func(t *testing.T, db *sql.DB)
	}{
		{"Subtree row 0/0 deleted", func(t *testing.T, db *sql.DB) {
			a6Exec(t, db, "DELETE FROM `Subtree` WHERE `level` = 0 AND `index` = 0")
		}},
		{"Subtree row 0/0 cut by one hash", func(t *testing.T, db *sql.DB) {
			a6Exec(t, db, "UPDATE `Subtree` SET `nodes` = LEFT(`nodes`, LENGTH(`nodes`) - 32) WHERE `level` = 0 AND `index` = 0")
		}},
		{"entry 5's bytes cut short in TiledLeaves", func(t *testing.T, db *sql.DB) {
			a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = LEFT(`data`, LENGTH(`data`) - 3) WHERE `tile_index` = 0")
		}},
		{"entry 1's length prefix one more", func(t *testing.T, db *sql.DB) {
			var data []byte
			if err := db.QueryRow("SELECT `data` FROM `TiledLeaves` WHERE `tile_index` = 0").Scan(&data); err != nil {
				t.Fatal(err)
			}
			off := 2 + int(binary.BigEndian.Uint16(data)) // entry 1's prefix
			binary.BigEndian.PutUint16(data[off:], binary.BigEndian.Uint16(data[off:])+1)
			a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", data)
		}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, v, db, l, logs := a6Log(t, fmt.Sprintf("attack6-bytes%d", i), 6, 5*time.Millisecond)
			c.do(t, db)
			altered, stalled := a6Outcome(logs)
			if altered == "" {
				t.Errorf("S1 BROKEN (%s): no ALERT %q, strongroom_audit_scrub_failures_total = %v; the walk only retried, and said after 300 steps: %s\n    an outside verifier over /log/ says: %v",
					c.name, a6Altered, testutil.ToFloat64(l.scrub.failures), stalled, a6Verify(t, l, v))
			}
		})
	}
}

// TestAttack6FullTileAndBundle — S1, on a log of 260 entries (tile 0/0 and bundle 0 full):
// (a) a 257th hash appended to the full tile 0/0: Verify refuses the log ("tile 0/0 holds
// 257 hashes, want 256") but the proof builder reads only the hashes it needs, so the walk
// never reports anything; (b) one byte appended to the full tile, (c) one byte appended to
// the full entry bundle: plain parse errors, the walk only stalls. (d) a 257th entry in the
// full bundle is refused by ReadEntries as a security error: reported.
func TestAttack6FullTileAndBundle(t *testing.T) {
	t.Parallel() // see sqlTestDB
	cases := []struct {
		name   string
		sql    string
		silent bool // the walk takes steps on: wait for walks, not for an ALERT
	}{
		{"full tile 0/0 with a 257th hash", "UPDATE `Subtree` SET `nodes` = CONCAT(`nodes`, LEFT(`nodes`, 32)) WHERE `level` = 0 AND `index` = 0", true},
		{"full tile 0/0 with one byte more", "UPDATE `Subtree` SET `nodes` = CONCAT(`nodes`, 'x') WHERE `level` = 0 AND `index` = 0", false},
		{"full entry bundle 0 with one byte more", "UPDATE `TiledLeaves` SET `data` = CONCAT(`data`, 'x') WHERE `tile_index` = 0", false},
		{"full entry bundle 0 with a 257th entry", "UPDATE `TiledLeaves` SET `data` = CONCAT(`data`, X'0002', '{}') WHERE `tile_index` = 0", false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, v, db, l, logs := a6Log(t, fmt.Sprintf("attack6-full%d", i), 260, 5*time.Millisecond)
			a6Exec(t, db, c.sql)
			var altered, stalled string
			if c.silent {
				a6Steps(t, l, 60) // 30 walks of the two bundles
				altered, stalled = firstLine(logs.String(), a6Altered), firstLine(logs.String(), a6Stalled)
			} else {
				altered, stalled = a6Outcome(logs)
			}
			if altered == "" {
				what := "after 300 steps, only: " + stalled
				if stalled == "" {
					what = fmt.Sprintf("nothing at all in %d steps (30 walks of the log)", 60)
				}
				t.Errorf("S1 BROKEN (%s): no ALERT %q, strongroom_audit_scrub_failures_total = %v; the walk said %s\n    an outside verifier over /log/ says: %v",
					c.name, a6Altered, testutil.ToFloat64(l.scrub.failures), what, a6Verify(t, l, v))
			}
		})
	}
}

// TestAttack6SecondAlterationMasked — S1. Two entries of one bundle altered at once: the
// step proving the bundle stops at the first bad entry, and the walk goes on to the next
// bundle. While the first stays altered, the second is never named, however many walks.
func TestAttack6SecondAlterationMasked(t *testing.T) {
	t.Parallel() // see sqlTestDB
	_, _, db, l, logs := a6Log(t, "attack6-mask", 6, 5*time.Millisecond)
	leaves := a6Bundle(t, db, 0)
	leaves[1] = a6Forged("decoy")
	leaves[4] = a6Forged("the-real-target")
	a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(leaves))
	if !a6Until(10*time.Second, func() bool { return strings.Contains(logs.String(), "entry 1 no longer matches") }) {
		t.Fatalf("entry 1 not reported:\n%s", logs.String())
	}
	base := testutil.ToFloat64(l.scrub.failures)
	a6Until(20*time.Second, func() bool { return testutil.ToFloat64(l.scrub.failures) >= base+50 }) // 50 more walks of the bundle
	if !strings.Contains(logs.String(), "entry 4 no longer matches") {
		t.Errorf("S1 BROKEN: entry 4 altered, never named in %v walks of its bundle (every step stops at entry 1, also altered); ALERTs:\n%s",
			testutil.ToFloat64(l.scrub.failures), a6Lines(logs.String(), "ALERT"))
	}
}

// TestAttack6RealteredAfterRepair — S1. The walk ALERTs once per cause, and the cause of an
// entry's alteration carries no bytes (alertCause strips the roots), and sc.alerted is
// never cleared by a clean walk. Entry 1 altered: ALERT. The operator repairs it: clean
// walks. A month later the attacker alters entry 1 again (other bytes): the walk sees it
// (the failure counter moves), but raises no ALERT.
func TestAttack6RealteredAfterRepair(t *testing.T) {
	t.Parallel() // see sqlTestDB
	_, _, db, l, logs := a6Log(t, "attack6-again", 6, 5*time.Millisecond)
	leaves := a6Bundle(t, db, 0)
	forged := append([][]byte{}, leaves...)
	forged[1] = a6Forged("first-incident")
	a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(forged))
	if !a6Until(10*time.Second, func() bool { return strings.Contains(logs.String(), "entry 1 no longer matches") }) {
		t.Fatalf("entry 1 not reported:\n%s", logs.String())
	}
	// Repaired; the walk goes over it cleanly.
	a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(leaves))
	a6Steps(t, l, 20)
	f0 := testutil.ToFloat64(l.scrub.failures)
	a6Steps(t, l, 20)
	if f := testutil.ToFloat64(l.scrub.failures); f != f0 {
		t.Fatalf("failures still counted after the repair (%v → %v)", f0, f)
	}
	// The second incident.
	forged[1] = a6Forged("second-incident")
	a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(forged))
	if !a6Until(10*time.Second, func() bool { return testutil.ToFloat64(l.scrub.failures) >= f0+5 }) {
		t.Fatal("the walk did not see the second alteration")
	}
	if n := strings.Count(logs.String(), a6Altered); n < 2 {
		t.Errorf("S1 BROKEN: entry 1 altered again after its repair; the walk counted it (%v failures since) but raised %d ALERT(s) in all, none for the second incident:\n%s",
			testutil.ToFloat64(l.scrub.failures)-f0, n, a6Lines(logs.String(), "ALERT"))
	}
}

func a6Lines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			if len(line) > 400 {
				line = line[:400] + "…"
			}
			out = append(out, "    "+line)
		}
	}
	return strings.Join(out, "\n")
}

// TestAttack6WalkOutrunByGrowth — S1 ("within one walk of the log"). The walk goes back
// to entry 0 only once it reaches the trusted size (and so does the batch walk, which
// proves one bundle of entries every tenth step); a log that grows by more than 256
// entries a step (256 entries/s at the default pace of one step a second: three replicas
// whose batchers each commit a batch entry every 10 ms under steady traffic do) keeps both
// at the head for good, and old history is never checked again. Once both walks have left
// bundle 0 behind and the log grows ~900 entries/s, entry 5 is altered: the walk then
// checks twice the entries the log held at the alteration and never returns to it.
func TestAttack6WalkOutrunByGrowth(t *testing.T) {
	t.Parallel() // see sqlTestDB
	_, _, db, l, logs := a6Log(t, "attack6-outrun", 300, DefaultScrubEvery)
	// The batch walk's first step (step 10) goes over bundle 0; the next one (step 20)
	// starts at entry 256.
	if !a6Until(30*time.Second, func() bool { return l.scrub.steps.Load() > scrubBundleEvery }) {
		t.Fatal("the walk does not advance")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			var fs []Future
			for j := range 200 {
				fs = append(fs, l.Submit(ctx, event(1000+200*i+j)))
			}
			for _, f := range fs {
				f()
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	// Once the trusted tree runs ahead of the walk (which then never catches up), two
	// steps: the walk has left bundle 0 behind, for good.
	if !a6Until(20*time.Second, func() bool { n, _ := l.signer.trusted(); return n >= 1000 }) {
		t.Fatal("the log does not grow")
	}
	a6Steps(t, l, 2)
	leaves := a6Bundle(t, db, 0)
	if len(leaves) != 256 {
		t.Fatalf("bundle 0 holds %d entries", len(leaves))
	}
	leaves[5] = a6Forged("outrun")
	a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(leaves))
	sizeAt, _ := l.IntegratedSize(context.Background())
	steps0 := l.scrub.steps.Load()
	t0 := time.Now()
	// Until the walk has checked twice the entries the log held when entry 5 was altered
	// (two walks of that log), or entry 5 is reported.
	need := int64((2*sizeAt + 255) / 256)
	a6Until(45*time.Second, func() bool {
		return strings.Contains(logs.String(), "entry 5 no longer matches") || l.scrub.steps.Load()-steps0 >= need
	})
	reported := strings.Contains(logs.String(), "entry 5 no longer matches")
	cancel()
	wg.Wait()
	size, _ := l.IntegratedSize(context.Background())
	steps := l.scrub.steps.Load() - steps0
	if !reported {
		t.Errorf("S1 BROKEN: entry 5 altered at log size %d; in %v the walk took %d steps (up to %d entries checked: %.1f walks of the log as it was) and never came back to it: the log grew to %d (%.0f entries/s, more than 256 a step); no ALERT (failures %v)",
			sizeAt, time.Since(t0).Round(time.Second), steps, steps*256, float64(steps*256)/float64(sizeAt), size, float64(size-sizeAt)/time.Since(t0).Seconds(), testutil.ToFloat64(l.scrub.failures))
	}
}

// ---- S3: freezing the walk without a word ----

// TestAttack6BatchWalkFrozen — S3 and S1 (batch bundles). The stall ALERT is measured from
// the last step that did not fail, and a step whose entries prove but whose batch check
// fails with a plain error counts as one that did not fail (sc.since is reset by the next
// step). So a batch bundle whose read fails with anything but "not found" freezes the
// batch walk on it for good, in silence, while the entry walk advances. The attacker
// turns StrongroomBatch into a view over the real table whose WHERE calls a stored
// function that SIGNALs (a "lock wait timeout") for one bundle only — gateways still write
// and read every other batch through it — then alters the next batch's bundle. Neither the
// alteration nor the stall is ever reported.
func TestAttack6BatchWalkFrozen(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack6-batchfreeze")
	db := testAdmin(t, dsn)
	l, logs := a6Replica(t, dsn, s, 5*time.Millisecond)
	ctx := context.Background()
	for i := range 3 {
		if _, err := l.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	a2Batch(t, l, 0, 3) // entry 3
	if _, err := l.Record(ctx, event(4)); err != nil {
		t.Fatal(err)
	}
	a2Batch(t, l, 10, 3) // entry 5
	if _, err := l.Record(ctx, event(6)); err != nil {
		t.Fatal(err)
	}
	a2WaitVerify(t, l, v, 7, nil)
	a6Until(5*time.Second, func() bool { n, _ := l.signer.trusted(); return n >= 7 })
	a6Steps(t, l, 3*scrubBundleEvery)
	if out := logs.String(); strings.Contains(out, "ALERT") {
		t.Fatalf("ALERT on an unaltered log:\n%s", out)
	}
	var names []string
	for _, e := range a3ReadLeaves(t, db) {
		if ev, err := ParseEvent(e); err == nil && ev.Kind == KindBatch {
			names = append(names, ev.Subject["bundle"])
		}
	}
	if len(names) != 2 {
		t.Fatalf("%d batches", len(names))
	}
	b1, b2 := names[0], names[1]

	// The freeze: one bundle unreadable, with an error that is not "not found".
	a6Exec(t, db, "RENAME TABLE `StrongroomBatch` TO `StrongroomBatch_a6`")
	a6Exec(t, db, "CREATE FUNCTION `a6_guard`(n CHAR(64)) RETURNS INT DETERMINISTIC NO SQL BEGIN IF n = '"+b1+"' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Lock wait timeout exceeded; try restarting transaction'; END IF; RETURN 1; END")
	a6Exec(t, db, "CREATE VIEW `StrongroomBatch` AS SELECT `name`, `data` FROM `StrongroomBatch_a6` WHERE `a6_guard`(`name`) = 1")
	if _, err := l.Bundles().Bundle(ctx, b1); err == nil {
		t.Fatal("bundle 1 still readable")
	} else {
		t.Logf("bundle %s now reads: %v", b1[:8], err)
	}
	a2Batch(t, l, 20, 3) // gateways still store (and read) batches through the view: entry 7
	// Several batch steps: the batch walk reaches the first batch and stays there.
	a6Steps(t, l, 6*scrubBundleEvery)

	// Now the second batch's bundle is altered.
	var data []byte
	if err := db.QueryRow("SELECT `data` FROM `StrongroomBatch_a6` WHERE `name` = ?", b2).Scan(&data); err != nil {
		t.Fatal(err)
	}
	altered := bytes.Replace(data, []byte(`"decision":"allow"`), []byte(`"decision":"deny!"`), 1)
	if bytes.Equal(altered, data) {
		t.Fatal("no allowed record in bundle 2")
	}
	a6Exec(t, db, "UPDATE `StrongroomBatch_a6` SET `data` = ? WHERE `name` = ?", altered, b2)
	got, err := l.Bundles().Bundle(ctx, b2)
	if err != nil || !bytes.Equal(got, altered) {
		t.Fatalf("bundle 2 through the view: %v", err)
	}
	// Three times the stall threshold in steps: 90 batch checks, for three batches.
	a6Steps(t, l, 3*scrubStallSteps)
	out := logs.String()
	if !strings.Contains(out, a6Altered) && !strings.Contains(out, a6Stalled) {
		t.Errorf("S3/S1 BROKEN: batch %s… (entry 5) altered, batch %s… (entry 3) unreadable (%q); in %d steps (%d batch checks for 3 batches, 3× the 300-step stall threshold) no ALERT at all, scrub failures %v; an outside verifier says: %v",
			b2[:12], b1[:12], "Lock wait timeout exceeded", 3*scrubStallSteps, 3*scrubStallSteps/scrubBundleEvery, testutil.ToFloat64(l.scrub.failures), a6Verify(t, l, v))
	}
	// Control: with the view gone, the walk moves on and names the altered batch at once.
	a6Exec(t, db, "DROP VIEW `StrongroomBatch`")
	a6Exec(t, db, "RENAME TABLE `StrongroomBatch_a6` TO `StrongroomBatch`")
	if a6Until(10*time.Second, func() bool { return strings.Contains(logs.String(), "batch bundle "+b2) }) {
		t.Logf("control: once bundle %s… reads again, the walk reports batch %s… within %d steps", b1[:12], b2[:12], 6*scrubBundleEvery)
	} else {
		t.Logf("control: the altered batch was not reported even once the view was gone")
	}
}

// TestAttack6WalkThrottled — S3. The stall ALERT needs 300 consecutive steps that fail;
// one step that succeeds resets it. The attacker turns TiledLeaves into a view over the
// real table whose WHERE calls a stored function that SIGNALs ("lock wait timeout")
// except during the first 8 ms of every second (in production: the first 1.5 s of every
// 290 s). Nothing else reads old bundles while no entry is appended (tessera writes the
// newest bundle only; a guard on tile_index would keep appends working). The walk now
// advances about once a second instead of every 5 ms — some hundred times slower, so one
// walk of a million-entry log at the default pace takes months instead of an hour —
// and no ALERT is raised.
func TestAttack6WalkThrottled(t *testing.T) {
	t.Parallel() // see sqlTestDB
	_, _, db, l, logs := a6Log(t, "attack6-throttle", 6, 5*time.Millisecond)
	s0, t0 := l.scrub.steps.Load(), time.Now()
	a6Until(time.Second, func() bool { return false })
	normal := float64(l.scrub.steps.Load()-s0) / time.Since(t0).Seconds()
	a6Exec(t, db, "CREATE FUNCTION `a6_window`() RETURNS INT NOT DETERMINISTIC NO SQL BEGIN IF MOD(FLOOR(UNIX_TIMESTAMP(NOW(6)) * 1000), 1000) >= 8 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'Lock wait timeout exceeded; try restarting transaction'; END IF; RETURN 1; END")
	a6Exec(t, db, "RENAME TABLE `TiledLeaves` TO `TiledLeaves_a6`")
	a6Exec(t, db, "CREATE VIEW `TiledLeaves` AS SELECT `tile_index`, `size`, `data` FROM `TiledLeaves_a6` WHERE `a6_window`() = 1")
	s1, t1 := l.scrub.steps.Load(), time.Now()
	// 8 s: 1600 steps at the walk's pace, five times the stall threshold.
	alerted := a6Until(8*time.Second, func() bool { return strings.Contains(logs.String(), "ALERT") })
	rate := float64(l.scrub.steps.Load()-s1) / time.Since(t1).Seconds()
	if !alerted && rate < normal/10 {
		t.Errorf("S3 BROKEN: history reads fail except 8 ms a second; the walk slowed from %.0f to %.1f steps/s (%.0f× slower) for %v, with no ALERT (the 300-step stall count restarts at each step that gets through)",
			normal, rate, normal/rate, time.Since(t1).Round(time.Second))
	} else if alerted {
		t.Logf("held: %s", a6Lines(logs.String(), "ALERT"))
	}
}

// TestAttack6WalkNeverStarts — S3. A replica's walk needs a tree it trusts; one that joins
// the fleet (a scale-out, or a restart without a data directory to keep its floor) has
// none until it sees a signed checkpoint or signs one. The attacker holds the signer's
// named lock (GET_LOCK from its own connection: no replica signs) and deletes the
// Checkpoint row before the replica starts: its walk has size 0 and returns at once, every
// step, forever — no stall ALERT, since no step is counted. The checkpoint watch would
// alert after CheckpointStall that entries wait for a checkpoint, but it takes its sizes
// from the row unsigned: an unsigned row claiming 2^64-1 entries makes the lag 0, and
// that ALERT never comes either. Then entry 1 is altered: total silence.
func TestAttack6WalkNeverStarts(t *testing.T) {
	t.Parallel() // see sqlTestDB; the lowered stall is the replicas' own
	const stall = 2 * time.Second
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack6-never")
	db := testAdmin(t, dsn)
	l1, _ := a6ReplicaStalling(t, dsn, s, 5*time.Millisecond, stall)
	a5Fill(t, l1, 6)
	a2WaitVerify(t, l1, v, 6, nil)
	if err := l1.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	holdSignerLock(t, dsn)
	a6Exec(t, db, "DELETE FROM `Checkpoint`")

	r, logs := a6ReplicaStalling(t, dsn, s, 5*time.Millisecond, stall)
	bogus := fmt.Sprintf("%s\n18446744073709551615\n%s\n\n\u2014 %s AAAAAAAAAAAA\n", r.Origin(), base64.StdEncoding.EncodeToString(make([]byte, 32)), r.Origin())
	a6Exec(t, db, "INSERT INTO `Checkpoint` (`id`, `note`, `published_at`) VALUES (0, ?, ?)", bogus, time.Now().UnixMilli())
	a5Fill(t, r, 3) // the replica serves traffic
	leaves := a3ReadLeaves(t, db)
	leaves[1] = a6Forged("never-walked")
	a6Exec(t, db, "UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(leaves))
	t0 := time.Now()
	// 6 s: 1200 steps of 5 ms (4× the stall threshold), 3× CheckpointStall.
	alerted := a6Until(6*time.Second, func() bool { return strings.Contains(logs.String(), "ALERT") })
	if !alerted {
		size, _ := r.signer.trusted()
		n, _ := r.IntegratedSize(context.Background())
		t.Errorf("S3 BROKEN: in %v the new replica's walk took %d steps (trusted tree size %d, log %d entries, entry 1 altered) and raised no ALERT of any kind (nor did the checkpoint watch: the unsigned row's size hides the lag)",
			time.Since(t0).Round(time.Millisecond), r.scrub.steps.Load(), size, n)
	}
}

// ---- S4: the rollback ALERT ----

// a6Jitter is a TCP proxy to the engine that answers the checkpoint watch late: a chunk
// the server sends that holds marker (the checkpoint note), on a connection whose previous
// statement read TreeState (the watch reads IntegratedSize, then the checkpoint, on the
// connection the pool hands back), is delayed by max/2–max. A slow connection, a
// congested link or a descheduled goroutine does the same to whichever read it hits.
type a6Jitter struct {
	ln     net.Listener
	target string
	marker []byte
	max    time.Duration
	mu     sync.Mutex
	conns  []net.Conn
}

func newA6Jitter(t *testing.T, dsn string, marker string, max time.Duration) (*a6Jitter, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &a6Jitter{ln: ln, target: a2Target(t, dsn), marker: []byte(marker), max: max}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	c, err := ParseLogDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	c.Addr = ln.Addr().String()
	return p, "mysql://" + c.FormatDSN()
}

func (p *a6Jitter) pipe(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, up)
	p.mu.Unlock()
	var afterTree, slow atomic.Bool
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				switch chunk := buf[:n]; {
				case bytes.Contains(chunk, []byte("`TreeState`")):
					afterTree.Store(!bytes.Contains(chunk, []byte("FOR UPDATE")))
				case bytes.Contains(chunk, []byte("`Checkpoint`")):
					slow.Store(afterTree.Load() && !bytes.Contains(chunk, []byte("FOR UPDATE")))
					afterTree.Store(false)
				}
				if _, werr := up.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		up.Close()
		c.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if slow.Load() && bytes.Contains(buf[:n], p.marker) {
				time.Sleep(p.max/2 + time.Duration(mrand.Int64N(int64(p.max/2))))
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	c.Close()
	up.Close()
}

// TestAttack6RollbackAlertFromJitter — S4 ("not otherwise"). Two goroutines of every
// replica read the Checkpoint row, each on a pooled connection of its own: the lock poll
// (every 250 ms) and the checkpoint watch (every second), and both feed observe(cp, true),
// which compares each row with the largest read before — in the order the answers are
// handled, not the order the server read the row in. With half the pooled connections
// answering 350–700 ms late (nothing the attacker does: the log is untouched, and a
// trigger records every Checkpoint row written, which only ever grows), a row the watch
// read before a publication but handled after the lock poll saw the next one is taken for
// a rollback.
func TestAttack6RollbackAlertFromJitter(t *testing.T) {
	dsn := sqlTestDB(t)
	s, _, _ := newKeys(t, "strongroom.test/attack6-jitter")
	db := testAdmin(t, dsn)
	// Every Checkpoint row ever written, in order (the test's own record, not an attack):
	// the log's tables, and a trigger, before the replica publishes its first checkpoint.
	for _, q := range tesseraSchema {
		a6Exec(t, db, q)
	}
	a6Exec(t, db, "CREATE TABLE `a6_cp_history` (`seq` BIGINT AUTO_INCREMENT PRIMARY KEY, `size` BIGINT UNSIGNED NOT NULL)")
	a6Exec(t, db, "CREATE TRIGGER `a6_cp_log` BEFORE INSERT ON `Checkpoint` FOR EACH ROW INSERT INTO `a6_cp_history` (`size`) VALUES (CAST(SUBSTRING_INDEX(SUBSTRING_INDEX(NEW.`note`, '\\n', 2), '\\n', -1) AS UNSIGNED))")
	_, proxied := newA6Jitter(t, dsn, s.Name(), 700*time.Millisecond)
	l, logs := a6Replica(t, proxied, s, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			l.Record(ctx, event(i))
			time.Sleep(40 * time.Millisecond)
		}
	})
	fired := a6Until(12*time.Second, func() bool { return strings.Contains(logs.String(), a6Back) }) // ~12 publications under jitter (45 s in the outside round, 25 s until the twenty-sixth session: the suite's time)
	cancel()
	wg.Wait()
	var sizes []uint64
	rows, err := db.Query("SELECT `size` FROM `a6_cp_history` ORDER BY `seq`")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n uint64
		rows.Scan(&n)
		sizes = append(sizes, n)
	}
	rows.Close()
	for i := 1; i < len(sizes); i++ {
		if sizes[i] < sizes[i-1] {
			t.Fatalf("the Checkpoint row really went back (%d after %d): not the case under test", sizes[i], sizes[i-1])
		}
	}
	if len(sizes) < 2 {
		t.Fatalf("only %d checkpoints published (%v)", len(sizes), sizes)
	}
	if fired {
		t.Errorf("S4 BROKEN: ALERT %q on a log nobody touched; every Checkpoint row ever written, in order: %v (never going back):\n%s",
			a6Back, sizes, a6Lines(logs.String(), a6Back))
	} else {
		t.Logf("held: no false rollback ALERT over %d publications", len(sizes))
	}
}

// ---- S2: normal activity ----

// TestAttack6NormalActivityNoAlert — S2 (expected to hold). Two replicas append entries
// and request batches concurrently past a bundle boundary (partial bundles and tiles grow
// into full ones) while checkpoints are published; the signer closes mid-way (failover),
// and a third replica joins. No replica's walk (nor any other check) raises an ALERT.
func TestAttack6NormalActivityNoAlert(t *testing.T) {
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack6-normal")
	// A step every 10 ms: at 2 ms, a machine busy with the rest of the suite (and -race)
	// could not keep the walk's pace, and the slow-walk ALERT (300 steps of slack: 0.6 s)
	// fired on an unaltered log — true of the walk, false as a sign of an attack.
	const normalStep = 10 * time.Millisecond
	a, alogs := a6Replica(t, dsn, s, normalStep)
	b, blogs := a6Replica(t, dsn, s, normalStep)
	work := func(l *Log, from, n int) {
		var wg sync.WaitGroup
		wg.Go(func() { a5Fill(t, l, n) })
		wg.Go(func() {
			for i := range 5 {
				a2Batch(t, l, from+10*i, 4)
			}
		})
		wg.Wait()
	}
	var wg sync.WaitGroup
	wg.Go(func() { work(a, 0, 90) })
	wg.Go(func() { work(b, 1000, 90) })
	wg.Wait()
	signer, other := a, b
	if !a.Signer() {
		signer, other = b, a
	}
	if err := signer.Close(context.Background()); err != nil {
		t.Logf("close signer: %v", err)
	}
	c, clogs := a6Replica(t, dsn, s, normalStep)
	wg.Go(func() { work(other, 2000, 60) })
	wg.Go(func() { work(c, 3000, 60) })
	wg.Wait()
	size, _ := other.IntegratedSize(context.Background())
	if size < 300 {
		t.Fatalf("log of %d entries", size)
	}
	a2WaitVerify(t, other, v, size, nil)
	for _, l := range []*Log{other, c} {
		a6Until(10*time.Second, func() bool { n, _ := l.signer.trusted(); return n >= size })
		a6Steps(t, l, 4*scrubBundleEvery)
	}
	for name, out := range map[string]string{"a": alogs.String(), "b": blogs.String(), "c": clogs.String()} {
		if strings.Contains(out, "ALERT") {
			t.Errorf("S2 BROKEN: replica %s raised an ALERT on an unaltered log (size %d):\n%s", name, size, a6Lines(out, "ALERT"))
		}
	}
}

// ---- S5: short or padded bundles ----

// TestAttack6ShortBundlesRefused — S5 (expected to hold). Through a replica's own reader:
// a partial bundle's last entry removed (its row's size kept), the row's size lowered, a
// full bundle with one entry fewer, and one with an entry split in two (257). ReadEntries
// must refuse each; so must ReadEntry and Verify.
func TestAttack6ShortBundlesRefused(t *testing.T) {
	t.Parallel() // see sqlTestDB
	_, v, db, l, _ := a6Log(t, "attack6-short", 260, time.Hour)
	ctx := context.Background()
	full := a6Bundle(t, db, 0)
	part := a6Bundle(t, db, 1)
	var partSize int
	db.QueryRow("SELECT `size` FROM `TiledLeaves` WHERE `tile_index` = 1").Scan(&partSize)
	cases := []struct {
		name    string
		bundle  int
		data    []byte
		size    int
		entries []uint64 // entries a check would read
	}{
		{"partial bundle 1 without its last entry", 1, a3Bundle(part[:3]), partSize, []uint64{259}},
		{"partial bundle 1's size lowered", 1, a3Bundle(part), 2, []uint64{258, 259}},
		{"full bundle 0 without entry 100", 0, a3Bundle(append(append([][]byte{}, full[:100]...), full[101:]...)), 256, []uint64{100, 255}},
		{"full bundle 0 with entry 7 split in two", 0, a3Bundle(append(append(append([][]byte{}, full[:7]...), full[7][:10], full[7][10:]), full[8:]...)), 256, []uint64{7, 255}},
	}
	for _, c := range cases {
		var oldData []byte
		var oldSize int
		db.QueryRow("SELECT `size`, `data` FROM `TiledLeaves` WHERE `tile_index` = ?", c.bundle).Scan(&oldSize, &oldData)
		a6Exec(t, db, "UPDATE `TiledLeaves` SET `size` = ?, `data` = ? WHERE `tile_index` = ?", c.size, c.data, c.bundle)
		if err := ReadEntries(ctx, l.Reader().ReadEntryBundle, 0, 260, func([]store.AuditEvent) error { return nil }); err == nil {
			t.Errorf("S5 BROKEN (%s): ReadEntries over [0, 260) accepted it", c.name)
		} else {
			t.Logf("held (%s): ReadEntries: %v", c.name, err)
		}
		for _, i := range c.entries {
			if e, err := ReadEntry(ctx, l.Reader(), i, 260); err == nil {
				t.Errorf("S5 BROKEN (%s): ReadEntry(%d) returned %q", c.name, i, e)
			}
		}
		if err := a6Verify(t, l, v); err == nil {
			t.Errorf("S5 BROKEN (%s): Verify accepted it", c.name)
		}
		a6Exec(t, db, "UPDATE `TiledLeaves` SET `size` = ?, `data` = ? WHERE `tile_index` = ?", oldSize, oldData, c.bundle)
	}
	if err := a6Verify(t, l, v); err != nil {
		t.Fatalf("restored log: %v", err)
	}
}
