package audit

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"github.com/strongroom/strongroom/internal/fsutil"
)

// Prewritten segments (eleventh session). A group's fdatasync on a segment that grows
// commits the file's new size and blocks through the file system's journal each time; on a
// segment whose blocks were written (zeros) and synced beforehand a write is only data.
// So while a segment fills, the next one is prepared in the background — a header, then
// zeros to prewriteBytes, synced, its name synced — and opened O_DIRECT|O_DSYNC: its
// header is written over as it is at the start (v4's link and floor), and each write is
// then one aligned write, durable when it returns, no fdatasync. BenchmarkGroupSync: ~half
// the CPU of a growing segment's write + fdatasync for the syscalls alone;
// BenchmarkJournalAppend: the journal's whole group commit (docs/PERFORMANCE.md).
//
// What a crash leaves, and how it is read: journal.go (every v4 segment, growing or
// prewritten, writes each write as one frame from a page boundary). A segment is cut to
// its whole frames when it is closed, so that it is its batch's bundle as it stands
// (fold). Where the file system cannot (no O_DIRECT — tmpfs before Linux 6.6 —, no space
// for the zeros), segments grow.
//
// Off by default (BatcherConfig.PrewriteSegments, config audit.journal_prewritten_segments):
// two outside rounds (18, 19) have read the paged layout, but the gain measured is within
// the noise — BenchmarkJournalAppend equal, peers 1.41 against 1.50 × bifrost-core
// (medians of four ABBA rounds) on the twelfth session's machine — and the reserved zeros
// cost disk (4–64 MiB a process) and change the full-disk behaviour (TestJournalDiskFull).

// pageSize is the alignment of O_DIRECT writes.
const pageSize = 4096

// prewriteMin and prewriteMax bound a prepared segment's zeros: the last segment's size
// and a quarter more, so that a segment's records rarely run past them (a write past them
// still succeeds: the file grows, and O_DSYNC makes its new size durable with it).
const (
	prewriteMin = 4 << 20
	prewriteMax = 64 << 20
)

// spare is a prepared segment: its path, and the file open for O_DIRECT|O_DSYNC writes
// (nil, and why: err).
type spare struct {
	path string
	f    *os.File
	err  error
}

// prepareSegment makes the segment at path ready to be written in place: hdr, then zeros
// to size, synced with the file's size and its name. It returns the file open for
// O_DIRECT|O_DSYNC writes; on a failure (the file system has no O_DIRECT: EINVAL; no
// space) it removes what it made and says why.
func prepareSegment(path string, hdr []byte, size int64) (*os.File, error) {
	d, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_DIRECT|syscall.O_DSYNC|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.Close()
			os.Remove(path)
		}
	}()
	// The zeros go through a second descriptor without O_DSYNC (one flush for all).
	z, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer z.Close()
	buf := alignedBytes(1 << 20)
	copy(buf, hdr)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := z.WriteAt(buf, off); err != nil {
			return nil, err
		}
		clear(buf[:len(hdr)])
	}
	if err := z.Sync(); err != nil {
		return nil, err
	}
	if err := fsutil.SyncDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	ok = true
	return d, nil
}

// prepareNext starts preparing segment j.seq (the next start's) in the background.
func (j *journal) prepareNext() {
	if j.spare != nil || j.noDirect {
		return
	}
	ch := make(chan *spare, 1)
	j.spare = ch
	// The header names no segment before it until the segment is started (start writes it
	// over): a prepared segment a crash leaves unused links nothing.
	path, hdr, size := filepath.Join(j.dir, segmentName(j.seq)), (&journal{batch: j.batch, key: j.key}).header(), j.prewrite
	go func() {
		f, err := prepareSegment(path, hdr, size)
		ch <- &spare{path: path, f: f, err: err}
	}()
}

// takeSpare waits for the segment being prepared, if any, and returns it (nil: none, or
// its preparation failed — the next start prepares again, unless the file system has no
// O_DIRECT: then segments grow from here on).
func (j *journal) takeSpare() *spare {
	if j.spare == nil {
		return nil
	}
	sp := <-j.spare
	j.spare = nil
	if sp.f == nil {
		j.noDirect = errors.Is(sp.err, syscall.EINVAL)
		return nil
	}
	return sp
}

// dropSpare removes the segment being prepared, if any: it will not be used.
func (j *journal) dropSpare() {
	if sp := j.takeSpare(); sp != nil {
		sp.discard()
	}
}

// discard closes and removes a prepared segment that will not be used.
func (sp *spare) discard() {
	sp.f.Close()
	os.Remove(sp.path)
}

// writeInPlace writes b (whole frames) at base, a page boundary after the segment's last
// byte, durably: one O_DIRECT|O_DSYNC write, zeros after b to the page's end. No page
// holding an acknowledged frame is written again, so a torn write damages only its own.
func (j *journal) writeInPlace(b []byte, base int64) error {
	end := (len(b) + pageSize - 1) &^ (pageSize - 1)
	if end > len(j.page) {
		j.page = alignedBytes(max(end, 2*len(j.page)))
	}
	copy(j.page, b)
	clear(j.page[len(b):end])
	_, err := j.f.WriteAt(j.page[:end], base)
	return err
}

// zeroPage is a page of zeros (what a segment holds before a write's page).
var zeroPage [pageSize]byte

// cutToSize cuts a prewritten segment's zeros off (its bytes are then exactly its whole
// frames: a bundle as it stands); false if that could not be made durable.
func (j *journal) cutToSize() bool {
	return j.f.Truncate(j.size) == nil && fsutil.SyncData(j.f) == nil
}

// alignedBytes is n bytes starting on a page boundary (O_DIRECT's buffers must be).
func alignedBytes(n int) []byte {
	b := make([]byte, n+pageSize)
	off := int((pageSize - uintptr(unsafe.Pointer(&b[0]))%pageSize) % pageSize)
	return b[off : off+n]
}
