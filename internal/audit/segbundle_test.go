package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
)

// bundleFiles is every file under dir/batches: name → bytes (temporary names included).
func bundleFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	root := filepath.Join(dir, "batches")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[filepath.Base(p)] = b
		return err
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}

// checkBundles: every file under batches is a bundle named by its SHA-256 (no temporary
// left), with one link (the journal's was removed by the fold); it returns how many are
// journal segments (v2) and how many written (v1).
func checkBundles(t *testing.T, dir string) (v2, v1 int) {
	t.Helper()
	for name, b := range bundleFiles(t, dir) {
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != name {
			t.Fatalf("batches/%s: not a bundle named by its content (a temporary left behind?)", name)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, "batches", name[:2], name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Nlink != 1 {
			t.Fatalf("batches/%s: %d links: the journal's segment was not removed after its fold", name, st.Nlink)
		}
		if _, err := DecodeBundle(b); err != nil {
			t.Fatalf("batches/%s: %v", name, err)
		}
		switch {
		case bytes.HasPrefix(b, []byte(journalMagic)), bytes.HasPrefix(b, []byte(journalMagicV2)):
			v2++
		case bytes.HasPrefix(b, []byte(bundleMagic)):
			v1++
		}
	}
	return v2, v1
}

// TestFoldLinksSegments: with a journal, a segment is one batch — a group that would take
// it past MaxRecords starts the next — and the fold links it in as the batch's bundle (v2)
// instead of writing the records again; the log verifies with every record once, in order.
func TestFoldLinksSegments(t *testing.T) {
	for _, key := range [][]byte{nil, bytes.Repeat([]byte{7}, 32)} {
		t.Run(map[bool]string{false: "no-key", true: "keyed"}[key != nil], func(t *testing.T) {
			tl := openTestLog(t)
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 10, MaxDelay: time.Millisecond,
				FoldEvery: time.Hour, Journal: filepath.Join(tl.dir, "journal"), JournalKey: key})
			ctx := context.Background()
			n := 0
			for _, burst := range []int{7, 7, 3, 10, 1, 9, 4} { // groups that fit and that do not
				var fs []Future
				for range burst {
					fs = append(fs, b.Submit(ctx, requestEvent(n)))
					n++
				}
				for _, f := range fs {
					if _, err := f(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, ok, err := b.Barrier(ctx); !ok || err != nil {
				t.Fatalf("barrier: %v %v", ok, err)
			}
			b.Close()
			tl.close(t)
			v2, v1 := checkBundles(t, tl.dir)
			if v1 != 0 || v2 < 5 {
				t.Fatalf("%d bundles linked from the journal, %d written: want every one linked (at least 5)", v2, v1)
			}
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), n)
		})
	}
}

// TestDeadSegmentsLinkedOrWritten: a dead process's segments are folded by the next one:
// a whole segment is linked in as its bundle; one that a crash left with a torn frame (or
// zeros) after its last whole one is written as a v1 bundle of its whole frames' records —
// never linked with the torn bytes in it. A segment already linked by a fold that died
// before its entry is linked again (the same file) without leaving a temporary behind.
func TestDeadSegmentsLinkedOrWritten(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	var paths []string
	for i, tail := range []string{"", "\x05\x00\x00\x00torn", strings.Repeat("\x00", 4096), ""} {
		j, err := openJournal(jdir, 100, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := j.append(rawRecs(i*10, i*10+6)); err != nil {
			t.Fatal(err)
		}
		if err := j.append(rawRecs(i*10+6, i*10+10)); err != nil {
			t.Fatal(err)
		}
		p := j.f.Name()
		j.close() // the process dies: the segment stays, unfolded
		if tail != "" {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(tail)
			f.Close()
		}
		paths = append(paths, p)
	}
	// The last one's fold died after linking its bundle, before its entry.
	b, err := os.ReadFile(paths[3])
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if err := (DirBundles{Dir: tl.dir}).LinkBundle(context.Background(), hex.EncodeToString(sum[:]), paths[3]); err != nil {
		t.Fatal(err)
	}
	bt := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, Journal: jdir})
	bt.Close()
	tl.close(t)
	for _, p := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s: still in the journal after the fold (%v)", p, err)
		}
	}
	if v2, v1 := checkBundles(t, tl.dir); v2 != 2 || v1 != 2 {
		t.Fatalf("%d bundles linked, %d written: want the 2 whole segments linked, the 2 torn ones written", v2, v1)
	}
	recs := loggedRecords(t, tl.dir, tl.vkey)
	if len(recs) != 40 {
		t.Fatalf("%d records logged, want 40", len(recs))
	}
	// The dead directories are folded in the order ReadDir gives: check each record once.
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[string(r)] {
			t.Fatalf("record logged twice: %s", r)
		}
		seen[string(r)] = true
	}
	for i := range 40 {
		ev := requestEvent(i)
		raw, _ := ev.Marshal()
		if !seen[string(raw)] {
			t.Fatalf("record %d not in the log", i)
		}
	}
}

// TestDecodeBundleSegment: a journal segment read as a bundle must be exactly whole frames:
// a byte cut off, a byte or zeros after the last frame, or a payload byte changed (CRC) is
// refused; frames' MACs are skipped, not required to verify (no key at the reader).
func TestDecodeBundleSegment(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournal(dir, 50, bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	want := rawRecs(0, 5)
	if err := j.append(want[:2]); err != nil {
		t.Fatal(err)
	}
	if err := j.append(nil); err != nil { // an empty frame (the disk probe)
		t.Fatal(err)
	}
	if err := j.append(want[2:]); err != nil {
		t.Fatal(err)
	}
	seg, err := j.rotate()
	if err != nil {
		t.Fatal(err)
	}
	j.close()
	b, err := os.ReadFile(seg.path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(b); !bytes.Equal(sum[:], seg.sum) {
		t.Fatal("the journal's running SHA-256 is not its file's")
	}
	recs, err := DecodeBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(want) {
		t.Fatalf("%d records decoded, want %d", len(recs), len(want))
	}
	for i := range want {
		if !bytes.Equal(recs[i], want[i].Raw) {
			t.Fatalf("record %d differs", i)
		}
	}
	flipped := bytes.Clone(b)
	flipped[len(flipped)-sha256.Size-3] ^= 1 // in the last frame's payload
	for name, bad := range map[string][]byte{
		"cut":     b[:len(b)-1],
		"byte":    append(bytes.Clone(b), 0),
		"zeros":   append(bytes.Clone(b), make([]byte, 64)...),
		"flipped": flipped,
		"header":  b[:journalHeader-1],
	} {
		if _, err := DecodeBundle(bad); err == nil {
			t.Errorf("%s: a damaged segment decoded as a bundle", name)
		}
	}
}

// TestSegmentBundleMatchesEntry: a linked bundle's records are the batch entry's — its name,
// count and root — through CheckBatch, and a changed record byte in the file is found.
func TestSegmentBundleMatchesEntry(t *testing.T) {
	tl := openTestLog(t)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 8, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: filepath.Join(tl.dir, "journal")})
	var fs []Future
	for i := range 8 {
		fs = append(fs, b.SubmitEncoded(context.Background(), rawRecs(i, i+1)[0]))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	tl.close(t)
	if _, err := tl.verifyBatches(); err != nil {
		t.Fatal(err)
	}
	files := bundleFiles(t, tl.dir)
	if len(files) != 1 {
		t.Fatalf("%d bundles, want 1", len(files))
	}
	for name, content := range files {
		if !bytes.HasPrefix(content, []byte(journalMagic)) {
			t.Fatal("the bundle was written, not linked from the journal")
		}
		p := filepath.Join(tl.dir, "batches", name[:2], name)
		i := bytes.Index(content, []byte(`"status":"200"`))
		content[i+10] = '5'
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tl.verifyBatches(); err == nil {
		t.Fatal("a record altered in a linked bundle: the log still verifies")
	}
}

// compactRangeRoot is BatchRoot as it was: merkle/compact's range over rfc6962's hashes.
func compactRangeRoot(recs [][]byte) []byte {
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for _, rec := range recs {
		r.Append(rfc6962.DefaultHasher.HashLeaf(rec), nil)
	}
	root, _ := r.GetRootHash(nil)
	if root == nil {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	return root
}

// TestBatchRootMatchesCompactRange: BatchRoot is the root merkle/compact (and so RFC 6962)
// gives, for every count up to 300 and a few larger ones; so is leavesRoot over the
// records' leaf hashes (a written segment's fold: flagLeafMAC).
func TestBatchRootMatchesCompactRange(t *testing.T) {
	var recs [][]byte
	check := func() {
		want := compactRangeRoot(recs)
		if got := BatchRoot(recs); !bytes.Equal(got, want) {
			t.Fatalf("%d records: root %x, compact range %x", len(recs), got, want)
		}
		leaves := make([][sha256.Size]byte, len(recs))
		for i, r := range recs {
			leaves[i] = sha256.Sum256(append([]byte{0}, r...))
		}
		if got := leavesRoot(leaves); !bytes.Equal(got, want) {
			t.Fatalf("%d records: root of leaves %x, compact range %x", len(recs), got, want)
		}
	}
	for i := range 300 {
		check()
		recs = append(recs, []byte(strings.Repeat("r", i%37)+strconv.Itoa(i)))
	}
	for len(recs) < MaxBatch {
		recs = append(recs, []byte(strconv.Itoa(len(recs))))
		if len(recs)%1021 == 0 || len(recs) == MaxBatch {
			check()
		}
	}
}

// BenchmarkBatchRoot: a fold's Merkle root over a full batch of gateway-sized records,
// next to the compact range it replaced (the baseline, same run).
//
//	go test ./internal/audit -run '^$' -bench BatchRoot -count 5
func BenchmarkBatchRoot(b *testing.B) {
	recs := make([][]byte, MaxBatch)
	for i := range recs {
		recs[i] = bytes.Repeat([]byte{byte(i)}, 600)
	}
	for _, c := range []struct {
		name string
		root func([][]byte) []byte
	}{{"compact-range", compactRangeRoot}, {"BatchRoot", BatchRoot}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(recs) * 600))
			b.ReportAllocs()
			for b.Loop() {
				c.root(recs)
			}
		})
	}
}

// TestJournalReplayOfABundle. Attack: someone who can write the data directory, without
// the audit key, takes a folded segment — a v3 bundle, served at /log/batches/ — and puts
// it back in the journal as a dead process's segment, to have its records logged twice:
// (a) under a new directory name, (b) under its own directory's name again. The segment's
// first MAC binds its directory, so (a) fails its MAC and is refused (the operator is told,
// nothing logged); (b) is recognized as a batch the log has (fields.journal) and skipped.
// Either way every record is in the log once.
func TestJournalReplayOfABundle(t *testing.T) {
	key := bytes.Repeat([]byte{9}, 32)
	for _, sameDir := range []bool{false, true} {
		t.Run(map[bool]string{false: "new-directory", true: "same-directory"}[sameDir], func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			cfg := BatcherConfig{MaxRecords: 100, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir, JournalKey: key}
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
			var fs []Future
			for i := range 6 {
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
			// Where the segment was: the batch entry's fields.journal, "<dir>/<segment>@0".
			var src string
			ctx := context.Background()
			size, _ := tl.log.IntegratedSize(ctx)
			ReadEntries(ctx, tl.log.Reader().ReadEntryBundle, 0, size, func(evs []store.AuditEvent) error {
				for _, e := range evs {
					if ev, err := ParseEvent(e.Raw); err == nil && ev.Kind == KindBatch {
						src = ev.Fields["journal"]
					}
				}
				return nil
			})
			dirName, rest, _ := strings.Cut(src, "/")
			segName, _, _ := strings.Cut(rest, "@")
			if dirName == "" || segName == "" {
				t.Fatalf("batch entry's journal field %q", src)
			}
			if !sameDir {
				dirName = "0123456789abcdef0123456789abcdef"
			}
			d := filepath.Join(jdir, dirName)
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
			for _, content := range files {
				if err := os.WriteFile(filepath.Join(d, segName), content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			b = NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
			healthy := b.Healthy()
			b.Close()
			if sameDir {
				if healthy != nil {
					t.Fatalf("a segment the log has already was refused instead of skipped: %v", healthy)
				}
				if _, err := os.Stat(d); !os.IsNotExist(err) {
					t.Fatalf("the replayed directory is still there (%v)", err)
				}
			} else if healthy == nil || !strings.Contains(healthy.Error(), "MAC") {
				t.Fatalf("a segment copied into another directory was taken: healthy %v", healthy)
			}
			tl.close(t)
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 6)
		})
	}
}

// TestJournalV2SegmentsStillFolded: a segment an earlier version left (v2: its first MAC
// binds its file name only) is still folded after an upgrade — written as a v1 bundle, not
// linked (served, it could be replayed into another directory: TestAttack17ReplayV2BundleElsewhere).
func TestJournalV2SegmentsStillFolded(t *testing.T) {
	key := bytes.Repeat([]byte{5}, 32)
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	writeDeadV2Segment(t, jdir, key)
	bt := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, Journal: jdir, JournalKey: key})
	if err := bt.Healthy(); err != nil {
		t.Fatal(err)
	}
	bt.Close()
	tl.close(t)
	if v2n, v1n := checkBundles(t, tl.dir); v2n != 0 || v1n != 1 {
		t.Fatalf("%d bundles linked, %d written: want the v2 segment written as a v1 bundle (a v2 segment's MACs do not bind its directory: served, it could be replayed elsewhere)", v2n, v1n)
	}
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 7)
}

// TestJournalPrewrittenSegments: from the second segment on, a segment is prepared ahead
// (zeros, synced) and written in place; a closed one is cut to its whole frames (its
// bundle as it stands); the one prepared next is removed at close; every record reads
// back in order — also from a segment left unclosed, zeros after its frames, as a killed
// process leaves it.
func TestJournalPrewrittenSegments(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "journal")
	j, err := openJournalGrowing(dir, 100, bytes.Repeat([]byte{2}, 32), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(0, 3)); err != nil {
		t.Fatal(err)
	}
	first, err := j.rotate()
	if err != nil {
		t.Fatal(err)
	}
	if !j.direct {
		t.Skip("this file system has no O_DIRECT: segments grow")
	}
	n := 3
	for _, k := range []int{1, 7, 2, 40, 5} { // frames across page boundaries
		if err := j.append(rawRecs(n, n+k)); err != nil {
			t.Fatal(err)
		}
		n += k
	}
	open := j.f.Name()
	if st, err := os.Stat(open); err != nil || st.Size() < prewriteMin {
		t.Fatalf("the open segment is not prewritten: %v %v", st.Size(), err)
	}
	// As a killed process leaves it: frames, then the prepared zeros.
	b, err := os.ReadFile(open)
	if err != nil {
		t.Fatal(err)
	}
	recs, _, err := parseSegment(b, open, j.key)
	if err != nil || len(recs) != n-3 {
		t.Fatalf("a prewritten segment read as a crash leaves it: %d records, %v", len(recs), err)
	}
	second, err := j.rotate()
	if err != nil {
		t.Fatal(err)
	}
	b, err = os.ReadFile(second.path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(b); second.sum == nil || !bytes.Equal(sum[:], second.sum) {
		t.Fatal("a closed prewritten segment is not cut to its whole frames")
	}
	got := append([][]byte(nil), raws(first.recs)...)
	if recs, err = DecodeBundle(b); err != nil {
		t.Fatal(err)
	}
	got = append(got, recs...)
	for i, want := range rawRecs(0, n) {
		if !bytes.Equal(got[i], want.Raw) {
			t.Fatalf("record %d differs", i)
		}
	}
	next := filepath.Join(j.dir, segmentName(j.seq))
	waitFor(t, func() bool { _, err := os.Stat(next); return err == nil }) // being prepared
	j.close()
	if _, err := os.Stat(next); !os.IsNotExist(err) {
		t.Fatalf("the segment prepared next is left after close: %v", err)
	}
}

// TestParseSegmentTornBeforeZeros: in a prewritten segment a crash leaves zeros after
// the last frame: a damaged frame followed only by zeros is torn when a sector of it is
// zeros (its records were never acknowledged); a byte flipped in it is damage; a damaged
// frame followed by a whole frame is damage too, refused.
func TestParseSegmentTornBeforeZeros(t *testing.T) {
	dir := t.TempDir()
	j, err := openJournalGrowing(dir, 100, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	j.append(rawRecs(0, 2))
	j.append(rawRecs(2, 3))
	j.append(rawRecs(3, 5))
	b, _ := os.ReadFile(j.f.Name())
	j.close()
	last := bytes.Index(b, rawRecs(3, 4)[0].Raw) // inside the third frame
	torn := append(bytes.Clone(b), make([]byte, 8192)...)
	torn[last+5] ^= 0xff
	if recs, _, err := parseSegment(torn, "s", nil); err == nil {
		t.Fatalf("a byte flipped in the last frame read as torn: %d records", len(recs))
	}
	sector := (last + 5) &^ (sectorSize - 1)
	clear(torn[sector : sector+sectorSize]) // the sector a power cut did not write
	if recs, _, err := parseSegment(torn, "s", nil); err != nil || len(recs) != 3 {
		t.Fatalf("a torn last frame before zeros: %d records, %v; want the 3 of the whole frames", len(recs), err)
	}
	second := bytes.Index(b, rawRecs(2, 3)[0].Raw) // inside the second frame
	damaged := append(bytes.Clone(b), make([]byte, 8192)...)
	damaged[second+5] ^= 0xff
	if _, _, err := parseSegment(damaged, "s", nil); err == nil {
		t.Fatal("a damaged frame with a whole frame after it was read as torn")
	}
}

// writeDeadV2Segment leaves under jdir the journal of a dead process of an earlier version:
// one keyed v2 segment (first MAC over its file name only) of records 0–6, in two frames.
// It returns the segment's path.
func writeDeadV2Segment(t *testing.T, jdir string, key []byte) string {
	t.Helper()
	j, err := openJournal(jdir, 100, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(0, 4)); err != nil {
		t.Fatal(err)
	}
	if err := j.append(rawRecs(4, 7)); err != nil {
		t.Fatal(err)
	}
	p := j.f.Name()
	j.close()
	v2 := legacySegment(journalMagicV2, [][]store.AuditEvent{rawRecs(0, 4), rawRecs(4, 7)}, key, p)
	if err := os.WriteFile(p, v2, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// legacySegment is a segment as the versions before v4 wrote it at path (magic v2 or v3:
// no link, frames with an 8-byte header), batches of 100, keyed or not.
func legacySegment(magic string, groups [][]store.AuditEvent, key []byte, path string) []byte {
	b := append(binary.LittleEndian.AppendUint32([]byte(magic), 100), 0)
	if key != nil {
		b[len(b)-1] = 1
	}
	macFor := filepath.Base(path)
	if magic == journalMagicV3 {
		macFor = macName(filepath.Dir(path), filepath.Base(path)) + string(b)
	}
	mac := firstMAC(key, macFor)
	for _, g := range groups {
		var payload []byte
		for _, r := range g {
			payload = binary.AppendUvarint(payload, uint64(len(r.Raw)))
			payload = append(payload, r.Raw...)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(payload, castagnoli))
		b = append(b, payload...)
		if key != nil {
			mac = nextMAC(key, mac, payload)
			b = append(b, mac...)
		}
	}
	return b
}
