package audit

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"github.com/strongroom/strongroom/internal/fsutil"
	"golang.org/x/sys/unix"
)

// Prewritten segments (eleventh session). A group's fdatasync on a segment that grows
// commits the file's new size and blocks through the file system's journal each time; on a
// segment whose blocks were written (zeros) and synced beforehand a write is only data.
// So while a segment fills, the next one is prepared in the background — its header, then
// zeros to prewriteBytes, synced, its name synced — and opened O_DIRECT|O_DSYNC: a group
// is then one aligned write that is durable when it returns (the last partial page is
// rewritten with the same bytes in front of the new ones, so a torn write cannot damage
// what was acknowledged), no fdatasync. BenchmarkGroupSync: ~half the CPU and wall time
// per group of a growing segment's write + fdatasync; under the gateway's load the answer
// waits less, so fewer requests wait on each wakeup.
//
// What a crash leaves: whole frames, perhaps a torn last one, then zeros (parseSegment
// reads a damaged frame followed only by zeros as torn). A segment is cut to its whole
// frames when it is closed, so that it is its batch's bundle as it stands (fold). Where
// the file system cannot (no O_DIRECT — tmpfs —, no space for the zeros), segments grow
// as before.
//
// Off by default (BatcherConfig.PrewriteSegments, config audit.journal_prewritten_segments):
// a device may persist a multi-page write's pages in any order, and a power cut that keeps
// a write's later page but not its first leaves zeros and then frame bytes after the last
// acknowledged frame, which the next start refuses as damage (fail closed, nothing lost:
// TestAttack17TornWriteLaterPageFirst, known open). Starting each group on a fresh page
// (a zero first page then ends the segment) would close it.

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
	path, hdr, size := filepath.Join(j.dir, segmentName(j.seq)), j.header(), j.prewrite
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

// writeInPlace writes b (whole frames) after the segment's last byte, durably: one
// O_DIRECT|O_DSYNC write from the start of the last partial page, whose bytes are written
// again as they are. j.page holds that page's bytes in front.
func (j *journal) writeInPlace(b []byte) error {
	base := j.size &^ (pageSize - 1)
	pre := int(j.size - base)
	n := pre + len(b)
	end := (n + pageSize - 1) &^ (pageSize - 1)
	if end > len(j.page) {
		np := alignedBytes(max(end, 2*len(j.page)))
		copy(np, j.page[:pre])
		j.page = np
	}
	copy(j.page[pre:], b)
	clear(j.page[n:end])
	if _, err := j.f.WriteAt(j.page[:end], base); err != nil {
		return err
	}
	last := int((j.size+int64(len(b)))&^(pageSize-1) - base)
	copy(j.page, j.page[last:n])
	return nil
}

// cutToSize cuts a prewritten segment's zeros off (its bytes are then exactly its whole
// frames: a bundle as it stands); false if that could not be made durable.
func (j *journal) cutToSize() bool {
	return j.f.Truncate(j.size) == nil && unix.Fdatasync(int(j.f.Fd())) == nil
}

// alignedBytes is n bytes starting on a page boundary (O_DIRECT's buffers must be).
func alignedBytes(n int) []byte {
	b := make([]byte, n+pageSize)
	off := int((pageSize - uintptr(unsafe.Pointer(&b[0]))%pageSize) % pageSize)
	return b[off : off+n]
}
