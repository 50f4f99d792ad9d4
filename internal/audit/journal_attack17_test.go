package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// Outside round 17 (helper-27): the request-record journal after the eleventh session —
// prewritten segments written in place, a segment linked as its batch's bundle, journal
// format v3. Each test names the promise it attacks; a failing one is a broken promise,
// kept failing with its minimal reproduction.

// a17Key is the journal key of the keyed cases (the deployment derives it from the audit key).
var a17Key = bytes.Repeat([]byte{0x17}, 32)

// a17Sources is the journal field ("<dir>/<segment>@<n>") of the log's batch entries, in order.
func a17Sources(t *testing.T, tl *testLog) []string {
	t.Helper()
	ctx := context.Background()
	size, err := tl.log.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	err = ReadEntries(ctx, tl.log.Reader().ReadEntryBundle, 0, size, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			if ev, err := ParseEvent(e.Raw); err == nil && ev.Kind == KindBatch {
				out = append(out, ev.Fields["journal"])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// a17FoldedBundle runs a keyed batcher that acknowledges requestEvent(0..n-1) and folds them
// as one batch (its segment linked as the bundle, served at /log/batches/), then closes it.
// It returns the bundle's bytes and where the segment was (directory and file name).
func a17FoldedBundle(t *testing.T, tl *testLog, jdir string, n int) (bundle []byte, dirName, segName string) {
	t.Helper()
	cfg := BatcherConfig{MaxRecords: 100, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key}
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
	var fs []Future
	for i := range n {
		fs = append(fs, b.Submit(context.Background(), requestEvent(i)))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := b.Barrier(context.Background()); !ok || err != nil {
		t.Fatal(ok, err)
	}
	b.Close()
	files := bundleFiles(t, tl.dir)
	if len(files) != 1 {
		t.Fatalf("%d bundles, want 1", len(files))
	}
	for _, content := range files {
		bundle = content
	}
	if !bytes.HasPrefix(bundle, []byte(journalMagic)) {
		t.Fatal("the bundle is not the linked segment (v2)")
	}
	srcs := a17Sources(t, tl)
	if len(srcs) != 1 {
		t.Fatalf("%d batch entries, want 1", len(srcs))
	}
	dirName, rest, _ := strings.Cut(srcs[0], "/")
	segName, _, _ = strings.Cut(rest, "@")
	if dirName == "" || segName == "" {
		t.Fatalf("journal field %q", srcs[0])
	}
	return bundle, dirName, segName
}

// a17Plant puts content into the journal as segment dirName/segName (a dead process's).
func a17Plant(t *testing.T, jdir, dirName, segName string, content []byte) {
	t.Helper()
	d := filepath.Join(jdir, dirName)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, segName), content, 0o600); err != nil {
		t.Fatal(err)
	}
}

// a17NextStart starts (and closes) the next batcher on the journal: nil if it took the
// journal, else why it refused (the operator told).
func a17NextStart(tl *testLog, jdir string, key []byte) error {
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, Journal: jdir, JournalKey: key})
	healthy := b.Healthy()
	b.Close()
	return healthy
}

// TestAttack17ReplayBundleWithEditedBatchSize. Promise: someone who can write the data
// directory, without the journal key, cannot have records logged twice by putting a served
// bundle (a closed segment) back into the journal. TestJournalReplayOfABundle covers the
// bundle put back as it is under its own directory and file name (recognized: skipped).
// Here one header byte is changed first: the segment's batch size (u32 after the magic),
// which no MAC covers, from 100 to 1. The frames' MACs still verify (they bind the
// directory, the file and the frames, not the header), so the refold cuts the six records
// into six batches, "<dir>/<seg>@0".."@5"; only "@0" is among the log's batches, so
// records 1..5 are folded again.
//
// Reproduction: fold requestEvent(0..5) with a keyed journal (one v2 bundle); copy the
// bundle to journal/<its dir>/<its file>, with bytes [22:26] set to 01 00 00 00; start a
// batcher. Seen: healthy, 11 records in the log (records 1..5 twice). Should be: refused
// (the header bound by the first MAC), or 6 records once.
func TestAttack17ReplayBundleWithEditedBatchSize(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	bundle, dirName, segName := a17FoldedBundle(t, tl, jdir, 6)
	edited := bytes.Clone(bundle)
	binary.LittleEndian.PutUint32(edited[len(journalMagic):], 1)
	a17Plant(t, jdir, dirName, segName, edited)
	healthy := a17NextStart(tl, jdir, a17Key)
	tl.close(t)
	got := loggedRecords(t, tl.dir, tl.vkey)
	if healthy != nil && len(got) == 6 {
		t.Logf("refused, operator told: %v", healthy)
		return
	}
	if len(got) != 6 {
		t.Fatalf("REPLAY: a served bundle put back under its own name with its header's batch size changed (100 -> 1): %d records in the log, want 6 (healthy: %v)", len(got), healthy)
	}
	wantInOrder(t, got, 6)
}

// TestAttack17ReplayV2BundleElsewhere. Promise as above (no record logged twice by a bundle
// put back), for the segments an earlier version left: a v2 segment (its first MAC binds its
// file name only) is still folded after an upgrade and, whole, linked as its bundle — served
// at /log/batches/ (TestJournalV2SegmentsStillFolded). Copied into a journal directory of
// any other name under the same file name, its MACs verify; its place ("<new dir>/<seg>@0")
// is not among the log's batches, so it is folded a second time. v3 closed this for v3
// segments only; the v2 ones it still links are served, replayable bundles.
//
// Reproduction: write a keyed v2 segment (7 records) as an earlier version did, start a
// batcher (it folds and links it), copy the bundle to journal/0123456789abcdef/<same file>,
// start a batcher. Seen: healthy, 14 records. Should be: refused, or 7 once (e.g. a v2
// segment written as a v1 bundle instead of linked, or refolded v2 batches recognized by
// their bundle's name).
func TestAttack17ReplayV2BundleElsewhere(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	p := writeDeadV2Segment(t, jdir, a17Key)
	if err := a17NextStart(tl, jdir, a17Key); err != nil {
		t.Fatal(err)
	}
	files := bundleFiles(t, tl.dir)
	if len(files) != 1 {
		t.Fatalf("%d bundles, want 1", len(files))
	}
	for _, content := range files {
		if !bytes.HasPrefix(content, []byte(journalMagicV2)) {
			// Fixed: a v2 segment is written as a v1 bundle, not linked — no v2 segment is
			// served to replay (TestJournalV2SegmentsStillFolded holds that).
			return
		}
		a17Plant(t, jdir, "0123456789abcdef", filepath.Base(p), content)
	}
	healthy := a17NextStart(tl, jdir, a17Key)
	tl.close(t)
	got := loggedRecords(t, tl.dir, tl.vkey)
	if healthy != nil && len(got) == 7 {
		t.Logf("refused, operator told: %v", healthy)
		return
	}
	if len(got) != 7 {
		t.Fatalf("REPLAY: a served v2 bundle copied into another journal directory: %d records in the log, want 7 (healthy: %v)", len(got), healthy)
	}
	wantInOrder(t, got, 7)
}

// TestAttack17ReplayAfterManyEntries. Promise as above: a served bundle put back as it is
// under its own directory and file name is "recognized as a batch the log has and skipped"
// (DESIGN, TestJournalReplayOfABundle) — but a refold only looks among the log's last
// 4096 + n entries (recentBatches). Once that many entries follow the batch (security
// decisions, other batches: a day of a busy gateway), the same replay is folded again.
//
// Reproduction: fold requestEvent(0..5) (one bundle), record 4,200 other entries, copy the
// bundle back to journal/<its dir>/<its file>, start a batcher. Seen: healthy, 12 records.
// Should be: 6 (the replay refused or skipped, however old the batch).
// Fixed in the twelfth session (journal v4): a segment's header carries a floor, bound by
// its first MAC, and a refold looks for the log's batches from the oldest floor on.
func TestAttack17ReplayAfterManyEntries(t *testing.T) {
	if testing.Short() {
		t.Skip("records 4,200 entries")
	}
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	bundle, dirName, segName := a17FoldedBundle(t, tl, jdir, 6)
	tl.record(t, 4200)
	a17Plant(t, jdir, dirName, segName, bundle)
	healthy := a17NextStart(tl, jdir, a17Key)
	tl.close(t)
	got := loggedRecords(t, tl.dir, tl.vkey)
	if len(got) != 6 {
		t.Fatalf("REPLAY: a served bundle put back under its own name after 4,200 later entries: %d records in the log, want 6 (healthy: %v)", len(got), healthy)
	}
	wantInOrder(t, got, 6)
}

// a17Frames is the offsets of a segment's frames (after the header), up to the first
// zero length field or the end; in a paged segment (v4 flag 2: each group's frames start
// on a fresh page) the zeros to the next page after a group are skipped.
func a17Frames(b []byte, keyed bool) []int {
	macLen := 0
	if keyed {
		macLen = sha256.Size
	}
	paged := b[len(journalMagic)+4]&2 != 0
	var offs []int
	for off := journalHeader; off+frameHeader <= len(b); {
		m := int(binary.LittleEndian.Uint32(b[off:]))
		if next := (off + pageSize - 1) / pageSize * pageSize; m == 0 && paged && next != off && allZero(b[off:min(len(b), next)]) {
			off = next
			continue
		}
		if m == 0 && allZero(b[off:min(len(b), off+frameHeader+macLen)]) {
			break
		}
		offs = append(offs, off)
		off += frameHeader + m + macLen
	}
	return offs
}

// TestAttack17LengthBitFlipDropsFrames. Promise: every acknowledged record is in the log, or
// the operator is told: "a damaged frame followed by a whole frame is damage and the
// segment is refused". One bit flipped in a middle frame's LENGTH field (a bad sector; no
// key needed) makes the frame run past the end of the file (a closed segment) or into the
// zeros after the frames (a prewritten segment a crash left): scanSegment reads any length
// up to maxFrame (256 MiB) that runs past the end as "torn", so the frame and every whole
// frame after it are dropped silently and the segment is removed. (A payload byte flipped
// is refused: TestAttackJournalCorruptMiddleFrame.)
//
// Reproduction: keyed segment, three frames of 10 records; the process dies; byte 2 of the
// second frame's length field ^= 0x10 (length + 1 MiB). Seen: healthy, 10 of 30 records in
// the log. Should be: refused (a frame with whole frames after it is damage), or all 30.
// Fixed in the twelfth session (journal v4): a frame's length has a CRC of its own; a
// damaged one with bytes after it is damage (refused, the operator told).
func TestAttack17LengthBitFlipDropsFrames(t *testing.T) {
	for _, prewritten := range []bool{false, true} {
		t.Run(map[bool]string{false: "closed-segment", true: "prewritten-crash"}[prewritten], func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			j, err := openJournalGrowing(jdir, 100, a17Key, !prewritten)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			if prewritten {
				// The first segment grows; from the second on they are prewritten.
				if err := j.append(rawRecs(0, 5)); err != nil {
					t.Fatal(err)
				}
				if _, err := j.rotate(); err != nil {
					t.Fatal(err)
				}
				if !j.direct {
					t.Skip("no O_DIRECT here: segments grow")
				}
				n = 5
			}
			for range 3 {
				if err := j.append(rawRecs(n, n+10)); err != nil {
					t.Fatal(err)
				}
				n += 10
			}
			path := j.f.Name()
			image, err := os.ReadFile(path) // as a crash leaves it (zeros after, if prewritten)
			if err != nil {
				t.Fatal(err)
			}
			j.close()
			frames := a17Frames(image, true)
			if len(frames) != 3 {
				t.Fatalf("%d frames", len(frames))
			}
			image[frames[1]+2] ^= 0x10
			if err := os.WriteFile(path, image, 0o600); err != nil {
				t.Fatal(err)
			}
			healthy := a17NextStart(tl, jdir, a17Key)
			tl.close(t)
			if healthy != nil {
				t.Logf("refused, operator told: %v", healthy)
				return
			}
			got := loggedRecords(t, tl.dir, tl.vkey)
			if len(got) != n {
				t.Fatalf("DAMAGE READ AS TORN: one bit of a middle frame's length flipped: %d of %d acknowledged records in the log, the start healthy, the segment removed (%v)",
					len(got), n, !fileExists(path))
			}
			wantInOrder(t, got, n)
		})
	}
}

// TestAttack17TornWriteLaterPageFirst. Promise: across a power cut every acknowledged record
// is in the log. A group's O_DIRECT write spans pages (the last partial page rewritten, then
// the new frames); a power cut during it can leave any of its pages on the disk — the device
// does not write them in order. Here the write's second page reached the disk and its
// first did not: the acknowledged frames, zeros (the first page as it was), part of the new
// frame, zeros. That frame was never acknowledged; the frames before it were. Keyed, the
// zeros after the last whole frame read as an empty frame whose MAC fails; unkeyed, as
// empty frames up to the new frame's middle, read as a frame of ~800 MB: either way the
// whole segment is refused and the next process refuses every record until an operator
// acts.
//
// Reproduction: a prewritten segment (the second), a group of 3 records acknowledged, then
// a group of 40 (~6 KiB, over two pages) whose write's first page is lost; the process dies.
// Seen: the next start refused ("frame MAC fails"; unkeyed "frame of 829432320 bytes"),
// the acknowledged records not folded.
// Should be: records 0..5 folded (the frame after the zeros never acknowledged).
// Fixed in the twelfth session: a prewritten segment's groups start on fresh pages (journal
// v4, flag paged); no write rewrites a page holding acknowledged frames, and a damaged
// frame with no frame checking on a later page boundary is the last write, torn. The
// crash is modelled as the write's first changed page lost.
func TestAttack17TornWriteLaterPageFirst(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		t.Run(map[bool]string{false: "unkeyed", true: "keyed"}[keyed], func(t *testing.T) {
			var key []byte
			if keyed {
				key = a17Key
			}
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			j, err := openJournalGrowing(jdir, 100, key, false) // prewritten (opt-in)
			if err != nil {
				t.Fatal(err)
			}
			if err := j.append(rawRecs(0, 3)); err != nil {
				t.Fatal(err)
			}
			if _, err := j.rotate(); err != nil { // segment 0 closed, whole: stays for the next process
				t.Fatal(err)
			}
			if !j.direct {
				t.Skip("no O_DIRECT here: segments grow")
			}
			if err := j.append(rawRecs(3, 6)); err != nil {
				t.Fatal(err)
			}
			path := j.f.Name()
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			acked := j.size
			if err := j.append(rawRecs(6, 46)); err != nil { // the write the power cut tears
				t.Fatal(err)
			}
			after, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// The pages the write changed; its first is lost, the others reached the disk.
			var pages []int
			for p := 0; p < len(after); p += pageSize {
				if !bytes.Equal(before[p:min(p+pageSize, len(before))], after[p:min(p+pageSize, len(after))]) {
					pages = append(pages, p)
				}
			}
			if len(pages) < 2 || int64(pages[0]) > acked+pageSize {
				t.Fatalf("the torn write changed pages %v (acknowledged bytes end at %d): want it over two pages", pages, acked)
			}
			j.close()
			crash := bytes.Clone(after)
			copy(crash[pages[0]:pages[0]+pageSize], before[pages[0]:pages[0]+pageSize]) // its first page never written
			if err := os.WriteFile(path, crash, 0o600); err != nil {
				t.Fatal(err)
			}
			healthy := a17NextStart(tl, jdir, key)
			tl.close(t)
			if healthy != nil {
				t.Fatalf("POWER CUT: a torn in-place write (its second page on disk, its first not) made the next start refuse the journal, 6 acknowledged records not folded: %v", healthy)
			}
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 6)
		})
	}
}

// TestAttack17UnkeyedEmptyLastFrame. Promise: a bundle served at /log/batches/ decodes
// (DecodeBundle) and matches its batch entry: the log verifies. Without a journal key an
// empty frame (the disk probe's, after a failed append) is 8 zero bytes. When it is a
// segment's last frame — records appended into the new segment after a failed append
// while the journal error was still set (groups gathered before it), then the probe's
// empty frame before the next group — the segment is closed whole (segment.sum) and
// linked as a v2 bundle; DecodeBundle reads trailing zeros as "torn" and refuses the
// bundle ("cut short or with bytes after its last frame"): the log no longer verifies and
// the batch's records cannot be read back.
//
// Reproduction: openJournal(dir, 100, nil); append(5 records); append(nil); rotate; fold.
// Seen: Verify fails on the bundle. Should be: the log verifies with the 5 records (the
// segment written as a v1 bundle, or DecodeBundle taking a whole empty last frame).
func TestAttack17UnkeyedEmptyLastFrame(t *testing.T) {
	for _, grow := range []bool{true, false} {
		t.Run(map[bool]string{true: "growing", false: "prewritten"}[grow], func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			j, err := openJournalGrowing(jdir, 100, nil, grow)
			if err != nil {
				t.Fatal(err)
			}
			if !grow { // the second segment is the prewritten one
				if _, err := j.rotate(); err != nil {
					t.Fatal(err)
				}
				if !j.direct {
					t.Skip("no O_DIRECT here: segments grow")
				}
			}
			if err := j.append(rawRecs(0, 5)); err != nil {
				t.Fatal(err)
			}
			if err := j.append(nil); err != nil { // the probe's empty frame
				t.Fatal(err)
			}
			seg, err := j.rotate()
			if err != nil {
				t.Fatal(err)
			}
			folder := &Batcher{log: tl.log, bundles: DirBundles{Dir: tl.dir}, maxRecords: 100}
			if err := folder.fold(seg, nil); err != nil {
				t.Fatal(err)
			}
			j.close()
			tl.close(t)
			for name, b := range bundleFiles(t, tl.dir) {
				if _, err := DecodeBundle(b); err != nil {
					t.Errorf("UNREADABLE BUNDLE: batches/%s (%d bytes, a segment closed with an empty last frame) is refused by DecodeBundle: %v", name, len(b), err)
				}
			}
			if t.Failed() {
				return
			}
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 5)
		})
	}
}

// TestAttack17OpenSegmentRemovedUnderLoad. Promise: every acknowledged record is logged
// once, in order, and the log (every bundle) verifies, when the open segment is removed
// from under a running, unkeyed batcher while four submitters keep windows of records in
// flight (its next append fails: the journal error set, the segment abandoned, folded
// from memory; the probe's empty frame starts the next; Barrier folds), five times over.
func TestAttack17OpenSegmentRemovedUnderLoad(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 4096, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir})
	ctx := context.Background()
	var acks a12Acks
	broken := func() string {
		for name, bb := range bundleFiles(t, tl.dir) {
			if _, err := DecodeBundle(bb); err != nil {
				return fmt.Sprintf("batches/%s: %v", name, err)
			}
		}
		return ""
	}
	bad := ""
	for round := 0; round < 5 && bad == ""; round++ {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				var window []func() error
				var ids []string
				resolve := func(keep int) {
					for len(window) > keep {
						if err := window[0](); err == nil {
							acks.add(ids[0])
						}
						window, ids = window[1:], ids[1:]
					}
				}
				for i := 0; ; i++ {
					select {
					case <-stop:
						resolve(0)
						return
					default:
					}
					id := fmt.Sprintf("r%d.g%d.%d", round, g, i)
					f := b.Submit(ctx, a12Event(id))
					window = append(window, func() error { _, err := f(); return err })
					ids = append(ids, id)
					resolve(8)
				}
			})
		}
		n := acks.len()
		waitFor(t, func() bool { return acks.len() > n+50 })
		// The open segment: the lowest-numbered (the highest is the one prepared next).
		segs, _ := filepath.Glob(filepath.Join(jdir, "*", "*.wal"))
		if len(segs) > 0 {
			os.Remove(segs[0])
		}
		waitFor(t, func() bool { return b.Healthy() != nil })
		close(stop)
		wg.Wait()
		waitFor(t, func() bool { return b.Healthy() == nil })
		if _, _, err := b.Barrier(ctx); err != nil {
			t.Fatal(err)
		}
		if bad = broken(); bad != "" {
			t.Logf("round %d", round)
		}
	}
	b.Close()
	tl.close(t)
	if bad != "" {
		t.Fatalf("UNREADABLE BUNDLE: %s", bad)
	}
	a12CheckOnceInOrder(t, a12Logged(t, tl.dir, tl.vkey), acks.ids)
}

// a17SubmitPastHealthCheck is Submit for a caller whose health check ran before the
// journal's append failed and whose record reaches the gathering group after it (the
// window between Submit's b.Healthy() and b.mu.Lock(), which a loaded gateway's many
// request goroutines hit): the rest of SubmitEncoded, as it is.
func a17SubmitPastHealthCheck(b *Batcher, ev Event) Future {
	raw, _ := ev.Marshal()
	b.mu.Lock()
	p := b.cur
	if p == nil {
		p = &pendingBatch{finished: make(chan struct{})}
		b.cur = p
	}
	p.records = append(p.records, store.AuditEvent{TS: ev.TS, Kind: string(ev.Kind), Raw: raw})
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	return func() (uint64, error) { <-p.finished; return 0, p.err }
}

// TestAttack17UnkeyedEmptyLastFrameBatcher is TestAttack17UnkeyedEmptyLastFrame through a
// running, unkeyed batcher, deterministically: the open segment is removed (an outage),
// so the next group's append fails (journal error set, segment abandoned); one record
// whose Submit passed its health check before that is appended to the next segment
// (acknowledged); the probe then appends its empty frame after it and clears the error;
// Barrier folds that segment, closed whole, linked as its bundle. Promise: the log
// verifies with every acknowledged record once, in order. Seen: the bundle is refused by
// DecodeBundle, Verify fails.
func TestAttack17UnkeyedEmptyLastFrameBatcher(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir})
	ctx := context.Background()
	for i := range 5 {
		if _, err := b.Submit(ctx, requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	segs, _ := filepath.Glob(filepath.Join(jdir, "*", "*.wal"))
	if len(segs) == 0 {
		t.Fatal("no segment")
	}
	os.Remove(segs[0]) // the open one (a prepared next one may follow it)
	if _, err := b.Submit(ctx, requestEvent(100))(); err == nil {
		t.Fatal("a record appended to a removed segment was acknowledged")
	}
	if b.Healthy() == nil {
		t.Fatal("healthy after a failed append")
	}
	if _, err := a17SubmitPastHealthCheck(b, requestEvent(5))(); err != nil {
		t.Fatalf("the record gathered before the error showed: %v", err)
	}
	waitFor(t, func() bool { return b.Healthy() == nil }) // the probe's empty frame, durable
	if _, ok, err := b.Barrier(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	b.Close()
	tl.close(t)
	for name, bb := range bundleFiles(t, tl.dir) {
		if _, err := DecodeBundle(bb); err != nil {
			t.Errorf("UNREADABLE BUNDLE: batches/%s (%d bytes) is refused by DecodeBundle: %v", name, len(bb), err)
		}
	}
	if t.Failed() {
		return
	}
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 6)
}

// TestAttack17SwappedSegments. Promise: without the key, records cannot be reordered: two
// unfolded segments of a dead process swapped (renamed into each other's place) are
// refused, or folded in their true order.
func TestAttack17SwappedSegments(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	j, err := openJournal(jdir, 100, a17Key)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i := range 3 {
		if err := j.append(rawRecs(i*10, i*10+10)); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, j.f.Name())
		if i < 2 {
			if _, err := j.rotate(); err != nil {
				t.Fatal(err)
			}
		}
	}
	j.close()
	tmp := paths[0] + ".swap"
	for _, mv := range [][2]string{{paths[0], tmp}, {paths[1], paths[0]}, {tmp, paths[1]}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	healthy := a17NextStart(tl, jdir, a17Key)
	tl.close(t)
	if healthy != nil {
		t.Logf("refused, operator told: %v", healthy)
		return
	}
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 30)
}

// TestAttack17MiddleSegmentRemoved. Promise: without the key, records cannot be dropped
// silently, except a segment's last frames (documented). A dead process's journal holds
// three unfolded segments; the middle one is removed. Nothing binds a segment to the one
// before it (each MAC chain starts afresh from its own name), so the next start folds the
// first and the third and says nothing: 10 acknowledged records gone without a trace.
// (Gaps also arise without an attacker — an empty segment is removed at once, a failed
// start skips its number — so a fix needs the chain carried across segments, e.g. a
// segment's first MAC binding the previous segment's last MAC and count.)
//
// Reproduction: keyed journal, segments 0,1,2 of 10 records each, the process dies,
// rm 0000000000000001.wal. Seen: healthy, 20 records logged. Should be: refused (the
// operator told), or 30.
// Fixed in the twelfth session (journal v4): a segment's header links the one before it
// that held records (number, count, last MAC); one missing whose records are not in the log
// is refused.
func TestAttack17MiddleSegmentRemoved(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	j, err := openJournal(jdir, 100, a17Key)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i := range 3 {
		if err := j.append(rawRecs(i*10, i*10+10)); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, j.f.Name())
		if i < 2 {
			if _, err := j.rotate(); err != nil {
				t.Fatal(err)
			}
		}
	}
	j.close()
	if err := os.Remove(paths[1]); err != nil {
		t.Fatal(err)
	}
	healthy := a17NextStart(tl, jdir, a17Key)
	tl.close(t)
	if healthy != nil {
		t.Logf("refused, operator told: %v", healthy)
		return
	}
	got := loggedRecords(t, tl.dir, tl.vkey)
	if len(got) != 30 {
		t.Fatalf("SILENT DROP: a dead journal's middle segment removed: %d of 30 acknowledged records in the log, the next start healthy", len(got))
	}
}

// TestAttack17PlantedPreparedSegments. Promise: a record that could not be made durable is
// never acknowledged, every acknowledged one is logged once, in order. Someone plants
// prepared-but-empty segments (header, then zeros) at the live process's next segment
// numbers: its preparation and its start fail there (O_EXCL); the groups that hit them are
// refused; later ones go to the next free number; at close the planted files stay, and the
// next start folds them as empty.
func TestAttack17PlantedPreparedSegments(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 5, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key})
	dirs, _ := os.ReadDir(jdir)
	if len(dirs) != 1 {
		t.Fatalf("%d journal directories", len(dirs))
	}
	live := filepath.Join(jdir, dirs[0].Name())
	j := &journal{batch: 5, key: a17Key}
	prepared := append(j.header(), make([]byte, 2*pageSize)...)
	for seq := uint64(2); seq < 6; seq++ {
		if err := os.WriteFile(filepath.Join(live, segmentName(seq)), prepared, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	var acked []int
	for i := range 60 {
		if _, err := b.Submit(ctx, requestEvent(i))(); err == nil {
			acked = append(acked, i)
		} else {
			waitFor(t, func() bool { return b.Healthy() == nil })
		}
	}
	b.Barrier(ctx)
	b.Close()
	if err := a17NextStart(tl, jdir, a17Key); err != nil {
		t.Fatalf("the planted empty segments made the next start refuse: %v", err)
	}
	tl.close(t)
	got := loggedRecords(t, tl.dir, tl.vkey)
	if len(got) != len(acked) {
		t.Fatalf("%d records logged, %d acknowledged", len(got), len(acked))
	}
	for k, i := range acked {
		ev := requestEvent(i)
		if want, _ := ev.Marshal(); !bytes.Equal(got[k], want) {
			t.Fatalf("log record %d is not acknowledged record %d", k, i)
		}
	}
	if entries, _ := os.ReadDir(jdir); len(entries) != 0 {
		t.Fatalf("journal root not empty after the folds: %v", entries)
	}
	t.Logf("%d of 60 acknowledged", len(acked))
}

// TestAttack17CrossFilesystemLink. Promise: every acknowledged record is logged once, in
// order, and every bundle is its name's SHA-256, when a segment cannot be hard-linked into
// the log (the journal on a tmpfs, the log on another file system): the fold writes a v1
// bundle instead, and leaves no temporary behind.
func TestAttack17CrossFilesystemLink(t *testing.T) {
	jdir := filepath.Join(tmpfsDir(t, "64m"), "journal")
	tl := openTestLog(t)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 10, MaxDelay: time.Millisecond, FoldEvery: 5 * time.Millisecond, Journal: jdir, JournalKey: a17Key})
	ctx := context.Background()
	var fs []Future
	for i := range 120 {
		fs = append(fs, b.Submit(ctx, requestEvent(i)))
		if i%7 == 0 {
			b.CommitNow()
		}
	}
	for i, f := range fs {
		if _, err := f(); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	if _, ok, err := b.Barrier(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	b.Close()
	tl.close(t)
	v2, v1 := checkBundles(t, tl.dir)
	if v2 != 0 || v1 < 12 {
		t.Fatalf("%d bundles linked, %d written: want every bundle written (no link across file systems)", v2, v1)
	}
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 120)
	if entries, _ := os.ReadDir(jdir); len(entries) != 0 {
		t.Fatalf("journal root not empty after Close: %v", entries)
	}
}

// a17LeftGoroutine is a journal function some goroutine is still in, and every stack, once
// the goroutines on their way out have had 30 s to leave; "" when none is.
func a17LeftGoroutine() (string, string) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		left := ""
		for _, fn := range []string{"audit.prepareSegment", "audit.(*journal).prepareNext", "audit.(*Batcher).foldLoop", "audit.(*Batcher).runJournal"} {
			if strings.Contains(stacks, fn) {
				left = fn
			}
		}
		if left == "" || time.Now().After(deadline) {
			return left, stacks
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// a17OpenFiles is the files this process has open under dir.
func a17OpenFiles(dir string) []string {
	var out []string
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		if p, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(p, dir) {
			out = append(out, p)
		}
	}
	return out
}

// TestAttack17NoLeaksAfterClose. Promise: after Close no goroutine of the journal is left
// (the next segment's background preparation included), no file of it open, the prepared
// next segment removed and the directory with it — after many rotations under concurrent
// submitters, Barrier and CommitNow, each Close racing the others.
func TestAttack17NoLeaksAfterClose(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	for round := range 3 {
		b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 7, MaxDelay: time.Millisecond, FoldEvery: 2 * time.Millisecond, Journal: jdir, JournalKey: a17Key})
		ctx := context.Background()
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 40 {
					b.Submit(ctx, a12Event(fmt.Sprintf("r%d.g%d.%d", round, g, i)))()
					switch i % 9 {
					case 3:
						b.CommitNow()
					case 5:
						b.Barrier(ctx)
					}
				}
			})
		}
		if round == 2 { // Close while they submit
			time.Sleep(5 * time.Millisecond)
		} else {
			wg.Wait()
		}
		b.Close()
		wg.Wait()
		if open := a17OpenFiles(jdir); len(open) != 0 {
			t.Fatalf("round %d: journal files still open after Close: %v", round, open)
		}
		if entries, err := os.ReadDir(jdir); err != nil || len(entries) != 0 {
			t.Fatalf("round %d: journal root after Close: %v %v (a prepared segment left?)", round, entries, err)
		}
		// A goroutine that closed done in its last deferred call may still be on its way out
		// when Close returns: it must be gone soon after, not at once (CI saw runJournal
		// runnable at its closing brace). Parked in a loop is what fails.
		if fn, stacks := a17LeftGoroutine(); fn != "" {
			t.Fatalf("round %d: a goroutine in %s after Close:\n%s", round, fn, stacks)
		}
	}
	tl.close(t)
	loggedRecords(t, tl.dir, tl.vkey) // the log verifies
}

// a17Segment is a whole closed segment with the given groups as frames (as appendGroups
// writes them), keyed or not.
func a17Segment(groups [][][]byte, key []byte) []byte {
	j := &journal{batch: 100, key: key}
	b := j.header()
	mac := firstMAC(key, "d/0000000000000000.wal")
	for _, g := range groups {
		b = append(b, make([]byte, (pageSize-len(b)%pageSize)%pageSize)...) // v4: a write from a page boundary
		start := len(b)
		b = append(b, make([]byte, frameHeader)...)
		for _, r := range g {
			b = binary.AppendUvarint(b, uint64(len(r)))
			b = append(b, r...)
		}
		b, mac = sealFrame(b, start, key, mac)
	}
	return b
}

// FuzzAttack17SegmentIsItsBundle. Promise: a segment the journal closed whole is its batch's
// bundle as it stands — DecodeBundle gives back exactly its records, in order, and
// segment.sum is its file's SHA-256. The input is the groups' sizes (a byte each, mod 6;
// 0: an empty frame, the disk probe's) and, in the first byte, whether frames are keyed.
// The seed "unkeyed, 3 records, then the probe's frame" fails: see
// TestAttack17UnkeyedEmptyLastFrame.
func FuzzAttack17SegmentIsItsBundle(f *testing.F) {
	f.Add([]byte{1, 2, 0, 3})
	f.Add([]byte{1, 3, 0})
	f.Add([]byte{0, 1, 5, 2})
	f.Add([]byte{0, 3, 0}) // unkeyed; the last frame empty
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 2 || len(in) > 40 {
			return
		}
		var key []byte
		if in[0]&1 == 1 {
			key = a17Key
		}
		j, err := openJournalGrowing(t.TempDir(), 100, key, true)
		if err != nil {
			t.Fatal(err)
		}
		defer j.close()
		n := 0
		for _, c := range in[1:] {
			k := int(c % 6)
			if err := j.append(rawRecs(n, n+k)); err != nil {
				t.Fatal(err)
			}
			n += k
		}
		seg, err := j.rotate()
		if err != nil {
			t.Fatal(err)
		}
		if seg == nil {
			return
		}
		b, err := os.ReadFile(seg.path)
		if err != nil {
			t.Fatal(err)
		}
		if seg.sum == nil && key == nil && allZero(b[len(b)-8:]) {
			// Ends with an unkeyed empty frame (zeros): not linked as it stands, written
			// as a v1 bundle of its records instead (the fix for TestAttack17UnkeyedEmptyLastFrame).
			return
		}
		if sum := sha256.Sum256(b); seg.sum == nil || !bytes.Equal(sum[:], seg.sum) {
			t.Fatal("a segment closed whole has no SHA-256, or not its file's")
		}
		recs, err := DecodeBundle(b)
		if err != nil {
			t.Fatalf("groups %v (keyed %v): a segment closed whole is refused as a bundle: %v", in[1:], key != nil, err)
		}
		if len(recs) != n {
			t.Fatalf("%d records decoded, want %d", len(recs), n)
		}
		for i, r := range recs {
			ev := requestEvent(i)
			if want, _ := ev.Marshal(); !bytes.Equal(r, want) {
				t.Fatalf("record %d differs", i)
			}
		}
	})
}

// a17StrictDecode is an independent reading of a bundle: v1 records, or a v2 segment that is
// exactly a header and whole, CRC-correct frames (MACs unchecked), every frame's payload
// exactly whole records. ok false: not such a bundle.
func a17StrictDecode(b []byte) (recs [][]byte, ok bool) {
	records := func(p []byte) bool {
		for len(p) > 0 {
			l, k := binary.Uvarint(p)
			if k <= 0 || l > MaxEventSize || l > uint64(len(p)-k) {
				return false
			}
			recs = append(recs, p[k:k+int(l)])
			p = p[k+int(l):]
		}
		return true
	}
	if rest, v1 := bytes.CutPrefix(b, []byte(bundleMagic)); v1 {
		return recs, records(rest) && len(recs) <= MaxBatch
	}
	hdr, fh := journalHeader, frameHeader
	rest, ok := bytes.CutPrefix(b, []byte(journalMagic))
	if !ok {
		hdr, fh = journalHeaderV3, frameHeaderV3
		if rest, ok = bytes.CutPrefix(b, []byte(journalMagicV3)); !ok {
			if rest, ok = bytes.CutPrefix(b, []byte(journalMagicV2)); !ok {
				return nil, false
			}
		}
	}
	if len(b) < hdr {
		return nil, false
	}
	batch, flags := binary.LittleEndian.Uint32(rest), rest[4]
	paged := fh == frameHeader && flags&2 != 0
	if fh == frameHeader {
		flags &^= 2
	}
	if batch < 1 || batch > MaxBatch || flags > 1 {
		return nil, false
	}
	macLen := int(flags) * sha256.Size
	for rest = b[hdr:]; len(rest) > 0; {
		// Paged: after a group, zeros to the next page boundary, where the next group starts.
		off := len(b) - len(rest)
		if next := (off + pageSize - 1) / pageSize * pageSize; paged && next != off && next <= len(b) && allZero(b[off:next]) && next < len(b) {
			rest = b[next:]
			continue
		}
		if len(rest) < fh {
			return nil, false
		}
		m := uint64(binary.LittleEndian.Uint32(rest))
		if fh == frameHeader && crc32.Checksum(rest[:4], castagnoli) != binary.LittleEndian.Uint32(rest[4:]) {
			return nil, false
		}
		if uint64(fh)+m+uint64(macLen) > uint64(len(rest)) {
			return nil, false
		}
		payload := rest[fh : uint64(fh)+m]
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(rest[fh-4:]) || !records(payload) {
			return nil, false
		}
		rest = rest[fh+int(m)+macLen:]
	}
	return recs, len(recs) <= MaxBatch
}

// FuzzAttack17DecodeBundleStrict. Promise: DecodeBundle never accepts anything but exactly
// whole frames (or a well-formed v1 bundle): whatever it accepts, the independent strict
// reading accepts too, with the same records in the same order.
func FuzzAttack17DecodeBundleStrict(f *testing.F) {
	r := [][]byte{[]byte(`{"a":1}`), []byte(`{"b":2}`)}
	f.Add(a17Segment([][][]byte{r[:1], nil, r[1:]}, a17Key))
	f.Add(a17Segment([][][]byte{r, r[:1]}, nil))
	f.Add(a17Segment([][][]byte{nil}, nil))
	f.Add(append(a17Segment([][][]byte{r}, nil), make([]byte, 16)...))
	v1, _ := EncodeBundle(r)
	f.Add(v1)
	f.Add(legacySegment(journalMagicV3, [][]store.AuditEvent{rawRecs(0, 2), nil}, a17Key, "d/0000000000000000.wal"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeBundle(b)
		if err != nil {
			return
		}
		want, ok := a17StrictDecode(b)
		if !ok {
			t.Fatalf("DecodeBundle accepted a bundle that is not exactly whole frames / records (%d records): %q", len(got), b)
		}
		if len(got) != len(want) {
			t.Fatalf("DecodeBundle: %d records, the strict reading %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("record %d differs", i)
			}
		}
	})
}

// knownOpen skips a test that reproduces a broken promise not fixed yet (named in the issue's
// closing note and docs/DESIGN.md), unless STRONGROOM_KNOWN_OPEN=1: then it runs, and fails
// until the promise is kept.
func knownOpen(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("STRONGROOM_KNOWN_OPEN") != "1" {
		t.Skip("KNOWN OPEN, not fixed yet: " + why + " (STRONGROOM_KNOWN_OPEN=1 runs it)")
	}
}
