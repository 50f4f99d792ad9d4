package audit

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"

	"github.com/strongroom/strongroom/internal/testenv"
)

// TestSeqGateNoFalseDeadlock builds, on real processes, the lock cycle that made tessera's
// POSIX sequencer panic when two processes append to one log directory:
//
//   - L (a child running a real Log) publishes a checkpoint: its publisher holds
//     publish.lock, here held open inside the checkpoint's signature;
//   - a peer process, as another Strongroom process integrating, holds the sequencing gate
//     and treeState.lock, then waits for publish.lock;
//   - L appends again: its integration would wait for treeState.lock, and the kernel,
//     checking the wait by process, sees L → peer → L and answers EDEADLK, which tessera
//     turns into a panic. With the gate, L's append waits on the gate (a flock, outside
//     the kernel's check) instead, and completes once the peer is done.
//
// Without the gate L dies ("resource deadlock avoided"), and the test fails with its output.
func TestSeqGateNoFalseDeadlock(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "log")
	l := exec.Command(os.Args[0], "-test.run=^TestSeqGateLogHelper$", "-test.v=false")
	l.Env = append(os.Environ(), "AUDIT_SEQGATE_LOG="+dir)
	toL, err := l.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outL, err := l.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errL strings.Builder
	l.Stderr = &errL
	if err := l.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 8)
	go func() {
		sc := bufio.NewScanner(outL)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- l.Wait()
	}()
	t.Cleanup(func() { l.Process.Kill() })
	expect := func(want string) string {
		t.Helper()
		line, ok := <-lines
		if !ok || !strings.HasPrefix(line, want) {
			t.Fatalf("log process said %q, want %q; exit %v; stderr:\n%s", line, want, <-exited, errL.String())
		}
		return line
	}
	expect("signing") // L's publisher holds publish.lock

	peer := holdGateThenPublish(t, dir)
	fmt.Fprintln(toL, "append")
	gateIno := inode(t, filepath.Join(dir, ".state", seqGateFile))
	for !blockedOn(t, gateIno, "FLOCK") {
		select {
		case line, ok := <-lines:
			if !ok {
				line = "nothing (it ended)"
			}
			t.Fatalf("log process said %s before waiting on the gate; exit %v; stderr:\n%s", line, <-exited, errL.String())
		case <-time.After(5 * time.Millisecond): // a poll's pace, not a bound
		}
	}
	fmt.Fprintln(toL, "release") // the signature ends, publish.lock goes: the peer goes
	peer()
	expect("appended")
	toL.Close()
	if err := <-exited; err != nil {
		t.Fatalf("log process: %v; stderr:\n%s", err, errL.String())
	}
}

// holdGateThenPublish starts a peer that takes the sequencing gate and treeState.lock, as
// a Strongroom process integrating does, then waits for publish.lock. It returns once the
// peer is blocked on publish.lock; the returned func waits for the peer to end.
func holdGateThenPublish(t *testing.T, dir string) (wait func()) {
	t.Helper()
	cmd := testenv.HelperCmd(t, "TestSeqGatePeerHelper", "AUDIT_SEQGATE_PEER="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "locked\n" {
		cmd.Wait()
		t.Fatalf("peer: %q", line)
	}
	pub := inode(t, filepath.Join(dir, ".state", "publish.lock"))
	for !blockedOn(t, pub, "POSIX") {
		time.Sleep(5 * time.Millisecond) // a poll's pace, not a bound
	}
	return func() {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("peer: %v", err)
		}
	}
}

// TestSeqGatePeerHelper is holdGateThenPublish's child.
func TestSeqGatePeerHelper(t *testing.T) {
	dir := os.Getenv("AUDIT_SEQGATE_PEER")
	if dir == "" {
		t.Skip("a helper process (holdGateThenPublish)")
	}
	state := filepath.Join(dir, ".state")
	if _, err := lockGate(state, true, nil); err != nil { // as a Strongroom process takes it
		t.Fatal(err)
	}
	lock := func(name string) { posixLock(t, filepath.Join(state, name)) }
	lock("treeState.lock")
	fmt.Println("locked")
	lock("publish.lock")
}

// TestSeqGateLogHelper is the log process: it opens a Log on AUDIT_SEQGATE_LOG, appends,
// and holds its next checkpoint's signature (publish.lock held) until told "release" on
// stdin; on "append" it appends once more, and says "appended" when that is durable.
func TestSeqGateLogHelper(t *testing.T) {
	dir := os.Getenv("AUDIT_SEQGATE_LOG")
	if dir == "" {
		t.Skip("a helper process (TestSeqGateNoFalseDeadlock)")
	}
	s, _, _ := newKeys(t, "strongroom.test/log")
	hs := &heldSigner{Signer: s, release: make(chan struct{})}
	l, err := Open(context.Background(), Config{Dir: dir, Signer: hs, CheckpointInterval: 100 * time.Millisecond, EntryKey: testEntryKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Record(context.Background(), event(0)); err != nil {
		t.Fatal(err)
	}
	hs.arm.Store(true) // the checkpoint after the next append: held
	if _, err := l.Record(context.Background(), event(1)); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(os.Stdin)
	done := make(chan error, 1)
	for sc.Scan() {
		switch sc.Text() {
		case "append":
			go func() { _, err := l.Record(context.Background(), event(2)); done <- err }()
		case "release":
			close(hs.release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			fmt.Println("appended")
		}
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// heldSigner signs as its Signer; once armed, its first signature says "signing" on
// stdout and waits for release.
type heldSigner struct {
	note.Signer
	arm     atomic.Bool
	once    sync.Once
	release chan struct{}
}

func (h *heldSigner) Sign(msg []byte) ([]byte, error) {
	if h.arm.Load() {
		h.once.Do(func() {
			fmt.Println("signing")
			<-h.release
		})
	}
	return h.Signer.Sign(msg)
}

// inode is the inode number of the file at p.
func inode(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// TestVerifyEmptyLog: a log whose checkpoint is of size 0 (opened, nothing appended yet, or
// a process that stopped before its first entry was published) verifies. Verify took the
// empty tree's root for nil and said "checkpoint altered" (found by outside round 54's
// checker after a process stopped at once).
func TestVerifyEmptyLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	s, v, _ := newKeys(t, "strongroom.test/log")
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s, CheckpointInterval: 100 * time.Millisecond, EntryKey: testEntryKey})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := Verify(context.Background(), client.FileFetcher{Root: dir}, VerifyOptions{LogKey: v, EntryKey: testEntryKey})
	if err != nil {
		t.Fatalf("an empty log: %v", err)
	}
	if st.Size != 0 {
		t.Fatalf("size %d, want 0 (the test needs an empty log)", st.Size)
	}
}
