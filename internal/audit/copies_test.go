package audit

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/mod/sumdb/note"
)

// TestCopiedEntries: someone with write access to the shared log's database appends byte
// copies of a replica's request batch and of a security event. Both carry valid entry MACs
// (the MAC binds an entry to the log, not to its position), so the signer signs them; what
// must hold is that nobody counts them twice: the search index lists each copy as
// audit.copied_entry with no principal and does not index the copied batch's records again,
// an ALERT names each copy and its original, and verify reports both.
func TestCopiedEntries(t *testing.T) {
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/copies")
	ctx := context.Background()
	l, st, logs := indexedReplica(t, dsn, s)
	batch, sec := batchAndGrant(t, l)
	size, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var raws [][]byte
	for _, i := range []uint64{batch, sec} {
		raw, err := ReadEntry(ctx, l.reader, i, size)
		if err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw)
	}
	copies := a2AppendAll(t, dsn, s.Name(), raws)
	last, err := l.Record(ctx, event(1))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if n, err := st.AuditIndexed(ctx); err == nil && n > last {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("index at %d (%v); want > %d", n, err, last)
		}
		time.Sleep(20 * time.Millisecond)
	}

	got, err := st.SearchAudit(ctx, store.AuditQuery{Kind: string(KindRequest)})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 {
		t.Errorf("%d request records indexed, want 10 (the copied batch's records counted again)", len(got))
	}
	for _, e := range got {
		if at, _, _ := SplitRecordIndex(e.Index); at != batch {
			t.Errorf("record %x indexed under entry %d, want %d", e.Index, at, batch)
		}
	}
	for _, q := range []store.AuditQuery{{Kind: string(KindLeaseGrant)}, {Principal: "runtime-1"}, {Kind: string(KindBatch)}} {
		got, err := st.SearchAudit(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 {
			t.Errorf("search %+v: %d entries, want 1 (the original only)", q, len(got))
		}
	}
	got, err = st.SearchAudit(ctx, store.AuditQuery{Kind: string(KindCopiedEntry)})
	if err != nil {
		t.Fatal(err)
	}
	var idx []uint64
	for _, e := range got {
		idx = append(idx, e.Index)
		if e.Principal != "" || e.Decision != "" {
			t.Errorf("copy %d indexed with principal %q decision %q", e.Index, e.Principal, e.Decision)
		}
	}
	want := []uint64{copies[0].Index, copies[1].Index}
	if !slices.Equal(idx, want) {
		t.Errorf("copies in the index: %v; want %v", idx, want)
	}
	for i, orig := range []uint64{batch, sec} {
		line := firstLine(logs.String(), "copy_of="+strconv.FormatUint(orig, 10))
		if !strings.Contains(line, "ALERT") || !strings.Contains(line, "entry="+strconv.FormatUint(want[i], 10)) {
			t.Errorf("no ALERT naming copy %d of entry %d: %q", want[i], orig, line)
		}
	}

	vs := a2WaitVerify(t, l, v, last+1, nil)
	wantCopies := []Copy{{Index: want[0], Of: batch}, {Index: want[1], Of: sec}}
	if !slices.Equal(vs.Copies, wantCopies) {
		t.Errorf("verify reports copies %v, want %v", vs.Copies, wantCopies)
	}
}

// indexedReplica opens a replica of the shared log at dsn with a search index (SQLite).
func indexedReplica(t *testing.T, dsn string, s note.Signer) (*Log, store.Store, *syncBuffer) {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs := &syncBuffer{}
	l, err := Open(ctx, Config{EntryKey: testEntryKey, DB: dsn, Signer: s, Index: st, ShutdownTimeout: time.Second, Logger: newTextLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l, st, logs
}

// TestIndexOfAnotherLog: a store whose search index was built from one log is opened with
// another (a data directory whose log moved to a shared engine keeps its origin). The
// index must not go on holding the first log's entries as the second's: it is rebuilt,
// with an ALERT.
func TestIndexOfAnotherLog(t *testing.T) {
	ctx := context.Background()
	tl := openTestLog(t)
	for i := range 3 {
		if _, err := tl.log.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	tl.close(t)
	logs := &syncBuffer{}
	l, err := Open(ctx, Config{Dir: filepath.Join(t.TempDir(), "other"), Signer: tl.signer, Index: tl.st, EntryKey: testEntryKey, Logger: newTextLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	other := Event{V: 1, TS: ts0, Kind: KindLeaseGrant, Actor: map[string]string{"principal": "runtime-9"}, Decision: Allow}
	if _, err := l.Record(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "ALERT audit log: the search index holds another log's entries") {
		t.Errorf("no ALERT; log:\n%s", logs.String())
	}
	got, err := tl.st.SearchAudit(ctx, store.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Index != 0 || got[0].Kind != string(KindLeaseGrant) {
		t.Errorf("the index after the log changed: %+v; want the new log's one entry", got)
	}
}

// batchAndGrant records, through l, a batch of 10 request records of principal p1 and a
// lease grant to runtime-1, and returns their entries' indexes.
func batchAndGrant(t *testing.T, l *Log) (batch, grant uint64) {
	t.Helper()
	ctx := context.Background()
	b := NewBatcher(l, l.Bundles(), BatcherConfig{MaxRecords: 100, MaxDelay: time.Hour})
	t.Cleanup(b.Close)
	var fs []Future
	for i := range 10 {
		fs = append(fs, b.Submit(ctx, Event{V: 1, TS: ts0.Add(time.Duration(i) * time.Millisecond), Kind: KindRequest,
			Actor: map[string]string{"principal": "p1"}, Subject: map[string]string{"model": "m"}, Decision: Allow}))
	}
	batch, ok, err := b.Barrier(ctx)
	if err != nil || !ok {
		t.Fatalf("barrier: %d %v %v", batch, ok, err)
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	g := Event{V: 1, TS: ts0, Kind: KindLeaseGrant, Actor: map[string]string{"principal": "runtime-1"}, Subject: map[string]string{"model": "m"}, Decision: Allow}
	if grant, err = l.Record(ctx, g); err != nil {
		t.Fatal(err)
	}
	return batch, grant
}
