package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/strongroom/strongroom/internal/store"
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

// TestProbeOpensUnlessProven: the writability probe skips its open only while a request
// journal's sync proved the disk and the next sync is not yet overdue (Log.provenUntil),
// the last open was under probeOpenEvery ago and the directory was last found writable;
// otherwise it opens, and finds a directory it cannot write to (here one that is gone).
func TestProbeOpensUnlessProven(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l := &Log{probePath: filepath.Join(dir, "strongroom.probe"), log: slog.New(slog.DiscardHandler)}
	broken := func() bool { return l.writable.Load() != nil }
	prove := func(d time.Duration) { l.provenUntil.Store(time.Now().Add(d).UnixNano()) }
	// openedThenGone: with the directory there, a probe that opens finds it writable; then
	// the directory is removed again.
	openedThenGone := func() {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		l.probe()
		if broken() {
			t.Fatalf("writable directory still refused: %v", *l.writable.Load())
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	l.probe() // never opened, never proven: opens, and the directory is missing
	if !broken() {
		t.Fatal("a missing directory was not found")
	}
	// Found unwritable: a proof does not stop the next open (only a success clears it).
	prove(time.Hour)
	l.probe()
	if !broken() {
		t.Fatal("a failing directory was taken as proven")
	}
	openedThenGone()
	// Proven until the next sync is due, opened just now: every probe until then skips
	// its open (a proof is not used up by one probe: between two syncs there are several).
	prove(time.Hour)
	for range 4 {
		l.probe()
		if broken() {
			t.Fatal("the probe opened although a sync had proven the disk")
		}
	}
	// The proof's time passed (the next sync overdue): the next probe opens.
	prove(-time.Nanosecond)
	l.probe()
	if !broken() {
		t.Fatal("no open once the proof ran out")
	}
	openedThenGone()
	// Proven, but probeOpenEvery since the last open: it opens.
	l.lastOpen = time.Now().Add(-probeOpenEvery)
	prove(time.Hour)
	l.probe()
	if !broken() {
		t.Fatal("proven syncs kept the probe from opening for over probeOpenEvery")
	}
}

// waitFor polls cond until it holds (the test's own timeout bounds it).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOversizedEventTruncated: an event over MaxEventSize is recorded truncated, with a
// marker, never dropped (issue 12, finding 12).
func TestOversizedEventTruncated(t *testing.T) {
	tl := openTestLog(t)
	ctx := context.Background()
	big := strings.Repeat("é", 40<<10) // 80 KiB of two-byte characters
	many := map[string]string{}
	for i := range 5000 {
		many[fmt.Sprintf("f%05d", i)] = strings.Repeat("x", 100)
	}
	for _, ev := range []Event{
		{V: 1, TS: time.Now(), Kind: "test.big", Reason: big, Fields: map[string]string{"prompt": big, "small": "kept"}},
		{V: 1, TS: time.Now(), Kind: "test.many", Actor: map[string]string{"principal": "p"}, Fields: many},
	} {
		i, err := tl.log.Record(ctx, ev)
		if err != nil {
			t.Fatalf("%s: %v", ev.Kind, err)
		}
		raw, err := readEntry(ctx, tl.log, i)
		if err != nil {
			t.Fatal(err)
		}
		var got Event
		if err := json.Unmarshal(raw, &got); err != nil || !utf8.Valid(raw) {
			t.Fatalf("%s: stored entry not valid JSON/UTF-8: %v", ev.Kind, err)
		}
		if got.Fields["truncated"] != "true" || len(raw) > MaxEventSize {
			t.Fatalf("%s: %d bytes, fields %v", ev.Kind, len(raw), len(got.Fields))
		}
		if ev.Kind == "test.big" && (got.Fields["small"] != "kept" || !strings.Contains(got.Reason, "…[truncated ")) {
			t.Fatalf("big: small field %q, reason tail %q", got.Fields["small"], got.Reason[len(got.Reason)-40:])
		}
		if ev.Kind == "test.many" && (got.Fields["dropped_fields"] != "5000" || got.Actor["principal"] != "p") {
			t.Fatalf("many: %v %v", got.Fields, got.Actor)
		}
	}
}

// readEntry reads entry i back from the log's bundles.
func readEntry(ctx context.Context, l *Log, i uint64) ([]byte, error) {
	size, err := l.IntegratedSize(ctx)
	for err == nil && size <= i {
		time.Sleep(10 * time.Millisecond)
		size, err = l.IntegratedSize(ctx)
	}
	if err != nil {
		return nil, err
	}
	var raw []byte
	err = ReadEntries(ctx, l.Reader().ReadEntryBundle, i, i+1, func(b []store.AuditEvent) error {
		raw = b[0].Raw
		return nil
	})
	return raw, err
}
