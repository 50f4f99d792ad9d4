package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/transparency-dev/tessera"
	"golang.org/x/sys/unix"
)

// The sequencing gate's files in a local log's .state directory, and tessera's tree state.
const (
	seqGateFile   = "strongroom.sequence.lock"
	seqTurnFile   = "strongroom.sequence.turn"
	treeStateFile = "treeState"
)

// seqGateTurn is how long a process keeps the gate while another waits for it: then it
// takes no new entry until those in flight are resolved, and lets the gate go.
const seqGateTurn = 100 * time.Millisecond

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
	starting  bool // the appender starts: a new log has no tree state yet (openSeqGate checked)
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
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return &seqGate{dir: d, changed: make(chan struct{})}, nil
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
		if g.f != nil && !g.draining && !g.starting {
			if err := g.look(); err != nil {
				if g.n == 0 {
					g.release() // taking no entry, it keeps no one out
				}
				return err
			}
		}
		if g.f != nil && !g.draining {
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

// look, every quarter turn while the gate is held, checks that the tree state is still
// there and, once the gate has been held a turn, whether another process waits for it
// (then the gate drains). mu held.
func (g *seqGate) look() error {
	now := time.Now()
	if now.Sub(g.looked) < seqGateTurn/4 {
		return nil
	}
	g.looked = now
	if err := treeStatePresent(g.dir); err != nil {
		return err
	}
	if now.Sub(g.since) >= seqGateTurn && turnTaken(g.dir) {
		g.draining = true
		if g.n == 0 {
			g.release()
		}
	}
	return nil
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
	f, err := lockGate(g.dir, needState)
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
	g.closed = true
	if g.f != nil && g.n == 0 {
		g.release()
	}
	g.wake()
}

// lockGate waits for the turn, then for the gate, and returns the gate's file, locked.
// The turn is let go once the gate is held: a holder that finds the turn taken knows
// another waits. A lock is kept only on the file that is at the gate's path once it is
// granted: the file removed or replaced while it was waited for (or long before), its
// lock excludes no one who opens the path now.
func lockGate(dir string, needState bool) (*os.File, error) {
	if needState {
		if err := treeStatePresent(dir); err != nil {
			return nil, err
		}
	}
	turn, err := flockFile(filepath.Join(dir, seqTurnFile), unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer turn.Close()
	for {
		f, err := flockFile(filepath.Join(dir, seqGateFile), unix.LOCK_EX)
		if err != nil {
			return nil, err
		}
		if sameFile(f, filepath.Join(dir, seqGateFile)) {
			return f, nil
		}
		f.Close()
	}
}

// flockFile opens (making it) the file at p and flocks it as how says.
func flockFile(p string, how int) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%w: the log's sequencing lock: %v", ErrUnavailable, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: the log's sequencing lock %s: %v", ErrUnavailable, filepath.Base(p), err)
	}
	return f, nil
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

// treeStatePresent refuses when the log's tree state is gone (.state or the file removed):
// tessera would take the log for empty and sequence from 0 over its entries.
func treeStatePresent(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, treeStateFile)); err != nil {
		return fmt.Errorf("%w: the log's tree state is gone (%v): refusing to append (tessera would start a new tree over the log's entries)", ErrUnavailable, err)
	}
	return nil
}

// add wraps an appender's Add: the gate is held from before the entry is queued until its
// future resolves — a goroutine an entry, which only security decisions and batch entries
// make (request records go in batches).
func (g *seqGate) add(add tessera.AddFn) tessera.AddFn {
	return func(ctx context.Context, e *tessera.Entry) tessera.IndexFuture {
		if err := g.enter(ctx); err != nil {
			return func() (tessera.Index, error) { return tessera.Index{}, err }
		}
		f := add(ctx, e)
		go func() {
			f()
			g.leave()
		}()
		return f
	}
}
