package audit

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/sys/unix"
)

// Attacks on the request-record journal (outside security test). Each test fails when the
// attack breaks "acknowledged means recorded, exactly once, or the operator is told".

// rawRecs is requestEvent(from..to-1) as journal records.
func rawRecs(from, to int) []store.AuditEvent {
	var out []store.AuditEvent
	for i := from; i < to; i++ {
		ev := requestEvent(i)
		raw, _ := ev.Marshal()
		out = append(out, indexRecord(0, raw))
	}
	return out
}

// TestAttackJournalCorruptMiddleFrame: a dead process's segment holds three whole frames
// (30 acknowledged records); one byte of the FIRST frame is damaged (a bad sector, or
// someone with write access). Only a segment's last frame can be torn by a crash, so a bad
// frame followed by whole frames is damage: the next start must either fold every record
// or refuse (operator told). It must not silently drop the acknowledged records after it.
func TestAttackJournalCorruptMiddleFrame(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	j, err := openJournal(jdir, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	recs := rawRecs(0, 30)
	for i := 0; i < 30; i += 10 {
		if err := j.append(recs[i : i+10]); err != nil {
			t.Fatal(err)
		}
	}
	path := j.f.Name()
	j.close()                                  // the process dies: its directory stays, unlocked
	flip(t, path, journalHeader+frameHeader+3) // a byte inside the first frame's payload

	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, Journal: jdir})
	healthy := b.Healthy()
	b.Close()
	if healthy != nil {
		t.Logf("refused, operator told: %v", healthy)
		return
	}
	size, _ := tl.log.IntegratedSize(context.Background())
	tl.close(t)
	var got [][]byte
	if size > 0 {
		got = loggedRecords(t, tl.dir, tl.vkey)
	}
	if len(got) != 30 {
		t.Fatalf("a damaged first frame silently dropped acknowledged records: %d of 30 in the log, the batcher healthy, the segment removed (exists: %v)",
			len(got), fileExists(path))
	}
}

// TestAttackJournalRefoldOtherBatchSize: a process (RequestBatchRecords 20) dies in the
// middle of folding a 60-record segment: the first batch entry (records 0..19) is in the
// log, the segment is not yet removed. The operator restarts it with another
// request_batch_records (50). The refold skips batches "already in the log" by their
// place (the segment's header keeps the batch size it was cut with): records 0..19 must
// not be logged twice. (Written when batches were recognized by their bundle name, which
// depends on where the chunks are cut; since round 18 only v2 segments' are.)
func TestAttackJournalRefoldOtherBatchSize(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	j, err := openJournal(jdir, 20, nil) // the dead process folded in batches of 20
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(0, 60)); err != nil {
		t.Fatal(err)
	}
	seg := j.f.Name()
	j.close()
	// The dead process's fold got as far as its first batch entry (named by its place).
	folder := &Batcher{log: tl.log, bundles: DirBundles{Dir: tl.dir}, maxRecords: 20}
	if _, err := folder.commitRecords(rawRecs(0, 20), journalSource(seg, 0), nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 50, Journal: jdir})
	if err := b.Healthy(); err != nil {
		t.Logf("refused: %v", err)
		b.Close()
		return
	}
	b.Close()
	tl.close(t)
	got := loggedRecords(t, tl.dir, tl.vkey)
	if len(got) != 60 {
		t.Fatalf("refold with another batch size: %d records in the log, want 60 (records 0..19 logged twice: %v)",
			len(got), len(got) == 80)
	}
	wantInOrder(t, got, 60)
}

// TestAttackJournalPartialWriteThenCrash: the disk fills just as a fresh segment takes its
// first group, a large one: the write is cut part way (the kernel writes what fits in the
// segment's first page), so a partial frame stays in the segment. Space comes back, the
// batcher's probe (an empty frame, appended AFTER the partial one) clears the refusal, and
// more records are acknowledged into the same segment. The process then dies (SIGKILL)
// before folding. The next process reads the segment: every acknowledged record must be
// readable (or the start must refuse); reading stops at the partial frame instead.
func TestAttackJournalPartialWriteThenCrash(t *testing.T) {
	fs := tmpfsDir(t, "16m")
	tl := openTestLogAt(t, filepath.Join(fs, "log"))
	ctx := context.Background()
	jdir := filepath.Join(tl.dir, "journal")
	// Folds can be held (a slow log) so that segments stay on disk as a crash would find them.
	gate := &gateBundles{DirBundles: DirBundles{Dir: tl.dir}, release: make(chan struct{})}
	b := NewBatcher(tl.log, gate, BatcherConfig{MaxRecords: MaxBatch, MaxDelay: time.Millisecond, FoldEvery: 300 * time.Millisecond, Journal: jdir})
	defer b.Close()
	defer close(gate.release)
	n := 0
	mk := func(pad int) (Event, []byte) {
		ev := requestEvent(n)
		n++
		ev.Fields = map[string]string{"status": "200", "pad": padding(pad)}
		raw, _ := ev.Marshal()
		return ev, raw
	}
	ev, _ := mk(10)
	if _, err := b.Submit(ctx, ev)(); err != nil {
		t.Fatal(err)
	}
	// Segment 0 is rotated (segment 1 created, holding only its header) and folded.
	waitFor(t, func() bool {
		return fileExists(filepath.Join(b.j.dir, segmentName(1))) && !fileExists(filepath.Join(b.j.dir, segmentName(0)))
	})
	gate.hold.Store(true)
	fill, err := os.Create(filepath.Join(fs, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{64 << 10, 4096, 512} {
		chunk := make([]byte, size)
		for {
			if _, err := fill.Write(chunk); err != nil {
				break
			}
		}
	}
	fill.Sync()
	var sfs unix.Statfs_t
	unix.Statfs(fs, &sfs)
	fi, _ := fill.Stat()
	t.Logf("filled: %d bytes in the fill file, %d blocks free", fi.Size(), sfs.Bfree)
	// A large record: its frame does not fit in the segment's first page.
	ev, _ = mk(12000)
	_, err = b.Submit(ctx, ev)()
	if err == nil {
		t.Skip("the large record fit on the full disk")
	}
	t.Logf("refused on the full disk: %v", err)
	fill.Close()
	os.Remove(fill.Name())
	waitFor(t, func() bool { return b.Healthy() == nil })
	// Twenty records acknowledged together (one group, one append) once space is back.
	acked := map[string]bool{}
	var futs []Future
	for range 20 {
		ev, raw := mk(10)
		acked[string(raw)] = true
		futs = append(futs, b.Submit(ctx, ev))
	}
	for _, f := range futs {
		if _, err := f(); err != nil {
			t.Fatalf("record after space came back: %v", err)
		}
	}
	// SIGKILL now: the next process reads the segments on disk (none was folded since).
	segs, err := readSegments(b.j.dir, nil)
	if err != nil {
		t.Logf("the next start refuses the journal (operator told): %v", err)
		return
	}
	found := 0
	for _, s := range segs {
		for _, r := range s.recs {
			if acked[string(r.Raw)] {
				found++
			}
		}
	}
	if found != len(acked) {
		t.Fatalf("after a partial append on a full disk, only %d of the %d records acknowledged later can be read back from the journal: a crash before the fold loses them silently",
			found, len(acked))
	}
}

func padding(size int) string {
	b := make([]byte, size)
	for k := range b {
		b[k] = 'a' + byte(k%26)
	}
	return string(b)
}

// gateBundles blocks PutBundle (the fold) while hold is set, until release is closed.
type gateBundles struct {
	DirBundles
	hold    atomic.Bool
	release chan struct{}
}

func (g *gateBundles) PutBundle(ctx context.Context, name string, b []byte) error {
	if g.hold.Load() {
		<-g.release
	}
	return g.DirBundles.PutBundle(ctx, name, b)
}

// LinkBundle is held as PutBundle is (the fold links a whole segment instead of writing it).
func (g *gateBundles) LinkBundle(ctx context.Context, name, src string) error {
	if g.hold.Load() {
		<-g.release
	}
	return g.DirBundles.LinkBundle(ctx, name, src)
}

// TestAttackJournalPlantedAlias: someone with write access to the data directory plants an
// empty file beside a dead process's unfolded segment, named as the same sequence number in
// upper-case hex ("…000A.wal" beside "…000a.wal"). The next start must fold each record
// once (or refuse): not fold the segment twice.
func TestAttackJournalPlantedAlias(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	j, err := openJournal(jdir, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	j.seq = 10
	j.f.Close()
	os.Remove(j.f.Name())
	j.f = nil
	if err := j.append(rawRecs(0, 10)); err != nil { // segment 000000000000000a.wal
		t.Fatal(err)
	}
	seg := j.f.Name()
	j.close()
	if filepath.Base(seg) != "000000000000000a.wal" {
		t.Fatalf("segment %s", seg)
	}
	os.WriteFile(filepath.Join(filepath.Dir(seg), "000000000000000A.wal"), nil, 0o600)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, Journal: jdir})
	healthy := b.Healthy()
	b.Close()
	if healthy != nil {
		t.Logf("refused, operator told: %v", healthy)
		return
	}
	tl.close(t)
	got := loggedRecords(t, tl.dir, tl.vkey)
	if len(got) != 10 {
		t.Fatalf("a planted alias of a segment's name: %d records in the log, want 10 (each record folded %d times)", len(got), len(got)/10)
	}
}

// TestAttackJournalDirRemoved: the process's journal directory is removed under it (an
// operator's cleanup, systemd-tmpfiles on a data directory under /var/tmp). Records
// acknowledged afterwards must be somewhere a crash leaves them (a segment under the
// journal root, or the log), or be refused: not fdatasync'ed into an unlinked file.
func TestAttackJournalDirRemoved(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	ctx := context.Background()
	gate := &gateBundles{DirBundles: DirBundles{Dir: tl.dir}, release: make(chan struct{})}
	b := NewBatcher(tl.log, gate, BatcherConfig{MaxRecords: MaxBatch, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir})
	defer b.Close()
	defer close(gate.release)
	gate.hold.Store(true) // no fold: a crash finds what is on disk
	for i := range 10 {
		if _, err := b.Submit(ctx, requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(b.j.dir); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	for i := 10; i < 30; i++ {
		ev := requestEvent(i)
		raw, _ := ev.Marshal()
		if _, err := b.Submit(ctx, ev)(); err == nil {
			acked[string(raw)] = true
		}
	}
	// SIGKILL now: what the next process can find.
	segs, _ := filepath.Glob(filepath.Join(jdir, "*", "*.wal"))
	found := 0
	for _, p := range segs {
		recs, _, _ := readSegment(p, nil)
		for _, r := range recs {
			if acked[string(r)] {
				found++
			}
		}
	}
	if found != len(acked) {
		t.Fatalf("journal directory removed: %d records acknowledged after it, %d of them on disk (the rest went to an unlinked segment; a crash loses them silently); healthy: %v",
			len(acked), found, b.Healthy())
	}
}

// TestAttackJournalCloseRace: Close races Submits and Barriers from many goroutines. No
// call may hang, and every record whose future resolved without error is in the log
// exactly once after Close.
func TestAttackJournalCloseRace(t *testing.T) {
	for round := range 3 {
		tl := openTestLog(t)
		jdir := filepath.Join(tl.dir, "journal")
		ctx := context.Background()
		b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 16, MaxDelay: time.Millisecond, FoldEvery: 5 * time.Millisecond, Journal: jdir})
		var mu sync.Mutex
		acked := map[string]bool{}
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for g := range 8 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					ev := requestEvent(g*100000 + i)
					raw, _ := ev.Marshal()
					if _, err := b.Submit(ctx, ev)(); err == nil {
						mu.Lock()
						acked[string(raw)] = true
						mu.Unlock()
					}
					if i%7 == 0 {
						b.Barrier(ctx)
					}
				}
			})
		}
		waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 50*(round+1) })
		b.Close()
		close(stop)
		wg.Wait()
		tl.close(t)
		seen := map[string]int{}
		for _, r := range loggedRecords(t, tl.dir, tl.vkey) {
			seen[string(r)]++
		}
		for r := range acked {
			if seen[r] != 1 {
				t.Fatalf("round %d: an acknowledged record is in the log %d times", round, seen[r])
			}
		}
		if segs, _ := filepath.Glob(filepath.Join(jdir, "*", "*.wal")); len(segs) != 0 {
			t.Fatalf("round %d: segments left after Close: %v", round, segs)
		}
	}
}

// TestAttackJournalAlteredSegment: a process dies (or is killed) leaving an unfolded
// segment; before the next start someone with write access to the data directory — but
// without the log's signing key — edits one acknowledged record (another principal) and
// recomputes the frame's CRC-32C, which is no secret. The next start folds the altered
// record into the signed log, where `audit verify` can no longer see the change: the
// operator must be told (refused), not the record silently altered.
func TestAttackJournalAlteredSegment(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	key := []byte("the deployment's journal key, as serve derives it")
	j, err := openJournal(jdir, 100, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(0, 10)); err != nil {
		t.Fatal(err)
	}
	path := j.f.Name()
	j.close()
	// The attacker re-frames the segment with record 3 changed ("p3" becomes "p9"); without
	// the key there is no MAC to give it, so it is written as an unkeyed segment.
	raws, _, err := readSegment(path, key)
	if err != nil || len(raws) != 10 {
		t.Fatal(raws, err)
	}
	var payload []byte
	for i, r := range raws {
		if i == 3 {
			r = []byte(strings.Replace(string(r), `"principal":"p3"`, `"principal":"p9"`, 1))
		}
		payload = binary.AppendUvarint(payload, uint64(len(r)))
		payload = append(payload, r...)
	}
	seg := append(testHeader(), make([]byte, frameHeader)...)
	seg, _ = sealFrame(append(seg, payload...), len(testHeader()), nil, nil)
	os.WriteFile(path, seg, 0o600)

	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, Journal: jdir, JournalKey: key})
	healthy := b.Healthy()
	b.Close()
	if healthy != nil {
		t.Logf("refused, operator told: %v", healthy)
		return
	}
	tl.close(t)
	got := loggedRecords(t, tl.dir, tl.vkey) // the log verifies
	for i, r := range got {
		if strings.Contains(string(r), `"principal":"p9"`) {
			t.Fatalf("record %d was altered in the journal and is now in the verified, signed log as %s", i, r)
		}
	}
}

// TestAttackJournalLockRemoved: a dead process's journal directory holds an unfolded
// segment (acknowledged records); someone with write access removes its "lock" file. The
// next start must fold the records or refuse: not skip the directory silently forever.
func TestAttackJournalLockRemoved(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	j, err := openJournal(jdir, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(0, 10)); err != nil {
		t.Fatal(err)
	}
	dead := j.dir
	j.close()
	os.Remove(filepath.Join(dead, "lock"))
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, Journal: jdir})
	healthy := b.Healthy()
	b.Close()
	if healthy != nil {
		t.Logf("refused, operator told: %v", healthy)
		return
	}
	size, _ := tl.log.IntegratedSize(context.Background())
	tl.close(t)
	var got [][]byte
	if size > 0 {
		got = loggedRecords(t, tl.dir, tl.vkey)
	}
	if len(got) != 10 {
		left, _ := filepath.Glob(filepath.Join(dead, "*.wal"))
		t.Fatalf("a dead journal without its lock file: %d of 10 acknowledged records in the log, the batcher healthy, segments left unread: %v", len(got), left)
	}
}
