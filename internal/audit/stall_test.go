package audit

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestAppendStall: a shared log's engine that takes connections and pings but not writes
// (the table the batch bundles go to locked by another session). The record waiting on it
// is not refused — it may still become durable — but within the stall time the log says
// it is unavailable (Healthy, with one ALERT), so new records are refused at once instead
// of piling up behind it; once the lock goes, the waiting record is durable and the log
// takes records again, without a restart. Without the watch the log stayed "healthy" for
// as long as the lock was held (20 s tried), every record waiting.
func TestAppendStall(t *testing.T) {
	dsn, s, _, db := sharedTestLog(t, "strongroom.test/append-stall")
	ctx := context.Background()
	logs := &syncBuffer{}
	l, err := Open(ctx, Config{EntryKey: testEntryKey, DB: dsn, Dir: t.TempDir(), Signer: s, ShutdownTimeout: time.Second,
		AppendStall: 300 * time.Millisecond, Logger: newTextLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(ctx) })
	bt := NewBatcher(l, l.Bundles(), BatcherConfig{MaxRecords: 16, MaxDelay: 2 * time.Millisecond})
	defer bt.Close()
	if _, err := bt.Submit(ctx, requestEvent(0))(); err != nil {
		t.Fatal(err)
	}
	locker, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	if _, err := locker.ExecContext(ctx, "LOCK TABLES `StrongroomBatch` WRITE"); err != nil {
		t.Fatal(err)
	}
	waiting := bt.Submit(ctx, requestEvent(1))
	waitFor(t, func() bool { return l.Healthy() != nil })
	if err := l.Healthy(); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no batch bundle write") {
		t.Fatalf("Healthy while writes do not end: %v", err)
	}
	if _, err := bt.Submit(ctx, requestEvent(2))(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a record submitted while writes do not end: %v, want ErrUnavailable at once", err)
	}
	if _, err := l.Record(ctx, event(3)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("an entry submitted while writes do not end: %v, want ErrUnavailable at once", err)
	}
	// A record that went through meanwhile (one begun before the stall, to a table not
	// locked) leaves the gauge as Healthy says (it set it to 1 while /healthz said 503).
	l.setErr(nil)
	if g := testutil.ToFloat64(l.healthy); g != 0 || l.Healthy() == nil {
		t.Fatalf("after a record went through, writes still stalled: strongroom_audit_log_healthy %v, Healthy %v", g, l.Healthy())
	}
	const alert = "writes to its storage do not end"
	if _, err := locker.ExecContext(ctx, "UNLOCK TABLES"); err != nil {
		t.Fatal(err)
	}
	if _, err := waiting(); err != nil {
		t.Fatalf("the record that waited on the lock: %v", err)
	}
	waitFor(t, func() bool { return l.Healthy() == nil })
	if _, err := bt.Submit(ctx, requestEvent(3))(); err != nil {
		t.Fatalf("a record after the lock went: %v", err)
	}
	if g := testutil.ToFloat64(l.healthy); g != 1 {
		t.Fatalf("healthy again, strongroom_audit_log_healthy %v", g)
	}
	if n := strings.Count(logs.String(), alert); n != 1 {
		t.Fatalf("the ALERT %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "writes to its storage end again") {
		t.Fatal("no word when writes end again")
	}
}

// TestWriteWatchStuckNotSlow: a kind of write counts as stuck when its oldest has been in
// flight for the stall time and none of that kind ended meanwhile — not when writes are
// merely slow (a backlog that goes on ending: an in-process load test was refused when the
// oldest write's age alone counted); one kind stuck while another flows (the bundle table
// locked, entries to other tables going through) is stuck.
func TestWriteWatchStuckNotSlow(t *testing.T) {
	l := &Log{writes: writeWatch{stall: time.Second}, log: newTextLogger(&syncBuffer{})}
	l.healthy = l.healthGauge()
	now := time.Now()
	set := func(kind int, oldest, lastEnd time.Duration) {
		l.writes.kinds[kind] = writeKind{start: map[uint64]time.Time{uint64(kind): now.Add(-oldest)}, lastEnd: now.Add(-lastEnd)}
	}
	for _, tc := range []struct {
		name  string
		setup func()
		stuck string // "" = not stuck
	}{
		{"slow entries, one ended 100 ms ago", func() { set(writeEntry, 5*time.Second, 100*time.Millisecond) }, ""},
		{"entries, none ended for 2 s", func() { set(writeEntry, 5*time.Second, 2*time.Second) }, "entry"},
		{"young write, none ended for 2 s", func() { set(writeEntry, 500*time.Millisecond, 2*time.Second) }, ""},
		{"bundles stuck while entries flow", func() {
			set(writeEntry, 5*time.Second, 0)
			set(writeBundle, 3*time.Second, 3*time.Second)
		}, "batch bundle"},
		{"journal stuck", func() { set(writeJournal, 2*time.Second, 2*time.Second) }, "journal"},
	} {
		l.writes.kinds = [writeKinds]writeKind{}
		l.writes.err.Store(nil)
		tc.setup()
		l.watchWrites(now)
		err := l.Healthy()
		switch {
		case tc.stuck == "" && err != nil:
			t.Errorf("%s: %v, want healthy", tc.name, err)
		case tc.stuck != "" && (err == nil || !strings.Contains(err.Error(), "no "+tc.stuck+" write")):
			t.Errorf("%s: %v, want the %s writes stuck", tc.name, err, tc.stuck)
		}
		if g := testutil.ToFloat64(l.healthy); (g == 1) != (err == nil) {
			t.Errorf("%s: gauge %v with Healthy %v", tc.name, g, err)
		}
	}
}
