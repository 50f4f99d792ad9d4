package audit

// Outside attacks, tenth round, on the repair's check of its floor with the log's witnesses
// (repair.go, repairwitness.go). The attacker has full SQL access to the log's MariaDB
// database (any statement, tessera's own driver), sits on the plain-HTTP network between the
// repairing replica and the witnesses, and holds no keys (log key, entry-MAC key, witnesses'
// keys). A test fails ("PROMISE ... BROKEN:") when the promise it attacks breaks; one that
// passes logs what held.
//
// P1  a repair never rewrites, drops or reorders an entry that a published (witness-
//     cosigned) checkpoint covers — whatever was done to the database and whatever is
//     answered in the witnesses' place, even from a fresh data directory.
// P2  with witnesses configured, a repair goes through only when at least the policy's
//     quorum of witnesses cosigned the floor's tree with their own keys; else it is refused
//     and changes nothing.
// P3  a refused repair changes nothing (no row of the log's tables differs) and leaves the
//     log usable; an accepted one leaves a log Verify accepts, each sealed entry once.
// P4  the repair's answer and its log entry (field "witnesses") say truthfully what the
//     witnesses did.
//
// Written by an outside tester (helper20) against 4f79938, where five broke:
// ReplayedCosignature (P1/P4: cosignature/v1 timestamps are never checked for freshness, so
// the witnesses' old cosignatures of tree a, copied from the older Checkpoint row the
// attacker put back, pass as their answer; published entries rewritten, the entry says
// "2 of 2 ... hold none past it"), QuorumWithoutOverlap (P1: quorum 1 of 2 — the repair's
// answering quorum need not intersect the quorum that published b; the witness holding b
// is blocked, the other is brought to the old floor and cosigns it), PublishedFork (P1: the
// result of the latter — a second checkpoint of size b with another root, witness-
// cosigned), NestedPolicy (P2: a tree-shaped policy counted flat against the top group's
// N), OfflineWitnessImpersonated (P2/P4: an offline witness's old cosignature of the floor
// counts as its answer). Held: RefusedChangesNothing (P3).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/witness"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"
)

// ---- helpers ----

// a10Witness is a real witness (internal/witness) over loopback with a network attacker in
// front of it: while attack holds a handler, every request is answered by it and never
// reaches the witness.
type a10Witness struct {
	name    string
	w       tessera.Witness
	attack  atomic.Pointer[http.HandlerFunc]
	reached atomic.Int64 // requests that reached the real witness
	faked   atomic.Int64 // requests the attacker answered
}

func newA10Witness(t *testing.T, name string, s note.Signer, v note.Verifier) *a10Witness {
	t.Helper()
	skey, vkey, _ := note.GenerateKey(rand.Reader, name)
	cs, err := f_note.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	cv, _ := f_note.VKeyToCosignatureV1(vkey)
	ws, err := witness.New(witness.Config{Signer: cs, Logs: map[string]note.Verifier{s.Name(): v}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a := &a10Witness{name: name}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := a.attack.Load(); h != nil {
			a.faked.Add(1)
			(*h)(w, r)
			return
		}
		a.reached.Add(1)
		ws.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	if a.w, err = tessera.NewWitness(cv, u); err != nil {
		t.Fatal(err)
	}
	return a
}

// set puts h in front of the witness (nil: requests go through again).
func (a *a10Witness) set(h http.HandlerFunc) {
	if h == nil {
		a.attack.Store(nil)
		return
	}
	a.attack.Store(&h)
}

// a10Down answers as a witness that is away.
func a10Down(w http.ResponseWriter, r *http.Request) {
	http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
}

// a10Reply answers every request with status and body.
func a10Reply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// a10Sigs is the signature lines of a signed note (everything after the blank line): what a
// network attacker replays as a witness's 200 answer.
func a10Sigs(t *testing.T, n []byte) string {
	t.Helper()
	_, sigs, ok := bytes.Cut(n, []byte("\n\n"))
	if !ok {
		t.Fatalf("not a signed note: %q", n)
	}
	return string(sigs)
}

// a10Open opens a replica of dsn's log with the witness policy g and a fresh data
// directory.
func a10Open(t *testing.T, dsn string, s note.Signer, g tessera.WitnessGroup) *Log {
	t.Helper()
	ctx := context.Background()
	l, err := Open(ctx, Config{EntryKey: testEntryKey, DB: dsn, Dir: t.TempDir(), Signer: s, Witnesses: &g, WitnessTimeout: 3 * time.Second,
		ShutdownTimeout: time.Second, Logger: newTextLogger(&syncBuffer{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(ctx) })
	waitFor(t, func() bool { return l.leader.check(ctx) == nil })
	return l
}

// a10Cosigned says whether the note n carries a valid cosignature by w.
func a10Cosigned(n []byte, w *a10Witness) bool {
	_, err := note.Open(n, note.VerifierList(w.w.Key))
	return err == nil
}

// a10Snapshot is a digest of every row of every table of the log's database — but the
// replicas' witness policies (replicaPolicyTable): each live replica refreshes its row
// every policyEvery, whatever a repair does.
func a10Snapshot(t *testing.T, db *sql.DB) map[string]string {
	t.Helper()
	rows, err := db.Query("SELECT `table_name` FROM information_schema.tables WHERE `table_schema` = DATABASE() AND `table_name` <> ? ORDER BY 1", replicaPolicyTable)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	out := map[string]string{}
	for _, tb := range tables {
		rs, err := db.Query("SELECT * FROM `" + tb + "`")
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rs.Columns()
		var lines []string
		for rs.Next() {
			vals := make([]sql.RawBytes, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rs.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			var line []string
			for _, v := range vals {
				line = append(line, fmt.Sprintf("%x", []byte(v)))
			}
			lines = append(lines, strings.Join(line, ","))
		}
		rs.Close()
		slices.Sort(lines)
		out[tb] = fmt.Sprintf("%d rows %x", len(lines), sha256.Sum256([]byte(strings.Join(lines, "\n"))))
	}
	return out
}

// a10Diff names the tables whose snapshot differs.
func a10Diff(a, b map[string]string) []string {
	var out []string
	for k, v := range a {
		if b[k] != v {
			out = append(out, fmt.Sprintf("%s (%s -> %s)", k, v, b[k]))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k+" (new)")
		}
	}
	slices.Sort(out)
	return out
}

// a10Published is the attacker's setup for P1: a log with a witness policy records 10
// entries (checkpoint a, `older`, published), then 10 more (checkpoint b, published); the
// replica stops. Then, with SQL only, the older checkpoint goes back into the Checkpoint
// row and entry a+2 (covered by the published b) is overwritten. It returns a, b, the
// published leaves and entries as they were before the attack, and the older note.
func a10Published(t *testing.T, dsn string, s note.Signer, v note.Verifier, db *sql.DB, g tessera.WitnessGroup) (a, b uint64, leaves, entries map[uint64][]byte, older, latest []byte) {
	a, b, leaves, entries, older, latest, _ = a10PublishedState(t, dsn, s, v, db, g)
	return
}

// a10PublishedState is a10Published, with the verified state of checkpoint b.
func a10PublishedState(t *testing.T, dsn string, s note.Signer, v note.Verifier, db *sql.DB, g tessera.WitnessGroup) (a, b uint64, leaves, entries map[uint64][]byte, older, latest []byte, stB State) {
	t.Helper()
	ctx := context.Background()
	l1 := a10Open(t, dsn, s, g)
	for i := range 10 {
		if _, err := l1.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	a = a2WaitVerify(t, l1, v, 10, nil).Size
	older = checkpointRow(t, db)
	for i := range 10 {
		if _, err := l1.Record(ctx, event(100+i)); err != nil {
			t.Fatal(err)
		}
	}
	stB = a2WaitVerify(t, l1, v, a+10, nil)
	b = stB.Size
	latest = checkpointRow(t, db)
	leaves, entries = a7Leaves(t, l1), a2Entries(t, l1.reader)
	l1.Close(ctx)
	if _, err := db.Exec("UPDATE `Checkpoint` SET `note` = ? WHERE `id` = 0", older); err != nil {
		t.Fatal(err)
	}
	poisonEntry(t, db, a+2, unsealed(t, a5Forged("rewritten after publication")))
	return
}

// a10Rewritten lists the positions below b whose leaf or entry differs from the published
// log's (entry a+2's bytes excepted: the attacker overwrote them, not the repair).
func a10Rewritten(t *testing.T, l *Log, b, poisoned uint64, leaves, entries map[uint64][]byte) []string {
	t.Helper()
	nowLeaves, nowEntries := a7Leaves(t, l), a2Entries(t, l.reader)
	var out []string
	for i := uint64(0); i < b; i++ {
		switch {
		case !bytes.Equal(nowLeaves[i], leaves[i]):
			out = append(out, fmt.Sprintf("%d: leaf", i))
		case i != poisoned && !bytes.Equal(nowEntries[i], entries[i]):
			out = append(out, fmt.Sprintf("%d: entry", i))
		}
	}
	return out
}

// ---- P1 / P4: a witness's old cosignature replayed ----

// TestAttack10ReplayedCosignature — PROMISES P1 and P4 (and P2's intent). Policy: both of
// two witnesses (quorum 2 of 2). Checkpoints a and b are published, each cosigned by both.
// With SQL the attacker puts the older checkpoint a (which carries both witnesses'
// cosignatures of tree a) back into the Checkpoint row and overwrites entry a+2, covered
// by b; the operator repairs from a fresh data directory. The repair asks each witness to
// cosign tree a; both hold b and would answer 409 "b". The network attacker answers in
// their place with 200 and the cosignature lines copied from the older checkpoint row:
// cosignature/v1 carries a timestamp but nothing checks its freshness, and the probe
// accepts any valid cosignature of the floor's tree, however old. The repair must still be
// refused (the witnesses hold b), and must never rewrite entries b covers.
func TestAttack10ReplayedCosignature(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db := sharedTestLog(t, "strongroom.test/attack10replay")
	w1 := newA10Witness(t, "witness.test/a10r1", s, v)
	w2 := newA10Witness(t, "witness.test/a10r2", s, v)
	g := tessera.NewWitnessGroup(2, w1.w, w2.w)
	a, b, leaves, entries, older, latest := a10Published(t, dsn, s, v, db, g)
	if !a10Cosigned(older, w1) || !a10Cosigned(older, w2) || !a10Cosigned(latest, w1) || !a10Cosigned(latest, w2) {
		t.Fatalf("setup: checkpoints a=%d and b=%d are not both cosigned by both witnesses", a, b)
	}

	l2 := a10Open(t, dsn, s, g)
	replay := a10Reply(http.StatusOK, a10Sigs(t, older))
	w1.set(replay)
	w2.set(replay)
	reached := w1.reached.Load() + w2.reached.Load()
	rep, err := l2.Repair(ctx, a+2, "the signer refuses", map[string]string{"principal": "operator"}, nil)
	w1.set(nil)
	w2.set(nil)
	if err != nil {
		if changed := a10Rewritten(t, l2, b, a+2, leaves, entries); len(changed) > 0 {
			t.Fatalf("PROMISE P3 BROKEN: refused repair (%v) changed published positions %v", err, changed)
		}
		t.Logf("held: the repair with replayed cosignatures was refused: %v", err)
		return
	}
	var problems []string
	if changed := a10Rewritten(t, l2, b, a+2, leaves, entries); len(changed) > 0 {
		problems = append(problems, fmt.Sprintf("PROMISE P1 BROKEN: the repair (floor %d, from the replayed row) rewrote positions covered by the published, witness-cosigned checkpoint of size %d: %v (dropped %d, moved %d)",
			a, b, changed, len(rep.Dropped), rep.Moved))
	}
	if got := w1.reached.Load() + w2.reached.Load() - reached; rep.Witnesses.Answered > int(got) {
		ev, _ := ParseEvent(a2Entries(t, l2.reader)[rep.At])
		problems = append(problems, fmt.Sprintf("PROMISE P4 BROKEN: the repair entry's witnesses field says %q (answer: %d answered), but %d requests reached the witnesses, both of which hold checkpoint %d past the floor %d",
			ev.Fields["witnesses"], rep.Witnesses.Answered, got, b, a))
	}
	if len(problems) > 0 {
		t.Fatal(strings.Join(problems, "\n"))
	}
	t.Logf("held: %+v", rep)
}

// ---- P1: a quorum that does not intersect the publishing quorum ----

// TestAttack10QuorumWithoutOverlap — PROMISE P1. Policy: 1 of 2 witnesses (config
// `quorum: 1`). The network attacker keeps w2 from ever hearing of the log (503 to the
// replica), so checkpoints a and b are published with w1's cosignature alone — as the policy
// allows. With SQL the older checkpoint a goes back into the Checkpoint row and entry a+2
// (covered by b) is overwritten; the operator repairs from a fresh data directory. During
// the repair the attacker now blocks w1 (503) and lets w2 through: w2 holds nothing, is
// brought to the floor a with a consistency proof and cosigns it — 1 answer, quorum 1. No
// witness that saw b is ever heard, so the repair's quorum need not overlap the quorum that
// published b. The repair must be refused, and must never rewrite entries b covers.
func TestAttack10QuorumWithoutOverlap(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db := sharedTestLog(t, "strongroom.test/attack10overlap")
	w1 := newA10Witness(t, "witness.test/a10o1", s, v)
	w2 := newA10Witness(t, "witness.test/a10o2", s, v)
	g := tessera.NewWitnessGroup(1, w1.w, w2.w)
	w2.set(a10Down)
	a, b, leaves, entries, _, latest := a10Published(t, dsn, s, v, db, g)
	if !a10Cosigned(latest, w1) || a10Cosigned(latest, w2) {
		t.Fatalf("setup: checkpoint b=%d should carry w1's cosignature only", b)
	}

	l2 := a10Open(t, dsn, s, g)
	w1.set(a10Down)
	w2.set(nil)
	rep, err := l2.Repair(ctx, a+2, "the signer refuses", map[string]string{"principal": "operator"}, nil)
	w1.set(nil)
	if err != nil {
		if changed := a10Rewritten(t, l2, b, a+2, leaves, entries); len(changed) > 0 {
			t.Fatalf("PROMISE P3 BROKEN: refused repair (%v) changed published positions %v", err, changed)
		}
		t.Logf("held: the repair while w1 (holding b) was unreachable was refused: %v", err)
		return
	}
	changed := a10Rewritten(t, l2, b, a+2, leaves, entries)
	ev, _ := ParseEvent(a2Entries(t, l2.reader)[rep.At])
	if len(changed) > 0 {
		t.Fatalf("PROMISE P1 BROKEN: with w1 (which cosigned the published checkpoint of size %d) made unreachable, the repair took floor %d and rewrote published positions %v (dropped %d, moved %d); its entry says witnesses %q, unanswered %v",
			b, a, changed, len(rep.Dropped), rep.Moved, ev.Fields["witnesses"], rep.Witnesses.Unanswered)
	}
	t.Logf("held: accepted but nothing published rewritten: %+v", rep)
}

// ---- P2: a nested witness policy counted flat ----

// TestAttack10NestedPolicy — PROMISE P2. tessera's witness policies are trees (sigsum
// policy syntax: "group opA any a1 a2; group opB any b1 b2; group all-ops all opA opB";
// audit.Config takes any tessera.WitnessGroup): one cosignature from each of two operators'
// witness pairs. The repair counts every endpoint flat against the top group's N (2). The
// log is honest up to a poisoned unsigned entry; during the repair operator B's witnesses
// are away (503, or the attacker on the network). a1 and a2 cosign — 2 answers, N=2 — but
// the policy (which tessera would not publish with) is not met: the repair must be refused
// and change nothing.
func TestAttack10NestedPolicy(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db := sharedTestLog(t, "strongroom.test/attack10nested")
	a1 := newA10Witness(t, "witness.test/a10a1", s, v)
	a2 := newA10Witness(t, "witness.test/a10a2", s, v)
	b1 := newA10Witness(t, "witness.test/a10b1", s, v)
	b2 := newA10Witness(t, "witness.test/a10b2", s, v)
	g := tessera.NewWitnessGroup(2, tessera.NewWitnessGroup(1, a1.w, a2.w), tessera.NewWitnessGroup(1, b1.w, b2.w))
	l := a10Open(t, dsn, s, g)
	for i := range 5 {
		if _, err := l.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	a2WaitVerify(t, l, v, 5, nil)
	if row := checkpointRow(t, db); !g.Satisfied(row) {
		t.Fatal("setup: the published checkpoint does not satisfy the policy")
	}
	bad := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker"))).Index
	poisonEntry(t, db, bad, unsealed(t, a5Forged("decoy")))
	a7Record(t, l, 3000, 3)

	// Control: with every witness away, the repair is refused.
	for _, w := range []*a10Witness{a1, a2, b1, b2} {
		w.set(a10Down)
	}
	if _, err := l.Repair(ctx, bad, "incident", nil, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("setup: repair with every witness away: %v", err)
	}
	a1.set(nil)
	a2.set(nil)
	snap := a10Snapshot(t, db)
	rep, err := l.Repair(ctx, bad, "incident", map[string]string{"principal": "operator"}, nil)
	if err != nil {
		if d := a10Diff(snap, a10Snapshot(t, db)); len(d) > 0 {
			t.Fatalf("PROMISE P3 BROKEN: refused repair (%v) changed %v", err, d)
		}
		t.Logf("held: the repair with only operator A's witnesses was refused: %v", err)
		return
	}
	ev, _ := ParseEvent(a2Entries(t, l.reader)[rep.At])
	t.Fatalf("PROMISE P2 BROKEN: the policy needs one of {a1,a2} and one of {b1,b2}; only a1 and a2 cosigned the floor's tree (b1, b2 503), and the repair went through (dropped %d, moved %d, entry %d); its entry says witnesses %q",
		len(rep.Dropped), rep.Moved, rep.At, ev.Fields["witnesses"])
}

// ---- P2 / P4: an offline witness impersonated with its own old cosignature ----

// TestAttack10OfflineWitnessImpersonated — PROMISES P2 and P4. Policy: both of two
// witnesses. The log is honest up to a poisoned unsigned entry (the repair's floor is the
// latest published checkpoint, cosigned by both). During the repair w2 is away: the repair
// is refused (control). Then the network attacker answers in w2's place with the cosignature
// lines of the published checkpoint in the Checkpoint row — the floor's tree, cosigned by w2
// when it was published. w2 never sees the repair's request: the repair must still be
// refused (1 of 2, quorum 2), and if it were not, its entry must not say that w2 cosigned.
func TestAttack10OfflineWitnessImpersonated(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db := sharedTestLog(t, "strongroom.test/attack10offline")
	w1 := newA10Witness(t, "witness.test/a10f1", s, v)
	w2 := newA10Witness(t, "witness.test/a10f2", s, v)
	g := tessera.NewWitnessGroup(2, w1.w, w2.w)
	l := a10Open(t, dsn, s, g)
	for i := range 5 {
		if _, err := l.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	a2WaitVerify(t, l, v, 5, nil)
	bad := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker"))).Index
	poisonEntry(t, db, bad, unsealed(t, a5Forged("decoy")))
	a7Record(t, l, 3000, 3)
	row := checkpointRow(t, db)
	if !a10Cosigned(row, w2) {
		t.Fatal("setup: the published checkpoint carries no cosignature of w2")
	}

	w2.set(a10Down)
	if _, err := l.Repair(ctx, bad, "incident", nil, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("setup: repair with w2 away: %v", err)
	}
	w2.set(a10Reply(http.StatusOK, a10Sigs(t, row)))
	reached := w2.reached.Load()
	snap := a10Snapshot(t, db)
	rep, err := l.Repair(ctx, bad, "incident", map[string]string{"principal": "operator"}, nil)
	w2.set(nil)
	if err != nil {
		if d := a10Diff(snap, a10Snapshot(t, db)); len(d) > 0 {
			t.Fatalf("PROMISE P3 BROKEN: refused repair (%v) changed %v", err, d)
		}
		t.Logf("held: the repair with w2 impersonated was refused: %v", err)
		return
	}
	ev, _ := ParseEvent(a2Entries(t, l.reader)[rep.At])
	t.Fatalf("PROMISE P2/P4 BROKEN: w2 was offline (%d of its requests reached it) and the attacker replayed its cosignature from the Checkpoint row; the repair went through (entry %d) and its entry says witnesses %q (answer: %d of %d answered)",
		w2.reached.Load()-reached, rep.At, ev.Fields["witnesses"], rep.Witnesses.Answered, rep.Witnesses.Configured)
}

// ---- P3: refused repairs change nothing, the log stays usable ----

// TestAttack10RefusedChangesNothing — PROMISE P3. Policy: both of two witnesses; a
// poisoned unsigned entry with sealed entries after it. The network attacker answers the
// repair's probes in every way but a valid cosignature: away, 409 "0" / "-1" / max uint64 /
// junk, a forged 422, a 200 with junk, a 200 with a cosignature of another (older) tree,
// a 200 with another witness's valid cosignature of the floor, and a witness that does not
// answer within the timeout. Each repair must be refused and leave every row of every
// table of the log's database as it was. Then the log is used (a sealed entry recorded),
// the witnesses answer again, the repair goes through, a checkpoint covers the repair
// entry (Verify), and every sealed entry of before is present exactly once.
func TestAttack10RefusedChangesNothing(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db := sharedTestLog(t, "strongroom.test/attack10refused")
	w1 := newA10Witness(t, "witness.test/a10n1", s, v)
	w2 := newA10Witness(t, "witness.test/a10n2", s, v)
	g := tessera.NewWitnessGroup(2, w1.w, w2.w)
	l := a10Open(t, dsn, s, g)
	a7Record(t, l, 0, 3)
	a2WaitVerify(t, l, v, 3, nil)
	older := checkpointRow(t, db)
	a7Record(t, l, 100, 3)
	a2WaitVerify(t, l, v, 6, nil)
	row := checkpointRow(t, db)
	bad := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker"))).Index
	poisonEntry(t, db, bad, unsealed(t, a5Forged("decoy")))
	a7Record(t, l, 3000, 5)

	// w1's valid cosignature of the floor, replayed in front of w2.
	var w1Sig string
	for _, line := range strings.SplitAfter(a10Sigs(t, row), "\n") {
		if strings.HasPrefix(line, "— "+w1.name+" ") {
			w1Sig = line
		}
	}
	if w1Sig == "" {
		t.Fatal("setup: no cosignature line of w1 in the checkpoint row")
	}
	slow := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
		a10Down(w, r)
	}
	cases := []struct {
		name   string
		h1, h2 http.HandlerFunc
	}{
		{"both away", a10Down, a10Down},
		{"w2 409 0", nil, a10Reply(http.StatusConflict, "0\n")},
		{"w2 409 -1", nil, a10Reply(http.StatusConflict, "-1\n")},
		{"w2 409 max", nil, a10Reply(http.StatusConflict, "18446744073709551615\n")},
		{"w2 409 junk", nil, a10Reply(http.StatusConflict, "six\n")},
		{"w1 422", a10Reply(http.StatusUnprocessableEntity, "fork\n"), nil},
		{"w2 200 junk", nil, a10Reply(http.StatusOK, "— nobody AAAA\n")},
		{"w2 200 older tree", nil, a10Reply(http.StatusOK, a10Sigs(t, older))},
		{"w2 200 w1's cosignature", nil, a10Reply(http.StatusOK, w1Sig)},
		{"w2 200 empty", nil, a10Reply(http.StatusOK, "")},
		{"w1 slow", slow, nil},
	}
	var problems []string
	for _, c := range cases {
		before := a10Snapshot(t, db)
		w1.set(c.h1)
		w2.set(c.h2)
		start := time.Now()
		rep, err := l.Repair(ctx, bad, "incident", map[string]string{"principal": "operator"}, nil)
		took := time.Since(start)
		w1.set(nil)
		w2.set(nil)
		if err == nil {
			problems = append(problems, fmt.Sprintf("PROMISE P2 BROKEN: %s: the repair went through: %+v", c.name, rep.Witnesses))
			break
		}
		if d := a10Diff(before, a10Snapshot(t, db)); len(d) > 0 {
			problems = append(problems, fmt.Sprintf("PROMISE P3 BROKEN: %s: refused (%v) but changed %v", c.name, err, d))
		}
		t.Logf("%s: refused in %s: %v", c.name, took.Round(time.Millisecond), err)
	}
	if len(problems) > 0 {
		t.Fatal(strings.Join(problems, "\n"))
	}

	// Still usable: a sealed entry recorded, then the honest repair.
	a7Record(t, l, 4000, 2)
	sealed := a7Sealed(t, l, 0)
	rep, err := l.Repair(ctx, bad, "incident", map[string]string{"principal": "operator"}, nil)
	if err != nil {
		t.Fatalf("PROMISE P3 BROKEN: after the refused repairs the honest repair fails: %v", err)
	}
	a2WaitVerify(t, l, v, rep.At+1, nil)
	pos := a7Positions(t, l)
	for _, e := range sealed {
		if n := len(pos[e]); n != 1 {
			problems = append(problems, fmt.Sprintf("sealed entry n=%s present %d times", a7Field([]byte(e)), n))
		}
	}
	if len(problems) > 0 {
		t.Fatalf("PROMISE P3 BROKEN: after the accepted repair: %s", strings.Join(problems, "; "))
	}
	ev, _ := ParseEvent(a2Entries(t, l.reader)[rep.At])
	t.Logf("held: %d refusals changed nothing; the repair then went through, verified, each sealed entry once; witnesses %q", len(cases), ev.Fields["witnesses"])
}

// ---- P1 / P3: the fork that follows, published with the witnesses' blessing ----

// TestAttack10PublishedFork — PROMISES P1 and P3, the consequence of
// TestAttack10QuorumWithoutOverlap for an outsider. A monitor verified and kept the
// published checkpoint b (cosigned by w1). After the attack and the repair (w1 blocked
// during the repair only), the network is honest again: the replica signs the rebuilt tree
// and tessera asks both witnesses; w2 (brought to the floor by the repair) cosigns, quorum 1,
// and the rebuilt tree is published. The monitor's next Verify (Prior = b) must find a log
// consistent with b — the repair must not have produced a second, witness-cosigned history.
func TestAttack10PublishedFork(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db := sharedTestLog(t, "strongroom.test/attack10fork")
	w1 := newA10Witness(t, "witness.test/a10k1", s, v)
	w2 := newA10Witness(t, "witness.test/a10k2", s, v)
	g := tessera.NewWitnessGroup(1, w1.w, w2.w)
	w2.set(a10Down)
	a, b, _, _, _, _, stB := a10PublishedState(t, dsn, s, v, db, g)

	l2 := a10Open(t, dsn, s, g)
	w1.set(a10Down)
	w2.set(nil)
	rep, err := l2.Repair(ctx, a+2, "the signer refuses", map[string]string{"principal": "operator"}, nil)
	w1.set(nil)
	if err != nil {
		t.Logf("held: the repair was refused: %v", err)
		return
	}
	// The rebuilt tree is signed and published (w2's cosignature is enough for quorum 1).
	f, _ := a2Fetch(t, l2.Handler())
	var now State
	deadline := time.Now().Add(10 * time.Second)
	for {
		if now, err = Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: l2.Bundles().Bundle}); err == nil && now.Size > rep.At {
			break
		}
		if time.Now().After(deadline) {
			t.Logf("the rebuilt tree was not published within 10 s (size %d, %v)", now.Size, err)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	row := checkpointRow(t, db)
	_, errPrior := Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: l2.Bundles().Bundle, Prior: &stB})
	if errPrior != nil {
		t.Fatalf("PROMISE P1 BROKEN: a monitor holding the published checkpoint %d (cosigned by w1) is shown a fork: %v; the log now publishes size %d from the repair (floor %d), cosigned by w1: %v, by w2: %v",
			b, errPrior, now.Size, a, a10Cosigned(row, w1), a10Cosigned(row, w2))
	}
	t.Logf("held: the log after the repair is consistent with the published checkpoint %d", b)
}
