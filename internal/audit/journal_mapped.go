package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/sys/unix"
)

// Records written, synced at intervals (BatcherConfig.Written; config
// audit.request_durability "written", the default). A group commit makes every answer wait
// for a write and an fdatasync, and that wait — not the write — was most of what the log
// cost a request (docs/PERFORMANCE.md): a handler parked and woken, fewer requests a second
// for the same fixed costs. Here the request's own goroutine writes its record into the
// open segment's shadow, a file on tmpfs mapped shared (startShadow): the bytes are in
// kernel memory when the store returns, so they survive the process — killed, crashed,
// out of memory — without a system call or a wait. The process's own copy of them reaches
// the disk within SyncEvery (a write and an fdatasync in the background), and at once
// when the segment is closed. So
// the promise is: an answer the client has is in the log unless the *host* lost its power
// or kernel within SyncEvery of it; every security decision (leases, approvals, unseal,
// revocation, key changes, detector actions) is still durable before it takes effect, and
// "synced" keeps the group commit for request records too.
//
// A packed segment (v4 header, flags flagPacked | flagLeafMAC | keyed): the header, zeros
// to the end of its first page, then frames one after another — a v4 frame each (length,
// its CRC, the payload's CRC, the payload, the MAC chained from the previous frame's over
// the record's leaf hash), one record per frame. The file on the disk grows as the syncs
// write its frames (its shadow on tmpfs is the one allocated whole, mappedSize bytes, when
// it starts), so a closed segment is exactly its frames: its batch's bundle as it stands —
// if its size is still the frames' end and its name still the open file's (namesOpen;
// else its records are folded from memory). The header is written and synced, with the
// file's name, before the first record; a closed segment is synced before the next one's
// header (which links it) is written, so a later segment's link names what is on the disk
// — except when the close's own write or sync failed (a full disk, EIO): the link then
// names the end the process wrote, and the closed segment's shadow is kept on tmpfs until
// its fold, so that a process dying first leaves those records to the next (a host lost
// with them is the residual: the next process finds the link broken and refuses records
// until the directory is repaired — outside round 47's TestAttack47SegmentImmutableThroughClose
// without the shadow). Reading (scanPacked): frames until one fails or zeros begin; after a
// crash of the host, pages past the last sync may be lost in any order, so a frame that
// fails ends the segment, and bytes after it that are not zeros are reported (lost, an
// ALERT) — they cannot be checked (the MAC chain runs through the lost frame). A segment
// with a later one is held to its link as every v4 segment (checkLinks), so this leniency
// is the last segment's only: what an attacker with the disk could already do to a paged
// segment's last frames (drop them) — not alter, reorder or move records.

// mappedSize is a packed segment's room: ~4,096 request records of ~1 KiB. A record that
// does not fit closes the segment.
var mappedSize int64 = 4 << 20

// room is a packed segment's room: mappedSize unless the batcher was given another.
func (j *journal) room() int64 {
	if j.segBytes > 0 {
		return j.segBytes
	}
	return mappedSize
}

// DefaultSyncEvery is how often written records are synced (BatcherConfig.SyncEvery):
// the most a host crash (power, the kernel) can lose of answered requests' records; a
// process crash loses nothing (the shadow on tmpfs). It was 50 ms until the thirty-fourth
// session and 100 ms until the thirty-eighth; each doubling took about half of the sync's
// share of the log's CPU a request (log on ÷ off, paired, 14 rounds each: 1.113 at 100
// ms, 1.093 at 200 ms; docs/PERFORMANCE.md), toward the 10 % budget — request
// records are many and each matters little alone, and PostgreSQL's asynchronous commit
// accepts up to three times its 200 ms wal_writer_delay. Security decisions are synced
// before they take effect either way; "synced" durability has no window.
const DefaultSyncEvery = 200 * time.Millisecond

// ShadowBase is the tmpfs under which journals keep their open segments' shadows
// (shadowRootFor); "" (no tmpfs at /dev/shm): records are written to the segment with
// pwrite, a system call each. Tests may set it.
var ShadowBase = func() string {
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC {
		return "/dev/shm"
	}
	return ""
}()

// shadowRootFor is where the journal rooted at root keeps its shadows: a directory under
// ShadowBase named after root's absolute path ("" without ShadowBase). A process's shadows
// are in <shadow root>/<its journal directory's name>/<segment name>.
func shadowRootFor(root string) string {
	if ShadowBase == "" {
		return ""
	}
	r := shadowRootAt(resolvedPath(root))
	if !trustedShadowRoot(r) {
		return ""
	}
	return r
}

// trustedShadowRoot: r does not exist yet (this process makes it, 0700), or is a
// directory — not a link — of this user's that no one else may write or read. /dev/shm is
// everyone's and r's name can be computed: one planted by another user (to feed this
// process shadows, or have it write through a link) is not used — records are then written
// with pwrite, and a dead journal is read from the disk.
func trustedShadowRoot(r string) bool {
	st, err := os.Lstat(r)
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	if err != nil || !st.IsDir() || st.Mode().Perm()&0o077 != 0 {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && int(sys.Uid) == os.Geteuid()
}

// resolvedPath is p absolute, its links resolved while it exists.
func resolvedPath(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	return abs
}

// shadowRootAt is shadowRootFor for a resolved journal root.
func shadowRootAt(resolved string) string {
	h := sha256.Sum256([]byte(resolved))
	return filepath.Join(ShadowBase, "strongroom-journal-"+hex.EncodeToString(h[:8]))
}

// shadowDirFor is the shadow directory of the journal directory dir ("" without one).
func shadowDirFor(dir string) string {
	r := shadowRootFor(filepath.Dir(dir))
	if r == "" {
		return ""
	}
	return filepath.Join(r, filepath.Base(dir))
}

// mapped is a journal's state for packed segments; wmu guards it and the journal's open
// segment (the writers are the requests' goroutines).
type mapped struct {
	wmu sync.Mutex
	// smu orders the sync's copy out of the shadow against the shadow's unmapping (a
	// close: under wmu, then smu); gen counts closed segments and synced is the open
	// one's bytes known durable (both under smu; set under wmu too).
	smu    sync.Mutex
	gen    uint64
	synced int64
	wrote  atomic.Bool // a sync wrote and flushed bytes (taken by runWritten: Log.provenUntil)
	cut    error       // the open segment or its shadow was cut or removed (checkSegment)
	shadow *os.File    // the open segment's shadow (nil: records go to the segment by pwrite)
	// shadowPath is the shadow's name (a closed segment's shadow is kept, renamed for the
	// next); shadowUsed how many of its bytes were written.
	shadowPath string
	shadowUsed int64
	mm         []byte    // the shadow's mapping
	own        []byte    // with a shadow: the segment's bytes as written, what syncs copy to the disk (ownBuf's)
	ownBuf     *ownBuf   // own's holder: the closed segment takes it (its records' Raw point into it)
	owns       ownPool   // own buffers whose segments are folded and indexed, for the next segments
	firstAt    time.Time // when the open segment's first record was written
	hm         hash.Hash // HMAC-SHA256 with the journal's key, reused
	leafH      hash.Hash // SHA-256, reused for records' leaf hashes
	macBuf     [sha256.Size]byte
	macOut     [sha256.Size]byte // frameMapped's MAC and leaf sums (wmu)
	leafOut    [sha256.Size]byte
	closedW    bool        // the batcher closed: no more records
	faulted    atomic.Bool // the shadow's mapping faulted (cut from under the process)
	noShm      bool        // a shadow could not be made: this journal writes with pwrite
	// shadowLock is the open segment's shadow directory, flocked shared while this process
	// may write shadows in it (lockShadowDir: shadowLive), and shadowLockDir its path.
	shadowLock    *os.File
	shadowLockDir string
	segBytes      int64 // a packed segment's room (0: mappedSize; tests make it small)
	warn          func(msg string, args ...any)
}

// errSegmentFault: the shadow's mapping faulted (the file cut from under the process).
var errSegmentFault = errors.New("journal shadow faulted (cut from under the process?)")

// startMapped starts a packed segment: its header written and synced with its name, and
// its shadow made (the header, room for mappedSize bytes allocated, mapped and its pages
// mapped in writable ahead — MADV_POPULATE_WRITE: a store is then a copy, no fault).
func (j *journal) startMapped() (err error) {
	seq, name, path, err := j.nextSegment()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	hdr := j.header()
	if _, err = f.Write(hdr); err != nil {
		return err
	}
	if err = fsutil.SyncData(f); err != nil {
		return err
	}
	if !j.noShm && ShadowBase != "" && !fileExists(filepath.Join(j.dir, shadowedMarker)) {
		// Synced with the header's directory: a refold that finds no shadow of this
		// directory's last segment says what may be lost (readSegments).
		os.WriteFile(filepath.Join(j.dir, shadowedMarker), nil, 0o600)
	}
	if err = fsutil.SyncDir(j.dir); err != nil {
		return err
	}
	j.f, j.open = f, seq
	j.size = pageSize
	j.smu.Lock()
	j.synced = int64(len(hdr))
	j.smu.Unlock()
	if !j.noShm {
		if serr := j.startShadow(name, hdr); serr == nil {
			j.startOwn(hdr)
		} else {
			j.noShm = true // said once; records are written with pwrite from here on
			os.Remove(filepath.Join(j.dir, shadowedMarker))
			if j.warn != nil {
				j.warn("request journal: no shadow on tmpfs for written records; each is written with a system call (slower)", "err", serr)
			}
		}
	}
	j.mac = firstMAC(j.key, macName(j.dir, name)+string(hdr))
	if j.key != nil && j.hm == nil {
		j.hm = hmac.New(sha256.New, j.key)
	}
	if j.leafH == nil {
		j.leafH = sha256.New()
	}
	j.sum = sha256.New()
	j.sum.Write(hdr)
	j.sum.Write(zeroPage[:pageSize-len(hdr)])
	return nil
}

// startShadow makes the open segment's shadow: hdr, room for mappedSize, mapped.
func (j *journal) startShadow(name string, hdr []byte) error {
	dir := shadowDirFor(j.dir)
	if dir == "" {
		return errors.New("no tmpfs for shadows")
	}
	// The root may be removed between MkdirAll's steps by another process's close that
	// found it empty (removeEmptyShadowRoot): tried again.
	err := os.MkdirAll(dir, 0o700)
	for try := 0; errors.Is(err, os.ErrNotExist) && try < 3; try++ {
		err = os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return err
	}
	if !trustedShadowRoot(filepath.Dir(dir)) { // made by another as this one looked
		return fmt.Errorf("shadow directory %s is not this user's alone", filepath.Dir(dir))
	}
	if j.shadowLockDir != dir {
		j.releaseShadowLock()
		j.shadowLock, j.shadowLockDir = lockShadowDir(dir), dir
	}
	if marker := filepath.Join(filepath.Dir(dir), "journal"); !fileExists(marker) {
		// Which journal the shadows are for: a sweep removes them once it is gone.
		os.WriteFile(marker, []byte(resolvedPath(j.root)), 0o600)
	}
	if owner := filepath.Join(dir, shadowOwnerFile); !fileExists(owner) {
		// Which journal directory, on the disk, the shadows are of: a copy's is another.
		if id := journalDirID(j.dir); id != "" {
			os.WriteFile(owner, []byte(id), 0o600)
		}
	}
	path := filepath.Join(dir, name)
	if j.mm != nil {
		// The last segment's shadow, kept: its pages are in memory already (on this VM a
		// page's first store after it was freed cost ~5 µs — the host's fault, not the
		// guest's: MADV_POPULATE_WRITE did not avoid it). Cleared, the header written,
		// renamed: a crash between leaves a shadow whose header is not its segment's,
		// which reading ignores (withShadow).
		err := j.copyOut(func() error {
			clear(j.mm[:j.shadowUsed])
			copy(j.mm, hdr)
			return nil
		})
		if err == nil {
			err = os.Rename(j.shadowPath, path)
		}
		if err == nil {
			j.shadowPath, j.shadowUsed = path, int64(len(hdr))
			return nil
		}
		j.dropShadow()
	}
	s, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_RDWR|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	err = unix.Fallocate(int(s.Fd()), 0, 0, j.room()) // tmpfs: a full one says so here
	if err == nil {
		_, err = s.WriteAt(hdr, 0)
	}
	var mm []byte
	if err == nil {
		mm, err = unix.Mmap(int(s.Fd()), 0, int(j.room()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	}
	if err == nil {
		// Its pages mapped in writable ahead, in one call (Linux 5.14+; before, each page
		// faults at its first store: slower, not wrong). MAP_POPULATE maps a shared
		// mapping's pages read-only: each first store still faulted.
		unix.Madvise(mm, unix.MADV_POPULATE_WRITE)
	}
	if err != nil {
		s.Close()
		os.Remove(path)
		return err
	}
	j.shadow, j.mm, j.shadowPath, j.shadowUsed = s, mm, path, int64(len(hdr))
	return nil
}

// startOwn readies the process's own copy of a shadowed segment's bytes (a buffer a folded
// and indexed segment gave back, or a new one): the header, zeros to the first frame.
func (j *journal) startOwn(hdr []byte) {
	if j.ownBuf == nil { // else left by a start that failed after it: no segment holds it
		j.ownBuf = j.owns.get(j.room())
		j.own = j.ownBuf.b
	}
	clear(j.own[:pageSize])
	copy(j.own, hdr)
}

// An ownBuf holds a packed segment's bytes as this process wrote them (mapped.own). The
// records written into it keep their Raw there — not each a copy on the heap, which held
// about a second of records from fold to fold, a swing the runtime's scavenger gave back
// and the next requests faulted in again (docs/PERFORMANCE.md, twenty-fourth and
// twenty-sixth sessions). The closed segment takes it; the fold holds it until the
// segment is folded, the log's index until it has the batch's records (Log.rememberRecords);
// then it goes back to its pool for a later segment, its pages still mapped in.
type ownBuf struct {
	b    []byte
	refs atomic.Int32
	pool *ownPool
	// The segment's records and leaf hashes (closeMapped), for the next segment's too.
	recs   []store.AuditEvent
	leaves [][sha256.Size]byte
}

// hold counts one more user of o's records (nil: none to count).
func (o *ownBuf) hold() {
	if o != nil {
		o.refs.Add(1)
	}
}

// release ends a use of o's records; the last gives o back to its pool. Nothing may read
// a record's Raw out of o after its release.
func (o *ownBuf) release() {
	if o != nil && o.refs.Add(-1) == 0 {
		o.pool.put(o)
	}
}

// ownPool keeps a few given-back own buffers (each a segment's room, only the pages
// written mapped in).
type ownPool struct {
	mu   sync.Mutex
	free []*ownBuf
	made int // buffers made (tests)
	out  int // buffers given and not back
	peak int // the most out at once
}

// ownPoolSize is how many given-back buffers the pool keeps at least: an open segment,
// one being folded, one waiting for the index. It keeps as many as were out at once, up to
// ownPoolMax: under load the index takes a second's segments together (4–5 at 15,000
// requests a second), and a pool of 3 dropped one buffer a second and made another —
// 4 MiB, each page faulted in again (~5 µs a page on this VM; the thirty-ninth session).
const (
	ownPoolSize = 3
	ownPoolMax  = 8
)

func (p *ownPool) get(size int64) *ownBuf {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out++
	p.peak = max(p.peak, p.out)
	if n := len(p.free); n > 0 && int64(len(p.free[n-1].b)) == size {
		o := p.free[n-1]
		p.free = p.free[:n-1]
		o.refs.Store(1)
		return o
	}
	p.made++
	o := &ownBuf{b: make([]byte, size), pool: p}
	o.refs.Store(1)
	return o
}

func (p *ownPool) put(o *ownBuf) {
	clear(o.recs[:cap(o.recs)]) // no stale record's strings kept alive
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out--
	if len(p.free) < min(max(ownPoolSize, p.peak), ownPoolMax) {
		p.free = append(p.free, o)
	}
}

// writeMapped writes one record as a frame of the open packed segment (wmu held),
// closing it first — returned, for folding — when it holds most records or the frame does
// not fit, and starting one when none is open. When it returns nil the record survives
// the process (in the shadow on tmpfs, or the segment's page cache), and reaches the
// disk within SyncEvery.
func (j *journal) writeMapped(rec store.AuditEvent, most int) (closed *segment, err error) {
	need := int64(frameHeader + binary.MaxVarintLen64 + len(rec.Raw) + sha256.Size)
	if j.f != nil && (len(j.recs) >= most || j.size+need > j.room()) {
		if closed, err = j.closeMapped(true); err != nil {
			return closed, err
		}
	}
	if j.f == nil {
		if err := j.start(); err != nil {
			return closed, err
		}
	}
	leaf, kept, err := j.frameMapped(rec.Raw)
	if err != nil {
		return closed, err
	}
	rec.Raw = kept // the caller's buffer is its own again
	if len(j.recs) == 0 {
		j.firstAt = time.Now()
		if j.recs == nil {
			// Room for as many as the last segment held, twice (a segment under load holds
			// most): grown record by record, the slices' copies — a write barrier per
			// pointer while the GC runs — cost ~0.7 µs a record (BenchmarkRequestRecord).
			// With an own buffer, its slices from an earlier segment when they are as big.
			n := min(most, max(64, 2*j.lastRecs))
			if o := j.ownBuf; o != nil && cap(o.recs) >= n && cap(o.leaves) >= n {
				j.recs, j.leaves = o.recs[:0], o.leaves[:0]
			} else {
				j.recs, j.leaves = make([]store.AuditEvent, 0, n), make([][sha256.Size]byte, 0, n)
			}
		}
	}
	j.recs = append(j.recs, rec)
	j.leaves = append(j.leaves, leaf)
	return closed, nil
}

// frameMapped writes raw as the next frame: into the process's own copy and from there
// into the shadow, or by pwrite into the segment. It returns raw's leaf hash (its frame's
// MAC is chained over it: flagLeafMAC) and the record's bytes as the journal keeps them
// (in own; without a shadow a copy). A fault of the shadow's mapping (the file cut:
// SIGBUS) is an error, not a crash.
func (j *journal) frameMapped(raw []byte) (leaf [sha256.Size]byte, kept []byte, err error) {
	start := j.size
	fr := j.buf[:0]
	if j.mm != nil {
		fr = j.own[start:start] // writeMapped made room (j.room())
	}
	fr = append(fr, make([]byte, frameHeader)...)
	fr = binary.AppendUvarint(fr, uint64(len(raw)))
	at := len(fr)
	fr = append(fr, raw...)
	b := fr[frameHeader:]
	binary.LittleEndian.PutUint32(fr, uint32(len(b)))
	binary.LittleEndian.PutUint32(fr[4:], crc32.Checksum(fr[:4], castagnoli))
	binary.LittleEndian.PutUint32(fr[8:], crc32.Checksum(b, castagnoli))
	// The hashes' sums go into the journal's own arrays: a local's address handed to an
	// interface's Sum is a heap allocation a record.
	recordLeaf(j.leafH, raw, &j.leafOut)
	leaf = j.leafOut
	if j.hm != nil {
		j.hm.Reset()
		j.hm.Write(j.mac)
		j.hm.Write(j.leafOut[:])                   // not leaf's: a local handed to the interface goes to the heap
		fr = append(fr, j.hm.Sum(j.macOut[:0])...) // j.mac moves only once the frame is stored
	}
	if j.mm != nil {
		if &fr[0] != &j.own[start] { // grown past own: never (writeMapped's room), but never a record lost to it
			return leaf, nil, errors.New("journal frame does not fit its segment")
		}
		if err := j.copyToShadow(fr, start); err != nil {
			return leaf, nil, err
		}
		kept = fr[at : at+len(raw) : at+len(raw)]
	} else {
		j.buf = fr
		if _, err := j.f.WriteAt(fr, start); err != nil {
			return leaf, nil, err
		}
		kept = bytes.Clone(raw)
	}
	if j.hm != nil {
		j.macBuf = j.macOut
		j.mac = j.macBuf[:]
	}
	j.sum.Write(fr)
	j.size = start + int64(len(fr))
	return leaf, kept, nil
}

// copyToShadow stores fr at off in the shadow's mapping.
func (j *journal) copyToShadow(fr []byte, off int64) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			j.faulted.Store(true)
			err = errSegmentFault
		}
	}()
	copy(j.mm[off:], fr)
	return nil
}

// flushOwn writes the segment's bytes not yet on the disk, from synced to size, from the
// process's own copy (own; nil: written by pwrite already) — never from the shadow, which
// anyone who can write /dev/shm as this user could have altered: the segment on disk is
// linked as its batch's bundle under the SHA-256 of what was written (outside round 32 had
// an altered shadow byte linked so). Those bytes never change once written: the writers
// only append.
//
// A segment cut from under the process below synced and then written here again past
// the cut (pwrite extends the file: the cut bytes read as zeros) has a size checkSegment
// cannot tell from an intact one's; so once written, the bytes just before synced are read
// back and held to own's (checkKept). smu held.
func (j *journal) flushOwn(f *os.File, own []byte, synced, size int64) error {
	if own == nil || size <= synced {
		return nil
	}
	if err := fsutil.WriteAt(f, own[synced:size], synced); err != nil {
		return err
	}
	return j.checkKept(f, own, synced)
}

// checkKept (smu held) reads back the segment's last bytes before at (up to a MAC's
// length: a frame ends with its MAC, the first page with the header) and holds them to
// own's; a difference or an end of file is a cut (j.cut, as checkSegment's), an error
// reading is returned as it is.
func (j *journal) checkKept(f *os.File, own []byte, at int64) error {
	var got [sha256.Size]byte
	from := max(0, at-int64(len(got)))
	b := got[:at-from]
	err := fsutil.ReadAt(f, b, from)
	if err == nil && bytes.Equal(b, own[from:at]) {
		return nil
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	j.cut = fmt.Errorf("journal segment cut from under the process (the bytes before %d, synced, are gone)", at)
	return j.cut
}

// closeMapped closes the open packed segment: the shadow's bytes written into it, synced
// (before the next header names it), the shadow removed. It returns the segment with its
// records (nil: none) and whether that was all durable (an error: records written since
// the last sync may not be — they are folded all the same, from memory).
func (j *journal) closeMapped(whole bool) (*segment, error) {
	j.smu.Lock()
	err := j.checkSegment()
	if err != nil {
		whole = false // cut or removed from under the process: not the bytes written
		err = nil     // its records are folded from memory; the next segment is new
	}
	if j.mm != nil {
		err = j.flushOwn(j.f, j.own, j.synced, j.size)
		if err != nil && err == j.cut {
			whole, err = false, nil // as a cut found above
		}
	}
	if err == nil {
		err = fsutil.SyncData(j.f)
	}
	if err == nil && whole && !j.namesOpen() {
		whole = false // lengthened or replaced from under the process (outside round 47)
	}
	faulted := j.faulted.Swap(false)
	if faulted {
		whole = false // the shadow is not what was written: no bundle as it stands
	}
	if err != nil {
		whole = false
	}
	j.gen++
	switch {
	case j.cut != nil || faulted:
		j.dropShadow() // not what was written: not to be reused, nor read by the next process
	case err != nil:
		// Not synced (a full disk, EIO): the shadow is the only copy of the records since
		// the last sync that outlives this process. Kept on tmpfs (not reused) until the
		// segment is folded, which removes it; a process that dies first leaves it to the
		// next, which reads it with the segment (outside round 47 lost such records when
		// the fold failed too and the shadow had been removed).
		j.leaveShadow()
	case !whole:
		j.dropShadow()
	}
	j.shadowUsed = j.size
	j.cut = nil
	j.smu.Unlock()
	seg := &segment{path: j.f.Name(), recs: j.recs, leaves: j.leaves, batch: j.batch, own: j.ownBuf}
	if o := j.ownBuf; o != nil && cap(j.recs) > cap(o.recs) { // the larger of the slices, for later segments
		o.recs, o.leaves = j.recs[:0], j.leaves[:0]
	}
	j.own, j.ownBuf = nil, nil // the records' bytes: the segment's now
	j.lastRecs = len(j.recs)
	if whole {
		seg.sum = j.sum.Sum(nil)
	}
	if len(seg.recs) > 0 { // the next segment names this one
		j.prev, j.prevFloor = segLink{seq: j.open + 1, recs: uint32(len(seg.recs))}, j.floor.Load()
		copy(j.prev.mac[:], j.mac)
	}
	j.f.Close()
	j.f, j.recs, j.leaves, j.mac = nil, nil, nil, nil
	if len(seg.recs) == 0 {
		os.Remove(seg.path)
		seg.own.release()
		return nil, err
	}
	return seg, err
}

// copyOut runs fn, which reads the shadow's mapping: a fault is an error.
func (j *journal) copyOut(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			j.faulted.Store(true)
			err = errSegmentFault
		}
	}()
	return fn()
}

// namesOpen (smu held) says whether the open segment, now synced, is exactly what was
// written and still at its name: its size the frames' end (not lengthened: zeros after
// the last frame make no bundle DecodeBundle reads) and its path naming the descriptor's
// file (not moved away with another put in its place — the fold links the path).
func (j *journal) namesOpen() bool {
	var fd, at unix.Stat_t
	if unix.Fstat(int(j.f.Fd()), &fd) != nil || unix.Stat(j.f.Name(), &at) != nil {
		return false
	}
	return fd.Size == j.size && fd.Dev == at.Dev && fd.Ino == at.Ino
}

// leaveShadow unmaps and closes the open segment's shadow, if any, leaving its file where
// it is (the next segment makes a new one).
func (j *journal) leaveShadow() {
	if j.mm == nil {
		return
	}
	unix.Munmap(j.mm)
	j.shadow.Close()
	j.mm, j.shadow = nil, nil
}

// dropShadow unmaps, closes and removes the open segment's shadow, if any (its bytes are
// in the segment, synced, or the segment is abandoned).
func (j *journal) dropShadow() {
	if j.mm == nil {
		return
	}
	os.Remove(j.shadowPath)
	j.leaveShadow()
}

// syncMapped makes the open packed segment's records durable: the shadow's new bytes
// written into the segment (from the process's own copy), and an fdatasync. The writers go
// on meanwhile: wmu is held only to read where they are; smu orders this against a close
// (a writer closing the segment waits, then copies and syncs what is left itself).
func (j *journal) syncMapped() error {
	j.wmu.Lock()
	f, own, size, gen := j.f, j.own, j.size, j.gen
	if j.mm == nil {
		own = nil // written by pwrite: only the sync is left
	}
	j.wmu.Unlock()
	if f == nil {
		return nil
	}
	j.smu.Lock()
	defer j.smu.Unlock()
	if j.gen != gen {
		return nil // closed meanwhile: closing synced it
	}
	synced := j.synced
	if err := j.checkSegment(); err != nil {
		return err
	}
	if size <= synced {
		return nil
	}
	err := j.flushOwn(f, own, synced, size)
	if err == nil {
		err = fsutil.SyncData(f)
	}
	if err == nil {
		j.synced = size
		j.wrote.Store(true)
	}
	return err
}

// deadShadowDirs are the directories that may hold the shadows of the dead journal
// directory dir, for reading: its shadow root's (trusted or not: shadowRootAt, for a
// refold run as another user or after the root's mode changed) and any other root's
// directory of the same name — the journal root moved or renamed since the process died
// (a process directory's name is random: the same name is the same directory, or a copy
// of it). What is read there is held to the journal's MACs, which bind the segment's
// directory name, file name and header: a plant can be refused, never taken. Only real
// directories (not links) are listed; those that are this user's alone are trusted, and
// those of them that are dir's own (its root's, or a root whose journal is gone) are
// marked for removal.
func deadShadowDirs(dir string) (dirs []shadowDir) {
	if ShadowBase == "" {
		return nil
	}
	base := filepath.Base(dir)
	own := shadowRootAt(resolvedPath(filepath.Dir(dir)))
	id := journalDirID(dir)
	roots, _ := filepath.Glob(filepath.Join(ShadowBase, "strongroom-journal-*"))
	if !slices.Contains(roots, own) {
		roots = append(roots, own)
	}
	for _, r := range roots {
		d := filepath.Join(r, base)
		if st, err := os.Lstat(d); err != nil || !st.IsDir() {
			continue
		}
		trusted := trustedShadowRoot(r) && trustedShadowRoot(d)
		mine := trusted && (r == own || shadowJournalGone(r))
		if b, err := readRegular(filepath.Join(d, shadowOwnerFile), 64); trusted && err == nil && len(b) > 0 {
			mine = id != "" && string(b) == id
		}
		if mine && shadowLive(d) {
			mine = false // a living process writes there: never its to remove
		}
		dirs = append(dirs, shadowDir{path: d, trusted: trusted, mine: mine})
	}
	return dirs
}

// shadowedMarker, in a journal directory on the disk, says that its process wrote records
// into shadows (its last segment's records past its last sync were on tmpfs alone): made
// when its first segment starts, removed if the journal falls back to pwrite. A refold
// that finds no shadow of such a directory's last segment — the host restarted, or
// /dev/shm was replaced or cleared between the process's lifetimes (a container's new
// private /dev/shm, systemd's RemoveIPC: outside round 52, 30 acknowledged records lost
// silently) — says so in an ALERT: what the process wrote after its last sync, up to
// request_sync_interval of answered requests, may be lost.
const shadowedMarker = "shadowed"

// lockShadowDir opens the shadow directory dir and takes a shared flock on it, held while
// the process lives (nil if it cannot: the process then does without). flock works across
// mount namespaces on one tmpfs, where a path does not: two containers sharing /dev/shm
// (--ipc=host) see each other's shadow roots, and each other's journal paths as gone
// (outside round 52's list: a sweep in one would remove the other's live shadows after the
// grace). A sweep's probe (shadowLive) holds the lock exclusively for two system calls, so
// a refused try is tried again.
func lockShadowDir(dir string) *os.File {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	for range 3 {
		if err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
			return f
		}
	}
	f.Close()
	return nil
}

// releaseShadowLock drops the shadow directory's lock (lockShadowDir), if held.
func (j *journal) releaseShadowLock() {
	if j.shadowLock != nil {
		j.shadowLock.Close()
	}
	j.shadowLock, j.shadowLockDir = nil, ""
}

// shadowLive says whether a living process holds the shadow directory d (lockShadowDir):
// its shadows are being written, whatever its root's marker says.
func shadowLive(d string) bool {
	f, err := os.OpenFile(d, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close() // and with it the probe's lock
	return errors.Is(unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB), unix.EWOULDBLOCK)
}

// rootLive says whether a living process holds any shadow directory of the root r.
func rootLive(r string) bool {
	ents, _ := os.ReadDir(r)
	for _, e := range ents {
		if e.IsDir() && shadowLive(filepath.Join(r, e.Name())) {
			return true
		}
	}
	return false
}

// shadowOwnerFile, in a journal directory's shadow directory, names that journal
// directory on the disk (journalDirID). A directory's path does not: a journal root moved
// away and a copy put at its path, or a copy refolded while the original is moved or
// unmounted, have the same directory names (outside round 52: the copy's refold took the
// moved original's shadows, which then lost 30 acknowledged records silently). Not a
// segment's name: readers skip it.
const shadowOwnerFile = "journal-dir"

// journalDirID is the journal directory dir's identity on the disk — its device and
// inode, which a rename within its file system, a symlink or a bind mount keep and a
// copy does not ("" if it cannot be read).
func journalDirID(dir string) string {
	st, err := os.Stat(dir)
	if err != nil {
		return ""
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return strconv.FormatUint(sys.Dev, 10) + ":" + strconv.FormatUint(sys.Ino, 10)
}

// shadowDir is a directory of a dead journal's shadows (deadShadowDirs).
type shadowDir struct {
	path    string
	trusted bool // this user's alone: damage in it refuses the directory
	// mine: trusted, and its shadowOwnerFile names dir (the same directory on the disk,
	// reached by any path); without one (made by an older version), in dir's own shadow
	// root or in one whose journal is gone (moved here). Its shadows are removed once
	// folded. Another's — a copy's original (a directory copied elsewhere keeps its name:
	// outside rounds 51 and 52) — are read, never removed.
	mine bool
}

// shadowJournalGone says whether the shadow root r names, in its "journal" file, a
// journal root that no longer exists.
func shadowJournalGone(r string) bool {
	_, err := shadowJournal(r)
	return errors.Is(err, os.ErrNotExist)
}

// shadowJournal reads the journal root that the shadow root r names in its "journal"
// file and stats it: the error is the stat's (os.ErrNotExist: the journal is gone), or
// errNoMarker when r names none.
func shadowJournal(r string) (string, error) {
	b, err := readRegular(filepath.Join(r, "journal"), 4<<10)
	if err != nil || len(b) == 0 {
		return "", errNoMarker
	}
	_, err = os.Stat(string(b))
	return string(b), err
}

var errNoMarker = errors.New("shadow root names no journal")

// deadShadowNames lists the canonical segment names that have a shadow in dirs.
func deadShadowNames(dirs []shadowDir) (seqs []uint64) {
	for _, d := range dirs {
		ents, _ := os.ReadDir(d.path)
		for _, e := range ents {
			if seq, ok := segmentSeq(e.Name()); ok && e.Type().IsRegular() && !slices.Contains(seqs, seq) {
				seqs = append(seqs, seq)
			}
		}
	}
	return seqs
}

// withShadow reads the shadow of the segment at path (disk: its bytes, nil when it is not
// on the disk), if there is one (a process that died with the segment open: killed,
// crashed), and returns what it holds instead of sc — the segment holds what was synced,
// its shadow every record written — after checking that the segment's records begin it
// (the shadow on tmpfs is lost with the host, never torn: a disagreement is an outside
// hand, refused). A shadow's last frame may be cut (a process killed in its copy: a
// record never acknowledged), so it is not reported as lost; a frame that fails with a
// whole frame after it is damage, refused. A shadow is the segment's own when its records
// check under the segment's name and header (the MAC chain binds both): a closed
// segment's shadow is kept for the next one, and a crash between its renaming and its
// rewriting leaves one under the next name holding no record of it — ignored. So a
// segment whose file on the disk is gone, cut inside its header or has its header edited
// is read from its shadow, not dropped with it (outside round 50).
func withShadow(sc segScan, whole bool, path string, disk, key []byte, dirs []shadowDir) (segScan, bool, error) {
	for _, d := range dirs {
		b, err := readShadow(filepath.Join(d.path, filepath.Base(path)))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		sameHeader := disk != nil && bytes.Equal(b[:min(len(b), journalHeader)], disk[:min(len(disk), journalHeader)])
		if err != nil {
			if d.trusted && (sameHeader || disk == nil) {
				return sc, whole, fmt.Errorf("%w: %s: its shadow: %v", ErrEvent, path, err)
			}
			continue // another user's plant, or not this segment's: its records would not check
		}
		ssc, err := scanSegment(b, path, key, false)
		if err == nil && ssc.lost && laterFrame(b, ssc.n) {
			// Also a shadow whose header was edited: its first frame fails, its others
			// are whole (a kept shadow a crash left under the next name holds none).
			err = fmt.Errorf("%w: %s: its shadow: a frame that fails with whole frames after it (damaged)", ErrEvent, path)
		}
		if err != nil {
			if d.trusted && (sameHeader || disk == nil || ssc.lost) {
				return sc, whole, fmt.Errorf("%s: its shadow: %w", path, err)
			}
			continue
		}
		if len(ssc.recs) == 0 && !sameHeader {
			continue // another segment's, kept for this one and not yet rewritten
		}
		if len(ssc.recs) < len(sc.recs) {
			return sc, whole, fmt.Errorf("%w: %s: its shadow holds fewer records than it (%d, %d)", ErrEvent, path, len(ssc.recs), len(sc.recs))
		}
		for i, r := range sc.recs {
			if !bytes.Equal(r, ssc.recs[i]) {
				return sc, whole, fmt.Errorf("%w: %s: record %d differs from its shadow's", ErrEvent, path, i)
			}
		}
		ssc.lost = false
		return ssc, false, nil
	}
	return sc, whole, nil
}

// laterFrame says whether b holds, past from, a frame whose length and payload check
// (CRC32C) — a whole frame written after the one that ended a shadow's scan. A process
// killed in its copy leaves only that one in part, and zeros after it.
func laterFrame(b []byte, from int) bool {
	end := len(b)
	for end > from && b[end-1] == 0 {
		end--
	}
	for p := from + 1; p+frameHeader <= end; p++ {
		if _, _, bad := frameAt(b[p:end], frameHeader, 0, true); bad == "" {
			return true
		}
	}
	return false
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// ShadowOrphanGrace is how long a sweep keeps a shadow root whose journal is gone but
// that still holds shadows. A journal root moved after its process died (a data directory
// moved to another disk, or mounted at another path by the next container) has the
// records written after its last sync only there; its next start reads them by the dead
// directory's name (deadShadowDirs) and removes them once folded. A root without shadows
// goes at once.
var ShadowOrphanGrace = 24 * time.Hour

// shadowGoneMarker is a shadow root's file whose time is when a sweep first found its
// journal gone (sweepShadows).
const shadowGoneMarker = "gone"

// sweepShadows removes the shadows of journals that are gone (a data directory removed
// while a process that wrote it had died: its shadows would hold tmpfs memory until the
// host restarts). A shadow root names its journal in its "journal" file; one without it
// is left alone. A root that still holds shadows is marked when its journal is first
// found gone — a warning naming the journal — and removed ShadowOrphanGrace later, with
// an ALERT (the records in it, written after its process's last sync, are lost unless the
// journal was started again at its new path meanwhile); found again, its mark is dropped.
func sweepShadows(log *slog.Logger) {
	if ShadowBase == "" {
		return
	}
	roots, _ := filepath.Glob(filepath.Join(ShadowBase, "strongroom-journal-*"))
	for _, r := range roots {
		if !trustedShadowRoot(r) {
			continue
		}
		journal, err := shadowJournal(r)
		if errors.Is(err, errNoMarker) {
			continue
		}
		mark := filepath.Join(r, shadowGoneMarker)
		switch {
		case err == nil:
			os.Remove(mark) // back (moved back, a disk mounted again)
		case !errors.Is(err, os.ErrNotExist) || shadowRootAt(journal) != r:
		case rootLive(r):
			os.Remove(mark) // a living process writes its shadows: its journal is where it sees it
		case !holdsShadows(r):
			os.RemoveAll(r)
		default:
			st, err := os.Lstat(mark)
			switch {
			case errors.Is(err, os.ErrNotExist):
				if f, err := os.OpenFile(mark, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600); err == nil {
					f.Close()
					if log != nil {
						log.Warn("request journal gone with the shadows of a stopped process's unsynced records: kept until the journal starts at its new path, or removed after the grace", "journal", journal, "shadows", r, "grace", ShadowOrphanGrace)
					}
				}
			case err == nil && st.Mode().IsRegular() && time.Since(st.ModTime()) >= ShadowOrphanGrace:
				os.RemoveAll(r)
				if log != nil {
					log.Error("ALERT request journal gone for the grace: the shadows of a stopped process's records written after its last sync removed — those records are lost unless its journal was started at its new path", "journal", journal, "shadows", r, "grace", ShadowOrphanGrace)
				}
			}
		}
	}
}

// holdsShadows says whether the shadow root r holds a shadow with bytes in it (in one of
// its journal directories' shadow directories); a root it cannot read is taken to.
func holdsShadows(r string) bool {
	dirs, err := os.ReadDir(r)
	if err != nil {
		return true
	}
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(r, d.Name()))
		if err != nil {
			return true
		}
		for _, f := range files {
			if f.Name() == shadowOwnerFile {
				continue
			}
			if info, err := f.Info(); err != nil || !info.Mode().IsRegular() || info.Size() > 0 {
				return true
			}
		}
	}
	return false
}

// maxShadow bounds a shadow's size when it is read (this version makes them mappedSize).
const maxShadow = 64 << 20

// maxSegmentBytes bounds a journal segment's file (and so a bundle, which may be one): a
// page for the header, then at most MaxBatch records of at most MaxEventSize bytes, each
// in a frame of its own padded to a page (a paged segment's worst case), ~280 MiB.
const maxSegmentBytes = pageSize + MaxBatch*(frameHeader+binary.MaxVarintLen64+MaxEventSize+sha256.Size+pageSize)

// readShadow reads a shadow file: one this process could have made (readRegular, at most
// maxShadow bytes).
func readShadow(p string) ([]byte, error) { return readRegular(p, maxShadow) }

// readRegular reads a file the process made and someone with its directory could have
// replaced: only a regular file (not a link, FIFO or device: opened without following or
// waiting) of at most max bytes. Outside round 32 had a FIFO shadow hang the next start
// and a 1 TiB sparse one crash it; round 33 the same with a shadow root's "journal"
// marker, a dead journal's segment on the disk, and a bundle (audit verify, the index).
func readRegular(p string, max int64) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	switch {
	case err != nil:
		return nil, err
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("not a regular file (%v)", st.Mode().Type())
	case st.Size() > max:
		return nil, fmt.Errorf("%d bytes, over %d", st.Size(), max)
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, err
	}
	return b, nil
}

// removeDeadShadows removes a folded dead journal directory's shadows: in each of
// deadShadowDirs that is its own (mine; another user's is left to its sweep, a copy's
// original to the original).
func removeDeadShadows(dir string) {
	for _, d := range deadShadowDirs(dir) {
		if d.mine {
			os.RemoveAll(d.path)
			removeEmptyShadowRoot(filepath.Dir(d.path))
		}
	}
}

// removeEmptyShadowRoot removes a shadow root left with no shadow directory in it: its
// markers, then the directory itself only if still empty — never recursively, so that a
// process starting a segment in it meanwhile (its directory made after the look) keeps
// its shadow (outside round 51: a clean close racing three starts unlinked a new shadow
// whose records were then acknowledged). That process writes the marker again
// (startShadow).
func removeEmptyShadowRoot(r string) {
	ents, err := os.ReadDir(r)
	if err != nil {
		return
	}
	marked := false
	for _, e := range ents {
		switch e.Name() {
		case "journal":
			marked = true
		case shadowGoneMarker:
		default:
			return
		}
	}
	if marked {
		os.Remove(filepath.Join(r, shadowGoneMarker))
		os.Remove(filepath.Join(r, "journal"))
		os.Remove(r) // fails, not empty, if a directory was made since the look
	}
}

// removeShadows removes the shadow directory of the journal directory dir, if any.
func removeShadows(dir string) {
	if d := shadowDirFor(dir); d != "" {
		os.RemoveAll(d)
		removeEmptyShadowRoot(filepath.Dir(d))
	}
}

// checkSegment (smu held) says whether the open segment or its shadow was removed or cut
// from under the process (the segment below what was synced); once it has, it stays so.
func (j *journal) checkSegment() error {
	if j.cut != nil {
		return j.cut
	}
	var st unix.Stat_t
	switch err := unix.Fstat(int(j.f.Fd()), &st); {
	case err != nil:
		j.cut = err
	case st.Nlink == 0:
		j.cut = errors.New("journal segment removed from under the process")
	case st.Size < j.synced:
		j.cut = fmt.Errorf("journal segment cut from under the process (%d bytes, %d synced)", st.Size, j.synced)
	case j.shadow != nil && (unix.Fstat(int(j.shadow.Fd()), &st) != nil || st.Nlink == 0 || st.Size < j.room()):
		j.cut = errors.New("journal shadow removed or cut from under the process")
	}
	return j.cut
}

// scanPacked reads a packed segment's frames (scanSegment, past its header; mac the
// chain's first value): see the comment at the top of this file for what a crash leaves.
func scanPacked(b []byte, sc segScan, name string, key []byte, macLen int, mac []byte, leafMAC bool) (segScan, error) {
	var h hash.Hash
	var leaf [sha256.Size]byte
	if leafMAC {
		h = sha256.New()
	}
	if !allZero(b[journalHeader:min(pageSize, len(b))]) {
		return segScan{}, fmt.Errorf("%w: %s: bytes between the header and the first frame", ErrEvent, name)
	}
	rest := b[min(pageSize, len(b)):]
	for len(rest) > 0 && !allZero(rest) {
		if len(rest) < frameHeader {
			sc.lost = true
			break
		}
		m, whole, bad := frameAt(rest, frameHeader, macLen, true)
		payload := rest[:0]
		if bad == "" {
			payload = rest[frameHeader : frameHeader+m]
			macOf := payload
			if leafMAC { // one record, its MAC over its leaf hash
				if l, k := binary.Uvarint(payload); k <= 0 || l != uint64(len(payload)-k) || k != uvarintLen(l) {
					// One record, its length in the shortest form: nothing in the frame
					// the MAC does not fix (round 33 re-encoded a length longer).
					bad = "not one record"
				} else if key != nil {
					recordLeaf(h, payload[k:], &leaf)
					macOf = leaf[:]
				}
			}
			if bad == "" && key != nil {
				want := nextMAC(key, mac, macOf)
				if !hmac.Equal(want, rest[frameHeader+m:whole]) {
					bad = "MAC"
				}
				mac = want
			}
		}
		if bad != "" {
			sc.lost = true // a host crash's lost pages, or damage: either way the end
			break
		}
		if err := sc.addFrame(payload, mac, name); err != nil {
			return segScan{}, err
		}
		rest = rest[whole:]
	}
	sc.n = len(b) - len(rest)
	return sc, nil
}

// uvarintLen is how many bytes binary.AppendUvarint writes for v.
func uvarintLen(v uint64) int {
	var b [binary.MaxVarintLen64]byte
	return len(binary.AppendUvarint(b[:0], v))
}

// recorded is the Future of a written record.
func recorded() (uint64, error) { return 0, nil }

// write is SubmitEncoded with BatcherConfig.Written: the record is written by the caller
// into the open segment, and the returned Future is resolved. A segment it closes (full)
// goes to the folder, in order (under wmu).
func (b *Batcher) write(rec store.AuditEvent) Future {
	j := b.j
	j.wmu.Lock()
	defer j.wmu.Unlock()
	if j.closedW {
		return func() (uint64, error) { return 0, fmt.Errorf("%w: log closed", ErrUnavailable) }
	}
	seg, err := j.writeMapped(rec, b.maxRecords)
	if seg != nil {
		b.log.segments.WithLabelValues("full").Inc()
		b.folds <- foldItem{seg: seg}
	}
	if err != nil {
		err = fmt.Errorf("%w: request journal: %v", ErrUnavailable, err)
		b.log.records.WithLabelValues("failed").Inc()
		b.log.setJournalErr(err)
		return func() (uint64, error) { return 0, err }
	}
	return recorded
}

// rotateWritten closes the open packed segment when it holds records (to the folder) and
// starts the next; a failure makes the journal refuse records until a probe succeeds.
// always: start a segment even when the open one is empty (the probe: a start is a
// header written and synced). why, if set, labels the close in the segments metric.
func (b *Batcher) rotateWritten(always bool, why string) {
	j := b.j
	j.wmu.Lock()
	defer j.wmu.Unlock()
	if j.closedW || (!always && len(j.recs) == 0 && j.f != nil) {
		return
	}
	var err error
	var seg *segment
	if j.f != nil {
		seg, err = j.closeMapped(true)
	}
	if seg != nil {
		if why != "" {
			b.log.segments.WithLabelValues(why).Inc()
		}
		b.folds <- foldItem{seg: seg}
	}
	if err == nil {
		err = j.start()
	}
	if err != nil {
		b.log.log.Error("ALERT request journal: cannot close or start a segment; refusing what needs a record", "err", err)
		b.log.setJournalErr(fmt.Errorf("%w: request journal: %v", ErrUnavailable, err))
		return
	}
	if always {
		b.log.setJournalErr(nil)
	}
}

// runWritten is the committer with BatcherConfig.Written: the writers write; it syncs the
// open segment every SyncEvery, closes it for folding once its first record is FoldEvery
// old (a full one is closed by its writer), probes after a failure, and answers barriers.
func (b *Batcher) runWritten() {
	defer close(b.done)
	j := b.j
	sync := time.NewTicker(b.syncEvery)
	defer sync.Stop()
	fold := time.NewTicker(max(b.foldEvery/4, time.Millisecond))
	defer fold.Stop()
	probe := time.NewTicker(min(b.foldEvery, 200*time.Millisecond))
	defer probe.Stop()
	for {
		select {
		case <-b.stop:
			b.log.requestMode.Store(nil)
			j.wmu.Lock()
			j.closedW = true
			if j.f != nil {
				seg, err := j.closeMapped(true)
				if err != nil {
					b.log.log.Error("ALERT request journal: the last segment could not be synced at close", "err", err)
				}
				if seg != nil {
					b.folds <- foldItem{seg: seg}
				}
			}
			j.wmu.Unlock()
			close(b.folds)
			<-b.foldDone
			j.close()
			return
		case <-sync.C:
			if err := j.syncMapped(); err != nil {
				b.log.log.Error("ALERT request journal: records written since the last sync may not be durable; refusing what needs a record", "err", err)
				b.log.setJournalErr(fmt.Errorf("%w: request journal: %v", ErrUnavailable, err))
			} else if j.wrote.Swap(false) {
				// The log's directory took a write and a sync: proof until the next is due.
				b.log.provenUntil.Store(time.Now().Add(b.syncEvery + probeEvery).UnixNano())
			}
		case <-fold.C:
			j.wmu.Lock()
			due := len(j.recs) > 0 && time.Since(j.firstAt) >= b.foldEvery
			j.wmu.Unlock()
			if due {
				b.rotateWritten(false, "due")
			}
		case <-probe.C:
			if b.log.journalErr.Load() != nil {
				b.rotateWritten(true, "")
			}
		case reply := <-b.barrier:
			b.rotateWritten(false, "")
			b.folds <- foldItem{done: reply}
		}
	}
}
