package audit

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/transparency-dev/tessera"
	"golang.org/x/sys/unix"
)

// seqGateFile is the sequencing gate's lock file in a local log's .state directory.
const seqGateFile = "strongroom.sequence.lock"

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
type seqGate struct {
	f  *os.File
	mu sync.Mutex
	n  int // entries in flight while the gate is held
}

// openSeqGate opens (making it) the gate of the local log in dir.
func openSeqGate(dir string) (*seqGate, error) {
	d := filepath.Join(dir, ".state")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(d, seqGateFile), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return &seqGate{f: f}, nil
}

// enter takes the gate for one more unit of work, waiting while another process has it.
// It waits as tessera's own lock did (no context): a process that holds it is sequencing.
func (g *seqGate) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.f == nil {
		return fmt.Errorf("%w: log closed", ErrUnavailable)
	}
	if g.n == 0 {
		for {
			err := unix.Flock(int(g.f.Fd()), unix.LOCK_EX)
			if err == nil {
				break
			}
			if err != unix.EINTR {
				return fmt.Errorf("%w: the log's sequencing lock: %v", ErrUnavailable, err)
			}
		}
	}
	g.n++
	return nil
}

// leave ends a unit of work; the last one lets the gate go.
func (g *seqGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n--; g.n == 0 && g.f != nil {
		unix.Flock(int(g.f.Fd()), unix.LOCK_UN)
	}
}

// close closes the gate's file, which lets the gate go. A leave after it (an entry's
// goroutine finishing after Close's wait) has nothing to unlock: never an fd number
// reused since.
func (g *seqGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.f != nil {
		g.f.Close()
		g.f = nil
	}
}

// add wraps an appender's Add: the gate is held from before the entry is queued until its
// future resolves — a goroutine an entry, which only security decisions and batch entries
// make (request records go in batches).
func (g *seqGate) add(add tessera.AddFn) tessera.AddFn {
	return func(ctx context.Context, e *tessera.Entry) tessera.IndexFuture {
		if err := g.enter(); err != nil {
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
