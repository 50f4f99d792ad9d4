package audit

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// Journal v4 (twelfth session): each segment's header carries a floor (a log size before
// its batches) and a link to the segment before it that held records.

// deadJournal writes, as a killed process leaves them, keyed segments holding the given
// groups (one segment per element of segs, each a list of groups) and returns their paths.
func deadJournal(t *testing.T, jdir string, segs ...[][]store.AuditEvent) []string {
	t.Helper()
	return a48Journal(t, jdir, 100, segs...)
}

// TestJournalLinkMiddleSegmentCut: a dead journal's segment that lost its last frame while
// a later segment exists is refused — the later one's link names the records it held.
// (Before v4 the cut read as a crash's torn frame: 10 acknowledged records gone silently.)
func TestJournalLinkMiddleSegmentCut(t *testing.T) {
	tl := openTestLog(t)
	tl.record(t, 1) // an empty log has no checkpoint to verify
	jdir := filepath.Join(tl.dir, "journal")
	paths := deadJournal(t, jdir, [][]store.AuditEvent{rawRecs(0, 10), rawRecs(10, 20)}, [][]store.AuditEvent{rawRecs(20, 30)})
	a48KeepFrames(t, paths[0], 1)
	healthy := a17NextStart(tl, jdir, a17Key)
	tl.close(t)
	if healthy == nil || !strings.Contains(healthy.Error(), "does not end as") {
		t.Fatalf("a middle segment cut by a frame was taken (healthy: %v)", healthy)
	}
	if !fileExists(paths[0]) || !fileExists(paths[1]) {
		t.Fatal("the refused journal's segments were removed")
	}
	if got := loggedRecords(t, tl.dir, tl.vkey); len(got) != 0 {
		t.Fatalf("%d records logged from a refused journal", len(got))
	}
}

// TestJournalLinkRefusedFrameWrittenWhole: when an append fails after its frame reached
// the file whole (the write landed, its fdatasync failed, the cut back failed too), the
// next segment's link names the segment's end before that frame; the segment is taken,
// and the refused records are folded with the rest (in the log, never acknowledged).
func TestJournalLinkRefusedFrameWrittenWhole(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	j, err := openJournal(jdir, 100, a17Key)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(0, 5)); err != nil {
		t.Fatal(err)
	}
	acked := segLink{recs: 5}
	copy(acked.mac[:], j.mac)
	if err := j.append(rawRecs(5, 8)); err != nil {
		t.Fatal(err)
	}
	// As a failed append leaves the journal: the frame not counted, the chain before it.
	j.recs, j.mac = j.recs[:5], acked.mac[:]
	if _, err := j.rotate(); err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(8, 12)); err != nil {
		t.Fatal(err)
	}
	j.close()
	segs, err := readSegments(j.dir, a17Key)
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) != 2 || len(segs[0].recs) != 8 || segs[1].scan.prev != (segLink{seq: 1, recs: 5, mac: acked.mac}) {
		t.Fatalf("%d segments; the second's link %+v", len(segs), segs[min(1, len(segs)-1)].scan.prev)
	}
	healthy := a17NextStart(tl, jdir, a17Key)
	tl.close(t)
	if healthy != nil {
		t.Fatalf("a segment holding a refused frame after the link's end was refused: %v", healthy)
	}
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 12)
}

// TestJournalSegmentFloor: a batcher's first segment's floor is the log's size when it
// started; a segment started after a fold has that fold's entry as its floor.
func TestJournalSegmentFloor(t *testing.T) {
	tl := openTestLog(t)
	tl.record(t, 30)
	ctx := context.Background()
	size, err := tl.log.reader.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	jdir := filepath.Join(tl.dir, "journal")
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key})
	defer b.Close()
	floorOfNewest := func() uint64 {
		t.Helper()
		var newest string
		filepath.WalkDir(jdir, func(p string, _ os.DirEntry, _ error) error {
			if strings.HasSuffix(p, ".wal") && filepath.Base(p) > filepath.Base(newest) {
				newest = p
			}
			return nil
		})
		raw, err := os.ReadFile(newest)
		if err != nil {
			t.Fatal(err)
		}
		sc, err := scanSegment(raw, newest, a17Key, false)
		if err != nil || !sc.v4 {
			t.Fatalf("%s: v4 %v, %v", newest, sc.v4, err)
		}
		return sc.floor
	}
	if got := floorOfNewest(); got != size || size < 30 {
		t.Fatalf("first segment's floor %d, the log's size %d", got, size)
	}
	var idx []uint64
	for round := range 2 {
		if _, err := b.Submit(ctx, requestEvent(round))(); err != nil {
			t.Fatal(err)
		}
		i, ok, err := b.Barrier(ctx)
		if !ok || err != nil {
			t.Fatal(ok, err)
		}
		idx = append(idx, i)
	}
	// The second barrier started the open segment before folding the one it closed.
	if got := floorOfNewest(); got != idx[0] {
		t.Fatalf("floor %d after folds at %v: want the first fold's entry", got, idx)
	}
}

// TestJournalV3SegmentsStillFolded: a segment the eleventh session's version left (v3: no
// link, 8-byte frame headers) is folded after an upgrade and linked as its bundle (its MACs
// bind its directory); the log verifies.
func TestJournalV3SegmentsStillFolded(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	paths := deadJournal(t, jdir, [][]store.AuditEvent{rawRecs(0, 1)})
	v3 := legacySegment(journalMagicV3, [][]store.AuditEvent{rawRecs(0, 4), rawRecs(4, 7)}, a17Key, paths[0])
	if err := os.WriteFile(paths[0], v3, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a17NextStart(tl, jdir, a17Key); err != nil {
		t.Fatal(err)
	}
	tl.close(t)
	bundles := bundleFiles(t, tl.dir)
	if !slices.ContainsFunc(slices.Collect(maps.Values(bundles)), func(b []byte) bool { return string(b) == string(v3) }) {
		t.Fatal("the v3 segment was not linked as its bundle")
	}
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 7)
}

// pagedJournal opens a keyed journal whose second segment on is prewritten (paged), and
// rotates to it; it skips the test where the file system has no O_DIRECT.
func pagedJournal(t *testing.T, jdir string) *journal {
	t.Helper()
	j, err := openJournalGrowing(jdir, 100, a17Key, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(0, 3)); err != nil {
		t.Fatal(err)
	}
	if _, err := j.rotate(); err != nil {
		t.Fatal(err)
	}
	if !j.direct {
		j.close()
		t.Skip("no O_DIRECT here: segments grow")
	}
	return j
}

// TestJournalPagedTornWrite: a power cut during a prewritten segment's group write can
// leave any subset of the write's pages; whichever page is lost, the next start folds
// every acknowledged record, and of the torn write's only whole groups before the lost page
// — also for a write of two groups, and when the lost page is the last.
func TestJournalPagedTornWrite(t *testing.T) {
	for _, c := range []struct {
		name   string
		groups [][]store.AuditEvent
		lose   func(pages int) int // which changed page is lost
	}{
		{"first-of-three", [][]store.AuditEvent{rawRecs(6, 80)}, func(int) int { return 0 }},
		{"middle-of-three", [][]store.AuditEvent{rawRecs(6, 80)}, func(int) int { return 1 }},
		{"last", [][]store.AuditEvent{rawRecs(6, 80)}, func(n int) int { return n - 1 }},
		{"two-groups-first", [][]store.AuditEvent{rawRecs(6, 40), rawRecs(40, 80)}, func(int) int { return 0 }},
		{"two-groups-last", [][]store.AuditEvent{rawRecs(6, 40), rawRecs(40, 80)}, func(n int) int { return n - 1 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			j := pagedJournal(t, jdir)
			if err := j.append(rawRecs(3, 6)); err != nil {
				t.Fatal(err)
			}
			path := j.f.Name()
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := j.appendGroups(c.groups...); err != nil {
				t.Fatal(err)
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			j.close()
			var pages []int
			for p := 0; p < len(after); p += pageSize {
				if !bytes.Equal(before[p:p+pageSize], after[p:p+pageSize]) {
					pages = append(pages, p)
				}
			}
			if len(pages) < 3 {
				t.Fatalf("the write changed %d pages, want 3 or more", len(pages))
			}
			lost := pages[c.lose(len(pages))]
			copy(after[lost:lost+pageSize], before[lost:lost+pageSize])
			if err := os.WriteFile(path, after, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := a17NextStart(tl, jdir, a17Key); err != nil {
				t.Fatalf("a torn write (page %d of %v lost) made the start refuse: %v", lost, pages, err)
			}
			tl.close(t)
			// Every acknowledged record; of the torn write's, at most its whole groups before
			// the lost page (never acknowledged, but the requests were made), in order.
			got := loggedRecords(t, tl.dir, tl.vkey)
			ends := []int{6}
			for _, g := range c.groups {
				ends = append(ends, ends[len(ends)-1]+len(g))
			}
			if !slices.Contains(ends[:len(ends)-1], len(got)) {
				t.Fatalf("%d records in the log, want one of %v", len(got), ends[:len(ends)-1])
			}
			wantInOrder(t, got, len(got))
		})
	}
}

// TestJournalPagedDamage: in a prewritten segment, a group damaged after it was
// acknowledged (a flipped byte, or its page lost) while later groups follow is damage: the
// start refuses the journal (the operator told) rather than drop the groups after it.
func TestJournalPagedDamage(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(b []byte, frame int)
	}{
		{"payload-byte", func(b []byte, frame int) { b[frame+frameHeader+5] ^= 1 }},
		{"page-zeroed", func(b []byte, frame int) { clear(b[frame : frame+pageSize]) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			tl := openTestLog(t)
			tl.record(t, 1) // an empty log has no checkpoint to verify
			jdir := filepath.Join(tl.dir, "journal")
			j := pagedJournal(t, jdir)
			for i := 3; i < 33; i += 10 {
				if err := j.append(rawRecs(i, i+10)); err != nil {
					t.Fatal(err)
				}
			}
			path := j.f.Name()
			j.close()
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			frames := a17Frames(b, true)
			if len(frames) != 3 || frames[1]%pageSize != 0 {
				t.Fatalf("frames at %v: want 3, each group on a fresh page", frames)
			}
			c.damage(b, frames[1])
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			healthy := a17NextStart(tl, jdir, a17Key)
			tl.close(t)
			if healthy == nil {
				t.Fatalf("a damaged middle group was read as a torn write: %d records logged", len(loggedRecords(t, tl.dir, tl.vkey)))
			}
		})
	}
}

// TestJournalV2BatchRecognizedByBundle: a v2 segment's batch may have been folded before
// batch entries named their place in the journal; such a batch is still recognized by its
// bundle's name at a refold (only for v2: TestAttack18BundleFallbackSkipsIdenticalRecords).
func TestJournalV2BatchRecognizedByBundle(t *testing.T) {
	key := bytes.Repeat([]byte{5}, 32)
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	writeDeadV2Segment(t, jdir, key) // records 0..6
	folder := &Batcher{log: tl.log, bundles: DirBundles{Dir: tl.dir}, maxRecords: 100}
	if _, err := folder.commitRecords(rawRecs(0, 7), "", nil, nil, nil); err != nil { // an old version's fold
		t.Fatal(err)
	}
	if err := a17NextStart(tl, jdir, key); err != nil {
		t.Fatal(err)
	}
	tl.close(t)
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 7)
}

// TestJournalStaleClaimRemoved: a directory a process died claiming (".new-*", killed
// between its mkdir and its rename) is removed by the next scan once it is older than
// staleClaim; a younger one — a claim in progress — is left alone.
func TestJournalStaleClaimRemoved(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	stale, fresh := filepath.Join(jdir, ".new-00dead00"), filepath.Join(jdir, ".new-00live00")
	for _, d := range []string{stale, fresh} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * staleClaim)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	if err := a17NextStart(tl, jdir, a17Key); err != nil {
		t.Fatal(err)
	}
	tl.close(t)
	if fileExists(stale) {
		t.Fatal("a directory a process died claiming a while ago is still there")
	}
	if !fileExists(fresh) {
		t.Fatal("a directory being claimed now was removed")
	}
}

// TestJournalLinkShortSegmentAlreadyLogged (outside round 47's residual): a segment left
// short on the disk — a close whose flush failed folds its records from the process's
// memory, and the process died before removing it — while the next segment's link names
// its longer end. Its batch is in the log, so nothing of it is lost: the directory is
// taken, nothing logged twice, and removed. (Short with its batch not in the log, it is
// still refused: TestJournalLinkMiddleSegmentCut.)
func TestJournalLinkShortSegmentAlreadyLogged(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	paths := deadJournal(t, jdir, [][]store.AuditEvent{rawRecs(0, 10), rawRecs(10, 20)}, [][]store.AuditEvent{rawRecs(20, 30)})
	saved := t.TempDir()
	copyDir(t, jdir, saved)
	if err := a17NextStart(tl, jdir, a17Key); err != nil {
		t.Fatalf("the whole journal: %v", err)
	}
	if fileExists(paths[0]) || fileExists(paths[1]) {
		t.Fatal("folded segments were not removed")
	}
	copyDir(t, saved, jdir)       // as the dead process left it, but:
	a48KeepFrames(t, paths[0], 1) // its last 10 records not on the disk
	healthy := a17NextStart(tl, jdir, a17Key)
	tl.close(t)
	if healthy != nil {
		t.Fatalf("a short segment whose batch is in the log was refused: %v", healthy)
	}
	if fileExists(paths[0]) || fileExists(paths[1]) {
		t.Fatal("the taken journal's segments were not removed")
	}
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 30)
}
