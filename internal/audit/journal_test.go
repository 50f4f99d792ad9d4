package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

// loggedRecords reads every request record of a verified log, in log order.
func loggedRecords(t *testing.T, dir string, vkey note.Verifier) [][]byte {
	t.Helper()
	ctx := context.Background()
	st, err := Verify(ctx, client.FileFetcher{Root: dir}, VerifyOptions{LogKey: vkey, Bundles: DirBundles{Dir: dir}.Bundle})
	if err != nil {
		t.Fatalf("log does not verify: %v", err)
	}
	var out [][]byte
	err = eachBatchEntry(ctx, dir, st.Size, func(_ uint64, ev *Event) error {
		recs, err := BatchRecords(ctx, VerifyOptions{Bundles: DirBundles{Dir: dir}.Bundle}, ev)
		out = append(out, recs...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// eachBatchEntry calls fn with each request batch entry (its log index and event) of the
// log in dir, of its first size entries, in log order.
func eachBatchEntry(ctx context.Context, dir string, size uint64, fn func(index uint64, ev *Event) error) error {
	return ReadEntries(ctx, client.FileFetcher{Root: dir}.ReadEntryBundle, 0, size, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			if e.Kind != string(KindBatch) {
				continue
			}
			ev, err := ParseEvent(e.Raw)
			if err != nil {
				return err
			}
			if err := fn(e.Index, ev); err != nil {
				return err
			}
		}
		return nil
	})
}

// wantInOrder: the log holds requestEvent(0..n-1), each once, in order.
func wantInOrder(t *testing.T, recs [][]byte, n int) {
	t.Helper()
	if len(recs) != n {
		t.Fatalf("%d records in the log, want %d", len(recs), n)
	}
	for i, r := range recs {
		ev := requestEvent(i)
		if want, _ := ev.Marshal(); string(r) != string(want) {
			t.Fatalf("record %d of the log is not the %dth submitted", i, i)
		}
	}
}

// TestJournal: with a journal, records are durable when their futures resolve (before any
// batch entry), reach the log in order, one batch entry per MaxRecords, when the journal is
// folded (here: by Barrier and Close), are searchable one by one, and the log verifies.
func TestJournal(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir})
	ctx := context.Background()
	if _, ok, err := b.Barrier(ctx); ok || err != nil {
		t.Fatalf("barrier before any record: ok %v err %v", ok, err)
	}
	size0, _ := tl.log.IntegratedSize(ctx)
	var fs []Future
	for i := range 150 {
		fs = append(fs, b.Submit(ctx, requestEvent(i)))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	// Durable in the journal (one segment rotated at 100 records may be folding); the rest
	// wait for the fold, which FoldEvery (an hour) has not asked for.
	segs, _ := filepath.Glob(filepath.Join(jdir, "*", "*.wal"))
	var journaled int
	for _, s := range segs {
		recs, _, err := readSegment(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		journaled += len(recs)
	}
	if journaled < 50 {
		t.Fatalf("%d records in the journal's segments after 150 resolved, want at least the 50 not yet folded", journaled)
	}
	idx, ok, err := b.Barrier(ctx)
	if err != nil || !ok {
		t.Fatalf("barrier: %d %v %v", idx, ok, err)
	}
	// 150 records of at most 100 per batch: two batch entries, or three when a group
	// crossed the 100th record (segments close after a group); the barrier's is the last.
	if size, _ := tl.log.IntegratedSize(ctx); idx != size-1 || size-size0 < 2 || size-size0 > 3 {
		t.Fatalf("after the barrier the log grew from %d to %d (barrier's batch %d), want two or three batch entries", size0, size, idx)
	}
	for i := range 30 {
		fs = append(fs, b.Submit(ctx, requestEvent(150+i)))
	}
	got := journalEnd(t, tl, b, jdir, fs)
	// Rows made from the submitted events (not parsed) are the rows parsed from the bytes.
	for _, r := range got {
		want := indexRecord(r.Index, r.Raw)
		if !r.TS.Equal(want.TS) || r.Kind != want.Kind || r.Principal != want.Principal || r.Decision != want.Decision {
			t.Fatalf("index row %+v, parsed from its record %+v", r, want)
		}
	}
}

// journalEnd ends TestJournal and TestWrittenJournal: the futures resolve, Close leaves no
// segment and refuses records, the log holds requestEvent(0..179) in order, and "p1"'s
// records are found (returned).
func journalEnd(t *testing.T, tl *testLog, b *Batcher, jdir string, fs []Future) []store.AuditEvent {
	t.Helper()
	ctx := context.Background()
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	if _, err := b.Submit(ctx, requestEvent(0))(); err == nil {
		t.Fatal("a closed batcher accepted a record")
	}
	if segs, _ := filepath.Glob(filepath.Join(jdir, "*", "*.wal")); len(segs) != 0 {
		t.Fatalf("segments left after Close: %v", segs)
	}
	tl.close(t)
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 180)
	got, err := tl.st.SearchAudit(ctx, store.AuditQuery{Principal: "p1", Kind: "gateway.request"})
	if err != nil || len(got) != 180/4 {
		t.Fatalf("search: %d records, %v", len(got), err)
	}
	return got
}

// TestJournalRefold: a process that died after folding a segment's batches but before
// removing the segment leaves it behind; the next process must not log those records twice.
// A segment left unfolded is folded, before any new record.
func TestJournalRefold(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	ctx := context.Background()
	// A dead process's journal: two segments, the first already folded.
	j, err := openJournal(jdir, 20, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, second := rawRecs(0, 25), rawRecs(25, 60)
	if err := j.append(first[:10]); err != nil {
		t.Fatal(err)
	}
	if err := j.append(first[10:]); err != nil {
		t.Fatal(err)
	}
	seg1, err := j.rotate()
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(second); err != nil {
		t.Fatal(err)
	}
	j.close()
	saved, _ := os.ReadFile(seg1.path)
	folder := &Batcher{log: tl.log, bundles: DirBundles{Dir: tl.dir}, maxRecords: 20}
	if err := folder.fold(seg1, nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(seg1.path, saved, 0o600) // as if the process died before removing it

	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 20, Journal: jdir})
	if err := b.Healthy(); err != nil {
		t.Fatal(err)
	}
	ev := requestEvent(60)
	if _, err := b.Submit(ctx, ev)(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	tl.close(t)
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 61)
}

// TestJournalUnusable: a journal that cannot be opened refuses every record and makes the
// log unhealthy (fail closed); a damaged segment is not skipped.
func TestJournalUnusable(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	os.MkdirAll(filepath.Join(jdir, "0123456789abcdef"), 0o700) // a dead process's directory
	os.WriteFile(filepath.Join(jdir, "0123456789abcdef", "lock"), nil, 0o600)
	os.WriteFile(filepath.Join(jdir, "0123456789abcdef", segmentName(3)), []byte("not a journal"), 0o600)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{Journal: jdir})
	defer b.Close()
	if _, err := b.Submit(context.Background(), requestEvent(0))(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("record with a damaged journal: %v", err)
	}
	if tl.log.Healthy() == nil || b.Healthy() == nil {
		t.Fatal("log healthy with an unusable journal")
	}
	if _, _, err := b.Barrier(context.Background()); err == nil {
		t.Fatal("barrier on an unusable journal")
	}
}

// TestJournalPlantedRecord: a whole, CRC-correct frame whose record is not a canonical
// event (damage, or a plant by someone with write access) is not folded: opening the log
// fails naming the segment, and nothing of it reaches the log.
func TestJournalPlantedRecord(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	j, err := openJournal(jdir, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	ev := requestEvent(0)
	good, _ := ev.Marshal()
	if err := j.append([]store.AuditEvent{{Raw: good}, {Raw: []byte(`{"v":1,"kind":"gateway.request"}`)}}); err != nil {
		t.Fatal(err)
	}
	j.close()
	size, _ := tl.log.IntegratedSize(context.Background())
	tl.close(t)
	_, err = Open(context.Background(), Config{Dir: tl.dir, Signer: tl.signer, Journal: jdir})
	if err == nil || !strings.Contains(err.Error(), ".wal: record 1") {
		t.Fatalf("open with a planted record: %v", err)
	}
	tl.reopen(t)
	if n, _ := tl.log.IntegratedSize(context.Background()); n != size {
		t.Fatalf("the log grew from %d to %d", size, n)
	}
}

// TestParseSegmentTorn: a crash can cut only the last frame (write); what it held was
// never acknowledged, and the frames before it are read whole. A byte flipped in it is
// not a crash's doing: refused.
func TestParseSegmentTorn(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	j.append([]store.AuditEvent{{Raw: []byte(`{"a":1}`)}, {Raw: []byte(`{"b":2}`)}})
	j.append([]store.AuditEvent{{Raw: []byte(`{"c":3}`)}})
	path := j.f.Name()
	j.close()
	whole, _ := os.ReadFile(path)
	if recs, _, err := parseSegment(whole, "s", nil); err != nil || len(recs) != 3 {
		t.Fatalf("whole: %d %v", len(recs), err)
	}
	frames := a17Frames(whole, false)
	if len(frames) != 2 || frames[0]%pageSize != 0 || frames[1]%pageSize != 0 {
		t.Fatalf("frames at %v: want two, each from a page boundary", frames)
	}
	for cut := frames[0] + frameHeader + 2*(1+7); cut < len(whole); cut++ { // the padding, then the last frame cut
		recs, _, err := parseSegment(whole[:cut], "s", nil)
		if err != nil || len(recs) != 2 {
			t.Fatalf("cut at %d: %d records, %v", cut, len(recs), err)
		}
	}
	bad := append([]byte(nil), whole...)
	bad[len(bad)-1] ^= 1 // the last frame's CRC fails, no sector of it lost: damage
	if recs, _, err := parseSegment(bad, "s", nil); err == nil {
		t.Fatalf("flipped last byte read as a torn write: %d records", len(recs))
	}
	clear(bad[frames[1]:]) // its sector lost (zeros), the file as long: torn
	if recs, _, err := parseSegment(bad, "s", nil); err != nil || len(recs) != 2 {
		t.Fatalf("the last frame's sector lost: %d %v", len(recs), err)
	}
	for cut := range journalHeader {
		if recs, _, err := parseSegment(whole[:cut], "s", nil); err != nil || len(recs) != 0 {
			t.Fatalf("header cut at %d: %d %v", cut, len(recs), err)
		}
	}
	// A frame whose CRC holds but whose records do not parse is damage, not a torn write.
	frame, _ := sealFrame(append(testHeader(), make([]byte, frameHeader)...), len(testHeader()), nil, nil)
	frame = append(frame, 0x7f, 'x')
	frame, _ = sealFrame(frame, len(testHeader()), nil, nil)
	if _, _, err := parseSegment(frame, "s", nil); err == nil {
		t.Fatal("malformed records in a whole frame accepted")
	}
}

// testHeader is an unkeyed segment's header (batches of 100).
func testHeader() []byte {
	return (&journal{batch: 100}).header()
}

func FuzzParseSegment(f *testing.F) {
	f.Add(testHeader())
	f.Add(append(testHeader(), 2, 0, 0, 0, 0, 0, 0, 0, 1, 'x'))
	one, _ := sealFrame(append(testHeader(), make([]byte, frameHeader)...), len(testHeader()), nil, nil)
	one = append(one, 1, 'x')
	one, _ = sealFrame(one, len(testHeader()), nil, nil)
	f.Add(one)
	f.Add(legacySegment(journalMagicV3, [][]store.AuditEvent{rawRecs(0, 2)}, nil, "d/s"))
	f.Add(packedSeed()) // written records (journal_mapped.go)
	f.Add(packedSeed()[:pageSize+5])
	f.Add(oldPackedSeed()) // the rule before flagLeafMAC
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, _, err := parseSegment(b, "fuzz", nil)
		if err != nil {
			return
		}
		n := 0
		for _, r := range recs {
			if len(r) > MaxEventSize {
				t.Fatal("record over the size cap")
			}
			n += len(r)
		}
		if n > len(b) {
			t.Fatal("more record bytes than input")
		}
	})
}

// TestJournalCrashHelper is the child of TestJournalKillUnderLoad: it submits request
// records from many goroutines through a journaled batcher and prints "ack SHA256" once
// each record's future has resolved.
func TestJournalCrashHelper(t *testing.T) {
	dir, skey := os.Getenv("AUDIT_JOURNAL_DIR"), os.Getenv("AUDIT_CRASH_SKEY")
	if dir == "" {
		t.Skip("child process of TestJournalKillUnderLoad")
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBatcher(l, DirBundles{Dir: dir}, BatcherConfig{MaxRecords: 64, Journal: filepath.Join(dir, "journal"), FoldEvery: 20 * time.Millisecond,
		Written: os.Getenv("AUDIT_JOURNAL_WRITTEN") != "", SyncEvery: time.Hour})
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				ev := Event{V: 1, TS: time.Now().UTC(), Kind: KindRequest, Actor: map[string]string{"principal": fmt.Sprintf("g%d", g)},
					Fields: map[string]string{"i": fmt.Sprint(i), "pad": strings.Repeat("x", 300)}}
				raw, _ := ev.Marshal()
				if _, err := b.Submit(context.Background(), ev)(); err != nil {
					return
				}
				h := sha256.Sum256(raw)
				mu.Lock()
				fmt.Fprintf(out, "ack %s\n", hex.EncodeToString(h[:]))
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestJournalKillUnderLoad: kill -9 a process whose request records go through the
// journal, while folds run; after restart every acknowledged record is in the log exactly
// once and the log verifies. Written records (journal_mapped.go) with no sync at all
// (SyncEvery an hour): what the process wrote into the mapping outlives it.
func TestJournalKillUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	for _, written := range []string{"", "1"} {
		t.Run(map[string]string{"": "synced", "1": "written"}[written], func(t *testing.T) { testJournalKillUnderLoad(t, written) })
	}
}

func testJournalKillUnderLoad(t *testing.T, written string) {
	dir := filepath.Join(t.TempDir(), "log")
	skey, vkey, _ := note.GenerateKey(nil, "strongroom.test/journal-crash")
	acked := map[string]bool{}
	for _, line := range ackedUntilKilled(t, "TestJournalCrashHelper", 2000, "AUDIT_JOURNAL_DIR="+dir, "AUDIT_CRASH_SKEY="+skey, "AUDIT_JOURNAL_WRITTEN="+written) {
		acked[line] = true
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	// Opening the log folds a dead process's journal (a command like `audit search`
	// after the crash sees every record), with no batcher.
	left, _ := filepath.Glob(filepath.Join(dir, "journal", "*", "*.wal"))
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s, Journal: filepath.Join(dir, "journal"), JournalBatch: 64})
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "journal")); len(ents) != 0 {
		t.Fatalf("the dead process's journal is still there: %v", ents)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range loggedRecords(t, dir, v) {
		h := sha256.Sum256(r)
		seen[hex.EncodeToString(h[:])]++
	}
	for sum := range acked {
		if seen[sum] != 1 {
			t.Fatalf("acknowledged record %s… is in the log %d times", sum[:12], seen[sum])
		}
	}
	for sum, n := range seen {
		if n != 1 {
			t.Fatalf("record %s… in the log %d times", sum[:12], n)
		}
	}
	t.Logf("%d acknowledged records (%d in the log), %d segments left by the killed process", len(acked), len(seen), len(left))
}

// TestJournalSharedRoot: processes sharing a data directory (replicas on one host) each
// journal in their own directory; one starting while another lives leaves the other's
// records alone (the failure before: both wrote the same segment names).
func TestJournalSharedRoot(t *testing.T) {
	defer func(d time.Duration) { DeadJournalEvery = d }(DeadJournalEvery)
	DeadJournalEvery = 20 * time.Millisecond
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	ctx := context.Background()
	cfg := BatcherConfig{MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir}
	a := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
	for i := range 10 {
		if _, err := a.Submit(ctx, requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	size0, _ := tl.log.IntegratedSize(ctx)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
	if err := b.Healthy(); err != nil {
		t.Fatal(err)
	}
	if size, _ := tl.log.IntegratedSize(ctx); size != size0 {
		t.Fatalf("a second batcher folded a live one's journal (log %d → %d)", size0, size)
	}
	for i := range 10 {
		if _, err := b.Submit(ctx, requestEvent(10+i))(); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	// A replica dies (its journal left, unlocked) while b runs: b folds it in its own time.
	j, err := openJournal(jdir, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(20, 25)); err != nil {
		t.Fatal(err)
	}
	j.close()
	size1, _ := tl.log.IntegratedSize(ctx)
	waitFor(t, func() bool { n, _ := tl.log.IntegratedSize(ctx); return n > size1 })
	b.Close()
	if ents, _ := os.ReadDir(jdir); len(ents) != 0 {
		t.Fatalf("journal directories left after both closed: %v", ents)
	}
	tl.close(t)
	// Each process's records in its own order; between processes no order is promised.
	got := map[string]int{}
	for _, r := range loggedRecords(t, tl.dir, tl.vkey) {
		got[string(r)]++
	}
	for i := range 25 {
		ev := requestEvent(i)
		if want, _ := ev.Marshal(); got[string(want)] != 1 {
			t.Fatalf("record %d in the log %d times", i, got[string(want)])
		}
	}
	if len(got) != 25 {
		t.Fatalf("%d distinct records in the log, want 25", len(got))
	}
}

// TestJournalDiskFull: the file system under the log and its journal fills up under
// load: records are refused (never acknowledged unrecorded), folds of records taken
// before wait, and once space is freed the same batcher takes records again (its probe
// clears the refusal) and every acknowledged record reaches the log once, in order.
// (A read-only remount cannot be tested like the log's: the kernel refuses it while the
// journal holds a segment open for writing.)
func TestJournalDiskFull(t *testing.T) {
	// The whole log on the full disk (a fold's bundle write fails too, and recovers through
	// the fold's retry), and the journal alone on it (the log's disk has room: only the
	// journal's own probe can end the refusal).
	// Records of 48 KiB too: they run through a prewritten segment's zeros (reserved
	// space, journal_direct.go) before the disk's fullness can refuse them. With the
	// journal alone on the full disk, prewritten segments take every record: each is
	// reserved before it is used and freed by its fold (the log is elsewhere) — durable, no
	// refusal needed, while each next preparation finds room (not promised: logged below);
	// so the refusal and the probe's recovery are tested there with growing segments.
	for _, journalOnly := range []bool{false, true} {
		for _, pad := range []int{0, 48 << 10} {
			name := map[bool]string{false: "log", true: "journal only"}[journalOnly] + map[bool]string{false: "", true: "/48KiB records"}[pad > 0]
			t.Run(name, func(t *testing.T) { testJournalDiskFull(t, journalOnly, pad, journalOnly, false) })
		}
	}
	t.Run("journal only/prewritten", func(t *testing.T) { testJournalDiskFull(t, true, 48<<10, false, false) })
	// Written records: a segment is allocated whole when it starts, so a full disk refuses
	// the segment (and every record until the probe starts one), never a record in it.
	t.Run("journal only/written", func(t *testing.T) { testJournalDiskFull(t, true, 48<<10, true, true) })
	t.Run("log/written", func(t *testing.T) { testJournalDiskFull(t, false, 0, true, true) })
}

func testJournalDiskFull(t *testing.T, journalOnly bool, pad int, grow, written bool) {
	event := func(i int) Event {
		ev := requestEvent(i)
		if pad > 0 {
			ev.Fields["pad"] = strings.Repeat("p", pad)
		}
		return ev
	}
	fs := tmpfsDir(t, "16m")
	logDir, jdir := filepath.Join(fs, "log"), ""
	if journalOnly {
		logDir, jdir = filepath.Join(t.TempDir(), "log"), filepath.Join(fs, "journal")
	}
	tl := openTestLogAt(t, logDir)
	if jdir == "" {
		jdir = filepath.Join(tl.dir, "journal")
	}
	ctx := context.Background()
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxDelay: time.Millisecond, FoldEvery: 20 * time.Millisecond,
		Journal: jdir, PrewriteSegments: !grow, Written: written})
	n := 0
	submit := func() error {
		_, err := b.Submit(ctx, event(n))()
		if err == nil {
			n++
		}
		return err
	}
	for range 30 {
		if err := submit(); err != nil {
			t.Fatal(err)
		}
	}
	// Everything folded first: no fold is left to retry, so only the journal's own probe
	// can end the refusal once space is back.
	if _, _, err := b.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	fill := fillDisk(t, fs)
	refused := 0
	for range 2000 {
		if err := submit(); err != nil {
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("record on a full disk: %v, want ErrUnavailable", err)
			}
			refused++
			if refused == 20 {
				break
			}
		}
	}
	if (journalOnly && !grow) || written {
		// Prewritten segments on the full disk, folded to the log's own: records go into
		// segments reserved before (freed by their folds) as long as a preparation finds
		// room — most runs take every record, some refuse once the next preparation does
		// not fit (v4's page-aligned writes leave less of a cut segment to free). Either
		// way nothing refused is acknowledged, and the recovery below holds.
		// Written records the same: a segment's space is allocated when it starts.
		t.Logf("prewritten or written segments on a full disk: %d refused", refused)
	} else {
		if refused < 20 {
			t.Fatalf("a full disk took every record (%d refused)", refused)
		}
		if tl.log.Healthy() == nil {
			t.Fatal("log healthy on a full disk")
		}
	}
	os.Remove(fill)
	waitFor(t, func() bool { return b.Healthy() == nil })
	for range 30 {
		if err := submit(); err != nil {
			t.Fatalf("record after space came back: %v", err)
		}
	}
	b.Close()
	tl.close(t)
	recs := loggedRecords(t, tl.dir, tl.vkey)
	if len(recs) != n {
		t.Fatalf("%d records in the log, want %d", len(recs), n)
	}
	for i, r := range recs {
		ev := event(i)
		if want, _ := ev.Marshal(); string(r) != string(want) {
			t.Fatalf("record %d of the log is not the %dth submitted", i, i)
		}
	}
	t.Logf("%d records acknowledged, %d refused while full", n, refused)
}

// TestJournalKeyed: with a MAC key a dead process's journal folds as without one; under
// another key (or none) it is refused, not folded.
func TestJournalKeyed(t *testing.T) {
	for _, tc := range []struct {
		name      string
		readKey   []byte
		wantFolds bool
	}{{"same key", []byte("k1"), true}, {"other key", []byte("k2"), false}, {"no key", nil, false}} {
		t.Run(tc.name, func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			j, err := openJournal(jdir, 100, []byte("k1"))
			if err != nil {
				t.Fatal(err)
			}
			recs := rawRecs(0, 12)
			j.append(recs[:5])
			j.append(recs[5:])
			j.close()
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{Journal: jdir, JournalKey: tc.readKey})
			healthy := b.Healthy()
			b.Close()
			if (healthy == nil) != tc.wantFolds {
				t.Fatalf("healthy %v, want folds %v", healthy, tc.wantFolds)
			}
			tl.close(t)
			if tc.wantFolds {
				wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 12)
			}
		})
	}
}

// TestJournalAppendGroups: groups appended together (one write, one fdatasync) are one
// frame from a page boundary (v4), an empty group (the disk probe) included; groups
// appended one by one a frame each; both read back as every record in order.
func TestJournalAppendGroups(t *testing.T) {
	recs := rawRecs(0, 12)
	var path string
	segment := func(write func(j *journal)) []byte {
		j, err := openJournal(filepath.Join(t.TempDir(), "journal"), 100, []byte("k1"))
		if err != nil {
			t.Fatal(err)
		}
		defer j.close()
		write(j)
		path = j.f.Name()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	together := segment(func(j *journal) {
		if err := j.appendGroups(recs[:5], nil, recs[5:7]); err != nil {
			t.Fatal(err)
		}
		if err := j.appendGroups(recs[7:]); err != nil {
			t.Fatal(err)
		}
	})
	togetherPath := path
	oneByOne := segment(func(j *journal) {
		for _, g := range [][]store.AuditEvent{recs[:5], nil, recs[5:7], recs[7:]} {
			if err := j.append(g); err != nil {
				t.Fatal(err)
			}
		}
	})
	// A write is one frame, from a page boundary: two frames together, four one by one.
	if f := a17Frames(together, true); len(f) != 2 || f[0]%pageSize != 0 || f[1]%pageSize != 0 {
		t.Fatalf("groups appended together: frames at %v, want 2 from page boundaries", f)
	}
	if f := a17Frames(oneByOne, true); len(f) != 4 {
		t.Fatalf("groups appended one by one: frames at %v, want 4", f)
	}
	if got, _, err := parseSegment(oneByOne, path, []byte("k1")); err != nil || len(got) != 12 {
		t.Fatalf("one by one: %d records read back (%v), want 12", len(got), err)
	}
	got, _, err := parseSegment(together, togetherPath, []byte("k1"))
	if err != nil || len(got) != 12 {
		t.Fatalf("%d records read back (%v), want 12", len(got), err)
	}
	for i, r := range got {
		if !bytes.Equal(r, recs[i].Raw) {
			t.Fatalf("record %d differs", i)
		}
	}
}
