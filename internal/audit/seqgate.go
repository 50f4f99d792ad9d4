package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/tessera"
	"golang.org/x/sys/unix"
)

// The sequencing gate's files in a local log's .state directory, and tessera's tree state.
const (
	seqGateFile   = "strongroom.sequence.lock"
	seqTurnFile   = "strongroom.sequence.turn"
	treeStateFile = "treeState"
	// floorFile, in the log's directory (not .state, which a rollback puts back whole),
	// holds the size of the largest tree a process of the log had an entry acknowledged in.
	floorFile = "strongroom.floor"
)

// seqGateTurn is how long a process keeps the gate while another waits for it: then it
// takes no new entry until those in flight are resolved, and lets the gate go.
const seqGateTurn = 100 * time.Millisecond

// seqTurnWait bounds a wait for the turn: a process that holds the turn and never comes
// for the gate (hung, or a third party's flock) costs the others their turns' fairness,
// not their progress (outside round 55).
const seqTurnWait = time.Second

// seqPoll is how often a waiter tries the turn and the gate again (both are taken with
// LOCK_NB, so that a wait can end: a blocking flock cannot be called off).
const seqPoll = 5 * time.Millisecond

// seqGate keeps tessera's POSIX sequencer of one process at a time on a log directory.
//
// tessera v1.0.4's POSIX driver serialises its tasks with process-associated fcntl locks:
// an integration holds .state/treeState.lock, a checkpoint publication publish.lock.
// Linux checks a blocking fcntl lock for deadlock by process, not by thread: process A's
// publisher holding publish.lock while A's integration waits for treeState.lock, held by
// B, whose publisher waits for publish.lock, is a cycle to the kernel though no thread
// waits on itself, and the last request gets EDEADLK. tessera panics on any error taking
// treeState.lock — two `serve`s on one directory, or a CLI command appending beside a
// `serve`, crashed one of them (seen once in the suite: TestScriptsHSM/redis_detect).
//
// The cycle needs treeState.lock contended between processes. A process's integration
// takes it only while an entry it added is unresolved (tessera's queue flushes only what
// was added, and an entry's future resolves after the flush that integrated it), or while
// the appender starts (initialise). So a process holds the gate — flock(2) on its own
// file, which the kernel's deadlock check does not see — from before its first such
// entry until the last is resolved, and around the appender's start: treeState.lock is
// then never waited for across processes, and no cycle can form. publish.lock and
// gcState.lock stay contended; a cycle of those two alone ends in an error their tasks
// log and retry (neither panics). Two Logs on one directory in one process exclude each
// other the same way (their fcntl locks, of one owner, did not).
//
// Outside round 54 (outside54_test.go) found the first version's three ways around it,
// closed here:
//   - the gate's file removed (a cleaner of *.lock files): the next process locked a new
//     file and the two no longer excluded each other — the panic again. A lock is now
//     kept only if the file it locked is still the one at the gate's path (lockGate);
//   - a loaded process never let the gate go (new entries came before the last resolved,
//     and flock has no queue): another's append, or a CLI command's Open, waited as long as
//     the load lasted, past its caller's deadline. A waiter now queues on a second file
//     (the turn) while it waits for the gate; a holder that sees the turn taken, once it
//     has held the gate for seqGateTurn, takes no new entry until its own are resolved,
//     then lets go. enter waits within its context;
//   - .state removed: tessera starts a new tree (size 0) where it finds no tree state,
//     over acknowledged entries. The gate is not taken where the tree state is gone, and
//     Open refuses a log that has a checkpoint but no tree state (openSeqGate).
type seqGate struct {
	dir string // the log's .state

	mu        sync.Mutex
	f         *os.File  // the gate's file, locked, while held
	n         int       // entries in flight under the gate
	want      int       // callers of enter waiting
	acquiring bool      // a lockGate is running
	draining  bool      // another process waits: no new entry until n is 0
	since     time.Time // when the gate was taken
	looked    time.Time // when the holder last looked for a waiter and the tree state
	err       error     // the last acquisition's failure, for those that waited on it
	changed   chan struct{}
	closed    bool
	stop      chan struct{} // closed by close: an acquisition in progress ends
	// floor is past the highest index this process has had an entry of its own at: a later
	// entry placed under it means the tree was rolled back under the process (rolled).
	floor    atomic.Uint64
	rolled   atomic.Pointer[error]
	fmu      sync.Mutex // the floor file's writes
	starting bool       // the appender starts: a new log has no tree state yet (openSeqGate checked)
}

// openSeqGate readies the gate of the local log in dir. A log that has a checkpoint and
// no tree state is refused: tessera would start a new tree over its entries.
func openSeqGate(dir string) (*seqGate, error) {
	d := filepath.Join(dir, ".state")
	if _, err := os.Stat(filepath.Join(d, treeStateFile)); errors.Is(err, os.ErrNotExist) {
		if _, cerr := os.Stat(filepath.Join(dir, "checkpoint")); cerr == nil {
			return nil, fmt.Errorf("%w: the log in %s has a checkpoint but no tree state (.state/%s): its state was removed; restore it (starting a new tree would write over the log's entries)", ErrUnavailable, dir, treeStateFile)
		}
	}
	if _, err := os.Lstat(filepath.Join(d, treeStateFile)); err == nil {
		if err := treeStatePresent(d); err != nil {
			return nil, err // not a regular file: tessera's read of it would not end
		}
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	g := &seqGate{dir: d, changed: make(chan struct{}), stop: make(chan struct{})}
	if err := g.checkFloor(); err != nil {
		return nil, err
	}
	return g, nil
}

// enter takes the gate for one more unit of work, waiting (within ctx) while another
// process has it.
func (g *seqGate) enter(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.want++
	defer func() { g.want-- }()
	for {
		if g.closed {
			return fmt.Errorf("%w: log closed", ErrUnavailable)
		}
		if r := g.rolled.Load(); r != nil {
			return *r
		}
		if g.f != nil && !g.draining && !g.starting {
			g.look()
		}
		if g.f != nil && !g.draining {
			// Every entry, not every look: the tree state, tessera's lock file, the checkpoint.
			if err := stateUsable(g.dir, !g.starting); err != nil {
				if g.n == 0 {
					g.release() // taking no entry, it keeps no one out
				}
				return err
			}
			g.n++
			return nil
		}
		if g.f == nil && !g.acquiring {
			g.acquiring, g.err = true, nil
			go g.acquire(!g.starting)
		}
		ch := g.changed
		g.mu.Unlock()
		var done <-chan struct{}
		if ctx != nil {
			done = ctx.Done()
		}
		select {
		case <-ch:
		case <-done:
			g.mu.Lock()
			return fmt.Errorf("%w: waiting for the log's sequencing lock (another process appends): %v", ErrUnavailable, context.Cause(ctx))
		}
		g.mu.Lock()
		if g.err != nil && g.f == nil && !g.acquiring {
			return g.err
		}
	}
}

// look, every quarter turn while the gate is held, checks that the gate's file is still
// the one at its path and, once the gate has been held a turn, whether another process
// waits for it (then the gate drains). The tree state is enter's to check (stateUsable),
// at every entry. mu held.
func (g *seqGate) look() {
	now := time.Now()
	if now.Sub(g.looked) < seqGateTurn/4 {
		return
	}
	g.looked = now
	if !sameFile(g.f, filepath.Join(g.dir, seqGateFile)) {
		// The gate's file was replaced (or removed) while held: a newcomer locking the
		// file now at the path would sequence beside this process (outside round 55). Lock
		// that file too, and hold it instead; if another process has it already, two
		// sequence at once — take nothing new, and let go as soon as those in flight are
		// resolved. A path no one can lock (a FIFO, a directory, a link) refuses newcomers
		// as it would this process: keep the file held.
		nf, err := tryGate(g.dir)
		switch {
		case err == nil:
			g.f.Close()
			g.f = nf
		case errors.Is(err, unix.EWOULDBLOCK):
			g.draining = true
			if g.n == 0 {
				g.release()
			}
			return
		}
	}
	if now.Sub(g.since) >= seqGateTurn && turnTaken(g.dir) {
		g.draining = true
		if g.n == 0 {
			g.release()
		}
	}
}

// enterStart is enter around the appender's start, where a new log has no tree state yet.
func (g *seqGate) enterStart(ctx context.Context) error {
	g.mu.Lock()
	g.starting = true
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.starting = false
		g.mu.Unlock()
	}()
	return g.enter(ctx)
}

// acquire takes the gate for those waiting in enter (releasing it at once if none is
// left), or records why it could not.
func (g *seqGate) acquire(needState bool) {
	f, err := lockGate(g.dir, needState, g.stop)
	if err == nil && needState {
		if err = g.checkFloor(); err != nil {
			f.Close()
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.acquiring = false
	switch {
	case err != nil:
		g.err = err
	case g.want == 0 || g.closed:
		f.Close() // no one waits any more: let it go
	default:
		g.f, g.since, g.looked, g.draining = f, time.Now(), time.Now(), false
	}
	g.wake()
}

// leave ends a unit of work. The last one lets the gate go unless someone of this
// process is about to enter; a draining gate goes regardless.
func (g *seqGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n--; g.n == 0 && g.f != nil && (g.draining || g.want == 0 || g.closed) {
		g.release()
	}
}

// release lets the gate go. mu held.
func (g *seqGate) release() {
	g.f.Close() // the lock goes with the file's last descriptor
	g.f, g.draining = nil, false
	g.wake()
}

func (g *seqGate) wake() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// close ends the gate: no entry enters after it; a gate held with none in flight goes.
func (g *seqGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		close(g.stop)
	}
	g.closed = true
	if g.f != nil && g.n == 0 {
		g.release()
	}
	g.wake()
}

// lockGate waits for the turn (at most seqTurnWait), then for the gate, and returns the
// gate's file, locked; stop ends the wait. The turn is let go once the gate is held: a
// holder that finds the turn taken knows another waits. A lock is kept only on the file
// that is at the gate's path once it is granted: the file removed or replaced while it
// was waited for (or long before), its lock excludes no one who opens the path now. The
// turn is tried with LOCK_NB every seqPoll (a blocking flock cannot be called off): a
// turn held forever kept every process waiting on it for good (outside round 55). The
// gate is waited for blocking: its holder lets it go within its turn.
func lockGate(dir string, needState bool, stop <-chan struct{}) (*os.File, error) {
	if needState {
		if err := treeStatePresent(dir); err != nil {
			return nil, err
		}
	}
	turn, err := openLock(filepath.Join(dir, seqTurnFile))
	if err != nil {
		return nil, err
	}
	defer turn.Close()
	for until := time.Now().Add(seqTurnWait); ; {
		err := flock(turn, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil || time.Now().After(until) {
			break // the turn, or past its bound: on to the gate without it
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, lockErr(seqTurnFile, err)
		}
		if err := pause(stop); err != nil {
			return nil, err
		}
	}
	for {
		f, err := lockGateOnce(dir, turn, unix.LOCK_EX)
		if err == nil || !errors.Is(err, unix.EWOULDBLOCK) {
			return f, err
		}
	}
}

// tryGate locks the file at the gate's path if no one has it (else an error wrapping
// EWOULDBLOCK).
func tryGate(dir string) (*os.File, error) {
	turn, err := openLock(filepath.Join(dir, seqTurnFile))
	if err != nil {
		return nil, err
	}
	defer turn.Close()
	return lockGateOnce(dir, turn, unix.LOCK_EX|unix.LOCK_NB)
}

// lockGateOnce opens the gate's file and flocks it as how says: the file must not be the
// turn's (a gate hard-linked to the turn had a waiter wait for itself for good), and must
// still be the one at the path once locked (else an error wrapping EWOULDBLOCK: try again).
func lockGateOnce(dir string, turn *os.File, how int) (*os.File, error) {
	p := filepath.Join(dir, seqGateFile)
	f, err := openLock(p)
	if err != nil {
		return nil, err
	}
	if sameOpen(f, turn) {
		f.Close()
		return nil, fmt.Errorf("%w: the log's sequencing lock %s is the same file as its turn (%s): remove it", ErrUnavailable, seqGateFile, seqTurnFile)
	}
	if err := flock(f, how); err != nil {
		f.Close()
		return nil, lockErr(seqGateFile, err)
	}
	if !sameFile(f, p) {
		f.Close()
		return nil, lockErr(seqGateFile, unix.EWOULDBLOCK) // replaced meanwhile: try again
	}
	return f, nil
}

// pause waits seqPoll, or refuses once stop is closed.
func pause(stop <-chan struct{}) error {
	select {
	case <-stop:
		return fmt.Errorf("%w: log closed", ErrUnavailable)
	case <-time.After(seqPoll):
		return nil
	}
}

// openLock opens (making it) the lock file at p: a regular file only — a FIFO, a
// directory or a link put at the path is refused, not locked (outside round 55).
func openLock(p string) (*os.File, error) {
	f, err := openRegular(p, os.O_CREATE|os.O_RDWR)
	switch {
	case errors.Is(err, errNotRegular):
		return nil, fmt.Errorf("%w: the log's sequencing lock %s is not a regular file: remove it", ErrUnavailable, filepath.Base(p))
	case err != nil:
		return nil, fmt.Errorf("%w: the log's sequencing lock: %v", ErrUnavailable, err)
	}
	return f, nil
}

var errNotRegular = errors.New("not a regular file")

// openRegular opens p as flag says, never following a link nor waiting on a FIFO, and keeps
// it only if it is a regular file (else errNotRegular).
func openRegular(p string, flag int) (*os.File, error) {
	f, err := os.OpenFile(p, flag|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o644)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, errNotRegular
	}
	return f, nil
}

// flock flocks f as how says.
func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

func lockErr(name string, err error) error {
	return fmt.Errorf("%w: the log's sequencing lock %s: %w", ErrUnavailable, name, err)
}

// turnTaken reports whether another waits for the gate: its turn file is locked.
func turnTaken(dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, seqTurnFile), os.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false // no waiter has made it
	}
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == unix.EWOULDBLOCK
}

// sameFile reports whether f is the file now at p.
func sameFile(f *os.File, p string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Lstat(p)
	return err == nil && os.SameFile(a, b)
}

// sameOpen reports whether a and b are open on one file.
func sameOpen(a, b *os.File) bool {
	x, err := a.Stat()
	if err != nil {
		return false
	}
	y, err := b.Stat()
	return err == nil && os.SameFile(x, y)
}

// treeStatePresent refuses when the log's tree state is gone (.state or the file removed):
// tessera would take the log for empty and sequence from 0 over its entries. It must be a
// regular file: tessera reads it whole, and a FIFO put there held its reader for good.
func treeStatePresent(dir string) error {
	st, err := os.Lstat(filepath.Join(dir, treeStateFile))
	if err != nil {
		return fmt.Errorf("%w: the log's tree state is gone (%v): refusing to append (tessera would start a new tree over the log's entries)", ErrUnavailable, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: the log's tree state (.state/%s) is not a regular file (%v): refusing to append", ErrUnavailable, treeStateFile, st.Mode().Type())
	}
	return nil
}

// stateUsable refuses, before an entry is handed to tessera (or its appender starts:
// needState false, a new log has no tree state yet), what would have tessera's
// integration panic or hang (outside round 55): its lock file .state/treeState.lock not a
// regular file (a directory, a link: tessera's open of it fails, and it panics), the
// directory or that file not writable (a read-only file system, an immutable file), the
// tree state or the checkpoint not regular files (tessera reads them whole: a FIFO never
// ends). tessera's lock file is looked at, never opened: closing any descriptor of it
// would drop tessera's fcntl lock on it. A change after the look still meets tessera as
// it is: the window is the entry's integration.
func stateUsable(dir string, needState bool) error {
	if _, err := os.Lstat(filepath.Join(dir, treeStateFile)); needState || err == nil {
		if err := treeStatePresent(dir); err != nil {
			return err
		}
	}
	lock := filepath.Join(dir, treeStateFile+".lock")
	st, err := os.Lstat(lock)
	switch {
	case err == nil && !st.Mode().IsRegular():
		return fmt.Errorf("%w: the log's lock file .state/%s.lock is not a regular file (%v): refusing to append", ErrUnavailable, treeStateFile, st.Mode().Type())
	case err == nil:
		err = unix.Access(lock, unix.W_OK)
	case errors.Is(err, os.ErrNotExist):
		err = unix.Access(dir, unix.W_OK)
	}
	if err != nil {
		return fmt.Errorf("%w: the log's state cannot be written (%v): refusing to append", ErrUnavailable, err)
	}
	if st, err := os.Lstat(filepath.Join(filepath.Dir(dir), "checkpoint")); err == nil && !st.Mode().IsRegular() {
		return fmt.Errorf("%w: the log's checkpoint is not a regular file (%v): refusing to append", ErrUnavailable, st.Mode().Type())
	}
	return nil
}

// add wraps an appender's Add: the gate is held from before the entry is queued until its
// future resolves — a goroutine an entry, which only security decisions and batch entries
// make (request records go in batches). An entry placed below an index this process had
// an entry of its own at before it was added is not acknowledged: tessera appends at the
// tree's end, so the tree was rolled back under the process (its tree state put back by
// someone who can write the directory: outside round 55 had 70 indices acknowledged
// twice), and it now writes over entries that were acknowledged. The gate then refuses
// every later entry.
func (g *seqGate) add(add tessera.AddFn) tessera.AddFn {
	return func(ctx context.Context, e *tessera.Entry) tessera.IndexFuture {
		if err := g.enter(ctx); err != nil {
			return func() (tessera.Index, error) { return tessera.Index{}, err }
		}
		floor := g.floor.Load()
		f := add(ctx, e)
		done := make(chan struct{})
		var idx tessera.Index
		var err error
		go func() {
			idx, err = f()
			if err == nil && !idx.IsDup {
				if idx.Index < floor {
					err = g.rollback(idx.Index, floor)
				} else {
					g.raise(idx.Index + 1)
				}
			}
			g.leave()
			close(done)
		}()
		return func() (tessera.Index, error) {
			<-done
			return idx, err
		}
	}
}

// rollback records that the tree was found at index (an entry placed there, or the tree
// state's size), under floor: the gate refuses from now on.
func (g *seqGate) rollback(index, floor uint64) error {
	err := fmt.Errorf("%w: ALERT the log's tree was rolled back: its tree is at %d where entries up to index %d were acknowledged (%s); its tree state was put back — refusing every entry (restore the log's directory from its latest copy; witnesses hold the latest checkpoint; if the restore was meant, remove %s)", ErrUnavailable, index, floor-1, floorFile, floorFile)
	g.rolled.CompareAndSwap(nil, &err)
	return *g.rolled.Load()
}

// raise lifts the floor to n, and the floor file with it (read, and written only upward).
// The file is not synced: an entry is acknowledged once tessera synced the tree state
// holding it, so a floor lost with the host is only lower than the tree, never higher — a
// rollback missed, never a refusal of an intact log.
func (g *seqGate) raise(n uint64) {
	g.lift(n)
	g.fmu.Lock()
	defer g.fmu.Unlock()
	f, err := openRegular(filepath.Join(filepath.Dir(g.dir), floorFile), os.O_CREATE|os.O_RDWR)
	if err != nil {
		return // the next check reads what is there; a refusal is the tree's, not this
	}
	defer f.Close()
	if have, _ := readFloor(f); have >= n {
		return
	}
	f.WriteAt(fmt.Appendf(nil, "%020d\n", n), 0)
}

// readFloor reads a floor file's number (0 when empty).
func readFloor(f *os.File) (uint64, error) {
	var b [32]byte
	k, err := f.ReadAt(b[:], 0)
	if k == 0 {
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b[:k])), 10, 64)
}

// checkFloor refuses a tree smaller than the floor file says the log's processes had
// entries acknowledged in: the tree state was put back (outside round 55 had a CLI
// command's entries acknowledged at indices acknowledged before, over their entries), and
// tessera would sequence over acknowledged entries. It lifts this process's floor to the
// file's. A missing floor file is a log from before it (or a new one): nothing to hold.
func (g *seqGate) checkFloor() error {
	if r := g.rolled.Load(); r != nil {
		return *r
	}
	f, err := openRegular(filepath.Join(filepath.Dir(g.dir), floorFile), os.O_RDONLY)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case errors.Is(err, errNotRegular):
		return fmt.Errorf("%w: the log's floor file %s is not a regular file: remove it", ErrUnavailable, floorFile)
	case err != nil:
		return fmt.Errorf("%w: the log's floor file %s: %v", ErrUnavailable, floorFile, err)
	}
	defer f.Close()
	floor, err := readFloor(f)
	if err != nil {
		return fmt.Errorf("%w: the log's floor file %s does not parse (%v): remove it", ErrUnavailable, floorFile, err)
	}
	if _, err := os.Lstat(filepath.Join(g.dir, treeStateFile)); errors.Is(err, os.ErrNotExist) {
		return nil // openSeqGate and treeStatePresent judge a missing tree state
	}
	if err := treeStatePresent(g.dir); err != nil {
		return err // not a regular file: a read of it might not end
	}
	raw, err := os.ReadFile(filepath.Join(g.dir, treeStateFile))
	if err != nil {
		return fmt.Errorf("%w: the log's tree state: %v", ErrUnavailable, err)
	}
	var ts struct {
		Size uint64 `json:"size"`
	}
	if err := json.Unmarshal(raw, &ts); err != nil {
		return fmt.Errorf("%w: the log's tree state (.state/%s) does not parse: %v", ErrUnavailable, treeStateFile, err)
	}
	if ts.Size < floor {
		return g.rollback(ts.Size, floor)
	}
	g.lift(floor)
	return nil
}

// lift raises this process's floor to n (never lowers it).
func (g *seqGate) lift(n uint64) {
	for cur := g.floor.Load(); n > cur && !g.floor.CompareAndSwap(cur, n); cur = g.floor.Load() {
	}
}
