package audit

// Outside round 38: the shared log on MariaDB — the signer's ending of sessions that hold
// the tree (reapHolders), and the lost-COMMIT recovery machinery (lostcommit.go) as a
// replica closes. Reuses round 36/37's proxy and helpers (a37Proxy, a37Pair, a36*).

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// a38HoldTree opens a session on admin's pool (another party: the server's default
// wait_timeout) that takes the tree state's row lock and keeps it while running a long
// statement (its session is busy — COMMAND 'Query' — never asleep). It returns the
// session's id and a function that ends the hold.
func a38HoldTree(t *testing.T, admin *sql.DB, secs int) (id int64, release func()) {
	t.Helper()
	ctx := context.Background()
	c, err := admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	tx, err := c.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var size uint64
	if err := tx.QueryRowContext(ctx, "SELECT `size` FROM `TreeState` WHERE `id` = 0 FOR UPDATE").Scan(&size); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tx.ExecContext(ctx, "DO SLEEP(?)", secs) // busy, holding the row
	}()
	var once bool
	release = func() {
		if once {
			return
		}
		once = true
		admin.ExecContext(ctx, "KILL QUERY "+strconv.FormatInt(id, 10))
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		tx.Rollback()
		c.Close()
	}
	t.Cleanup(release)
	return id, release
}

// TestAttack38ReaperEndsIdleOperatorSession — claim 3 ("the signer's ending of sessions
// that hold the tree never ends a session doing legitimate work — … a repair, an
// operator's session — and cannot be steered to"). An operator has a session open on the
// log's database (same DB user — DESIGN says a fleet must use one user — and the server's
// default wait_timeout, as a mysql client has); it sits idle between the operator's
// commands. Meanwhile another session (an operator's repair running a long statement, or
// an insider with write access who wants the operator's session gone) holds the tree's row
// while busy in a statement — never "asleep", so the reaper does not end *it*. After the
// row has been held 5 s the signer ends every session of its user asleep longer than the
// log's wait_timeout: the operator's idle session, which holds nothing, is killed. The
// test watches the operator's session for 16 s (it is asleep > 10 s after ~11 s) and fails
// if it disappears from the process list or no longer answers.
func TestAttack38ReaperEndsIdleOperatorSession(t *testing.T) {
	ctx := context.Background()
	dsn := sqlTestDB(t)
	s, _, _ := newKeys(t, "strongroom.test/attack38")
	b := openSQLTestLog(t, dsn, s)
	t.Cleanup(func() { a36Close(b) })
	if !a36WaitFor(5*time.Second, b.Signer) {
		t.Fatal("the only replica does not sign")
	}
	if _, err := b.Record(ctx, a36Event(1)); err != nil {
		t.Fatal(err)
	}
	admin := testAdmin(t, dsn)

	// The operator's session: idle from now on.
	op, err := admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()
	var opID int64
	if err := op.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&opID); err != nil {
		t.Fatal(err)
	}
	holder, release := a38HoldTree(t, admin, 30)
	defer release()
	t0 := time.Now()

	watch := testAdmin(t, dsn)
	watch.SetMaxIdleConns(1)
	var gone bool
	var lastCmd string
	var lastTime int64
	a36WaitFor(16*time.Second, func() bool {
		var cmd string
		var secs int64
		err := watch.QueryRowContext(ctx, "SELECT `COMMAND`, `TIME` FROM information_schema.PROCESSLIST WHERE `ID` = ?", opID).Scan(&cmd, &secs)
		if errors.Is(err, sql.ErrNoRows) {
			gone = true
			return true
		}
		if err == nil {
			lastCmd, lastTime = cmd, secs
		}
		return false
	})
	if gone {
		t.Errorf("the operator's idle session %d (holding nothing; last seen %s for %d s) was ended %v after session %d (busy in a statement, never asleep) began holding the tree's row: the signer's reaper was steered to it, and never ended the holder",
			opID, lastCmd, lastTime, time.Since(t0).Round(100*time.Millisecond), holder)
	}
	var one int
	if err := op.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Errorf("the operator's session no longer answers: %v", err)
	}
}

// TestAttack38CloseMidRecoveryBounded — claim 4 ("the recovery machinery cannot be made to
// hang a replica … a replica closed mid-recovery") and claim 2 (a clean Close looks for
// its failed appends: DESIGN "Close looks for the watched entries not yet looked for until
// its context ends"). Replica a's append commits but its COMMIT's answer is lost; a starts
// resolving it, and the connection of its settle (the tree's row lock) goes dead (one flow
// black-holed, the engine reachable). The operator closes a with a 3 s deadline (a rolling
// restart). Close must return within its context (+5 s slack); and then, once the signer's
// checkpoint covers the log, the entry — in the log, its caller told it failed — must be
// named by an audit.refused_entry, or a must have acknowledged it.
func TestAttack38CloseMidRecoveryBounded(t *testing.T) {
	a, b, p, v, _ := a37Pair(t)
	a37Submit(a, "a", 1)
	cut := p.arm(a37CutReply, a37IsAppendCommit, nil)
	freeze := p.arm(a37Freeze, func(c a37Cmd) bool {
		return c.op == a37Query && strings.Contains(c.text, "FROM `TreeState` WHERE `id` = 0 FOR UPDATE") && !strings.Contains(c.text, "NOWAIT")
	}, nil)
	rec := make(chan a37Outcome, 1)
	go func() {
		t0 := time.Now()
		idx, err := a.Record(context.Background(), a36Event(1000))
		rec <- a37Outcome{id: 1000, replica: "a", idx: idx, err: err, took: time.Since(t0)}
	}()
	select {
	case <-cut.fired:
	case <-time.After(10 * time.Second):
		t.Fatal("replica a's append did not reach its COMMIT")
	}
	select {
	case <-freeze.fired:
	case <-time.After(10 * time.Second):
		t.Fatal("replica a did not settle the tree after its lost COMMIT answer")
	}
	const closeWithin = 3 * time.Second
	closed := make(chan error, 1)
	t0 := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeWithin)
		defer cancel()
		closed <- a.Close(ctx)
	}()
	select {
	case err := <-closed:
		t.Logf("Close(%v) returned after %v: %v", closeWithin, time.Since(t0).Round(time.Millisecond), err)
	case <-time.After(closeWithin + 5*time.Second):
		t.Errorf("Close with a %v deadline has not returned %v after it was called: a replica closed mid-recovery hangs on its settle", closeWithin, time.Since(t0).Round(time.Second))
		select {
		case err := <-closed:
			t.Logf("Close returned after %v: %v", time.Since(t0).Round(time.Millisecond), err)
		case <-time.After(45 * time.Second):
			t.Errorf("Close has not returned after %v", time.Since(t0).Round(time.Second))
		}
	}
	var out a37Outcome
	select {
	case out = <-rec:
		t.Logf("a's Record answered after %v: idx %d, err %v", out.took.Round(time.Millisecond), out.idx, out.err)
	case <-time.After(40 * time.Second):
		t.Fatal("a's Record has not answered")
	}
	a37Report(t, a37Settled(t, b, v, []a37Outcome{out}, 10*time.Second))
}

// TestAttack38GaveUpThenRefusalAnswerLost — claim 2 ("every append reported failed,
// including one whose caller's context ended first, is absent, or the log later holds an
// audit.refused_entry naming its index and leaf hash; none names an acknowledged entry")
// and claim 4 (no flood of records). Replica a's append reaches its COMMIT, which is held
// until the caller's context (1 s) has ended: the caller is told "failed", then the COMMIT
// goes on and the entry lands. a records an audit.refused_entry for it — and that record's
// own COMMIT answer is lost. The log must end with exactly one audit.refused_entry naming
// the entry (index and leaf hash), none naming anything else, and verify.
func TestAttack38GaveUpThenRefusalAnswerLost(t *testing.T) {
	a, b, p, v, _ := a37Pair(t)
	a37Submit(a, "a", 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var cutRefusal *a37Rule
	held := p.arm(a37Before, a37IsAppendCommit, func(a37Cmd) {
		<-ctx.Done()
		cutRefusal = p.arm(a37CutReply, a37IsAppendCommit, nil)
	})
	t0 := time.Now()
	idx, err := a.Record(ctx, a36Event(1000))
	out := a37Outcome{id: 1000, replica: "a", idx: idx, err: err, took: time.Since(t0)}
	t.Logf("a's Record answered after %v: idx %d, err %v", out.took.Round(time.Millisecond), idx, err)
	if !a36WaitFor(5*time.Second, held.hasFired) {
		t.Fatal("a's append did not reach its COMMIT")
	}
	if !a36WaitFor(10*time.Second, func() bool { return cutRefusal != nil && cutRefusal.hasFired() }) {
		t.Log("the refused_entry record's COMMIT was not seen (not cut)")
	}
	bad := a37Settled(t, b, v, []a37Outcome{out}, 20*time.Second)
	a37Report(t, bad)
	ents := a2Entries(t, b.Reader())
	raw := a36Sealed(t, v.Name(), a36Event(1000))
	n := 0
	for _, r := range a37Refusals(ents) {
		t.Logf("audit.refused_entry at %d names entry %s leaf %.16s…", r.at, r.entry, r.leaf)
		if r.leaf == a37Leaf(raw) {
			n++
		}
	}
	if err != nil {
		var in bool
		for _, e := range ents {
			if string(e) == string(raw) {
				in = true
			}
		}
		if in && n != 1 {
			t.Errorf("the append its caller gave up on is in the log, named by %d audit.refused_entry records (want exactly 1)", n)
		}
	}
	if refs := a37Refusals(ents); len(refs) > 1 {
		t.Errorf("%d audit.refused_entry records for one failed append", len(refs))
	}
}
