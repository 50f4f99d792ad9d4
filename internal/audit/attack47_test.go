package audit

// Outside round 47: the request journal in "written" mode (journal_mapped.go) attacked on
// the disk while writers write and syncs run every millisecond: the open segment
// truncated (below, at and above what was synced, beyond its end), its holes punched, its
// synced bytes overwritten, its ranges shifted, the file replaced by rename, the journal
// directory made immutable or append-only, and its file system filled. The promise held
// to: every record whose future resolved without error is in the log, once, in order,
// after Close; the log verifies; a refused record's error wraps ErrUnavailable; a segment
// altered from under the process is never linked as a batch bundle when the process could
// have seen it (it is folded from memory instead). What the design states it sees only
// after the fact — bytes of synced frames altered in place (DESIGN.md's residual: nothing
// re-reads a segment before linking it; `audit verify` names the bundle altered) — is
// checked for exactly that, not failed.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// a47Rig is a test log with a written batcher on it and the records its writers had
// acknowledged or refused.
type a47Rig struct {
	t    *testing.T
	tl   *testLog
	b    *Batcher
	jdir string
	logs *syncBuffer
	a    *a44Acked
	next []int // each writer's next record number

	mu     sync.Mutex
	badErr []string // refusals whose error does not wrap ErrUnavailable

	stop    atomic.Bool
	writers sync.WaitGroup
}

type a47Config struct {
	jdir       string // "" : <log>/journal
	segBytes   int64
	maxRecords int
	foldEvery  time.Duration
	syncEvery  time.Duration
}

func a47Open(t *testing.T, c a47Config) *a47Rig {
	t.Helper()
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm: no shadow, records go by pwrite")
	}
	tl := openTestLog(t)
	logs := &syncBuffer{}
	tl.log.log = newTextLogger(logs)
	jdir := c.jdir
	if jdir == "" {
		jdir = filepath.Join(tl.dir, "journal")
	}
	t.Cleanup(func() { removeShadows(jdir) })
	if c.maxRecords == 0 {
		c.maxRecords = 100
	}
	if c.foldEvery == 0 {
		c.foldEvery = time.Hour
	}
	if c.syncEvery == 0 {
		c.syncEvery = time.Millisecond
	}
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: c.maxRecords, FoldEvery: c.foldEvery,
		Journal: jdir, JournalKey: a17Key, Written: true, SyncEvery: c.syncEvery, segmentBytes: c.segBytes})
	if err := b.broken.Load(); err != nil {
		t.Fatalf("batcher: %v", *err)
	}
	return &a47Rig{t: t, tl: tl, b: b, jdir: jdir, logs: logs, a: newA44Acked(), next: make([]int, 16)}
}

// submit submits writer w's next record and notes the outcome; it returns the error.
func (r *a47Rig) submit(w, kind int) error {
	rec, raw := a44Raw(r.t, w, r.next[w], kind)
	r.next[w]++
	rec.Raw = raw
	_, err := r.b.SubmitEncoded(context.Background(), rec)()
	r.a.add(w, raw, err)
	if err != nil && !errors.Is(err, ErrUnavailable) {
		r.mu.Lock()
		r.badErr = append(r.badErr, err.Error())
		r.mu.Unlock()
	}
	return err
}

// submitN submits n records from writer 0 (small ones), failing on a refusal.
func (r *a47Rig) submitN(n int) {
	r.t.Helper()
	for range n {
		if err := r.submit(0, 1); err != nil {
			r.t.Fatalf("record refused with nothing attacked yet: %v", err)
		}
	}
}

// submitAfter submits n records from writer 0 after an attack: a refusal (the attack
// seen) is waited out — the journal must take records again within 5 s — and the record
// submitted again.
func (r *a47Rig) submitAfter(n int) {
	r.t.Helper()
	for k := 0; k < n; {
		if err := r.submit(0, 1); err == nil {
			k++
			continue
		}
		if !r.waitHealthy(5 * time.Second) {
			r.t.Fatalf("the journal refused records for 5 s after the attack: %v", r.b.Healthy())
		}
	}
}

// startWriters starts n writers (1..n) writing records of mixed sizes until stop; after a
// refusal a writer pauses a millisecond.
func (r *a47Rig) startWriters(n int) {
	for w := 1; w <= n; w++ {
		r.writers.Go(func() {
			for k := 0; !r.stop.Load(); k++ {
				if r.submit(w, []int{0, 1, 2, 1, 0}[k%5]) != nil {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
}

func (r *a47Rig) stopWriters() {
	r.t.Helper()
	r.stop.Store(true)
	a47Within(r.t, "a writer hung (a Submit did not return within 10 s)", func() { r.writers.Wait() })
}

// waitSynced waits until the open segment's bytes are all synced (SyncEvery is 1 ms).
func (r *a47Rig) waitSynced() {
	r.t.Helper()
	j := r.b.j
	a44Deadline(r.t, 5*time.Second, "the open segment to be synced", func() bool {
		j.wmu.Lock()
		defer j.wmu.Unlock()
		j.smu.Lock()
		defer j.smu.Unlock()
		return j.f != nil && j.synced >= j.size
	})
}

// onOpenSegment runs fn on the open segment's path (wmu held: it stays the open segment,
// no close comes between; syncs go on unless fn takes smu).
func (r *a47Rig) onOpenSegment(fn func(path string, size, synced int64)) {
	r.t.Helper()
	j := r.b.j
	j.wmu.Lock()
	defer j.wmu.Unlock()
	if j.f == nil {
		r.t.Fatal("no open segment")
	}
	j.smu.Lock()
	synced := j.synced
	j.smu.Unlock()
	fn(j.f.Name(), j.size, synced)
}

// waitHealthy waits (bounded) for the journal to take records again; false if it did not.
func (r *a47Rig) waitHealthy(d time.Duration) bool {
	end := time.Now().Add(d)
	for r.b.Healthy() != nil {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// a47Within runs fn and fails the test with msg if it has not returned within 10 s.
func a47Within(t testing.TB, msg string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal(msg)
	}
}

// close closes the batcher and the log, each within 10 s.
func (r *a47Rig) close() {
	r.t.Helper()
	a47Within(r.t, "Batcher.Close hung (10 s)", func() { r.b.Close() })
	r.tl.close(r.t)
}

// alteredBundles is the bundles whose content is not their name (a segment linked as it
// stood on the disk, not as it was written).
func (r *a47Rig) alteredBundles() []string {
	var out []string
	filepath.WalkDir(filepath.Join(r.tl.dir, "batches"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		name := filepath.Base(p)
		raw, err := readRegular(p, maxSegmentBytes) // a FIFO or a link is not read (nor waited on)
		if err != nil {
			out = append(out, fmt.Sprintf("%s… (%v)", name[:min(12, len(name))], err))
			return nil
		}
		if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != name {
			out = append(out, fmt.Sprintf("%s… (%d bytes)", name[:min(12, len(name))], len(raw)))
		}
		return nil
	})
	return out
}

// salvage says how many acknowledged records the log's bundles still hold when their
// names are not checked (what is left of the records where verify fails).
func (r *a47Rig) salvage() string {
	ctx := context.Background()
	st, err := r.tl.log.IntegratedSize(ctx)
	if err != nil {
		return "log size: " + err.Error()
	}
	found := map[string]int{}
	undecodable, inFrames := 0, 0
	err = eachBatchEntry(ctx, r.tl.dir, st, func(_ uint64, ev *Event) error {
		raw, err := DirBundles{Dir: r.tl.dir}.Bundle(ctx, ev.Subject["bundle"])
		if err != nil {
			undecodable++
			return nil
		}
		recs, err := DecodeBundle(raw)
		if err != nil {
			undecodable++
			// The records may still be there, in whole frames the reader refuses
			// for what is around them (bytes after the last frame).
			if sc, serr := scanSegment(raw, "bundle", nil, true); serr == nil {
				for _, rec := range sc.recs {
					if r.a.acked[string(rec)] > 0 {
						inFrames++
					}
				}
			}
			return nil
		}
		for _, rec := range recs {
			found[string(rec)]++
		}
		return nil
	})
	if err != nil {
		return "reading the log: " + err.Error()
	}
	missing := 0
	for rec, n := range r.a.acked {
		if found[rec] < n {
			missing += n - found[rec]
		}
	}
	return fmt.Sprintf("read without checking names, the bundles hold %d of the %d acknowledged records (%d missing; %d bundles DecodeBundle refuses, holding %d acknowledged records in whole frames)", len(r.a.acked)-missing, len(r.a.acked), missing, undecodable, inFrames)
}

// check closes, then holds the log to the promise: it verifies, and holds exactly the
// acknowledged records, each writer's in order; no refusal with another error.
func (r *a47Rig) check() {
	r.t.Helper()
	r.close()
	r.mu.Lock()
	for _, e := range r.badErr {
		r.t.Errorf("a record refused with an error not wrapping ErrUnavailable: %s", e)
	}
	r.mu.Unlock()
	if _, err := r.tl.verifyBatches(); err != nil {
		r.t.Fatalf("log does not verify: %v (bundles whose content is not their name: %v — an altered segment linked as a batch bundle; %s)", err, r.alteredBundles(), r.salvage())
	}
	a44CheckLog(r.t, r.tl, r.a, false)
}

// checkByDesign is check for an attack the design sees only after the fact: the log either
// verifies with every acknowledged record, or verify names the altered bundle (the
// residual DESIGN.md states) — anything else fails.
func (r *a47Rig) checkByDesign(what string) {
	r.t.Helper()
	r.close()
	_, err := r.tl.verifyBatches()
	if err == nil {
		a44CheckLog(r.t, r.tl, r.a, false)
		r.t.Logf("%s: seen by the process (folded from memory), the log verifies", what)
		return
	}
	altered := r.alteredBundles()
	if !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "does not match its name") || len(altered) != 1 {
		r.t.Fatalf("%s: verify: %v; altered bundles %v (want the one altered bundle named)", what, err, altered)
	}
	r.t.Logf("BY DESIGN (DESIGN.md residual, not a failure): %s: linked as it stood; verify: %v", what, err)
}

// a47Fallocate runs fallocate(mode, off, n) on path.
func a47Fallocate(t *testing.T, path string, mode uint32, off, n int64) error {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return unix.Fallocate(int(f.Fd()), mode, off, n)
}

// a47WriteAt overwrites bytes of path in place.
func a47WriteAt(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// ---------------------------------------------------------------------------------------

// TestAttack47SegmentExtended: the open segment made longer than what was written — cut
// "to a length beyond its end" (ftruncate), or extended by fallocate — after a sync, with
// or without records written after. checkSegment refuses only a segment *shorter* than
// what was synced; the close then links the file, zeros after its frames, as the batch's
// bundle under the SHA-256 of what was written. The process could see it (an fstat at the
// close: the file is not the size it wrote).
func TestAttack47SegmentExtended(t *testing.T) {
	t.Parallel()
	type attack struct {
		name   string
		extend func(t *testing.T, path string, size int64) error
	}
	attacks := []attack{
		{"ftruncate one byte past the end", func(t *testing.T, p string, size int64) error { return os.Truncate(p, size+1) }},
		{"ftruncate 1 MiB past the end", func(t *testing.T, p string, size int64) error { return os.Truncate(p, size+1<<20) }},
		{"fallocate past the end", func(t *testing.T, p string, size int64) error { return a47Fallocate(t, p, 0, size, 64<<10) }},
	}
	for _, at := range attacks {
		for _, after := range []int{0, 5} {
			t.Run(fmt.Sprintf("%s, %d records after", at.name, after), func(t *testing.T) {
				t.Parallel()
				r := a47Open(t, a47Config{})
				r.submitN(10)
				r.waitSynced()
				r.onOpenSegment(func(p string, size, synced int64) {
					if err := at.extend(t, p, size); err != nil {
						t.Skipf("cannot extend: %v", err)
					}
				})
				r.submitAfter(after)
				r.waitSynced()
				r.check()
			})
		}
	}
}

// TestAttack47SegmentReplacedByRename: the open segment's name made to point at another
// file — a copy of the segment with one record's byte changed — while the process writes
// on through its descriptor. Renamed over (the old file's last link gone: Nlink 0, which
// checkSegment sees); renamed over with the old file kept by a hard link elsewhere; moved
// away and the copy (or a FIFO) put in its place (Nlink 1: checkSegment sees nothing). The fold
// links seg.path — the name, not the file the process wrote — as the batch's bundle. The
// process could see it (the name's inode is not its descriptor's; journal.ours makes this
// check for the directory).
func TestAttack47SegmentReplacedByRename(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"renamed over", "renamed over, old file kept by a link", "moved away, a copy in its place", "moved away, a FIFO in its place"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			r := a47Open(t, a47Config{})
			r.submitN(10)
			r.waitSynced()
			r.onOpenSegment(func(p string, size, synced int64) {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				b[pageSize+frameHeader+40] ^= 1 // inside the first record
				tmp := p + ".tmp"
				if err := os.WriteFile(tmp, b, 0o600); err != nil {
					t.Fatal(err)
				}
				switch how {
				case "renamed over":
					err = os.Rename(tmp, p)
				case "renamed over, old file kept by a link":
					if err = os.Link(p, filepath.Join(filepath.Dir(p), "kept")); err == nil {
						err = os.Rename(tmp, p)
					}
				case "moved away, a FIFO in its place":
					os.Remove(tmp)
					if err = os.Rename(p, filepath.Join(filepath.Dir(p), "moved")); err == nil {
						err = unix.Mkfifo(p, 0o600)
					}
				default:
					if err = os.Rename(p, filepath.Join(filepath.Dir(p), "moved")); err == nil {
						err = os.Rename(tmp, p)
					}
				}
				if err != nil {
					t.Fatal(err)
				}
			})
			r.submitAfter(5)
			r.waitSynced()
			r.check()
		})
	}
}

// TestAttack47HolePunched: holes punched in the open segment (fallocate PUNCH_HOLE |
// KEEP_SIZE: its size unchanged, the bytes zeros). Over the whole file, or over the last
// synced bytes, with records written after: the next sync's read-back (checkKept) must see
// it. Past the end: nothing changes. Inside synced frames (a few bytes, or the first data
// page), or over the last synced bytes with no record after (no flush follows to read
// back): by design seen only by verify.
func TestAttack47HolePunched(t *testing.T) {
	t.Parallel()
	const punch = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
	type attack struct {
		name     string
		after    int
		byDesign bool
		hole     func(size, synced int64) (off, n int64)
	}
	attacks := []attack{
		{"the whole file", 5, false, func(size, synced int64) (int64, int64) { return 0, size }},
		{"the last 100 synced bytes", 5, false, func(size, synced int64) (int64, int64) { return synced - 100, 100 }},
		{"the first data page", 5, true, func(size, synced int64) (int64, int64) { return pageSize, pageSize }},
		{"past the end", 5, false, func(size, synced int64) (int64, int64) { return size, 1 << 20 }},
		{"inside synced frames", 5, true, func(size, synced int64) (int64, int64) { return pageSize + 100, 200 }},
		{"the last 100 synced bytes, no record after", 0, true, func(size, synced int64) (int64, int64) { return synced - 100, 100 }},
	}
	for _, at := range attacks {
		t.Run(at.name, func(t *testing.T) {
			t.Parallel()
			r := a47Open(t, a47Config{})
			r.submitN(40) // more than a page of frames
			r.waitSynced()
			r.onOpenSegment(func(p string, size, synced int64) {
				off, n := at.hole(size, synced)
				if err := a47Fallocate(t, p, punch, off, n); err != nil {
					t.Skipf("cannot punch a hole: %v", err)
				}
			})
			r.finish(at.after, at.byDesign, "a hole punched in "+at.name)
		})
	}
}

// TestAttack47SyncedBytesOverwritten: bytes the process synced overwritten in place. The
// last synced bytes, with records after: the read-back must see it. Inside a synced frame,
// or the header: by design seen only by verify (the residual DESIGN.md states).
func TestAttack47SyncedBytesOverwritten(t *testing.T) {
	t.Parallel()
	type attack struct {
		name     string
		byDesign bool
		at       func(size, synced int64) int64
	}
	for _, at := range []attack{
		{"the last synced byte", false, func(size, synced int64) int64 { return synced - 1 }},
		{"the 20th byte before synced", false, func(size, synced int64) int64 { return synced - 20 }},
		{"a byte inside a synced frame", true, func(size, synced int64) int64 { return pageSize + frameHeader + 50 }},
		{"a byte of the header", true, func(size, synced int64) int64 { return 5 }},
	} {
		t.Run(at.name, func(t *testing.T) {
			t.Parallel()
			r := a47Open(t, a47Config{})
			r.submitN(10)
			r.waitSynced()
			r.onOpenSegment(func(p string, size, synced int64) { flipInPlace(t, p, at.at(size, synced)) })
			r.finish(5, at.byDesign, "overwritten: "+at.name)
		})
	}
}

// TestAttack47RangeShifted: ext4's range operations on the open segment — a page of synced
// frames collapsed out (the file shorter: checkSegment), or a page inserted inside them (the
// file longer, the synced bytes moved: the read-back of the bytes before synced) — with
// records after.
func TestAttack47RangeShifted(t *testing.T) {
	t.Parallel()
	for _, op := range []struct {
		name string
		mode uint32
	}{{"collapse a page", unix.FALLOC_FL_COLLAPSE_RANGE}, {"insert a page", unix.FALLOC_FL_INSERT_RANGE}} {
		t.Run(op.name, func(t *testing.T) {
			t.Parallel()
			r := a47Open(t, a47Config{})
			r.submitN(80) // a few pages of frames
			r.waitSynced()
			r.onOpenSegment(func(p string, size, synced int64) {
				if err := a47Fallocate(t, p, op.mode, pageSize, pageSize); err != nil {
					t.Skipf("fallocate %s: %v", op.name, err)
				}
			})
			r.submitAfter(5)
			r.waitSynced()
			r.check()
		})
	}
}

// TestAttack47TruncatedUnderLoad: 3 writers writing records of mixed sizes, syncs every
// millisecond, segments closed every 20 ms; the open segment (held open: wmu) truncated
// again and again to lengths up to its size — 0, into the header, the header's end, the
// first frame's page, anywhere below what was synced, just below it, to it exactly, and
// between it and the file's size (while a sync's write is in flight). After each cut
// the journal must refuse (ErrUnavailable) and then take records again; at the end the log
// holds exactly the acknowledged records and verifies.
func TestAttack47TruncatedUnderLoad(t *testing.T) {
	t.Parallel()
	r := a47Open(t, a47Config{segBytes: 256 << 10, maxRecords: 41, foldEvery: 20 * time.Millisecond})
	r.startWriters(3)
	var cuts, stuck int
	end := time.Now().Add(1200 * time.Millisecond)
	for k := 0; time.Now().Before(end); k++ {
		j := r.b.j
		j.wmu.Lock()
		if j.f != nil {
			p := j.f.Name()
			var st unix.Stat_t
			unix.Stat(p, &st)
			j.smu.Lock()
			synced := j.synced
			j.smu.Unlock()
			fsize := st.Size
			var to int64
			switch k % 8 {
			case 0:
				to = 0
			case 1:
				to = 40
			case 2:
				to = int64(journalHeader)
			case 3:
				to = pageSize + 7
			case 4:
				to = synced / 2
			case 5:
				to = synced - 1
			case 6:
				to = synced
			case 7:
				to = synced + (fsize-synced)/2
			}
			if to >= 0 && to <= fsize && os.Truncate(p, to) == nil {
				cuts++
			}
		}
		j.wmu.Unlock()
		if !r.waitHealthy(3 * time.Second) {
			stuck++
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.stopWriters()
	if stuck > 0 {
		t.Errorf("the journal refused records for 3 s after a cut (never took them again): %v", r.b.Healthy())
	}
	t.Logf("cuts: %d; records acknowledged %d, refused %d", cuts, len(r.a.acked), r.a.refused)
	r.check()
}

// Inode flags (linux/fs.h).
const (
	a47ImmutableFL = 0x10
	a47AppendFL    = 0x20
)

// a47SetFlags sets a file's or directory's inode flags (FS_IOC_SETFLAGS), returning the old.
func a47SetFlags(path string, set, clear uint32) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var flags uint32
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_GETFLAGS, uintptr(unsafe.Pointer(&flags))); e != 0 {
		return e
	}
	flags = flags&^clear | set
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.FS_IOC_SETFLAGS, uintptr(unsafe.Pointer(&flags))); e != 0 {
		return e
	}
	return nil
}

// TestAttack47DirectoryReadOnly: the process's journal directory made unwritable while
// writers write — as root, mode bits do not bind, so with the inode flags: immutable (no
// segment created, none removed) or append-only (segments created, none removed: every
// fold's removal fails) — for 300 ms, then writable again. Refusals must wrap
// ErrUnavailable, the journal must take records again, nothing may hang, and the log must
// hold exactly the acknowledged records. "through Close": the directory still append-only
// when the batcher closes (its folds cannot finish: the records wait for the next
// process), then writable, and a next batcher on the journal folds them.
func TestAttack47DirectoryReadOnly(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name         string
		flag         uint32
		throughClose bool
	}{
		{"immutable", a47ImmutableFL, false},
		{"append-only", a47AppendFL, false},
		{"append-only through Close", a47AppendFL, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := a47Open(t, a47Config{segBytes: 256 << 10, maxRecords: 41, foldEvery: 20 * time.Millisecond})
			r.b.j.wmu.Lock()
			dir := r.b.j.dir
			r.b.j.wmu.Unlock()
			if err := a47SetFlags(dir, c.flag, 0); err != nil {
				t.Skipf("cannot set inode flags on %s: %v", dir, err)
			}
			t.Cleanup(func() { a47SetFlags(dir, 0, c.flag) })
			a47SetFlags(dir, 0, c.flag) // set only while the writers run
			r.startWriters(4)
			time.Sleep(50 * time.Millisecond)
			refused0 := r.refused()
			if err := a47SetFlags(dir, c.flag, 0); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			refusedDuring := r.refused() - refused0
			if c.throughClose {
				r.stopWriters()
				a47Within(t, "Batcher.Close hung with the journal directory append-only", func() { r.b.Close() })
				a47SetFlags(dir, 0, c.flag)
				// The next process on the data directory folds what is left.
				b2 := NewBatcher(r.tl.log, DirBundles{Dir: r.tl.dir}, BatcherConfig{MaxRecords: 41, FoldEvery: time.Hour,
					Journal: r.jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond})
				if err := b2.broken.Load(); err != nil {
					t.Errorf("next batcher: %v", *err)
				}
				r.b = b2
				t.Logf("refused while append-only: %d", refusedDuring)
				r.check()
				return
			}
			a47SetFlags(dir, 0, c.flag)
			if !r.waitHealthy(5 * time.Second) {
				t.Errorf("journal still refusing 5 s after its directory became writable again: %v", r.b.Healthy())
			}
			time.Sleep(50 * time.Millisecond)
			r.stopWriters()
			t.Logf("refused while %s: %d; records acknowledged %d, refused %d", c.name, refusedDuring, len(r.a.acked), r.a.refused)
			r.check()
		})
	}
}

func (r *a47Rig) refused() int {
	r.a.mu.Lock()
	defer r.a.mu.Unlock()
	return r.a.refused
}

// TestAttack47JournalDiskFull: the journal on its own 2 MiB tmpfs (the log elsewhere: its
// bundles written, not linked), filled while writers write, for 300 ms, then freed. Syncs
// fail (ENOSPC): records must be refused with ErrUnavailable, taken again once there is
// room, and every acknowledged one be in the log (those of a segment that could not be
// synced folded from memory).
func TestAttack47JournalDiskFull(t *testing.T) {
	t.Parallel()
	fs := tmpfsDir(t, "2m")
	r := a47Open(t, a47Config{jdir: filepath.Join(fs, "journal"), segBytes: 256 << 10, maxRecords: 41, foldEvery: 20 * time.Millisecond})
	r.startWriters(4)
	time.Sleep(50 * time.Millisecond)
	refused0 := r.refused()
	fill := fillDisk(t, fs)
	time.Sleep(300 * time.Millisecond)
	refusedFull := r.refused() - refused0
	os.Remove(fill)
	if !r.waitHealthy(5 * time.Second) {
		t.Errorf("journal still refusing 5 s after its disk had room again: %v", r.b.Healthy())
	}
	time.Sleep(50 * time.Millisecond)
	r.stopWriters()
	t.Logf("refused while full: %d; records acknowledged %d, refused %d", refusedFull, len(r.a.acked), r.a.refused)
	if refusedFull == 0 {
		t.Logf("no record refused while the journal's disk was full (records went to the shadow)")
	}
	r.check()
}

// TestAttack47SegmentImmutable: the open segment file itself made immutable (its writes
// fail: EPERM; so does its removal after its fold) for 300 ms while 4 writers write, then
// writable again. Refusals must wrap ErrUnavailable, the journal must take records again,
// nothing may hang, and the log must hold exactly the acknowledged records and verify.
func TestAttack47SegmentImmutable(t *testing.T) {
	t.Parallel()
	r := a47Open(t, a47Config{segBytes: 256 << 10, maxRecords: 41, foldEvery: 20 * time.Millisecond})
	r.startWriters(4)
	time.Sleep(50 * time.Millisecond)
	seg := r.immutableOpen(t)
	refused0 := r.refused()
	time.Sleep(300 * time.Millisecond)
	refusedDuring := r.refused() - refused0
	a47SetFlags(seg, 0, a47ImmutableFL)
	if !r.waitHealthy(5 * time.Second) {
		t.Errorf("journal still refusing 5 s after its segment became writable again: %v", r.b.Healthy())
	}
	time.Sleep(50 * time.Millisecond)
	r.stopWriters()
	t.Logf("refused while the segment was immutable: %d; records acknowledged %d, refused %d", refusedDuring, len(r.a.acked), r.a.refused)
	r.check()
}

// TestAttack47SegmentImmutableThroughClose: segment A holds 10 synced records when it is
// made immutable; records go on into its shadow until a sync fails (EPERM) and refuses
// them; the probe closes A (its last flush fails: A on the disk keeps its 10 synced
// records, the rest are folded from memory) and starts B, whose header links A at the end
// the process wrote, not the one on the disk; 5 records go into B, synced. A's fold
// commits its batch but cannot remove A (immutable), and the batcher closes with A still
// immutable: "the next process on this data directory folds them". Then A is writable
// again and a next batcher opens the journal. B's records must be folded into the log, the
// next batcher must take records, and the log must verify.
func TestAttack47SegmentImmutableThroughClose(t *testing.T) {
	t.Parallel()
	r := a47Open(t, a47Config{segBytes: 256 << 10, foldEvery: 20 * time.Millisecond})
	r.submitN(10)
	r.waitSynced()
	seg := r.immutableOpen(t)
	// Records into A's shadow until a sync fails and the journal refuses, or until the
	// probe has already closed A (the refusal lasts until the probe's next tick, 20 ms: a
	// loaded machine's submit loop can miss it).
	openIsA := func() bool {
		r.b.j.wmu.Lock()
		defer r.b.j.wmu.Unlock()
		return r.b.j.f != nil && r.b.j.f.Name() == seg
	}
	end := time.Now().Add(5 * time.Second)
	for r.submit(0, 1) == nil && openIsA() {
		if time.Now().After(end) {
			t.Fatal("records acknowledged for 5 s into a segment whose every write fails")
		}
		time.Sleep(time.Millisecond)
	}
	if !r.waitHealthy(5 * time.Second) { // the probe: A closed, B started
		t.Fatalf("the journal refused records for 5 s (no segment B started): %v", r.b.Healthy())
	}
	r.submitN(5)
	r.waitSynced()
	r.b.j.wmu.Lock()
	segB := r.b.j.f.Name()
	r.b.j.wmu.Unlock()
	if segB == seg {
		t.Fatal("the immutable segment is still the open one")
	}
	a47Within(t, "Batcher.Close hung with a segment file immutable", func() { r.b.Close() })
	a47SetFlags(seg, 0, a47ImmutableFL)
	var layout []string
	for _, p := range []string{seg, segB} {
		b, _ := os.ReadFile(p)
		sc, err := scanSegment(b, p, a17Key, false)
		layout = append(layout, fmt.Sprintf("%s: %d records on the disk, links %d/%d (%v)", filepath.Base(p), len(sc.recs), sc.prev.seq, sc.prev.recs, err))
	}
	t.Logf("left in the journal: %s", strings.Join(layout, "; "))
	b2 := NewBatcher(r.tl.log, DirBundles{Dir: r.tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour,
		Journal: r.jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond})
	if err := b2.broken.Load(); err != nil {
		t.Errorf("next batcher (every record it is given is refused): %v", *err)
	}
	r.b = b2
	t.Logf("the log said: %s", a47Said(r.logs.String()))
	r.check()
}

// TestAttack47DiskFullAtClose: the log and its journal on one 8 MiB tmpfs. Ten records
// written and synced, ten more written (in the shadow, acknowledged: they survive the
// process), then the disk fills and the batcher closes: the close cannot write the open
// segment's last records to the disk, nor its fold write the log — "the next process on
// this data directory folds them", says the ALERT. Then the disk has room again, the log
// is reopened and a next batcher folds what the journal holds. The log must then hold all
// twenty records and verify. (Deterministic: the batcher's own syncs and folds come after
// an hour; under load with 1 ms syncs the same loss shows in about two runs of three.)
func TestAttack47DiskFullAtClose(t *testing.T) {
	t.Parallel()
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	fs := tmpfsDir(t, "8m")
	tl := openTestLogAt(t, filepath.Join(fs, "log"))
	logs := &syncBuffer{}
	tl.log.log = newTextLogger(logs)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { removeShadows(jdir) })
	cfg := BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key,
		Written: true, SyncEvery: time.Hour}
	r := &a47Rig{t: t, tl: tl, b: NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg), jdir: jdir, logs: logs, a: newA44Acked(), next: make([]int, 16)}
	r.submitN(10)
	if err := r.b.j.syncMapped(); err != nil {
		t.Fatal(err)
	}
	r.submitN(10) // in the shadow: survives the process, synced within SyncEvery
	fill := fillDisk(t, fs)
	a47Within(t, "Batcher.Close hung on a full disk", func() { r.b.Close() })
	os.Remove(fill)
	// What the journal holds now (segments on the disk, and their shadows): what the next
	// process can fold.
	inJournal := map[string]bool{}
	dirs, _ := filepath.Glob(filepath.Join(jdir, "*"))
	for _, d := range dirs {
		segs, err := readSegments(d, a17Key)
		if err != nil {
			t.Logf("journal directory %s: %v", filepath.Base(d), err)
		}
		for _, sg := range segs {
			for _, rec := range sg.recs {
				inJournal[string(rec.Raw)] = true
			}
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- tl.log.Close(context.Background()) }()
	select {
	case err := <-closed:
		t.Logf("log closed after the disk had room again: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("Log.Close hung after the disk had room again")
	}
	tl.reopen(t)
	b2 := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
	if err := b2.broken.Load(); err != nil {
		t.Errorf("next batcher: %v", *err)
	}
	r.b = b2
	t.Logf("the log said: %s", a47Said(logs.String()))
	r.check()
	if t.Failed() {
		logged := map[string]bool{}
		for _, rec := range loggedRecords(t, tl.dir, tl.vkey) {
			logged[string(rec)] = true
		}
		missing, nowhere := 0, 0
		for rec := range r.a.acked {
			if !logged[rec] {
				missing++
				if !inJournal[rec] {
					nowhere++
				}
			}
		}
		t.Errorf("%d acknowledged records missing from the log; %d of them were in no journal segment or shadow right after the first Close (their segment's shadow removed when the close's flush failed, and their fold gave up)", missing, nowhere)
	}
}

// a47Said is the distinct messages of a text log, each with its count.
func a47Said(s string) string {
	count := map[string]int{}
	var order []string
	for _, line := range strings.Split(s, "\n") {
		i := strings.Index(line, "msg=")
		if i < 0 {
			continue
		}
		m := line[i+4:]
		if strings.HasPrefix(m, "\"") {
			if j := strings.Index(m[1:], "\""); j >= 0 {
				m = m[1 : j+1]
			}
		}
		if count[m] == 0 {
			order = append(order, m)
		}
		count[m]++
	}
	var out []string
	for _, m := range order {
		out = append(out, fmt.Sprintf("%dx %q", count[m], m))
	}
	return strings.Join(out, "; ")
}

// finish writes after more records (synced), then checks the log: by design (only verify
// sees what was done, what) or in full.
func (r *a47Rig) finish(after int, byDesign bool, what string) {
	r.submitAfter(after)
	r.waitSynced()
	if byDesign {
		r.checkByDesign(what)
	} else {
		r.check()
	}
}

// immutableOpen makes the open segment immutable (skipped where inode flags cannot be set)
// until the test's end, and returns its path.
func (r *a47Rig) immutableOpen(t *testing.T) string {
	var seg string
	r.onOpenSegment(func(p string, size, synced int64) {
		if err := a47SetFlags(p, a47ImmutableFL, 0); err != nil {
			t.Skipf("cannot set inode flags: %v", err)
		}
		seg = p
	})
	t.Cleanup(func() { a47SetFlags(seg, 0, a47ImmutableFL) })
	return seg
}
