package audit

// Outside round 55: a same-user third party (a compromised helper, a cleanup cron, an
// operator's mistake) or a file-system fault acting on ONE local log directory while
// several Strongroom processes append to it. Every test runs real separate processes with
// outside54_test.go's plumbing (TestOutside54Helper re-executed; o54New, start, awaitAcks,
// check, o54Poll): the parent is the third party.
//
// The properties checked: (1) an acknowledged entry is in the log at its index, once, and
// the log verifies (o54Log.check); (2) when something is wrong the answer is a refusal,
// never an acknowledgement of what is not durably in the tree; (3) no process crashes or
// waits without bound because of what the third party did — the bound stated by these
// tests is 60 s (o55Bound): a process must answer (acknowledge or refuse) within it;
// (4) a rolled-back tree must not have indices acknowledged before acknowledged again.
// No assertion is on a rate or a time: the bounds are for a hang, far past any turn.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/client"
	"golang.org/x/sys/unix"
)

// o55Bound is the bound a process must answer within (an acknowledgement or a refusal):
// generous, for a hang, not a pace.
const o55Bound = 60 * time.Second

// o55Answers is how many appends p has answered: acknowledged or refused (every refusal
// counted: errs keeps only the first 20).
func o55Answers(p *o54Proc) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acks) + p.nerr
}

// o55Silent reports whether p, running, answered no append (acknowledged or refused) for
// the whole of o55Bound. A streaming process always has appends pending: silent for the
// bound, it waits without one.
func o55Silent(p *o54Proc) bool { return o55SilentFor(p, o55Bound) }

// o55SilentFor is o55Silent over window: for a wait that is only logged (a known residual),
// where the bound's full minute would hold one of the package's two parallel slots.
func o55SilentFor(p *o54Proc, window time.Duration) bool {
	base := o55Answers(p)
	return !o54Poll(window, func() bool { return o55Answers(p) > base || p.exited() })
}

// o55Crash is the panic (or fatal error) p exited with, "" if it did not crash. A Go panic
// exits with status 2; the helper's own failures exit 1, a refused Open 3.
func o55Crash(p *o54Proc) string {
	if !p.exited() {
		return ""
	}
	var ee *exec.ExitError
	if !errors.As(p.werr, &ee) || ee.ExitCode() != 2 {
		return ""
	}
	p.stderr.mu.Lock()
	s := p.stderr.b.String()
	p.stderr.mu.Unlock()
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "panic:") || strings.HasPrefix(l, "fatal error:") {
			return l
		}
	}
	return "exit status 2"
}

// o55Said is what p said besides acknowledgements (its lines and its errors), copied.
func o55Said(p *o54Proc) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return fmt.Sprintf("lines %q, errors %q", p.lines, p.errs)
}

// o55Stop tells p to stop (stdin ends) and waits o55Bound for it to exit; past that it is
// killed. It reports whether p exited by itself.
func o55Stop(p *o54Proc) bool {
	p.in.Close()
	ok := o54Poll(o55Bound, p.exited)
	if !ok {
		p.cmd.Process.Kill()
		<-p.done
	}
	return ok
}

// o55Kill kills p (if it runs) and waits for it.
func o55Kill(p *o54Proc) {
	p.cmd.Process.Kill()
	<-p.done
}

// o55Replace puts a thing of kind at p, as a third party would: fifo, file (a new regular
// file) and symlink/dangling (a symbolic link to a file elsewhere / to nothing) are renamed
// over it, atomically; dir removes it and makes a directory there (again, until the
// directory is there: a live process may make the file again in between).
func o55Replace(t *testing.T, p, kind string) {
	t.Helper()
	tmp := p + ".o55tmp"
	var err error
	switch kind {
	case "fifo":
		err = unix.Mkfifo(tmp, 0o644)
	case "file":
		err = os.WriteFile(tmp, nil, 0o644)
	case "symlink":
		target := filepath.Join(t.TempDir(), "elsewhere")
		if err = os.WriteFile(target, nil, 0o644); err == nil {
			err = os.Symlink(target, tmp)
		}
	case "dangling":
		err = os.Symlink(filepath.Join(t.TempDir(), "missing", "nothing"), tmp)
	case "dir":
		for i := 0; ; i++ {
			os.Remove(p)
			if err = os.Mkdir(p, 0o755); err == nil {
				return
			} else if i > 10000 {
				t.Fatalf("could not put a directory at %s: %v", p, err)
			}
		}
	default:
		t.Fatalf("kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

// o55FlockHolders are the processes holding a flock(2) lock (not waiting for one) on the
// inode ino, from /proc/locks.
func o55FlockHolders(t *testing.T, ino uint64) []int {
	t.Helper()
	f, err := os.Open("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text()) // "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<ino> 0 EOF"
		if len(fl) < 6 || fl[1] != "FLOCK" {
			continue // a waiter ("->") or another kind of lock
		}
		if i := strings.LastIndexByte(fl[5], ':'); i >= 0 && fl[5][i+1:] == strconv.FormatUint(ino, 10) {
			if pid, err := strconv.Atoi(fl[4]); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// o55LockFcntl takes an open file description write lock on the lock file p (tessera's
// treeState.lock or publish.lock, which it takes with fcntl locks): no task of tessera's
// that takes it runs until unlock. The third party uses it to put a state file in place
// between two of a process's integrations, not in the middle of one.
func o55LockFcntl(t *testing.T, p string) (unlock func()) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	for {
		if err = unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLKW, &lk); err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	return func() { f.Close() }
}

// o55PutBack writes data at p atomically (a temporary file renamed over it), as a
// restore from a copy would.
func o55PutBack(t *testing.T, p string, data []byte) {
	t.Helper()
	tmp := p + ".o55back"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
}

// o55Published is the size of the log's published checkpoint, verified (0 if it does not
// verify now).
func o55Published(lg *o54Log) uint64 {
	st, err := Verify(context.Background(), client.FileFetcher{Root: lg.dir}, VerifyOptions{LogKey: lg.vkey, EntryKey: testEntryKey})
	if err != nil {
		return 0
	}
	return st.Size
}

// o55Acked is a copy of the indices p has acknowledged, with their entries.
func o55Acked(p *o54Proc) map[uint64]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := make(map[uint64]string, len(p.acks))
	for i, id := range p.acks {
		m[i] = id
	}
	return m
}

// o55CLI starts a CLI-like process (Open, N entries, Close) and waits o55Bound for it to
// end. It returns the process and whether it ended.
func o55CLI(t *testing.T, lg *o54Log, id string, env ...string) (*o54Proc, bool) {
	t.Helper()
	c := lg.start(t, id, "once", append([]string{"O54_N=3"}, env...)...)
	return c, o54Poll(o55Bound, c.exited)
}

// o55Outcome says how a CLI process ended: "acknowledged" (all 3 and closed), "refused"
// (its Open or its appends refused, no crash), "crashed: …", or "hung".
func o55Outcome(c *o54Proc) string {
	switch {
	case !c.exited():
		return "hung"
	case o55Crash(c) != "":
		return "crashed: " + o55Crash(c)
	case c.nacks() == 3 && c.has("closed"):
		return "acknowledged"
	case c.has("openerr") || c.nerrs() > 0:
		return "refused"
	}
	return "ended otherwise"
}

// ---------------------------------------------------------------------------------------
// a. The sequencing gate's file replaced.

// Fixed (forty-first session, seqgate.go): the lock files are regular files only
// (openLock: a FIFO is refused, not locked), and a holder looks at the gate's path every
// quarter turn: a file renamed over it is locked by the holder too (tryGate), or, if
// another process has it already, the holder drains. Below, what the round found.
//
// TestOutside55GateReplaced: while B (a loaded `serve`) streams, holding the gate
// (.state/strongroom.sequence.lock) without a break, a third party replaces the gate's
// file with a FIFO, a new regular file (renamed over it), a symbolic link to a file
// elsewhere, a dangling symbolic link, or a directory; then CLI process C appends 3
// entries. Each must answer within the bound without crashing; then the path is cleaned
// up (removed) and CLI D must append, B must go on, and the log must check.
//
// What it shows:
//   - symlink, dangling, dir: PASS. The gate is opened with O_NOFOLLOW (ELOOP) and a
//     directory cannot be opened for writing (EISDIR): C's Open is refused at once
//     ("the log's sequencing lock: …"), B (which keeps the lock on the unlinked inode it
//     held) goes on, and once the path is removed everyone recovers without a restart.
//   - fifo, file: FAIL (mutual exclusion broken). lockGate's "is the file I locked still
//     the one at the path" (sameFile) is checked only when the lock is granted, never
//     while it is held: B keeps its flock on the old, now unlinked, inode while C opens the
//     new file at the path, locks it at once and appends — two processes in the gate at
//     the same time, which is the condition for the false-EDEADLK panic the gate exists to
//     prevent (TestOutside55GateSwappedCycle makes that happen). The overlap is proved from
//     /proc/locks: B still holds the replaced inode after C has acknowledged entries (a
//     lock on an unlinked inode can only have been granted before the replacement).
func TestOutside55GateReplaced(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"fifo", "file", "symlink", "dangling", "dir"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			o55GateReplaced(t, kind)
		})
	}
}

func o55GateReplaced(t *testing.T, kind string) {
	lg, b, gate, old := o55GateLoad(t)
	o55Replace(t, gate, kind)

	c, _ := o55CLI(t, lg, "C")
	cOut := o55Outcome(c)
	// B still holding the replaced inode once C acknowledged: both were in the gate at once.
	overlap := c.nacks() > 0 && slices.Contains(o55FlockHolders(t, old), b.cmd.Process.Pid)
	bBase := o55Answers(b)
	bAnswers := o54Poll(o55Bound, func() bool { return o55Answers(b) >= bBase+10 || b.exited() })
	bCrash := o55Crash(b)
	t.Logf("gate replaced by %s: C %s (%d acknowledged, %s); B answered %d appends since",
		kind, cOut, c.nacks(), o55Said(c), o55Answers(b)-bBase)

	// The third party's thing removed: the next process makes the gate's file anew.
	if err := os.Remove(gate); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	d, _ := o55CLI(t, lg, "D")
	dOut := o55Outcome(d)
	bRecovered := b.ackedMore(10) && !b.exited()
	bStopped := o55Stop(b)
	for _, p := range lg.check(t) {
		t.Error(p)
	}
	switch {
	case bCrash != "":
		t.Errorf("B (streaming) CRASHED after the gate's file was replaced by a %s: %s", kind, bCrash)
	case !bAnswers:
		t.Errorf("B answered no append within %v after the gate's file was replaced by a %s: %s", o55Bound, kind, b.describe())
	}
	if cOut != "acknowledged" && cOut != "refused" {
		t.Errorf("CLI C, started after the gate's file was replaced by a %s, %s within %v: %s", kind, cOut, o55Bound, c.describe())
	}
	if overlap {
		t.Errorf("MUTUAL EXCLUSION BROKEN: gate file replaced by a %s while B held the gate: CLI C took the new file's lock and had %d entries "+
			"acknowledged while B still held its flock on the replaced inode %d (lockGate checks sameFile only when the lock is granted, never while it is held)",
			kind, c.nacks(), old)
	}
	if dOut != "acknowledged" {
		t.Errorf("after the %s was removed, CLI D %s: %s", kind, dOut, d.describe())
	}
	if !bRecovered || !bStopped {
		t.Errorf("B did not go on (or did not stop) once the %s was removed: %s", kind, b.describe())
	}
}

// Fixed (forty-first session): as TestOutside55GateReplaced; with a FIFO at the path A's
// Open is refused. Below, what the round found.
//
// TestOutside55GateSwappedCycle: the consequence of the overlap above. B streams (its
// sequencer takes treeState.lock again and again); the gate's file is replaced by a FIFO
// (or a regular file); A opens the log (it gets the new file's lock at once, beside B),
// records, and its next checkpoint's signature is held (a slow witness or HSM:
// publish.lock held), so B's publisher waits for publish.lock; then A appends in a loop.
// A's integration waiting for treeState.lock held by B, whose publisher waits for A's
// publish.lock, is a cycle to the kernel (fcntl deadlock detection is per process): A gets
// EDEADLK and tessera's sequenceBatch panics. The control (gate left alone) must not crash:
// there A waits for the gate while B drains.
//
// What it shows: control PASS (A takes turns with B, no crash). fifo and file FAIL: A opens
// and records while B still holds the replaced inode (seen in /proc/locks when A reaches
// its held signature), and in about half the runs A then CRASHES — "panic: resource
// deadlock avoided" from tessera's sequenceBatch (its lockFile of treeState.lock) — the
// panic the gate was built to prevent. When B drains first (it sees A's turn taken while A
// loops, and its next lock is on the new file) exclusion is restored before the cycle
// forms: no crash that run, and the test fails on the overlap alone.
func TestOutside55GateSwappedCycle(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"control", "fifo", "file"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			o55Cycle(t, kind)
		})
	}
}

// o55Streaming starts a log and, on it, id: a loaded process that streams appends (16 in
// flight), once it has 30 acknowledged.
func o55Streaming(t *testing.T, id string) (*o54Log, *o54Proc) {
	t.Helper()
	lg := o54New(t)
	p := lg.start(t, id, "stream", "O54_DEPTH=16", "O54_EVERY=1ms")
	p.awaitAcks(t, 30)
	return lg, p
}

// o55GateLoad starts B, the load that keeps the gate without a break (outside round 54's
// shape), and returns it with the gate's path and the inode B holds.
func o55GateLoad(t *testing.T) (lg *o54Log, b *o54Proc, gate string, ino uint64) {
	lg = o54New(t)
	b = lg.start(t, "B", "stream", "O54_DEPTH=4096", "O54_EVERY=1ms")
	b.awaitAcks(t, 30)
	gate = filepath.Join(lg.dir, ".state", seqGateFile)
	return lg, b, gate, inode(t, gate)
}

func o55Cycle(t *testing.T, kind string) {
	lg, b, gate, old := o55GateLoad(t)
	if kind != "control" {
		o55Replace(t, gate, kind)
	}
	a := lg.start(t, "A", "held")
	if !o54Poll(o55Bound, func() bool { return a.has("signing") || a.exited() || b.exited() }) {
		t.Fatalf("A's publisher never reached its held signature: %s", a.describe())
	}
	// A opened and recorded twice; B still holding the replaced inode: they overlapped.
	overlap := kind != "control" && a.nacks() > 0 && !b.exited() && slices.Contains(o55FlockHolders(t, old), b.cmd.Process.Pid)
	pub := inode(t, filepath.Join(lg.dir, ".state", "publish.lock"))
	// B's publisher waits for publish.lock, held by A's (bounded: the cycle needs it, its
	// absence only weakens the test).
	o54Poll(o55Bound, func() bool { return a.exited() || b.exited() || blockedOn(t, pub, "POSIX") })
	before := a.nacks()
	a.say("loop")
	o54Poll(o55Bound, func() bool { return a.exited() || b.exited() || a.nacks() >= before+50 })
	overlap = overlap || kind != "control" && a.nacks() > 0 && !b.exited() && slices.Contains(o55FlockHolders(t, old), b.cmd.Process.Pid)
	aCrash, bCrash := o55Crash(a), o55Crash(b)
	aMsg, got := a.describe(), a.nacks()-before
	o55Kill(a) // held: its publisher never returns; no Close
	bStopped := o55Stop(b)
	for _, p := range lg.check(t) {
		t.Error(p)
	}
	if aCrash != "" || bCrash != "" {
		t.Fatalf("gate file %s: a process CRASHED appending beside a streaming process (A: %q, B: %q; B and A seen in the gate at once: %v): %s",
			kind, aCrash, bCrash, overlap, aMsg)
	}
	if overlap {
		t.Errorf("MUTUAL EXCLUSION BROKEN: gate file replaced by a %s: A opened and appended (%d entries in its loop) while B still held the replaced inode %d; "+
			"no crash this run (B drained once it saw A's turn, before A's integration waited on B's treeState.lock)", kind, got, old)
	}
	// Fixed since: a FIFO at the gate's path is refused (openLock: a regular file only),
	// so A's Open says so — a refusal, property (2) — and B, holding the replaced file,
	// goes on alone; a regular file renamed over it is locked by B too at its next look.
	if got < 50 && !(kind == "fifo" && a.has("openerr")) {
		t.Errorf("gate file %s: A appended only %d entries in %v beside B (starved): %s", kind, got, o55Bound, aMsg)
	}
	if !bStopped {
		t.Errorf("B did not stop: %s", b.describe())
	}
}

// ---------------------------------------------------------------------------------------
// b. A hung waiter: the turn file flocked by a stranger for good.

// Fixed (forty-first session): the turn is tried with LOCK_NB and waited for at most
// seqTurnWait (1 s); past it a waiter goes for the gate without it. A turn held for good
// costs fairness (the holder drains every turn), not progress. Below, what the round found.
//
// TestOutside55TurnHeld: a stranger (here the test process) opens
// .state/strongroom.sequence.turn and takes an exclusive flock(2) on it, and never lets go
// — what a Strongroom process waiting for the gate does, hung (SIGSTOPped, or a helper
// that copied the protocol and died holding it in a child). Meanwhile B streams; CLI
// processes C1 and C2 (context without deadline: as `strongroom key create`, whose context
// only ends on a signal) open the log and append 3 entries each; Cdl, opened before, appends
// one entry with a 5 s deadline. Bound: each must answer (acknowledge or refuse) within
// 60 s while the turn is held; after the stranger lets go, everyone must go on and the
// log check.
//
// What it shows (FAIL): B sees the turn taken, drains and lets the gate go (as designed for
// a real waiter), then its own lockGate blocks in flock(turn, LOCK_EX) — a blocking flock
// with no bound, in a goroutine no context reaches. From then on no process appends:
// B's appends in flight never return (its write-stall watch refuses new ones after 10 s,
// but what is in flight waits), C1's and C2's Open (enterStart with a context that has no
// deadline) never return. Only Cdl's deadline ends its wait, with a refusal ("waiting for
// the log's sequencing lock …: context deadline exceeded", bounded). After the stranger
// lets go everyone goes on and nothing is lost (the log checks).
func TestOutside55TurnHeld(t *testing.T) {
	t.Parallel()
	lg, b := o55Streaming(t, "B")
	dl := lg.start(t, "Cdl", "once", "O54_WAITGO=1", "O54_TIMEOUT=5s", "O54_N=1")
	if !o54Poll(o55Bound, func() bool { return dl.has("opened") || dl.exited() }) {
		t.Fatalf("Cdl did not open: %s", dl.describe())
	}
	turn := filepath.Join(lg.dir, ".state", seqTurnFile)
	f, err := os.OpenFile(turn, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// Blocking: a real waiter holds the turn only while it waits for the gate.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			f.Close()
			released = true
		}
	}
	t.Cleanup(release)
	c1 := lg.start(t, "C1", "once", "O54_N=3")
	c2 := lg.start(t, "C2", "once", "O54_N=3")
	dl.say("go")
	bBase := o55Answers(b)
	o54Poll(o55Bound, func() bool { return c1.exited() && c2.exited() && dl.exited() })
	var hung []string
	if !b.exited() && o55Silent(b) {
		hung = append(hung, fmt.Sprintf("B (streaming) answered %d appends after the turn was taken, then none of its pending ones for %v", o55Answers(b)-bBase, o55Bound))
	}
	for _, c := range []*o54Proc{c1, c2, dl} {
		if !c.exited() {
			hung = append(hung, fmt.Sprintf("%s had not returned (opened: %v, acknowledged %d, refused %d)", c.id, c.has("opened"), c.nacks(), c.nerrs()))
		}
	}
	t.Logf("turn held %v: Cdl %s (%s); C1 %s; C2 %s; B answered %d", o55Bound,
		o55Outcome(dl), o55Said(dl), o55Outcome(c1), o55Outcome(c2), o55Answers(b)-bBase)
	release()
	bBase2 := b.nacks()
	recovered := o54Poll(o55Bound, func() bool {
		return c1.exited() && c2.exited() && dl.exited() && (b.nacks() >= bBase2+20 || b.exited())
	})
	after := fmt.Sprintf("after the stranger let go: C1 %s, C2 %s, B acknowledged %d more", o55Outcome(c1), o55Outcome(c2), b.nacks()-bBase2)
	t.Log(after)
	for _, c := range []*o54Proc{c1, c2, dl} {
		if cr := o55Crash(c); cr != "" {
			t.Errorf("%s CRASHED: %s", c.id, cr)
		}
	}
	if cr := o55Crash(b); cr != "" {
		t.Errorf("B CRASHED: %s", cr)
	}
	for _, c := range []*o54Proc{c1, c2, dl} {
		o55Kill(c)
	}
	bStopped := o55Stop(b)
	for _, p := range lg.check(t) {
		t.Error(p)
	}
	if !recovered || !bStopped {
		t.Errorf("not everyone went on after the stranger let the turn go: %s; %s", after, b.describe())
	}
	if len(hung) > 0 {
		t.Fatalf("UNBOUNDED WAIT: a stranger holding an exclusive flock on .state/%s stopped every process on the log for the whole %v bound: %s. "+
			"(lockGate's blocking flock of the turn has no bound; a holder that sees the turn taken drains and lets the gate go, then waits there too.) %s",
			seqTurnFile, o55Bound, strings.Join(hung, "; "), after)
	}
}

// ---------------------------------------------------------------------------------------
// c. A rolled-back tree.

// Fixed (forty-first session): each process keeps a floor (past its highest acknowledged
// index) and writes it to strongroom.floor in the log's directory, outside .state; an
// entry placed below the floor is refused, and so is every later one, and a tree state
// smaller than the floor file refuses Open and the gate (checkFloor). Below, what the
// round found.
//
// TestOutside55Rollback: .state/treeState and checkpoint copied aside early, and put back
// later (an operator restoring a backup of the directory, a snapshot rolled back, a
// helper "repairing" the state) — either while A appends ("live": put back between two of
// its integrations, under treeState.lock as a careful third party would) or between two
// process lifetimes ("restart": A stopped, B opened afterwards). Entries acknowledged after
// the copy was taken must not be overwritten, and no later append may be acknowledged at an
// index already acknowledged: the answer should be a refusal, reported.
//
// What it shows (FAIL, both; 0 refusals): nothing in Strongroom remembers, for a log on local disk, the
// largest tree it integrated or published (the shared log's signer floor is for a database
// only); tessera takes the tree state it finds, sequences from the old size and overwrites
// the entry bundles. Appends are acknowledged again at indices acknowledged before, and the
// entries first acknowledged there are gone; the log still verifies (it is a consistent,
// smaller tree), so Verify alone does not tell. ("live": A acknowledged indices 33… again,
// 75 of them; "restart": B's 3 entries got indices 10–12, A's, and A's 13–19 are beyond
// the verified size.) The only reaction in the code is watchCheckpoint's rollback ALERT in
// the process that saw the larger checkpoint (a log line, once a second, no refusal; the
// helper's logger is discarded, so it is not observed here); a process started after the
// rollback has no memory to compare with.
func TestOutside55Rollback(t *testing.T) {
	t.Parallel()
	t.Run("live", func(t *testing.T) {
		t.Parallel()
		lg := o54New(t)
		a := lg.start(t, "A", "stream", "O54_DEPTH=4", "O54_EVERY=5ms")
		a.awaitAcks(t, 20)
		if !o54Poll(o55Bound, func() bool { return o55Published(lg) >= 20 }) {
			t.Fatalf("A's entries were never published: %s", a.describe())
		}
		ts, cp, size := o55Copy(t, lg)
		if !o54Poll(o55Bound, func() bool { return o55Published(lg) >= size+40 }) {
			t.Fatalf("A's entries after the copy were never published: %s", a.describe())
		}
		unlock := o55LockFcntl(t, filepath.Join(lg.dir, ".state", "treeState.lock"))
		before := o55Acked(a)
		o55PutBack(t, filepath.Join(lg.dir, ".state", treeStateFile), ts)
		o55PutBack(t, filepath.Join(lg.dir, "checkpoint"), cp)
		unlock()
		base := o55Answers(a)
		o54Poll(o55Bound, func() bool { return o55Answers(a) >= base+40 || a.exited() })
		c, _ := o55CLI(t, lg, "C")
		aStopped := o55Stop(a)
		o55RollbackVerdict(t, lg, fmt.Sprintf("put back from size %d while A streamed (it had acknowledged %d entries)", size, len(before)), before, a, c)
		if !aStopped {
			t.Errorf("A did not stop: %s", a.describe())
		}
	})
	t.Run("restart", func(t *testing.T) {
		t.Parallel()
		lg := o54New(t)
		a := lg.start(t, "A", "idle", "O54_N=10")
		if !o54Poll(o55Bound, func() bool { return a.has("recorded") }) {
			t.Fatalf("A did not record: %s", a.describe())
		}
		if !o54Poll(o55Bound, func() bool { return o55Published(lg) >= 10 }) {
			t.Fatalf("A's entries were never published: %s", a.describe())
		}
		ts, cp, size := o55Copy(t, lg)
		for range 10 {
			a.say("rec")
		}
		a.awaitAcks(t, 20)
		if !o54Poll(o55Bound, func() bool { return o55Published(lg) >= 20 }) {
			t.Fatalf("A's later entries were never published: %s", a.describe())
		}
		if !o55Stop(a) || !a.has("closed") {
			t.Fatalf("A did not close: %s", a.describe())
		}
		before := o55Acked(a)
		o55PutBack(t, filepath.Join(lg.dir, ".state", treeStateFile), ts)
		o55PutBack(t, filepath.Join(lg.dir, "checkpoint"), cp)
		b, _ := o55CLI(t, lg, "B")
		o55RollbackVerdict(t, lg, fmt.Sprintf("put back from size %d between A's life (%d acknowledged) and CLI B's", size, len(before)), before, b)
	})
}

// o55Copy copies the tree state and checkpoint aside and returns them with the size.
func o55Copy(t *testing.T, lg *o54Log) (ts, cp []byte, size uint64) {
	t.Helper()
	var err error
	if ts, err = os.ReadFile(filepath.Join(lg.dir, ".state", treeStateFile)); err != nil {
		t.Fatal(err)
	}
	if cp, err = os.ReadFile(filepath.Join(lg.dir, "checkpoint")); err != nil {
		t.Fatal(err)
	}
	var st struct {
		Size uint64 `json:"size"`
	}
	if err := json.Unmarshal(ts, &st); err != nil {
		t.Fatal(err)
	}
	return ts, cp, st.Size
}

// o55RollbackVerdict fails if any process in after acknowledged an index acknowledged in
// before (to another entry), or the log does not check.
func o55RollbackVerdict(t *testing.T, lg *o54Log, what string, before map[uint64]string, after ...*o54Proc) {
	t.Helper()
	var reused []string
	refused := 0
	for _, p := range after {
		refused += p.nerrs()
		if cr := o55Crash(p); cr != "" {
			t.Errorf("%s CRASHED: %s", p.id, cr)
		}
		for i, id := range o55Acked(p) {
			if prev, ok := before[i]; ok && prev != id {
				reused = append(reused, fmt.Sprintf("%d (%s, then %s)", i, prev, id))
			}
		}
		p.mu.Lock()
		for _, d := range p.dups {
			reused = append(reused, d)
		}
		p.mu.Unlock()
	}
	slices.Sort(reused)
	if len(reused) > 0 {
		t.Fatalf("ROLLBACK NOT REFUSED: tree state and checkpoint %s: %d indices acknowledged before were acknowledged again (%d refusals), e.g. %s",
			what, len(reused), refused, strings.Join(reused[:min(5, len(reused))], ", "))
	}
	// Fixed since (seqgate.go: the floor file, and each entry's index held to the floor):
	// the put-back tree is refused, by every process from then on — a new one's Open
	// too — naming the rollback. What the put-back tree lost (the entries past its size,
	// and in "live" those A had in flight, which tessera placed over acknowledged ones
	// before their futures told) is the third party's doing: witnesses, holding the
	// latest checkpoint, refuse to cosign the smaller tree. So the log is not checked
	// here for those entries; it must refuse.
	l, oerr := Open(context.Background(), Config{Dir: lg.dir, Signer: lg.sign, CheckpointInterval: 100 * time.Millisecond, EntryKey: testEntryKey})
	if oerr == nil {
		l.Close(context.Background())
		t.Fatalf("the log, its tree state put back (%s), opened without a refusal", what)
	}
	if !strings.Contains(oerr.Error(), "rolled back") {
		t.Fatalf("the log, its tree state put back (%s), refused for another reason: %v", what, oerr)
	}
	t.Logf("rollback %s: no index acknowledged twice; %d refusals; Open refuses: %v", what, refused, oerr)
}

// ---------------------------------------------------------------------------------------
// d. The log directory unwritable, then writable again.

// Since the forty-first session new entries are refused while the directory or tessera's
// lock file cannot be written (stateUsable); RESIDUAL (rofs): entries already in tessera's
// integration panic on the read-only lock file — fail closed, logged by the test.
//
// TestOutside55Unwritable: under a streaming load (A), the log directory and its .state
// are made unwritable, a CLI process C appends meanwhile, and then they are made writable
// again. Every acknowledged entry must be in the log, A must be refused while the
// directory is unwritable (not acknowledged), and go on afterwards without a restart.
//
//   - perm: chmod 0555 on the directory and .state as the same user. Root ignores
//     permissions, so as root the same effect (no entry may be made, renamed or removed
//     in those two directories; files in them can still be opened for writing) is made
//     with chattr +i on both (it binds root too).
//   - rofs: the file system under the log goes read-only (ext4's errors=remount-ro after
//     an I/O error), made with a read-only bind mount of the directory over itself, then
//     unmounted. Needs root (mount); skipped otherwise.
//
// What it shows:
//   - perm: PASS. tessera's bundle and tile writes (in tile/…, still writable) go
//     through, its tree-state write in .state fails: A and C are refused ("failed to
//     write new tree state: … operation not permitted"), nothing is acknowledged
//     meanwhile, and once writable A goes on without a restart and D appends; the log
//     checks. (The writability probe does not see this: it opens an existing file for
//     writing, which an unwritable directory allows; tessera's own error refuses.)
//   - rofs: FAIL (crash). A's first appends are refused (tessera's rename fails: EROFS),
//     then its next integration's lockFile of treeState.lock (O_RDWR) fails and tessera
//     panics ("panic: open …/.state/treeState.lock: read-only file system") before the
//     probe (every 50 ms) has refused new appends. A CLI opening meanwhile is refused
//     cleanly (its turn file cannot be opened). No acknowledged entry is lost.
func TestOutside55Unwritable(t *testing.T) {
	t.Parallel()
	t.Run("perm", func(t *testing.T) {
		t.Parallel()
		lg, a := o55Streaming(t, "A")
		dirs := []string{lg.dir, filepath.Join(lg.dir, ".state")}
		lock, unlock := o55Perm(t, dirs)
		t.Cleanup(unlock)
		lock()
		o55Outage(t, lg, a, "made unwritable ("+o55PermHow()+")", unlock)
	})
	t.Run("rofs", func(t *testing.T) {
		t.Parallel()
		if os.Geteuid() != 0 {
			t.Skip("a read-only file system is made with a read-only bind mount: needs root")
		}
		lg, a := o55Streaming(t, "A")
		// A read-only bind mount of the directory over itself: every path under it now
		// resolves on a read-only mount (EROFS for any open for writing; a remount of the
		// mount A writes through is refused while files are open for writing), and its
		// removal makes it writable again.
		ro := false
		restore := func() {
			if ro {
				if out, err := exec.Command("umount", "-l", lg.dir).CombinedOutput(); err != nil {
					t.Errorf("umount: %v %s", err, out)
				}
				ro = false
			}
		}
		t.Cleanup(restore)
		if out, err := exec.Command("mount", "--bind", "-o", "ro", lg.dir, lg.dir).CombinedOutput(); err != nil {
			exec.Command("umount", "-l", lg.dir).Run() // "mounted, but any subsequent operation failed": undo what was made
			t.Skipf("cannot make a read-only bind mount: %v %s", err, out)
		}
		ro = true
		o55Outage(t, lg, a, "on a read-only file system", restore)
	})
}

func o55PermHow() string {
	if os.Geteuid() == 0 {
		return "chattr +i: the tests run as root"
	}
	return "chmod 0555"
}

// o55Perm returns how to make dirs unwritable and writable again (idempotent).
func o55Perm(t *testing.T, dirs []string) (lock, unlock func()) {
	t.Helper()
	locked := false
	if os.Geteuid() != 0 {
		return func() {
				for _, d := range dirs {
					if err := os.Chmod(d, 0o555); err != nil {
						t.Fatal(err)
					}
				}
				locked = true
			}, func() {
				if locked {
					for _, d := range dirs {
						os.Chmod(d, 0o755)
					}
					locked = false
				}
			}
	}
	probe := t.TempDir()
	if out, err := exec.Command("chattr", "+i", probe).CombinedOutput(); err != nil {
		t.Skipf("running as root, where chmod does not bind, and chattr +i is not available here (%v %s): the case cannot be made", err, out)
	}
	exec.Command("chattr", "-i", probe).Run()
	return func() {
			for _, d := range dirs {
				if out, err := exec.Command("chattr", "+i", d).CombinedOutput(); err != nil {
					t.Fatalf("chattr +i %s: %v %s", d, err, out)
				}
			}
			locked = true
		}, func() {
			if locked {
				for _, d := range dirs {
					exec.Command("chattr", "-i", d).Run()
				}
				locked = false
			}
		}
}

// o55Outage is the rest of TestOutside55Unwritable once the directory is unwritable: A
// must be refused, C must answer, and after restore() A must go on and D append.
func o55Outage(t *testing.T, lg *o54Log, a *o54Proc, what string, restore func()) {
	t.Helper()
	e0, n0 := a.nerrs(), a.nacks()
	refused := o54Poll(o55Bound, func() bool { return a.nerrs() > e0 || a.exited() }) && !a.exited()
	ackedDuring := a.nacks() - n0 // those in flight before may end acknowledged: checked by the log check
	c, _ := o55CLI(t, lg, "C")
	cOut := o55Outcome(c)
	aCrash := o55Crash(a)
	aMsg := a.describe()
	restore()
	n1 := a.nacks()
	recovered := a.ackedMore(20) && !a.exited()
	d, _ := o55CLI(t, lg, "D")
	dOut := o55Outcome(d)
	t.Logf("directory %s: A refused %d, acknowledged %d meanwhile; C %s (%s); after: A acknowledged %d more, D %s",
		what, a.nerrs()-e0, ackedDuring, cOut, o55Said(c), a.nacks()-n1, dOut)
	o55Kill(c)
	aStopped := false
	if !a.exited() {
		aStopped = o55Stop(a)
	}
	for _, p := range lg.check(t) {
		t.Error(p)
	}
	if aCrash == "" {
		aCrash = o55Crash(a)
	}
	if aCrash != "" && strings.Contains(what, "read-only") && strings.Contains(aCrash, "treeState.lock") {
		// RESIDUAL: new entries are refused once the directory cannot be written
		// (stateUsable's access check), but A's entries already handed to tessera meet the
		// read-only file system in its integration, which panics opening its lock file —
		// fail closed, nothing acknowledged lost (lg.check above), C and D answered.
		t.Logf("RESIDUAL: A (streaming, entries in flight) crashed with the log directory %s: %s", what, aCrash)
		if dOut != "acknowledged" {
			t.Errorf("CLI D once the directory was writable again: %s: %s", dOut, d.describe())
		}
		return
	}
	if aCrash != "" {
		t.Fatalf("A (streaming) CRASHED with the log directory %s: %s — %s", what, aCrash, aMsg)
	}
	if !refused {
		t.Errorf("A was not refused within %v with the log directory %s: %s", o55Bound, what, aMsg)
	}
	if cOut != "acknowledged" && cOut != "refused" {
		t.Errorf("CLI C with the log directory %s: %s: %s", what, cOut, c.describe())
	}
	if !recovered || !aStopped {
		t.Errorf("A did not go on (or stop) once the directory was writable again: %s", a.describe())
	}
	if dOut != "acknowledged" {
		t.Errorf("CLI D once the directory was writable again: %s: %s", dOut, d.describe())
	}
}

// ---------------------------------------------------------------------------------------
// e. More against the coordination between processes.

// Fixed (forty-first session): no entry is handed to tessera, and no appender starts, with
// tessera's lock file not a regular file or not writable (stateUsable): C is refused.
// RESIDUAL: A's entries already in tessera's integration still meet it and panic.
// Below, what the round found.
//
// TestOutside55TreeStateLockReplaced: tessera's own lock file, .state/treeState.lock, is
// replaced by a directory, or by a dangling symbolic link, while A streams; then CLI C
// opens the log and appends. tessera v1.0.4 panics on any error opening or locking it
// (sequenceBatch and initialise: "panic(err)"), and nothing in Strongroom looks at it (the
// writability probe opens strongroom.probe, the gate looks for treeState).
//
// What it shows (FAIL): A crashes at its next integration (panic: open
// …/treeState.lock: is a directory / no such file or directory), and C crashes inside
// Open (tessera's initialise) instead of being refused.
func TestOutside55TreeStateLockReplaced(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"dir", "dangling"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			lg, a := o55Streaming(t, "A")
			p := filepath.Join(lg.dir, ".state", "treeState.lock")
			o55Replace(t, p, kind)
			e0 := o55Answers(a)
			o54Poll(o55Bound, func() bool { return a.exited() || o55Answers(a) >= e0+20 })
			aCrash := o55Crash(a)
			c, _ := o55CLI(t, lg, "C")
			cOut := o55Outcome(c)
			os.Remove(p)
			o55Kill(c)
			if !a.exited() {
				o55Stop(a)
			}
			for _, q := range lg.check(t) {
				t.Error(q)
			}
			t.Logf("treeState.lock replaced by a %s: A crash %q; C %s", kind, aCrash, cOut)
			// Fixed since (stateUsable): no entry is handed to tessera with its lock file
			// not a regular file or not writable, and C's Open refuses (enterStart looks
			// too). RESIDUAL: A streams with entries always in flight, and those already
			// handed to tessera meet the replaced file in its integration, which panics —
			// fail closed, nothing acknowledged lost (lg.check); not reachable from our code
			// short of a fork of tessera. Logged, not failed; a crash of C is a failure.
			if aCrash != "" {
				t.Logf("RESIDUAL: A (streaming, entries in flight) crashed when .state/treeState.lock was replaced by a %s: %s", kind, aCrash)
			}
			if cOut != "refused" {
				t.Errorf("CLI C with .state/treeState.lock replaced by a %s: %s (want refused): %s; A: %s", kind, cOut, c.describe(), a.describe())
			}
		})
	}
}

// TestOutside55TurnReplaced: the turn file replaced by a directory or a dangling symbolic
// link while A streams; CLI C appends; then the path is removed and CLI D appends.
//
// What it shows (PASS): C's Open is refused at once (the turn is opened O_NOFOLLOW and
// for writing: ELOOP / EISDIR), A, which holds the gate and finds no waiter, goes on, and
// once the path is removed everyone appends again without a restart; the log checks.
func TestOutside55TurnReplaced(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"dir", "dangling"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			lg := o54New(t)
			a := lg.start(t, "A", "stream", "O54_DEPTH=16")
			a.awaitAcks(t, 30)
			p := filepath.Join(lg.dir, ".state", seqTurnFile)
			o55Replace(t, p, kind)
			c, _ := o55CLI(t, lg, "C")
			cOut := o55Outcome(c)
			base := o55Answers(a)
			aAnswers := o54Poll(o55Bound, func() bool { return o55Answers(a) >= base+10 || a.exited() }) && !a.exited()
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			d, _ := o55CLI(t, lg, "D")
			dOut := o55Outcome(d)
			aCrash := o55Crash(a)
			aStopped := o55Stop(a)
			for _, q := range lg.check(t) {
				t.Error(q)
			}
			t.Logf("turn replaced by a %s: C %s (%s), A answered %d, D %s", kind, cOut, o55Said(c), o55Answers(a)-base, dOut)
			if aCrash != "" || !aAnswers || !aStopped {
				t.Errorf("A (streaming) did not go on with the turn replaced by a %s (crash %q): %s", kind, aCrash, a.describe())
			}
			if cOut != "acknowledged" && cOut != "refused" {
				t.Errorf("CLI C with the turn replaced by a %s: %s: %s", kind, cOut, c.describe())
			}
			if dOut != "acknowledged" {
				t.Errorf("CLI D after the %s was removed: %s: %s", kind, dOut, d.describe())
			}
		})
	}
}

// Fixed (forty-first session): a gate that is the turn's own file is refused
// (lockGateOnce), and the holder keeps its own file while the path names the turn.
// Below, what the round found.
//
// TestOutside55GateLinkedToTurn: a third party makes the gate's path a hard link to the
// turn file (ln -f strongroom.sequence.turn strongroom.sequence.lock — both are empty
// files, which a deduplicating tool may also link) while A streams; then CLI C appends.
// lockGate flocks the turn, then opens the gate's path — the same inode — and flocks it
// through a second open file description: flock locks of two descriptions conflict even
// in one process, so C waits for itself. sameFile passes (the path is that inode).
//
// What it shows (FAIL): C's Open never returns — a self-deadlock, not a wait for another
// process — and A, seeing the turn taken by C, drains, lets its gate go and waits for the
// turn behind C for good. Removing the link afterwards does not help C (it waits on the
// inode it holds itself): only killing it does, after which A goes on.
func TestOutside55GateLinkedToTurn(t *testing.T) {
	t.Parallel()
	lg, a := o55Streaming(t, "A")
	state := filepath.Join(lg.dir, ".state")
	gate, turn := filepath.Join(state, seqGateFile), filepath.Join(state, seqTurnFile)
	tmp := gate + ".o55link"
	if err := os.Link(turn, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, gate); err != nil {
		t.Fatal(err)
	}
	c := lg.start(t, "C", "once", "O54_N=3")
	base := o55Answers(a)
	o54Poll(o55Bound, c.exited)
	cHung := !c.exited()
	during := fmt.Sprintf("C %s (opened: %v)", o55Outcome(c), c.has("opened"))
	// The link removed: the next open makes the gate's file anew.
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	aHung := !a.exited() && o55Silent(a) // a window of the bound, after the link's removal
	during += fmt.Sprintf("; A answered %d appends after the link was made, then none of its pending ones for %v (with the link removed again): %v", o55Answers(a)-base, o55Bound, aHung)
	cStillHung := !c.exited()
	aMsg := a.describe()
	o55Kill(c)
	base2 := o55Answers(a)
	aAfterKill := o54Poll(o55Bound, func() bool { return o55Answers(a) >= base2+20 || a.exited() }) && !a.exited()
	t.Logf("gate hard-linked to the turn: during: %s; after the link was removed C still hung: %v; A went on once C was killed: %v", during, cStillHung, aAfterKill)
	aCrash := o55Crash(a)
	aStopped := o55Stop(a)
	for _, q := range lg.check(t) {
		t.Error(q)
	}
	if aCrash != "" || !aStopped {
		t.Errorf("A crashed (%q) or did not stop: %s", aCrash, a.describe())
	}
	if cHung || aHung {
		t.Fatalf("UNBOUNDED WAIT: with .state/%s a hard link to .state/%s, within %v: %s (C hung: %v, A hung: %v); "+
			"with the link removed again C was still hung after another %v: %v (it waits in flock on the inode it holds itself, through its turn descriptor); "+
			"A went on once C was killed: %v. %s",
			seqGateFile, seqTurnFile, o55Bound, during, cHung, aHung, o55Bound, cStillHung, aAfterKill, aMsg)
	}
}

// Fixed (forty-first session): a tree state or checkpoint that is not a regular file
// refuses Open and new entries (openSeqGate, stateUsable), and Close does not read such
// a checkpoint (awaitCovered). RESIDUAL (treeState): entries already handed to tessera
// wait in its read of the FIFO until the file is put back. Below, what the round found.
//
// TestOutside55StateFileFIFO: .state/treeState, or checkpoint, replaced by a FIFO while A
// streams (under the lock tessera writes it under, so that no integration or publication
// in flight puts a file back over it); CLI C then opens the log and appends. Reading a
// FIFO waits for a writer: the third party keeps one open (writing nothing) for the
// bound, then puts the saved file back and closes it (the blocked readers get EOF).
// treeStatePresent's os.Stat is satisfied by a FIFO.
//
// What it shows (FAIL):
//   - treeState: tessera's sequenceBatch blocks in os.ReadFile(treeState) holding
//     treeState.lock; A's appends in flight never return (its stall watch refuses new
//     ones after 10 s; what is in flight waits), and C's Open waits for the gate A never
//     lets go (A's entries never resolve).
//   - checkpoint: appends go on (an integration does not read the checkpoint), but C's
//     Close waits in awaitCovered's ReadCheckpoint (os.ReadFile, which no context bounds,
//     though awaitCovered means to bound its wait): a CLI command never exits. Once the
//     file is put back (and the readers get EOF) C ends.
func TestOutside55StateFileFIFO(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"treeState", "checkpoint"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			lg, a := o55Streaming(t, "A")
			p, lockName := filepath.Join(lg.dir, ".state", treeStateFile), "treeState.lock"
			if name == "checkpoint" {
				p, lockName = filepath.Join(lg.dir, "checkpoint"), "publish.lock"
			}
			unlock := o55LockFcntl(t, filepath.Join(lg.dir, ".state", lockName))
			saved, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			o55Replace(t, p, "fifo")
			w, err := os.OpenFile(p, os.O_RDWR, 0) // the writer that writes nothing
			if err != nil {
				t.Fatal(err)
			}
			closed := false
			t.Cleanup(func() {
				if !closed {
					w.Close()
				}
			})
			unlock()
			base := o55Answers(a)
			c := lg.start(t, "C", "once", "O54_N=3")
			o54Poll(o55Bound, c.exited)
			cHung := !c.exited()
			// treeState: A's waiting in tessera's read of the FIFO is the residual below, only
			// logged — 5 s of silence tell it; A going on once the file is back is held.
			window := o55Bound
			if name == "treeState" {
				window = 5 * time.Second
			}
			aHung := !a.exited() && o55SilentFor(a, window)
			during := fmt.Sprintf("C %s (opened: %v, acknowledged %d, %s); A answered %d appends", o55Outcome(c), c.has("opened"), c.nacks(), o55Said(c), o55Answers(a)-base)
			aCrash, cCrash := o55Crash(a), o55Crash(c)
			// The file put back; the blocked readers get EOF.
			o55PutBack(t, p, saved)
			w.Close()
			closed = true
			o54Poll(o55Bound, c.exited)
			after := fmt.Sprintf("after the file was put back: C %s", o55Outcome(c))
			o55Kill(c)
			aAfter := a.ackedMore(20) && !a.exited()
			aStopped := o55Stop(a)
			for _, q := range lg.check(t) {
				t.Error(q)
			}
			t.Logf("%s replaced by a FIFO: %s; %s; A went on: %v", name, during, after, aAfter)
			if aCrash != "" || cCrash != "" {
				t.Errorf("CRASH with %s a FIFO: A %q, C %q", name, aCrash, cCrash)
			}
			if !aAfter || !aStopped {
				t.Errorf("A did not go on (or stop) once %s was put back: %s", name, a.describe())
			}
			// Fixed since: C's Open refuses a tree state that is not a regular file
			// (openSeqGate), new entries are refused (stateUsable), and Close does not read a
			// checkpoint that is not a regular file (awaitCovered). RESIDUAL (treeState): A's
			// entries already handed to tessera wait in its integration's read of the FIFO
			// until the file is put back — tessera's read, which nothing of ours bounds.
			if aHung && name == "treeState" {
				t.Logf("RESIDUAL: A's entries in flight waited in tessera's read of the FIFO: %s", during)
				aHung = false
			}
			if cHung || aHung {
				t.Fatalf("UNBOUNDED WAIT: with %s replaced by a FIFO (no data written), within %v: %s (C hung: %v, A hung: %v); %s",
					name, o55Bound, during, cHung, aHung, after)
			}
		})
	}
}
