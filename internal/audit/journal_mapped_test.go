package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/sys/unix"
)

// TestWrittenJournal: written records (journal_mapped.go) are in the open segment's file
// when their futures resolve — read back through the file, not our memory —, reach the log
// in order, one batch per MaxRecords, are searchable, and the log verifies.
func TestWrittenJournal(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir,
		JournalKey: a17Key, Written: true, SyncEvery: time.Hour})
	ctx := context.Background()
	size0, _ := tl.log.IntegratedSize(ctx)
	for i := range 150 {
		if _, err := b.Submit(ctx, requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	// No sync has run (SyncEvery an hour): the 50 records of the open segment are read
	// from its shadow (or the page cache), as a process started after a kill -9 would.
	dirs, _ := filepath.Glob(filepath.Join(jdir, "*"))
	journaled := 0
	for _, d := range dirs {
		segs, err := readSegments(d, a17Key)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range segs {
			journaled += len(s.recs)
		}
	}
	if journaled < 50 {
		t.Fatalf("%d records in the journal's files after 150 resolved, want at least the 50 not folded", journaled)
	}
	idx, ok, err := b.Barrier(ctx)
	if err != nil || !ok {
		t.Fatalf("barrier: %d %v %v", idx, ok, err)
	}
	if size, _ := tl.log.IntegratedSize(ctx); idx != size-1 || size-size0 != 2 {
		t.Fatalf("after the barrier the log grew from %d to %d (barrier's batch %d), want two batch entries (100 + 50)", size0, size, idx)
	}
	var fs []Future
	for i := range 30 {
		fs = append(fs, b.Submit(ctx, requestEvent(150+i)))
	}
	journalEnd(t, tl, b, jdir, fs)
}

// writtenSegment writes n records into a packed segment and returns its file's bytes as a
// crash would leave them (the whole allocation, zeros after the frames), with the frames'
// offsets.
func writtenSegment(t *testing.T, n int) (b []byte, path string, frames []int) {
	t.Helper()
	j, err := openJournalWith(&journal{root: t.TempDir(), batch: 100, key: a17Key, packed: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	for i := range n {
		frames = append(frames, int(j.size))
		if _, err := j.writeMapped(rawRecs(i, i+1)[0], 100); err != nil {
			t.Fatal(err)
		}
	}
	path = j.f.Name()
	if j.mm != nil { // the shadow holds them (the segment: what was synced)
		return append([]byte(nil), j.mm...), path, frames
	}
	b, err = os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b, path, frames
}

// TestPackedSegmentCrash: what a host crash can leave of a packed segment — its unsynced
// pages lost in any order (zeros), a frame cut — ends the segment there, and bytes after
// that are not zeros are reported (lost); a flipped byte anywhere ends it the same way
// (the last segment cannot tell damage from a crash: a later one's link can, below);
// bytes where the header's page must hold zeros are refused.
func TestPackedSegmentCrash(t *testing.T) {
	const n = 40
	b, path, frames := writtenSegment(t, n)
	if frames[0] != pageSize {
		t.Fatalf("first frame at %d, want %d", frames[0], pageSize)
	}
	sc, err := scanSegment(b, path, a17Key, false)
	if err != nil || len(sc.recs) != n || sc.lost {
		t.Fatalf("whole: %d records, lost %v, %v", len(sc.recs), sc.lost, err)
	}
	wantRecs := func(name string, b []byte, want int, lost bool) {
		t.Helper()
		sc, err := scanSegment(b, path, a17Key, false)
		if err != nil || len(sc.recs) != want || sc.lost != lost {
			t.Fatalf("%s: %d records, lost %v, %v; want %d, lost %v", name, len(sc.recs), sc.lost, err, want, lost)
		}
		for i, r := range sc.recs {
			if string(r) != string(rawRecs(i, i+1)[0].Raw) {
				t.Fatalf("%s: record %d is not the %dth written", name, i, i)
			}
		}
	}
	// The frames' second page lost (zeros), the rest kept: records before it, the rest lost.
	second := pageSize * 2
	k := 0
	for k < n && frames[k]+frameHeader <= second {
		k++
	}
	if k >= n-1 {
		t.Fatalf("%d records fit in a page: make them longer", k)
	}
	c := append([]byte(nil), b...)
	clear(c[second : second+pageSize])
	wantRecs("a lost page", c, k-1, true)
	// Cut inside frame 10 (the file's size kept by a crash, or cut by hand): ten records.
	// Cut inside frame 10 (by hand: a crash keeps the allocation's size, and closing cuts
	// after a frame), or zeros from inside it (its last page lost): ten records, the rest
	// reported. Zeros from its start are what an unsynced tail most often is: nothing to
	// report.
	for _, cut := range []int{frames[10] + 1, frames[10] + frameHeader + 3, frames[11] - 1} {
		wantRecs("cut", append([]byte(nil), b[:cut]...), 10, true)
		c = append([]byte(nil), b...)
		clear(c[cut:])
		wantRecs("zeros from inside a frame", c, 10, true)
	}
	wantRecs("cut after a frame", append([]byte(nil), b[:frames[10]]...), 10, false)
	c = append([]byte(nil), b...)
	clear(c[frames[10]:])
	wantRecs("zeros from a frame's start", c, 10, false)
	// A flipped byte in frame 20's payload, MAC or header: twenty records, the rest lost.
	for _, at := range []int{frames[20], frames[20] + 5, frames[20] + frameHeader + 4, frames[21] - 1} {
		c = append([]byte(nil), b...)
		c[at] ^= 0x20
		wantRecs("flipped byte", c, 20, true)
	}
	c = append([]byte(nil), b...)
	c[journalHeader+7] = 1
	if _, err := scanSegment(c, path, a17Key, false); err == nil {
		t.Fatal("a byte between the header and the first frame accepted")
	}
	// Without the key, or under another, the segment is refused (not read as a crash).
	if _, err := scanSegment(b, path, nil, false); err == nil {
		t.Fatal("a keyed packed segment read without a key")
	}
	// Under another name (moved, or a served bundle put back) its first MAC fails: no
	// record is read (lost: the ALERT), none replayed.
	if sc, _ := scanSegment(b, filepath.Join(filepath.Dir(path), "0000000000000009.wal"), a17Key, false); len(sc.recs) != 0 {
		t.Fatalf("a segment read under another name kept %d records (its first MAC binds the name)", len(sc.recs))
	}
}

// TestWrittenDeadJournalLinks: a killed process's packed segments fold (all of them, the
// open one read from what the process wrote, nothing synced); a closed segment that lost
// its last frames while a later one names it is refused, as paged ones are.
func TestWrittenDeadJournalLinks(t *testing.T) {
	for _, damage := range []bool{false, true} {
		tl, jdir, j := openWrittenJournal(t)
		var first string
		for i := range 250 {
			seg, err := j.writeMapped(store.AuditEvent{Raw: mustMarshal(t, requestEvent(i))}, 100)
			if err != nil {
				t.Fatal(err)
			}
			if seg != nil && first == "" {
				first = seg.path
			}
		}
		writtenKill(j) // nothing closed, synced or cut
		if damage {
			b, _ := os.ReadFile(first)
			os.WriteFile(first, b[:len(b)-40], 0o600) // the last frame's MAC cut
		}
		b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
		herr := b.Healthy()
		size, _ := tl.log.IntegratedSize(context.Background())
		b.Close()
		tl.close(t)
		if damage {
			if herr == nil || size != 0 {
				t.Fatalf("a segment that lost its last frame before a later one: healthy %v, %d entries folded", herr, size)
			}
			continue
		}
		if herr != nil {
			t.Fatal(herr)
		}
		wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 250)
	}
}

func mustMarshal(t *testing.T, ev Event) []byte {
	t.Helper()
	raw, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestWrittenSegmentCut: the open segment cut from under the process — the segment (the
// sync notices) or its shadow (the next store faults: SIGBUS) — refuses records, not the
// process; the probe starts a new segment, records are taken again, and every acknowledged
// one is in the log (those before the cut folded from memory), and the log verifies.
func TestWrittenSegmentCut(t *testing.T) {
	for _, what := range []string{"segment", "shadow"} {
		t.Run(what, func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: MaxBatch, FoldEvery: time.Hour, Journal: jdir,
				JournalKey: a17Key, Written: true, SyncEvery: 5 * time.Millisecond})
			ctx := context.Background()
			n := 0
			submit := func() error {
				_, err := b.Submit(ctx, requestEvent(n))()
				if err == nil {
					n++
				} else if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("record into a cut segment: %v", err)
				}
				return err
			}
			for range 10 {
				if err := submit(); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, func() bool { // synced once: the cut is below what the sync knows
				b.j.smu.Lock()
				defer b.j.smu.Unlock()
				return b.j.synced == b.j.size
			})
			b.j.wmu.Lock()
			cut := b.j.f.Name()
			if what == "shadow" {
				if b.j.shadow == nil {
					b.j.wmu.Unlock()
					t.Skip("no tmpfs for shadows")
				}
				cut = b.j.shadow.Name()
			}
			b.j.wmu.Unlock()
			if err := os.Truncate(cut, 0); err != nil {
				t.Fatal(err)
			}
			// The shadow: the next store faults. The segment: the next sync (5 ms) notices —
			// records come a millisecond apart meanwhile, all folded all the same.
			for submit() == nil {
				if n > MaxBatch/2 {
					t.Fatal("records acknowledged on and on after their segment was cut")
				}
				time.Sleep(time.Millisecond)
			}
			waitFor(t, func() bool { return b.Healthy() == nil })
			for range 10 {
				if err := submit(); err != nil {
					t.Fatal(err)
				}
			}
			b.Close()
			tl.close(t)
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), n)
		})
	}
}

// packedSeed is an unkeyed packed segment of three records, cut to its frames (a seed of
// FuzzParseSegment).
func packedSeed() []byte {
	seed := (&journal{batch: 100, packed: true}).header()
	seed = append(seed, make([]byte, pageSize-len(seed))...)
	for i := range 3 {
		start := len(seed)
		seed = append(seed, make([]byte, frameHeader)...)
		raw := rawRecs(i, i+1)[0].Raw
		seed = append(binary.AppendUvarint(seed, uint64(len(raw))), raw...)
		seed, _ = sealFrame(seed, start, nil, nil)
	}
	return seed
}

// oldPackedSeed is packedSeed as written before flagLeafMAC (flagPacked alone).
func oldPackedSeed() []byte {
	seed := packedSeed()
	seed[len(journalMagic)+4] = flagPacked
	return seed
}

// TestPackedSeed: the fuzz seeds are packed segments of three records.
func TestPackedSeed(t *testing.T) {
	for _, seed := range [][]byte{packedSeed(), oldPackedSeed()} {
		if recs, _, err := parseSegment(seed, "fuzz", nil); err != nil || len(recs) != 3 {
			t.Fatalf("seed: %d records, %v", len(recs), err)
		}
	}
}

// openWrittenJournal opens a test log and a keyed written journal in its "journal"
// directory (batches of 100), whose shadows are removed at the test's end.
func openWrittenJournal(t *testing.T) (*testLog, string, *journal) {
	t.Helper()
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) }) // a refused directory's
	j, err := openJournalWith(&journal{root: jdir, batch: 100, key: a17Key, packed: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return tl, jdir, j
}

// writtenKill leaves j as kill -9 leaves a written journal: its shadow as it is.
func writtenKill(j *journal) {
	if j.mm != nil {
		unix.Munmap(j.mm)
		j.shadow.Close()
		j.mm, j.shadow = nil, nil
	}
	a18Kill(j)
}

// TestWrittenShadowRead: a killed process's open segment is read from its shadow (the
// records after the last sync are there only); a shadow that disagrees with what its
// segment synced (a byte flipped: its frame fails, fewer records) refuses the directory;
// a shadow whose header is another segment's and that holds no frame (a closed segment's
// shadow kept for the next one, a crash before its rewriting) is ignored (the disk's
// records are folded); one whose header was edited while frames follow it (its frames
// fail, whole: damage — outside round 50) refuses the directory.
func TestWrittenShadowRead(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	for _, c := range []string{"as left", "flipped", "another header", "kept"} {
		t.Run(c, func(t *testing.T) {
			tl, jdir, j := openWrittenJournal(t)
			for i := range 30 {
				if _, err := j.writeMapped(store.AuditEvent{Raw: mustMarshal(t, requestEvent(i))}, 100); err != nil {
					t.Fatal(err)
				}
				if i == 19 { // twenty synced to the disk, ten in the shadow only
					if err := j.syncMapped(); err != nil {
						t.Fatal(err)
					}
				}
			}
			shadow := j.shadowPath
			writtenKill(j)
			sb, err := os.ReadFile(shadow)
			if err != nil {
				t.Fatal(err)
			}
			want := 30
			switch c {
			case "flipped":
				sb[pageSize+frameHeader+5] ^= 1
			case "another header":
				sb[journalHeader-1] ^= 1 // the link's MAC: another segment's header
			case "kept":
				sb[journalHeader-1] ^= 1
				clear(sb[pageSize:]) // no frame: as a kept shadow's, renamed, not yet rewritten
				want = 20
			}
			if err := os.WriteFile(shadow, sb, 0o600); err != nil {
				t.Fatal(err)
			}
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
			herr := b.Healthy()
			size, _ := tl.log.IntegratedSize(context.Background())
			b.Close()
			tl.close(t)
			if c == "flipped" || c == "another header" {
				if herr == nil || size != 0 {
					t.Fatalf("a shadow that disagrees with its segment: healthy %v, %d entries", herr, size)
				}
				return
			}
			if herr != nil {
				t.Fatal(herr)
			}
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), want)
			if _, err := os.Stat(shadow); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the folded segment's shadow is left: %v", err)
			}
		})
	}
}

// TestSweepShadows: the shadows of a journal whose directory is gone are kept
// ShadowOrphanGrace after a sweep first finds it gone (the journal may have moved: its
// next start reads them), then removed; a root without shadows goes at once; a journal
// found again has its mark dropped; those of a live one are never touched.
func TestSweepShadows(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	gone, kept, back, empty := filepath.Join(t.TempDir(), "gone"), filepath.Join(t.TempDir(), "kept"),
		filepath.Join(t.TempDir(), "back"), filepath.Join(t.TempDir(), "empty")
	for _, root := range []string{gone, kept, back, empty} {
		j, err := openJournalWith(&journal{root: root, batch: 100, packed: true}, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(shadowRootAt(resolvedPath(root))) })
		if root == empty {
			j.close() // a clean close: no shadow left, only the root's marker
			continue
		}
		if _, err := j.writeMapped(rawRecs(0, 1)[0], 100); err != nil {
			t.Fatal(err)
		}
		writtenKill(j)
	}
	roots := map[string]string{}
	for _, root := range []string{gone, kept, back, empty} {
		roots[root] = shadowRootFor(root)
	}
	aside := back + ".aside"
	if err := os.Rename(back, aside); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{gone, empty} {
		if err := os.RemoveAll(root); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(roots[empty], 0o700); err != nil { // as a dead process's root can be left
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(roots[empty], "journal"), []byte(resolvedPath(empty)), 0o600); err != nil {
		t.Fatal(err)
	}
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }
	sweepShadows(nil)
	if exists(roots[empty]) {
		t.Error("a shadow root without shadows whose journal is gone was kept")
	}
	for _, root := range []string{gone, back} {
		if !exists(filepath.Join(roots[root], shadowGoneMarker)) {
			t.Fatalf("%s: the shadows of a journal gone at the first sweep are not kept and marked (the journal may have moved)", filepath.Base(root))
		}
	}
	if exists(filepath.Join(roots[kept], shadowGoneMarker)) || !exists(filepath.Join(roots[kept], "journal")) {
		t.Fatal("the shadows of a journal still there were marked or removed")
	}
	// The journal put back; then the grace past for the gone one (and for the back one's
	// mark, were it kept).
	if err := os.Rename(aside, back); err != nil {
		t.Fatal(err)
	}
	sweepShadows(nil)
	if exists(filepath.Join(roots[back], shadowGoneMarker)) {
		t.Error("the mark of a journal found again was kept")
	}
	old := time.Now().Add(-ShadowOrphanGrace - time.Minute)
	for _, root := range []string{gone, back} {
		os.Chtimes(filepath.Join(roots[root], shadowGoneMarker), old, old) // back's: none
	}
	sweepShadows(nil)
	if exists(roots[gone]) {
		t.Fatal("the shadows of a journal gone ShadowOrphanGrace were left")
	}
	for _, root := range []string{kept, back} {
		if !exists(filepath.Join(roots[root], "journal")) {
			t.Fatalf("%s: the shadows of a journal still there were removed", filepath.Base(root))
		}
	}
}

// TestShadowRootNotTrusted: a shadow root someone else could write (here: made ahead with
// mode 0755 — another user's would be refused the same) is not used: records are written
// with pwrite and still reach the log; a shadow planted in it is not read.
func TestShadowRootNotTrusted(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	if err := os.MkdirAll(jdir, 0o700); err != nil {
		t.Fatal(err)
	}
	root := shadowRootAt(resolvedPath(jdir))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(root, 0o755) // past the umask
	t.Cleanup(func() { os.RemoveAll(root) })
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
	ctx := context.Background()
	for i := range 10 {
		if _, err := b.Submit(ctx, requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	b.j.wmu.Lock()
	shadowed := b.j.mm != nil
	b.j.wmu.Unlock()
	if shadowed {
		t.Fatal("records written into a shadow under a root others can write")
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Fatalf("the untrusted root was written: %v", ents)
	}
	b.Close()
	tl.close(t)
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 10)
}

// TestRequestRecordsModeMetric: the gauges strongroom_audit_request_records_written and
// _shadowed say how request records are made durable — written into a shadow, written
// with pwrite (no tmpfs), or synced (both 0).
func TestRequestRecordsModeMetric(t *testing.T) {
	for _, c := range []struct {
		name              string
		written, noTmpfs  bool
		wantW, wantShadow bool
	}{
		{"written", true, false, true, ShadowBase != ""},
		{"written without tmpfs", true, true, true, false},
		{"synced", false, false, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.noTmpfs {
				defer func(s string) { ShadowBase = s }(ShadowBase)
				ShadowBase = ""
			}
			tl := openTestLog(t)
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{Journal: filepath.Join(tl.dir, "journal"), JournalKey: a17Key, Written: c.written})
			if _, err := b.Submit(context.Background(), requestEvent(0))(); err != nil {
				t.Fatal(err)
			}
			if w, sh := tl.log.requestRecordsMode(); w != c.wantW || sh != c.wantShadow {
				t.Fatalf("written %v shadowed %v, want %v %v", w, sh, c.wantW, c.wantShadow)
			}
			b.Close()
			if w, _ := tl.log.requestRecordsMode(); w {
				t.Fatal("still written after Close")
			}
		})
	}
}

// TestLeafMAC: a packed segment's frames hold one record each, their MACs chained over the
// records' RFC 6962 leaf hashes (flagLeafMAC), and the writer keeps those leaves for the
// fold. Built here with the key (what an attacker without it cannot): a frame of two
// records, or one MACed over its bytes (the rule before the flag), ends the segment there
// (lost); a segment of the rule before the flag (flagPacked alone) is still read whole.
func TestLeafMAC(t *testing.T) {
	const n = 12
	b, path, frames := writtenSegment(t, n)
	if flags := b[len(journalMagic)+4]; flags != flagKeyed|flagPacked|flagLeafMAC {
		t.Fatalf("a written segment's flags %#x", flags)
	}
	raw := func(i int) []byte { return rawRecs(i, i+1)[0].Raw }
	leaf := func(r []byte) []byte { l := sha256.Sum256(append([]byte{0}, r...)); return l[:] }
	// frame appends a frame of recs with the MAC macOf(payload) chained from prev.
	frame := func(seg, prev []byte, macOf func(payload []byte) []byte, recs ...[]byte) ([]byte, []byte) {
		start := len(seg)
		seg = append(seg, make([]byte, frameHeader)...)
		for _, r := range recs {
			seg = append(binary.AppendUvarint(seg, uint64(len(r))), r...)
		}
		seg, _ = sealFrame(seg, start, nil, nil)
		mac := nextMAC(a17Key, prev, macOf(seg[start+frameHeader:]))
		return append(seg, mac...), mac
	}
	byLeaf := func(p []byte) []byte { _, k := binary.Uvarint(p); return leaf(p[k:]) }
	byBytes := func(p []byte) []byte { return p }
	sc, err := scanSegment(b[:frames[5]], path, a17Key, false)
	if err != nil || len(sc.recs) != 5 {
		t.Fatalf("first five frames: %d records, %v", len(sc.recs), err)
	}
	prev := sc.ends[len(sc.ends)-1].mac[:]
	for _, c := range []struct {
		name  string
		macOf func([]byte) []byte
		recs  [][]byte
		want  int
	}{
		{"one record, MAC over its leaf", byLeaf, [][]byte{raw(5)}, 6},
		{"one record, MAC over its bytes", byBytes, [][]byte{raw(5)}, 5},
		{"two records, MAC over the frame's bytes", byBytes, [][]byte{raw(5), raw(6)}, 5},
		{"two records, MAC over the first's leaf", byLeaf, [][]byte{raw(5), raw(6)}, 5},
	} {
		seg, _ := frame(append([]byte(nil), b[:frames[5]]...), prev, c.macOf, c.recs...)
		sc, err := scanSegment(seg, path, a17Key, false)
		if err != nil || len(sc.recs) != c.want || sc.lost != (c.want == 5) {
			t.Fatalf("%s: %d records, lost %v, %v; want %d", c.name, len(sc.recs), sc.lost, err, c.want)
		}
	}
	// The length in a longer form than the shortest (the MAC over the leaf does not cover
	// it: the bytes would not be what was written; round 33): the segment ends there too.
	long := append([]byte(nil), b[:frames[5]]...)
	start := len(long)
	long = append(long, make([]byte, frameHeader)...)
	v := binary.AppendUvarint(nil, uint64(len(raw(5))))
	v[len(v)-1] |= 0x80
	long = append(append(long, append(v, 0)...), raw(5)...) // the same value, a byte longer
	long, _ = sealFrame(long, start, nil, nil)
	long = append(long, nextMAC(a17Key, prev, leaf(raw(5)))...)
	if sc, err := scanSegment(long, path, a17Key, false); err != nil || len(sc.recs) != 5 || !sc.lost {
		t.Fatalf("a frame whose length is not in its shortest form: %d records, lost %v, %v", len(sc.recs), sc.lost, err)
	}
	// The rule before the flag: MACs over the frames' bytes, flagPacked alone.
	old := append([]byte(nil), b[:journalHeader]...)
	old[len(journalMagic)+4] = flagKeyed | flagPacked
	mac := firstMAC(a17Key, macName(filepath.Dir(path), filepath.Base(path))+string(old))
	old = append(old, make([]byte, pageSize-len(old))...)
	for i := range 3 {
		old, mac = frame(old, mac, byBytes, raw(i))
	}
	if sc, err := scanSegment(old, path, a17Key, false); err != nil || len(sc.recs) != 3 || sc.lost {
		t.Fatalf("a segment of the rule before flagLeafMAC: %d records, lost %v, %v", len(sc.recs), sc.lost, err)
	}
	// The writer's leaves are its records' (the fold's Merkle root is made of them).
	j, err := openJournalWith(&journal{root: t.TempDir(), batch: 100, key: a17Key, packed: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	var raws [][]byte
	for i := range n {
		if _, err := j.writeMapped(rawRecs(i, i+1)[0], 100); err != nil {
			t.Fatal(err)
		}
		raws = append(raws, raw(i))
	}
	for i, l := range j.leaves {
		if !bytes.Equal(l[:], leaf(raws[i])) {
			t.Fatalf("leaf %d is not record %d's", i, i)
		}
	}
	if len(j.leaves) != n || !bytes.Equal(leavesRoot(j.leaves), BatchRoot(raws)) {
		t.Fatalf("%d leaves kept for %d records, or their root is not the records'", len(j.leaves), n)
	}
}

// TestFoldLeaves: a fold makes each batch's Merkle root from the leaf hashes its writer
// kept only while there is one a record (trimmed with them, batch by batch); else from the
// records — a root from misaligned leaves would not be the bundle's, and the log would
// fail to verify.
func TestFoldLeaves(t *testing.T) {
	tl := openTestLog(t)
	recs := rawRecs(0, 30)
	leaves := make([][sha256.Size]byte, len(recs))
	for i, r := range recs {
		leaves[i] = sha256.Sum256(append([]byte{0}, r.Raw...))
	}
	folder := &Batcher{log: tl.log, bundles: DirBundles{Dir: tl.dir}, maxRecords: 20}
	for _, seg := range []*segment{
		{recs: recs[0:10], leaves: leaves[0:10], batch: 4},   // paired: batches of 4, 4, 2
		{recs: recs[10:20], leaves: leaves[11:20], batch: 4}, // one short (and shifted)
		{recs: recs[20:30], leaves: leaves[20:30], batch: 3},
	} {
		seg.path = filepath.Join(t.TempDir(), "0000000000000000.wal")
		if err := folder.fold(seg, nil); err != nil {
			t.Fatal(err)
		}
	}
	tl.close(t)
	got := loggedRecords(t, tl.dir, tl.vkey) // verifies every batch's root against its bundle
	if len(got) != 30 {
		t.Fatalf("%d records in the log, want 30", len(got))
	}
	wantInOrder(t, got, 30)
}

// TestReadRegular: the files a process made and someone with its directory could replace
// (shadows, shadow roots' markers, dead segments, bundles, a replica's kept entries and
// floor) are read only as regular files of bounded size: a FIFO, a link or a file over the
// bound is refused at once (rounds 32, 33: a FIFO hung a start, a sparse 1 TiB file
// crashed it).
func TestReadRegular(t *testing.T) {
	d := t.TempDir()
	reg, fifo, link, big := filepath.Join(d, "reg"), filepath.Join(d, "fifo"), filepath.Join(d, "link"), filepath.Join(d, "big")
	if err := os.WriteFile(reg, []byte("twelve bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(reg, link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(big, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, 1<<40); err != nil {
		t.Skipf("no sparse files here: %v", err)
	}
	if b, err := readRegular(reg, 12); err != nil || string(b) != "twelve bytes" {
		t.Fatalf("a regular file at the bound: %q, %v", b, err)
	}
	for _, c := range []struct {
		p   string
		max int64
	}{{reg, 11}, {fifo, 1 << 20}, {link, 1 << 20}, {big, maxSegmentBytes}} {
		if b, err := readRegular(c.p, c.max); err == nil {
			t.Fatalf("%s (bound %d) read: %d bytes", filepath.Base(c.p), c.max, len(b))
		}
	}
	if _, err := readRegular(filepath.Join(d, "none"), 1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: %v, want ErrNotExist", err)
	}
}

// TestWrittenSegmentsMetric: a segment filled by a request's record is closed by that
// request's writer, and counted so (segments{closed="full"}): 100 records in segments of
// at most 40 make two such closes, and reach the log once, in order.
func TestWrittenSegmentsMetric(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) })
	const most, n = 40, 100
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: most, FoldEvery: time.Hour, Journal: jdir,
		JournalKey: a17Key, Written: true, SyncEvery: time.Hour})
	for i := range n {
		if _, err := b.Submit(context.Background(), requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	if full := testutil.ToFloat64(tl.log.segments.WithLabelValues("full")); full != n/most {
		t.Fatalf("segments closed full by writers: %v, want %d", full, n/most)
	}
	b.Close()
	tl.close(t)
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), n)
}

// TestSweepShadowsKeepsLiveRoot: a living process's shadow root whose journal path this
// process cannot see — another container's, sharing /dev/shm in another mount namespace —
// is neither marked nor removed by a sweep, however old its mark; once that process is
// dead (its lock gone with it), the root is an orphan's and goes after the grace.
func TestSweepShadowsKeepsLiveRoot(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	root := filepath.Join(t.TempDir(), "journal")
	j, err := openJournalWith(&journal{root: root, batch: 100, packed: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := shadowRootFor(root)
	t.Cleanup(func() { os.RemoveAll(r) })
	if _, err := j.writeMapped(rawRecs(0, 1)[0], 100); err != nil {
		t.Fatal(err)
	}
	shadows := filepath.Join(r, filepath.Base(j.dir))
	// The other namespace's view: the journal's path is not there.
	if err := os.Rename(root, root+".elsewhere"); err != nil {
		t.Fatal(err)
	}
	mark := filepath.Join(r, shadowGoneMarker)
	aged := func() {
		old := time.Now().Add(-2 * ShadowOrphanGrace)
		if err := os.WriteFile(mark, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(mark, old, old); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }
	sweepShadows(nil)
	if exists(mark) {
		t.Error("a living process's shadow root was marked gone")
	}
	aged()
	sweepShadows(nil)
	if !exists(shadows) {
		t.Fatal("a sweep removed a living process's shadows (its journal's path not seen here)")
	}
	writtenKill(j)
	aged()
	sweepShadows(nil)
	if exists(r) {
		t.Fatal("a dead process's shadow root, its journal gone past the grace, was kept")
	}
}
