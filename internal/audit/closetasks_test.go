package audit

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strongroom/strongroom/internal/testenv"
)

// TestCloseWaitsForTesseraTask: a task of tessera's POSIX driver in flight when the log
// closes — holding its lock file, as each does while it writes the log's state — is
// waited for: Close does not return before it lets go. (Without the wait, such a task
// wrote into .state after Close returned, and a test's temporary directory could not be
// removed: "unlinkat …/log/.state: directory not empty".) The task is stood in for by a
// child process holding the lock tessera takes (fcntl F_SETLKW) on each lock file in turn:
// a lock of this process's own would be dropped by any close of the file here.
func TestCloseWaitsForTesseraTask(t *testing.T) {
	for _, name := range posixTaskLocks {
		t.Run(name, func(t *testing.T) {
			tl := openTestLog(t)
			tl.record(t, 3)
			// Published first: Close's shutdown waits for a checkpoint covering them, and
			// tessera's publisher would wait on the child's lock.
			for {
				if st, err := tl.verify(nil); err == nil && st.Size >= 3 {
					break
				}
				time.Sleep(10 * time.Millisecond) // a poll's pace, not a bound
			}
			p := filepath.Join(tl.dir, ".state", name)
			hold := holdLock(t, p)
			var closeErr error
			closed := make(chan struct{})
			go func() { closeErr = tl.log.Close(context.Background()); close(closed) }()
			if !waitBlockedOn(t, p, closed) {
				t.Fatalf("Close returned (err %v) while a tessera task held %s", closeErr, name)
			}
			select {
			case <-closed:
				t.Fatalf("Close returned (err %v) while a tessera task held %s", closeErr, name)
			default:
			}
			hold() // the task ends: its lock goes with its process
			if <-closed; closeErr != nil {
				t.Fatal(closeErr)
			}
		})
	}
}

// holdLock has a child process take a process-associated write lock on p (created), as
// tessera's lockFile does, and returns what ends the child (its lock with it).
func holdLock(t *testing.T, p string) (release func()) {
	t.Helper()
	cmd := testenv.HelperCmd(t, "TestHoldLockHelper", "AUDIT_HOLD_LOCK="+p)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("lock holder: %q", line)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			stdin.Close()
			cmd.Wait()
		})
	}
	t.Cleanup(release)
	return release
}

// TestHoldLockHelper is holdLock's child: it locks AUDIT_HOLD_LOCK, says so, and holds the
// lock until its stdin ends.
func TestHoldLockHelper(t *testing.T) {
	p := os.Getenv("AUDIT_HOLD_LOCK")
	if p == "" {
		t.Skip("a helper process (holdLock)")
	}
	posixLock(t, p)
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
}

// posixLock takes a process-associated write lock on the file at p (made), as tessera's
// lockFile does, waiting for it; the lock lasts as long as the process.
func posixLock(t *testing.T, p string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	for {
		if err = unix.FcntlFlock(f.Fd(), unix.F_SETLKW, &lk); err != unix.EINTR {
			break
		}
	}
	if err != nil {
		t.Fatalf("%s: %v", filepath.Base(p), err)
	}
}

// waitBlockedOn waits — on readiness, not a sleep — until the kernel lists an open file
// description lock request blocked on the file at p (blockedOn), and reports true; false
// if gone closes first (the waiter returned without waiting).
func waitBlockedOn(t *testing.T, p string, gone <-chan struct{}) bool {
	t.Helper()
	for ino := inode(t, p); !blockedOn(t, ino, "OFDLCK"); {
		select {
		case <-gone:
			return false
		case <-time.After(5 * time.Millisecond): // a poll's pace, not a bound
		}
	}
	return true
}

// blockedOn reports whether /proc/locks lists a lock request of the kind given blocked on
// inode ino: OFDLCK (an open file description lock, what awaitPOSIXTasks asks), POSIX
// (process-associated, tessera's), FLOCK (flock(2), the sequencing gate).
func blockedOn(t *testing.T, ino uint64, kind string) bool {
	t.Helper()
	f, err := os.Open("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := fmt.Sprintf(":%d ", ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, "-> "+kind+" ") && strings.Contains(l, want) {
			return true
		}
	}
	return false
}

// TestAwaitPOSIXTasksEndsWithContext: a task that never lets go holds Close only until
// Close's context ends.
func TestAwaitPOSIXTasksEndsWithContext(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, ".state"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, ".state", posixTaskLocks[0])
	holdLock(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { awaitPOSIXTasks(ctx, dir); close(done) }()
	if !waitBlockedOn(t, p, done) {
		t.Fatal("awaitPOSIXTasks returned while the lock was held")
	}
	cancel()
	<-done
}
