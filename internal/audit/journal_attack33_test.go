package audit

// Outside round 33: request journal (written mode), bundles, hostile files.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/sys/unix"
)

// a33Dead leaves a killed written journal: n records written with at most `most` per
// segment (closed segments synced whole and left unfolded, the open one synced), as kill -9
// leaves it. It returns the log, the journal root, the process directory and the open
// segment's shadow path ("" without one).
func a33Dead(t *testing.T, n, most int) (*testLog, string, string, string) {
	t.Helper()
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl, jdir, j := openWrittenJournal(t)
	for i := range n {
		if _, err := j.writeMapped(store.AuditEvent{Raw: mustMarshal(t, requestEvent(i))}, most); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.syncMapped(); err != nil {
		t.Fatal(err)
	}
	shadow, dir := j.shadowPath, j.dir
	writtenKill(j)
	return tl, jdir, dir, shadow
}

// a33Segments is the process directory's segment files, oldest first.
func a33Segments(t *testing.T, dir string) []string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "*.wal"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(segs)
	return segs
}

// a33Frame is a packed frame's parts.
type a33Frame struct{ payload, mac []byte }

// a33Split splits a keyed packed segment into its header page and frames.
func a33Split(t *testing.T, b []byte) ([]byte, []a33Frame) {
	t.Helper()
	var out []a33Frame
	off := pageSize
	for off+frameHeader <= len(b) && !allZero(b[off:]) {
		m := int(binary.LittleEndian.Uint32(b[off:]))
		whole := frameHeader + m + sha256.Size
		if off+whole > len(b) {
			t.Fatalf("frame at %d runs past the end", off)
		}
		out = append(out, a33Frame{payload: bytes.Clone(b[off+frameHeader : off+frameHeader+m]), mac: bytes.Clone(b[off+frameHeader+m : off+whole])})
		off += whole
	}
	return bytes.Clone(b[:pageSize]), out
}

// a33Join lays out a packed segment: the header page, then the frames, their lengths and
// CRCs computed (no key needed: none of those is keyed).
func a33Join(hdr []byte, frames []a33Frame) []byte {
	b := bytes.Clone(hdr)
	for _, f := range frames {
		var h [frameHeader]byte
		binary.LittleEndian.PutUint32(h[:], uint32(len(f.payload)))
		binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(h[:4], castagnoli))
		binary.LittleEndian.PutUint32(h[8:], crc32.Checksum(f.payload, castagnoli))
		b = append(b, h[:]...)
		b = append(b, f.payload...)
		b = append(b, f.mac...)
	}
	return b
}

// a33Overlong re-encodes a one-record payload's length varint one byte longer (a
// continuation bit set on its last byte, then 0x00): the same number to binary.Uvarint.
func a33Overlong(payload []byte) []byte {
	l, k := binary.Uvarint(payload)
	v := binary.AppendUvarint(nil, l)
	v[len(v)-1] |= 0x80
	v = append(v, 0)
	return append(v, payload[k:]...)
}

// a33Fold starts the next written batcher on the journal (it folds the dead journal),
// closes it and the log, and returns the records the verified log holds, whether the
// batcher refused (Healthy), and what it logged.
func a33Fold(t *testing.T, tl *testLog, jdir string) ([][]byte, error, string) {
	t.Helper()
	logs := &syncBuffer{}
	tl.log.log = newTextLogger(logs)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
	h := b.Healthy()
	b.Close()
	size, err := tl.log.IntegratedSize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tl.close(t)
	if size == 0 { // nothing folded (an empty log's checkpoint does not verify here)
		return nil, h, logs.String()
	}
	return loggedRecords(t, tl.dir, tl.vkey), h, logs.String()
}

// a33WantPrefix: the log holds requestEvent(0..k-1) in order, each once, for some k <= n
// (nothing foreign, altered, reordered, duplicated); fewer than n only with a refusal or an
// ALERT (every record was synced: no crash lost any).
func a33WantPrefix(t *testing.T, recs [][]byte, n int, refused error, logs string) {
	t.Helper()
	if len(recs) > n {
		t.Fatalf("%d records in the log, %d were written", len(recs), n)
	}
	for i, r := range recs {
		if want := mustMarshal(t, requestEvent(i)); !bytes.Equal(r, want) {
			t.Fatalf("record %d of the log is not the %dth written: %.120s", i, i, r)
		}
	}
	if len(recs) < n && refused == nil && !strings.Contains(logs, "ALERT") {
		t.Fatalf("%d of %d synced records folded, silently (no refusal, no ALERT)", len(recs), n)
	}
	t.Logf("%d of %d records folded; refused: %v; ALERT: %v", len(recs), n, refused != nil, strings.Contains(logs, "ALERT"))
	if refused != nil {
		t.Logf("refusal: %.300v", refused)
	}
}

// TestAttack33OverlongVarint (promise 1): the leaf-MAC frame's MAC covers the record's
// leaf hash, not the frame's bytes: an outsider re-encodes a frame's length varint in a dead
// segment (overlong, same value), lengths and CRCs recomputed. The records must be folded
// unaltered (or refused); the log must verify.
func TestAttack33OverlongVarint(t *testing.T) {
	for _, which := range []string{"last", "closed"} {
		t.Run(which, func(t *testing.T) {
			tl, jdir, dir, shadow := a33Dead(t, 6, 3)
			os.Remove(shadow)
			segs := a33Segments(t, dir)
			p := segs[len(segs)-1]
			if which == "closed" {
				p = segs[0]
			}
			b, _ := os.ReadFile(p)
			hdr, frames := a33Split(t, b)
			frames[1].payload = a33Overlong(frames[1].payload)
			if err := os.WriteFile(p, a33Join(hdr, frames), 0o600); err != nil {
				t.Fatal(err)
			}
			recs, refused, logs := a33Fold(t, tl, jdir)
			a33WantPrefix(t, recs, 6, refused, logs)
		})
	}
}

// TestAttack33SpliceAndRestructure (promise 1): in a dead process's last segment (disk, its
// shadow removed; everything synced), an outsider without the key: puts a frame of the
// closed segment before it in place of one; merges two frames into one holding both
// records; swaps two frames; changes the header's flags (leaf MAC off; paged instead of
// packed) or its version (v3). Whatever is folded must be a prefix of what was written, in
// order, each once, and any record lost must come with a refusal or an ALERT.
func TestAttack33SpliceAndRestructure(t *testing.T) {
	cases := map[string]func(t *testing.T, prevHdr []byte, prev []a33Frame, hdr []byte, fr []a33Frame) []byte{
		"frame from the previous segment": func(t *testing.T, _ []byte, prev []a33Frame, hdr []byte, fr []a33Frame) []byte {
			fr[1] = prev[1]
			return a33Join(hdr, fr)
		},
		"two records in one frame": func(t *testing.T, _ []byte, _ []a33Frame, hdr []byte, fr []a33Frame) []byte {
			merged := a33Frame{payload: append(bytes.Clone(fr[1].payload), fr[2].payload...), mac: fr[2].mac}
			return a33Join(hdr, append([]a33Frame{fr[0], merged}, fr[3:]...))
		},
		"frames swapped": func(t *testing.T, _ []byte, _ []a33Frame, hdr []byte, fr []a33Frame) []byte {
			fr[1], fr[2] = fr[2], fr[1]
			return a33Join(hdr, fr)
		},
		"leaf MAC flag off": func(t *testing.T, _ []byte, _ []a33Frame, hdr []byte, fr []a33Frame) []byte {
			hdr[len(journalMagic)+4] &^= flagLeafMAC
			return a33Join(hdr, fr)
		},
		"paged flag": func(t *testing.T, _ []byte, _ []a33Frame, hdr []byte, fr []a33Frame) []byte {
			hdr[len(journalMagic)+4] = flagKeyed | flagPaged
			return a33Join(hdr, fr)
		},
		"v3 magic": func(t *testing.T, _ []byte, _ []a33Frame, hdr []byte, fr []a33Frame) []byte {
			copy(hdr, journalMagicV3)
			return a33Join(hdr, fr)
		},
		"previous segment's header": func(t *testing.T, prevHdr []byte, _ []a33Frame, _ []byte, fr []a33Frame) []byte {
			return a33Join(prevHdr, fr)
		},
	}
	for name, tamper := range cases {
		t.Run(name, func(t *testing.T) {
			const n = 8
			tl, jdir, dir, shadow := a33Dead(t, n, 4) // segment 0: 0..3 (closed), segment 1: 4..7 (open)
			os.Remove(shadow)
			segs := a33Segments(t, dir)
			if len(segs) != 2 {
				t.Fatalf("%d segments", len(segs))
			}
			pb, _ := os.ReadFile(segs[0])
			prevHdr, prev := a33Split(t, pb)
			b, _ := os.ReadFile(segs[1])
			hdr, fr := a33Split(t, b)
			if err := os.WriteFile(segs[1], tamper(t, prevHdr, prev, hdr, fr), 0o600); err != nil {
				t.Fatal(err)
			}
			recs, refused, logs := a33Fold(t, tl, jdir)
			a33WantPrefix(t, recs, n, refused, logs)
		})
	}
}

// TestAttack33ShadowMarkerFIFO (promise 3): a written batcher's start sweeps the shadow
// roots under /dev/shm, reading each one's "journal" file (os.ReadFile). An outsider (this
// user, who may write /dev/shm) plants a root of the right name and mode whose "journal" is
// a FIFO: the next start must not hang. (ShadowBase is a private tmpfs directory here, so
// that other processes' sweeps are not hung.)
func TestAttack33ShadowMarkerFIFO(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	base, err := os.MkdirTemp(ShadowBase, "a33-")
	if err != nil {
		t.Fatal(err)
	}
	old := ShadowBase
	ShadowBase = base
	t.Cleanup(func() { ShadowBase = old; os.RemoveAll(base) })
	root := filepath.Join(base, "strongroom-journal-0123456789abcdef")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(root, "journal")
	if err := unix.Mkfifo(marker, 0o600); err != nil {
		t.Fatal(err)
	}
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	// A hang: forever; a slow machine under -race: seconds.
	b, hung := untilFIFOHang(marker, time.Minute, func() *Batcher {
		return NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
	})
	b.Close()
	tl.close(t)
	if hung {
		t.Fatal("NewBatcher (written) hung for a minute on a FIFO planted as a shadow root's \"journal\" file (sweepShadows: os.ReadFile blocks in open)")
	}
}

// a33Folded folds n records through a keyed written batcher (one batch, its segment linked
// as the bundle), closes it and the log, and returns the log, the bundle's path and the
// batch entry.
func a33Folded(t *testing.T, n int) (*testLog, string, *Event) {
	t.Helper()
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) })
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
	for i := range n {
		if _, err := b.Submit(context.Background(), requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := b.Barrier(context.Background()); !ok || err != nil {
		t.Fatal(ok, err)
	}
	b.Close()
	tl.close(t)
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), n)
	var entry *Event
	ctx := context.Background()
	st, err := Verify(ctx, client.FileFetcher{Root: tl.dir}, VerifyOptions{LogKey: tl.vkey, Bundles: DirBundles{Dir: tl.dir}.Bundle})
	if err != nil {
		t.Fatal(err)
	}
	err = ReadEntries(ctx, client.FileFetcher{Root: tl.dir}.ReadEntryBundle, 0, st.Size, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			if ev, err := ParseEvent(e.Raw); err == nil && ev.Kind == KindBatch {
				entry = ev
			}
		}
		return nil
	})
	if err != nil || entry == nil {
		t.Fatal("no batch entry", err)
	}
	p, err := DirBundles{Dir: tl.dir}.path(entry.Subject["bundle"])
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(p)
	if err != nil || !bytes.HasPrefix(raw, []byte(journalMagic)) {
		t.Fatalf("the bundle is not a linked segment (%v)", err)
	}
	return tl, p, entry
}

// TestAttack33BundleAltered (promise 2): a linked segment bundle altered every way an
// outsider can without the key — a record byte flipped (CRC fixed), frames dropped,
// swapped, duplicated, appended zeros, a varint re-encoded (same records, other bytes), the
// same records as a v1 bundle, the frames re-laid after a page of zeros — must fail
// CheckBatch against its entry.
func TestAttack33BundleAltered(t *testing.T) {
	const n = 6
	_, p, entry := a33Folded(t, n)
	orig, _ := os.ReadFile(p)
	if _, err := CheckBatch(entry, orig); err != nil {
		t.Fatal(err)
	}
	hdr, fr := a33Split(t, orig)
	recs, _ := DecodeBundle(orig)
	variants := map[string][]byte{}
	flip := slices.Clone(fr)
	flip[2].payload = bytes.Clone(flip[2].payload)
	flip[2].payload[20] ^= 1
	variants["record byte flipped"] = a33Join(hdr, flip)
	variants["last frame dropped"] = a33Join(hdr, fr[:n-1])
	variants["first frame dropped"] = a33Join(hdr, fr[1:])
	sw := slices.Clone(fr)
	sw[0], sw[1] = sw[1], sw[0]
	variants["frames swapped"] = a33Join(hdr, sw)
	variants["frame duplicated"] = a33Join(hdr, append(slices.Clone(fr), fr[n-1]))
	variants["zeros appended"] = append(bytes.Clone(orig), make([]byte, 100)...)
	ov := slices.Clone(fr)
	ov[0].payload = a33Overlong(ov[0].payload)
	variants["overlong varint"] = a33Join(hdr, ov)
	v1, _ := EncodeBundle(recs)
	variants["same records, v1"] = v1
	variants["a page of zeros before the frames"] = a33Join(append(bytes.Clone(hdr), make([]byte, pageSize)...), fr)
	for name, v := range variants {
		if _, err := CheckBatch(entry, v); err == nil {
			t.Errorf("%s: CheckBatch accepts the altered bundle", name)
		}
	}
}

// TestAttack33BundleFIFO (promise 3): a published bundle replaced by a FIFO; `audit verify`
// (Verify with DirBundles) must not hang.
func TestAttack33BundleFIFO(t *testing.T) {
	tl, p, _ := a33Folded(t, 4)
	os.Remove(p)
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	// A hang: forever; a slow machine under -race: seconds.
	err, hung := untilFIFOHang(p, time.Minute, func() error {
		_, err := Verify(context.Background(), client.FileFetcher{Root: tl.dir}, VerifyOptions{LogKey: tl.vkey, Bundles: DirBundles{Dir: tl.dir}.Bundle})
		return err
	})
	if hung {
		t.Fatal("Verify (audit verify's DirBundles) hung for a minute on a bundle replaced by a FIFO (os.ReadFile blocks in open)")
	}
	if err == nil {
		t.Fatal("the log verifies with its bundle replaced by a FIFO")
	}
}

// TestAttack33HugeHelper is the child of TestAttack33HugeDiskSegment and
// TestAttack33HugeBundle.
func TestAttack33HugeHelper(t *testing.T) {
	switch mode, arg := os.Getenv("A33_MODE"), os.Getenv("A33_ARG"); mode {
	case "segment":
		_, err := readSegments(arg, a17Key)
		fmt.Println("readSegments returned:", err)
	case "bundle":
		_, err := DirBundles{Dir: arg}.Bundle(context.Background(), os.Getenv("A33_NAME"))
		fmt.Println("Bundle returned:", err)
	default:
		t.Skip("child only")
	}
}

// a33Child runs TestAttack33HugeHelper in a child process (address space capped at 8 GiB,
// so that nothing it allocates can hurt the machine) and fails if it crashed.
func a33Child(t *testing.T, what string, env ...string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `ulimit -v 8388608; exec "$0" "$@"`, os.Args[0], "-test.run=^TestAttack33HugeHelper$", "-test.v=false")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := string(out)
		if i := strings.Index(s, "fatal error"); i >= 0 {
			s = s[i:min(len(s), i+200)]
		} else {
			s = s[:min(len(s), 400)]
		}
		t.Fatalf("%s crashed the process: %v\n%s", what, err, s)
	}
}

// TestAttack33HugeDiskSegment (promise 3: never crash): round 32 bounded the shadow's size,
// but a dead process's segment on the disk is read with os.ReadFile too. An outsider makes
// it a 1 TiB sparse file (its shadow removed): reading the dead journal must not crash.
func TestAttack33HugeDiskSegment(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	tl, _, dir, shadow := a33Dead(t, 5, 100)
	defer tl.close(t)
	os.Remove(shadow)
	segs := a33Segments(t, dir)
	if err := os.Truncate(segs[len(segs)-1], 1<<40); err != nil {
		t.Skipf("cannot make a sparse segment: %v", err)
	}
	a33Child(t, "reading a dead journal whose segment is a 1 TiB sparse file", "A33_MODE=segment", "A33_ARG="+dir)
}

// TestAttack33HugeBundle (promise 3: never crash): a published bundle replaced by a 1 TiB
// sparse file: reading it (Verify, search) must not crash.
func TestAttack33HugeBundle(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	tl, p, entry := a33Folded(t, 4)
	if err := os.Truncate(p, 1<<40); err != nil {
		t.Skipf("cannot make a sparse bundle: %v", err)
	}
	a33Child(t, "reading a bundle that is a 1 TiB sparse file", "A33_MODE=bundle", "A33_ARG="+tl.dir, "A33_NAME="+entry.Subject["bundle"])
}

// TestAttack33LiveDiskSegmentAltered (promises 1/2): while a written process runs, an
// outsider with the data directory flips a byte of its open segment on the disk, in a frame
// already synced (the process never writes it again). At the fold the segment is linked as
// the batch's bundle under the SHA-256 of what the process wrote (round 32's fix copies
// from the process's own memory, but nothing re-reads the disk). The round-32 invariant:
// every bundle hashes to its name — else the batch is unverifiable, its records' bytes lost,
// with no ALERT when it happens.
func TestAttack33LiveDiskSegmentAltered(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) })
	logs := &syncBuffer{}
	tl.log.log = newTextLogger(logs)
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir,
		JournalKey: a17Key, Written: true, SyncEvery: time.Hour})
	const n = 10
	for i := range n {
		if _, err := b.Submit(context.Background(), requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.j.syncMapped(); err != nil {
		t.Fatal(err)
	}
	b.j.wmu.Lock()
	seg := b.j.f.Name()
	b.j.wmu.Unlock()
	flipInPlace(t, seg, pageSize+frameHeader+30)
	b.Close()
	tl.close(t)
	// Not fixed (a residual, DESIGN.md): the segment is linked as it is on the disk, and
	// nothing re-reads it first (a read and a hash of each 4 MiB segment, ~0.3 µs a
	// record). This attacker can as well alter or delete the bundle after it is linked;
	// what holds is that verify names the altered bundle, and the entry's root is the
	// records the process wrote.
	altered := 0
	for name, raw := range bundleFiles(t, tl.dir) {
		if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != name {
			altered++
		}
	}
	_, verr := tl.verifyBatches()
	if altered != 1 || verr == nil || !errors.Is(verr, ErrSecurity) || !strings.Contains(verr.Error(), "does not match its name") {
		t.Fatalf("%d altered bundles; verify: %v (want the altered bundle named)", altered, verr)
	}
	t.Logf("verify: %v (ALERT at the fold: %v)", verr, strings.Contains(logs.String(), "ALERT"))
}
