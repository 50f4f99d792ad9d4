package audit

// Outside attacks, eleventh round, on the durability of a shared log's acknowledged entries
// across an attacker who writes the log's MariaDB database (any statement; no keys) and can
// SIGKILL any replica at a moment of their choosing (durable.go: rememberMine, checkMine,
// openMine; sqllog.go: leaderSigner, loadFloor, checkRowAtStart). A test fails ("PROMISE ...
// BROKEN:") when the promise it attacks breaks; one that passes logs what held.
//
// D1  an entry whose append a replica acknowledged ends up in the signed log (a checkpoint
//     signed by the log key covers it), even if the unsigned tail is rewritten without it
//     and the replica was SIGKILLed after acknowledging (restarted with the same data
//     directory); its restoration raises "ALERT audit log: an entry this replica appended is
//     not in the signed log".
// D2  nothing is restored twice or invented: an entry that was not erased is not appended a
//     second time because of a crash/restart.
// D3  a Checkpoint row put back to an older authentic checkpoint while a replica was stopped
//     raises "ALERT audit log: the published checkpoint went back to an older one" when that
//     replica starts again with the same data directory.
// D4  a crash at any moment never makes the replica refuse to start, and never loses an
//     acknowledged entry.
//
// The killed replica is this test binary re-run (TestAttack11ReplicaProcess), driven over
// its stdin; its slog output (stderr) is kept for the ALERTs.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"

	"github.com/strongroom/strongroom/internal/store"
)

// ---- the replica process and its driver ----

// TestAttack11ReplicaProcess is a replica of a shared log in a process of its own (this
// test binary re-run by the TestAttack11 tests, which SIGKILL it). It opens the log with the
// data directory SR_A11_DIR, logs to stderr, says "open", and obeys its stdin:
//
//	rec <n>            record one sealed entry with field n, say "idx <n> <index>"
//	loop <prefix> <ms> record <prefix>-0, <prefix>-1, ... every ms, saying "ack <n> <index>"
func TestAttack11ReplicaProcess(t *testing.T) {
	dsn, skey, dir := os.Getenv("SR_A11_DSN"), os.Getenv("SR_A11_SKEY"), os.Getenv("SR_A11_DIR")
	if dsn == "" {
		t.Skip("run by the TestAttack11 tests")
	}
	ctx := context.Background()
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	var outMu sync.Mutex
	say := func(format string, a ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Printf(format+"\n", a...)
	}
	l, err := Open(ctx, Config{EntryKey: testEntryKey, DB: dsn, Dir: dir, Signer: s, ShutdownTimeout: time.Second, Logger: newTextLogger(os.Stderr)})
	if err != nil {
		say("openfail %v", err)
		os.Exit(3)
	}
	say("open")
	record := func(n string) (uint64, error) {
		ev := event(7)
		ev.Fields = map[string]string{"n": n}
		return l.Record(ctx, ev)
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case len(f) == 2 && f[0] == "rec":
			x, err := record(f[1])
			if err != nil {
				say("err %s %v", f[1], err)
				continue
			}
			say("idx %s %d", f[1], x)
		case len(f) == 3 && f[0] == "loop":
			every, _ := strconv.Atoi(f[2])
			go func(prefix string) {
				for i := 0; ; i++ {
					n := fmt.Sprintf("%s-%d", prefix, i)
					if x, err := record(n); err == nil {
						say("ack %s %d", n, x)
					} else {
						say("err %s %v", n, err)
					}
					time.Sleep(time.Duration(every) * time.Millisecond)
				}
			}(f[1])
			say("looping")
		}
	}
	os.Exit(0) // the test that drives it is gone
}

// a11Replica drives one run of TestAttack11ReplicaProcess.
type a11Replica struct {
	t    *testing.T
	dir  string
	cmd  *exec.Cmd
	in   io.WriteCloser
	logs *syncBuffer // its slog output

	mu     sync.Mutex
	lines  []string // its stdout
	cursor int
	once   sync.Once
}

// a11Start starts a replica process with data directory dir and waits until it has opened
// the log.
func a11Start(t *testing.T, dsn, skey, dir string) *a11Replica {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestAttack11ReplicaProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SR_A11_DSN="+dsn, "SR_A11_SKEY="+skey, "SR_A11_DIR="+dir)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r := &a11Replica{t: t, dir: dir, cmd: cmd, in: in, logs: &syncBuffer{}}
	cmd.Stderr = r.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.kill)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.mu.Lock()
			r.lines = append(r.lines, sc.Text())
			r.mu.Unlock()
		}
	}()
	if _, ok := r.wait("open", 30*time.Second); !ok {
		t.Fatalf("the replica process did not open the log: %v\n%s", r.all(""), r.logs.String())
	}
	return r
}

// wait returns the first line from the cursor on that starts with prefix (and moves the
// cursor past it), polling up to d.
func (r *a11Replica) wait(prefix string, d time.Duration) (string, bool) {
	var got string
	ok := a6Until(d, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for i := r.cursor; i < len(r.lines); i++ {
			if strings.HasPrefix(r.lines[i], prefix) {
				got, r.cursor = r.lines[i], i+1
				return true
			}
		}
		return false
	})
	return got, ok
}

// all is every stdout line so far that starts with prefix.
func (r *a11Replica) all(prefix string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, l := range r.lines {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func (r *a11Replica) send(line string) {
	if _, err := io.WriteString(r.in, line+"\n"); err != nil {
		r.t.Fatalf("replica stdin: %v", err)
	}
}

// rec records an entry with field n in the replica process; it returns its acknowledged
// index.
func (r *a11Replica) rec(n string) uint64 {
	r.t.Helper()
	r.send("rec " + n)
	line, ok := r.wait("idx "+n+" ", 20*time.Second)
	if !ok {
		r.t.Fatalf("the replica did not acknowledge entry %s: %v\n%s", n, r.all("err"), r.logs.String())
	}
	x, err := strconv.ParseUint(strings.Fields(line)[2], 10, 64)
	if err != nil {
		r.t.Fatal(err)
	}
	return x
}

// kill sends SIGKILL and reaps the process.
func (r *a11Replica) kill() {
	r.once.Do(func() {
		r.cmd.Process.Signal(syscall.SIGKILL)
		r.cmd.Wait()
	})
}

// a11MineHas says whether the replica with data directory dir keeps raw among the entries
// it appended and has not yet found in the signed log (read by the test, not the attacker:
// it only tells when the replica's check has run).
func a11MineHas(dir string, raw []byte) bool {
	b, _ := os.ReadFile(filepath.Join(dir, ".state", "shared-log-mine"))
	for _, m := range parseMine(b) {
		if bytes.Equal(m.raw, raw) {
			return true
		}
	}
	return false
}

// a11Key is a new log key (its private half for the replica process).
func a11Key(t *testing.T, name string) (skey string, s note.Signer, v note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	s, _ = note.NewSigner(skey)
	v, _ = note.NewVerifier(vkey)
	return skey, s, v
}

// a11Signed is every entry a checkpoint signed by v in the Checkpoint row covers, read over
// r (nil, 0 when there is none or the entries cannot be read as the row's tree).
func a11Signed(db *sql.DB, r tessera.LogReader, v note.Verifier) ([][]byte, uint64) {
	cp, _, ok := a4Signed(db, v)
	if !ok {
		return nil, 0
	}
	var out [][]byte
	if err := ReadEntries(context.Background(), r.ReadEntryBundle, 0, cp.Size, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			out = append(out, e.Raw)
		}
		return nil
	}); err != nil {
		return nil, 0
	}
	return out, cp.Size
}

// a11Count is how many of entries are raw.
func a11Count(entries [][]byte, raw []byte) int {
	n := 0
	for _, e := range entries {
		if bytes.Equal(e, raw) {
			n++
		}
	}
	return n
}

// a11Reader reads the shared log over plain SQL, as a verifier would.
func a11Reader(t *testing.T, dsn string) tessera.LogReader {
	t.Helper()
	r, _, closeFn, err := OpenSQLReader(context.Background(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFn() })
	return r
}

// a11SetLeaf overwrites the bytes of entry k in bundle 0 (fewer than 256 entries) with raw,
// leaving tiles, tree state and the Checkpoint row alone; it holds the tree state so that
// no append races the rewrite. It returns the bytes that were there.
func a11SetLeaf(t *testing.T, db *sql.DB, k uint64, raw []byte) []byte {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec("SELECT 1 FROM `TreeState` WHERE `id` = 0 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	leaves := a3ReadLeaves(t, tx)
	if uint64(len(leaves)) <= k {
		t.Fatalf("entry %d: the log holds %d", k, len(leaves))
	}
	was := leaves[k]
	leaves = slices.Clone(leaves)
	leaves[k] = raw
	if _, err := tx.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(leaves)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return was
}

// a11KilledAfterVictim starts a replica process on dir, has it record the entry
// "victim-unseal" (acknowledged: the operation it guards goes ahead) and three more, kills
// it with SIGKILL, and returns the victim's index and the log's entries as the database
// holds them.
func a11KilledAfterVictim(t *testing.T, db *sql.DB, dsn, skey, dir string) (uint64, [][]byte) {
	t.Helper()
	r := a11Start(t, dsn, skey, dir)
	x := r.rec("victim-unseal")
	for i := range 3 {
		r.rec(fmt.Sprint("after-", i))
	}
	r.kill()
	leaves := a3ReadLeaves(t, db)
	if uint64(len(leaves)) <= x || a7Field(leaves[x]) != "victim-unseal" {
		t.Fatalf("setup: entry %d of %d is not the victim", x, len(leaves))
	}
	return x, leaves
}

// a11Alerts is the ALERT lines of a replica's logs.
func a11Alerts(logs string) []string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "ALERT") {
			if len(l) > 220 {
				l = l[:220] + "…"
			}
			out = append(out, l)
		}
	}
	return out
}

const a11Restored = "ALERT audit log: an entry this replica appended is not in the signed log"

// ---- D1: the signer trusts a tree it signed but that was never published ----

// TestAttack11SignedNotPublished — PROMISE D1. A signing replica's checkMine treats as
// signed every entry below its trusted size, and trusted() is the signer's `checked`, which
// checkEntries raises to the tree it is about to sign before tessera has written the
// Checkpoint row — or failed to. The attacker makes every publication fail after the
// signature (a trigger on Checkpoint: the REPLACE is refused, tessera rolls back; the
// attacker's SQL access includes triggers, see TestAttack5TruncatedFullBundle). The signer
// B acknowledges entry E, signs a tree covering it (never published), finds E "in the signed
// log" and forgets it (its kept file is rewritten without E). The attacker SIGKILLs B,
// rewrites the unsigned tail without E (every MAC valid, tiles and tree state consistent),
// drops the trigger; the other replica C takes over signing and signs the tree without E.
// B is restarted with its data directory: E must come back (with the ALERT).
func TestAttack11SignedNotPublished(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	skey, s, v := a11Key(t, "strongroom.test/attack11-unpublished")
	db := testAdmin(t, dsn)
	dirB := t.TempDir()

	b := a11Start(t, dsn, skey, dirB) // the only replica: it signs
	first := b.rec("warmup")
	if a5WaitSigned(t, db, v, first, 20*time.Second, nil) == 0 {
		t.Fatalf("setup: no checkpoint from the replica process:\n%s", b.logs.String())
	}
	if !strings.Contains(b.logs.String(), "this replica signs checkpoints now") {
		t.Fatal("setup: the replica process does not sign")
	}
	published := a3CheckpointSize(db)

	// Every publication fails after the signer has signed.
	a6Exec(t, db, "CREATE TRIGGER `a11_cp_block` BEFORE INSERT ON `Checkpoint` FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'a11: publication refused'")
	dropped := false
	drop := func() {
		if !dropped {
			dropped = true
			a6Exec(t, db, "DROP TRIGGER IF EXISTS `a11_cp_block`")
		}
	}
	defer drop()

	x := b.rec("victim-unseal") // acknowledged: the guarded operation goes ahead
	for i := range 3 {
		b.rec(fmt.Sprint("after-", i))
	}
	leaves := a3ReadLeaves(t, db)
	if uint64(len(leaves)) <= x || a7Field(leaves[x]) != "victim-unseal" || x < published {
		t.Fatalf("setup: entry %d of %d is not the victim, or below the published size %d", x, len(leaves), published)
	}
	gone := leaves[x]
	// When does B stop keeping E? (The attacker would just wait a few seconds.)
	forgot := a6Until(5*time.Second, func() bool { return !a11MineHas(dirB, gone) }) // five rounds of the check (1 s)
	if got := a3CheckpointSize(db); got != published {
		t.Fatalf("setup: a checkpoint of size %d was published despite the trigger", got)
	}
	b.kill()

	// The unsigned tail rewritten without E, with the Checkpoint row held meanwhile.
	tx := holdCheckpointRow(t, db)
	rest := append(slices.Clone(leaves[:x]), leaves[x+1:]...)
	a5RewriteTail(t, tx, rest)
	drop()

	// C takes over signing and the log grows past B's floor.
	c, clogs := a3OpenDir(t, dsn, s, t.TempDir())
	a7Record(t, c, 500, 5)
	if a5WaitSigned(t, db, v, uint64(len(leaves)), 20*time.Second, nil) == 0 {
		t.Fatalf("setup: the other replica signed no checkpoint over the rewritten tail:\n%s", clogs.String())
	}

	// B comes back with its data directory.
	b2 := a11Start(t, dsn, skey, dirB)
	r := a11Reader(t, dsn)
	var size uint64
	found := a6Until(20*time.Second, func() bool {
		var es [][]byte
		es, size = a11Signed(db, r, v)
		return a11Count(es, gone) > 0
	})
	if !found {
		t.Fatalf("PROMISE D1 BROKEN: Record returned index %d for entry E (n=victim-unseal) on the signing replica B; every publication failed after B signed (a trigger on Checkpoint), B found E under its own unpublished signature and forgot it (kept file without E after the check: %v); B was SIGKILLed, the unsigned tail rewritten without E, and the other replica signed it; 20 s after B came back with its data directory the signed log (size %d) does not hold E — it is lost for good. Restore ALERT from B: %v; B's ALERTs: %q; C's ALERTs: %q",
			x, forgot, size, strings.Contains(b2.logs.String(), a11Restored), a11Alerts(b2.logs.String()), a11Alerts(clogs.String()))
	}
	if !strings.Contains(b2.logs.String(), a11Restored) {
		t.Fatalf("PROMISE D1 BROKEN: the erased entry %d came back without the ALERT:\n%s", x, b2.logs.String())
	}
	t.Logf("held: entry %d restored and signed (kept file without E before the kill: %v)", x, forgot)
}

// ---- D1: a fake copy in the signed history satisfies the check ----

// TestAttack11FakePresence — PROMISE D1. checkMine looks for the digest of each kept entry
// among the entries it reads from the database between the entry's `after` and the trusted
// size — the bundles as the database holds them now, never proved against the trusted root
// (the signer and the scrubber prove inclusion; this check does not). A replica B
// acknowledges E and is SIGKILLed before a checkpoint covers it (the attacker holds the
// Checkpoint row). The attacker rewrites the unsigned tail without E; the other replica C
// signs it and a few entries of its own. While B restarts, the attacker overwrites the
// bytes of one of C's signed entries in the entry bundle with E's bytes (tiles untouched),
// waits for B's check, and puts the original bytes back. E must still come back.
func TestAttack11FakePresence(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	skey, s, v := a11Key(t, "strongroom.test/attack11-fake")
	db := testAdmin(t, dsn)
	c, clogs := a3OpenDir(t, dsn, s, t.TempDir()) // signs
	a7Record(t, c, 100, 3)
	size0, _ := c.reader.IntegratedSize(context.Background())
	if a5WaitSigned(t, db, v, size0-1, 15*time.Second, nil) == 0 {
		t.Fatal("setup: no checkpoint")
	}

	tx := holdCheckpointRow(t, db)
	dirB := t.TempDir()
	x, leaves := a11KilledAfterVictim(t, db, dsn, skey, dirB)
	gone := leaves[x]
	if !a11MineHas(dirB, gone) {
		t.Fatal("setup: the killed replica does not keep the entry")
	}
	rest := append(slices.Clone(leaves[:x]), leaves[x+1:]...)
	a5RewriteTail(t, tx, rest) // commits, releasing the Checkpoint row
	mineC := a7Record(t, c, 500, 2)
	if a5WaitSigned(t, db, v, mineC[1], 15*time.Second, nil) == 0 {
		t.Fatalf("setup: no checkpoint over the rewritten tail:\n%s", clogs.String())
	}

	// E's bytes put in place of C's signed entry k while B restarts and checks.
	k := mineC[0]
	orig := a11SetLeaf(t, db, k, gone)
	b2 := a11Start(t, dsn, skey, dirB)
	checked := a6Until(15*time.Second, func() bool {
		return !a11MineHas(dirB, gone) || strings.Contains(b2.logs.String(), a11Restored)
	})
	a11SetLeaf(t, db, k, orig) // the signed history as it was

	r := a11Reader(t, dsn)
	var size uint64
	found := a6Until(15*time.Second, func() bool {
		var es [][]byte
		es, size = a11Signed(db, r, v)
		return a11Count(es, gone) > 0
	})
	if !found {
		t.Fatalf("PROMISE D1 BROKEN: Record returned index %d for entry E (n=victim-unseal) on replica B, SIGKILLed before a checkpoint covered it; the unsigned tail was rewritten without E and signed; while B restarted, the attacker put E's bytes in place of signed entry %d in the entry bundle (tiles untouched) until B's check had run (B forgot E: %v), then put the original back: 15 s later the signed log (size %d) does not hold E — lost for good. Restore ALERT from B: %v; B's ALERTs: %q; C's ALERTs: %q",
			x, k, checked && !strings.Contains(b2.logs.String(), a11Restored), size, strings.Contains(b2.logs.String(), a11Restored), a11Alerts(b2.logs.String()), a11Alerts(clogs.String()))
	}
	t.Logf("held: entry %d restored and signed (restore ALERT: %v)", x, strings.Contains(b2.logs.String(), a11Restored))
}

// ---- D2: an entry that was not erased hidden from the restart's check ----

// TestAttack11HiddenAtRestart — PROMISE D2. The same unproved read, the other way round.
// Replica B acknowledges E and is SIGKILLed before a checkpoint covers it; nothing is
// erased: E is signed at its index. While B restarts, the attacker overwrites E's bytes in
// the entry bundle with a byte copy of another sealed entry (tiles untouched), waits for
// B's check, and puts E's bytes back. E was never erased from the signed log; the restart
// must not append it a second time (nor raise the restore ALERT).
func TestAttack11HiddenAtRestart(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	skey, s, v := a11Key(t, "strongroom.test/attack11-hidden")
	db := testAdmin(t, dsn)
	c, clogs := a3OpenDir(t, dsn, s, t.TempDir()) // signs
	a7Record(t, c, 100, 3)
	size0, _ := c.reader.IntegratedSize(context.Background())
	if a5WaitSigned(t, db, v, size0-1, 15*time.Second, nil) == 0 {
		t.Fatal("setup: no checkpoint")
	}

	tx := holdCheckpointRow(t, db)
	dirB := t.TempDir()
	b := a11Start(t, dsn, skey, dirB)
	x := b.rec("victim-unseal") // acknowledged
	last := x
	for i := range 3 {
		last = b.rec(fmt.Sprint("after-", i))
	}
	b.kill()
	tx.Rollback() // publication goes on: nothing erased
	if a5WaitSigned(t, db, v, last, 15*time.Second, nil) == 0 {
		t.Fatalf("setup: no checkpoint covering entry %d:\n%s", last, clogs.String())
	}
	leaves := a3ReadLeaves(t, db)
	e := leaves[x]
	if a7Field(e) != "victim-unseal" || !a11MineHas(dirB, e) {
		t.Fatalf("setup: entry %d is not the victim, or the killed replica does not keep it", x)
	}

	a11SetLeaf(t, db, x, leaves[x+1]) // E's bytes replaced by a copy of the next sealed entry
	b2 := a11Start(t, dsn, skey, dirB)
	a6Until(15*time.Second, func() bool {
		return !a11MineHas(dirB, e) || strings.Contains(b2.logs.String(), a11Restored)
	})
	// The restored copy, if any, is appended right after the ALERT: let it land first.
	a6Until(3*time.Second, func() bool { return a11Count(a3ReadLeaves(t, db), e) > 0 })
	a11SetLeaf(t, db, x, e) // the signed history as it was

	r := a11Reader(t, dsn)
	integrated, _ := r.IntegratedSize(context.Background())
	var signed [][]byte
	var size uint64
	a6Until(15*time.Second, func() bool {
		signed, size = a11Signed(db, r, v)
		return size >= integrated
	})
	if n := a11Count(signed, e); n != 1 {
		t.Fatalf("PROMISE D2 BROKEN: entry E (n=victim-unseal), acknowledged at %d by replica B (then SIGKILLed) and never erased (signed at %d), is in the signed log %d times (size %d) after B's restart: while B restarted the attacker replaced E's bytes in the entry bundle with a copy of entry %d (tiles untouched) and put them back after B's check; B's restore ALERT (false): %v; B's ALERTs: %q; C's ALERTs: %q",
			x, x, n, size, x+1, strings.Contains(b2.logs.String(), a11Restored), a11Alerts(b2.logs.String()), a11Alerts(clogs.String()))
	}
	t.Logf("held: E is once in the signed log (size %d); B's ALERTs: %q", size, a11Alerts(b2.logs.String()))
}

// ---- D3: a rollback across a kill right after a publication ----

// TestAttack11RollbackBeforeWatch — PROMISE D3. checkRowAtStart compares the row with the
// largest size the replica kept as *published*, which only the watch writes (indexLoop, once
// a second) — not the checkpoint the replica itself signed (its floor) nor the rows its lock
// poll reads every 250 ms. The signing replica B records steadily; the attacker watches the
// Checkpoint row and SIGKILLs B within milliseconds of a new checkpoint being published (one
// B signed), puts the row back to the previous authentic checkpoint, and restarts B with its
// data directory. The rollback must be said.
func TestAttack11RollbackBeforeWatch(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	skey, _, v := a11Key(t, "strongroom.test/attack11-rollback")
	db := testAdmin(t, dsn)
	dir := t.TempDir()
	for attempt := 1; attempt <= 5; attempt++ {
		b := a11Start(t, dsn, skey, dir)
		b.send(fmt.Sprintf("loop a%d 40", attempt))
		if _, ok := b.wait("looping", 10*time.Second); !ok {
			t.Fatal("setup: the replica does not record")
		}
		// Watch the row; kill B as soon as a second new checkpoint appears.
		var notes [][]byte
		var sizes []uint64
		watched := a6Until(30*time.Second, func() bool {
			cp, raw, ok := a4Signed(db, v)
			if !ok || (len(sizes) > 0 && cp.Size <= sizes[len(sizes)-1]) {
				return false
			}
			notes, sizes = append(notes, raw), append(sizes, cp.Size)
			return len(sizes) >= 3
		})
		b.kill()
		if !watched {
			t.Fatalf("setup: checkpoints are not published: %v\n%s", sizes, b.logs.String())
		}
		newest, prev := sizes[len(sizes)-1], sizes[len(sizes)-2]
		kept, _ := readPublishedSize(dir)
		if !strings.Contains(b.logs.String(), "this replica signs checkpoints now") {
			t.Fatal("setup: the replica process did not sign")
		}
		if kept > prev {
			t.Logf("attempt %d: the watch had kept size %d already (published %d): again", attempt, kept, newest)
			continue
		}
		if _, err := db.Exec("UPDATE `Checkpoint` SET `note` = ? WHERE `id` = 0", notes[len(notes)-2]); err != nil {
			t.Fatal(err)
		}
		b2 := a11Start(t, dsn, skey, dir)
		said := a6Until(10*time.Second, func() bool {
			return strings.Contains(b2.logs.String(), "ALERT audit log: the published checkpoint went back to an older one")
		})
		b2.kill()
		if !said {
			t.Fatalf("PROMISE D3 BROKEN: the signing replica published (signed) a checkpoint of size %d; SIGKILLed within milliseconds of its publication, its disk kept published size %d; the Checkpoint row was put back to the authentic checkpoint of size %d while it was stopped; it restarted with the same data directory and raised no rollback ALERT in 10 s. Its ALERTs: %q",
				newest, kept, prev, a11Alerts(b2.logs.String()))
		}
		t.Logf("held: the rollback from %d to %d was said (attempt %d)", newest, prev, attempt)
		return
	}
	t.Fatal("setup: the watch always kept the newest size before the kill")
}

// ---- D4 / D2 / D1: kills at random moments, no erasure ----

// TestAttack11RandomKills — PROMISES D4, D2, D1. A replica records steadily (every
// acknowledgement said on stdout) while the attacker SIGKILLs it at random moments — during
// appends, during the check's rewrite of its kept file (once a second), during signing — and
// restarts it with the same data directory, five times (eight in the outside round); another replica signs throughout.
// Every start must succeed, and every acknowledged entry must end up in the signed log
// exactly once.
func TestAttack11RandomKills(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	skey, s, v := a11Key(t, "strongroom.test/attack11-kills")
	db := testAdmin(t, dsn)
	c, _ := a3OpenDir(t, dsn, s, t.TempDir()) // signs
	a7Record(t, c, 100, 2)
	dir := t.TempDir()
	acked := map[string]uint64{}
	const kills = 5 // eight in the outside round; five keep the suite's time
	for round := range kills {
		b := a11Start(t, dsn, skey, dir) // fails the test if it cannot start
		b.send(fmt.Sprintf("loop r%d 15", round))
		if _, ok := b.wait("looping", 10*time.Second); !ok {
			t.Fatalf("round %d: the replica does not record", round)
		}
		time.Sleep(time.Duration(300+mrand.IntN(2200)) * time.Millisecond) // the attacker's moment
		b.kill()
		for _, l := range b.all("ack ") {
			f := strings.Fields(l)
			x, _ := strconv.ParseUint(f[2], 10, 64)
			acked[f[1]] = x
		}
	}
	b := a11Start(t, dsn, skey, dir)
	if len(acked) < 20 {
		t.Fatalf("setup: %d entries acknowledged", len(acked))
	}
	r := a11Reader(t, dsn)
	var miss, dup []string
	var size uint64
	a6Until(30*time.Second, func() bool {
		var signed [][]byte
		signed, size = a11Signed(db, r, v)
		integrated, _ := r.IntegratedSize(context.Background())
		if size == 0 || size < integrated {
			return false
		}
		count := map[string]int{}
		for _, e := range signed {
			count[a7Field(e)]++
		}
		miss, dup = nil, nil
		for n := range acked {
			switch count[n] {
			case 0:
				miss = append(miss, n)
			case 1:
			default:
				dup = append(dup, fmt.Sprintf("%s×%d", n, count[n]))
			}
		}
		return len(miss) == 0 && len(dup) == 0
	})
	if len(miss) > 0 {
		t.Fatalf("PROMISE D1/D4 BROKEN: after %d SIGKILLs at random moments, %d of %d acknowledged entries are not in the signed log (size %d): %v; ALERTs: %q", kills, len(miss), len(acked), size, miss, a11Alerts(b.logs.String()))
	}
	if len(dup) > 0 {
		t.Fatalf("PROMISE D2 BROKEN: after %d SIGKILLs at random moments, acknowledged entries are in the signed log more than once (size %d): %v; ALERTs: %q", kills, size, dup, a11Alerts(b.logs.String()))
	}
	t.Logf("held: %d random kills, every start succeeded, %d acknowledged entries each once in the signed log (size %d); ALERTs: %q", kills, len(acked), size, a11Alerts(b.logs.String()))
}
