package audit

import (
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"
)

// TestReadOnlyLogDir makes the log directory read-only under a running log (a read-only
// bind mount: chmod does not stop root): records are refused with ErrUnavailable, Healthy
// says why, nothing panics, and recording resumes once the directory is writable again.
func TestReadOnlyLogDir(t *testing.T) {
	tl := openTestLog(t)
	ctx := context.Background()
	if _, err := tl.log.Record(ctx, Event{V: 1, TS: time.Now(), Kind: "test.before"}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", tl.dir, tl.dir).CombinedOutput(); err != nil {
		t.Skipf("cannot bind-mount (needs root with mount rights): %v %s", err, out)
	}
	mounted := true
	umount := func() {
		if mounted {
			if out, err := exec.Command("umount", tl.dir).CombinedOutput(); err != nil {
				t.Errorf("umount: %v %s", err, out)
			}
			mounted = false
		}
	}
	t.Cleanup(umount)
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", tl.dir).CombinedOutput(); err != nil {
		t.Fatalf("remount ro: %v %s", err, out)
	}
	waitFor(t, func() bool { return tl.log.Healthy() != nil })
	for range 50 {
		if _, err := tl.log.Record(ctx, Event{V: 1, TS: time.Now(), Kind: "test.during"}); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("record on a read-only log: %v, want ErrUnavailable", err)
		}
	}
	umount()
	waitFor(t, func() bool { return tl.log.Healthy() == nil })
	if _, err := tl.log.Record(ctx, Event{V: 1, TS: time.Now(), Kind: "test.after"}); err != nil {
		t.Fatalf("record after recovery: %v", err)
	}
}

// waitFor polls cond until it holds (the test's own timeout bounds it).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		time.Sleep(10 * time.Millisecond)
	}
}
