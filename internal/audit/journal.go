package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/sys/unix"
)

// The request-record journal (issue 16, a log on local disk). A batch entry per group of
// records costs tessera's POSIX driver a rewrite of the entry bundle, the tiles and the
// tree state, each through a synced temporary file and a directory fsync: at a batch every
// 10 ms that was a third of the gateway's CPU. A record only needs to be durable before
// its answer completes; its place in a signed checkpoint can wait. So with a journal a
// group of records is durable after one append and one fdatasync here, and the journal is
// folded into the log — one batch entry per MaxRecords records (MaxBatch by default), as
// without it — every FoldEvery (1 s), and at once by Barrier and Close. A process that dies leaves its unfolded segments; the next Batcher on the
// directory folds them before it takes a record, skipping any batch the log already has
// (a fold that died between its entry and the segment's removal).
//
//	segment = "strongroom-journal/v3\n" || u32le(batch) || u8(keyed) || frame*
//	                                                         (DIR/<process>/<16 hex digits>.wal)
//	frame   = u32le(len(payload)) || u32le(CRC-32C(payload)) || payload || mac?
//	payload = (uvarint(len(event)) || event)*             one group of records
//	mac     = HMAC-SHA256(key, previous mac || payload)     when keyed; the first frame's
//	          "previous mac" is HMAC-SHA256(key, directory name "/" segment file name)
//	          (v2 segments, still read: the segment file name alone)
//
// batch is the records per batch entry the segment's writer folds with, so that a refold
// by another process cuts the same batches (and recognizes those already in the log).
// Each frame is synced before its records' futures resolve and before the next frame is
// written; after a failed append the segment is closed (cut back to its last whole frame)
// and the next group starts a new one. So only a segment's last frame can be torn by a
// crash, and a torn frame held no acknowledged record: a short or CRC-failing frame at the
// end ends the segment, anywhere else it is damage and the segment is refused. With a key
// (the deployment's audit key, derived), a frame whose MAC fails is refused too: records
// cannot be altered, reordered, or moved between segments or directories while they wait in the journal
// without the key. Dropping a segment's last frames cannot be told from a crash.

const journalMagic = "strongroom-journal/v3\n"

// journalMagicV2 begins the segments of versions before the eleventh session, whose first
// MAC binds the segment's file name only (v3: its directory's name too, so that a segment
// copied into another process's directory — a bundle is a closed segment, served — fails
// its MAC). They are still read, as they were written.
const journalMagicV2 = "strongroom-journal/v2\n"

// journalHeader is the magic, the batch size and the keyed flag.
const journalHeader = len(journalMagic) + 4 + 1

// maxFrame bounds a frame's payload (a group of at most MaxBatch records).
const maxFrame = MaxBatch * (MaxEventSize + binary.MaxVarintLen64)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type journal struct {
	root  string
	dir   string      // this process's own directory under the journal root
	lock  journalLock // held for the process's life: others leave the directory alone
	f     *os.File
	seq   uint64
	batch int                // records per batch entry, written in each segment's header
	key   []byte             // MAC key; nil: frames carry no MAC
	mac   []byte             // the open segment's last MAC
	size  int64              // the open segment's bytes up to its last whole frame
	recs  []store.AuditEvent // the open segment's records, in order
	buf   []byte
	sum   hash.Hash // SHA-256 of the open segment's bytes up to its last whole frame
	// zeroTail: the open segment's last frame is an unkeyed empty one (all zeros).
	zeroTail bool
	// Prewritten segments (journal_direct.go).
	direct   bool        // the open segment was prepared: written in place
	page     []byte      // direct: its last partial page's bytes, then a write's (aligned)
	spare    chan *spare // the next segment, being prepared (nil: none)
	noDirect bool        // a preparation failed: segments grow
	prewrite int64       // how many bytes of zeros the next preparation writes
}

// segment is a closed journal segment: its file, its records, its batch size.
type segment struct {
	path  string
	recs  []store.AuditEvent // those not yet folded
	batch int
	done  int // records folded from its start
	// sum is the SHA-256 of the segment's file when the file is exactly its whole frames
	// (closed by rotate, or read whole after a crash): such a segment of at most batch
	// records is its batch's bundle as it stands (bundle v2, batch.go), linked into place
	// instead of written again. nil: the file may hold more (a torn or cut-back frame).
	sum []byte
}

// journalSource names a batch folded from a journal: its process directory, segment and
// first record's position in the segment ("<dir>/<segment>@<n>"). Directories are named
// at random when a process claims one, so the name is the batch's, never another's.
func journalSource(segPath string, first int) string {
	return filepath.Base(filepath.Dir(segPath)) + "/" + filepath.Base(segPath) + "@" + strconv.Itoa(first)
}

// orphan is the journal directory of a process that is gone, locked by this one until its
// segments are folded (then removed).
type orphan struct {
	dir  string
	lock journalLock
}

// journalLock is what a live process holds on its journal directory: an exclusive flock on
// the directory itself, and one on its "lock" file. A scanner takes both, so a directory is
// left alone while either is held: the file's alone is not enough — removed (by hand, or
// an age-based cleaner: it is never written after the start) and made anew by a scanner,
// it is another inode, and an outside test had a live process's journal folded and removed
// under it, its records logged twice — and older versions hold only the file.
type journalLock struct{ dir, file *os.File }

func (l journalLock) Close() {
	for _, f := range []*os.File{l.dir, l.file} {
		if f != nil {
			f.Close()
		}
	}
}

// errJournalBusy: another process holds a journal directory's lock.
var errJournalBusy = errors.New("journal directory in use")

// lockJournal takes d's locks without waiting (errJournalBusy if a process holds one).
// newDir: d was just made by this process (its lock file must not exist yet).
func lockJournal(d string, newDir bool) (journalLock, error) {
	var l journalLock
	var err error
	if l.dir, err = os.OpenFile(d, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0); err != nil {
		return l, err
	}
	flags := os.O_CREATE | os.O_RDWR | syscall.O_CLOEXEC
	if newDir {
		flags |= os.O_EXCL
	}
	if err = unix.Flock(int(l.dir.Fd()), unix.LOCK_EX|unix.LOCK_NB); err == nil {
		// A claimed directory always has its lock file; one without it lost it (removed by
		// hand): its segments are still acknowledged records, so the file is made anew.
		if l.file, err = os.OpenFile(filepath.Join(d, "lock"), flags, 0o600); err == nil {
			err = unix.Flock(int(l.file.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		}
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		err = errJournalBusy
	}
	if err != nil {
		l.Close()
		return journalLock{}, err
	}
	return l, nil
}

func segmentName(seq uint64) string { return fmt.Sprintf("%016x.wal", seq) }

// openJournal opens this process's journal under root. Processes sharing a data directory
// (replicas on one host, like the log itself) each write their own directory,
// root/<random id>, holding an exclusive flock on its "lock" file while they live.
func openJournal(root string, batch int, key []byte) (*journal, error) {
	return openJournalGrowing(root, batch, key, true)
}

// openJournalGrowing is openJournal; grow false: segments are prewritten
// (BatcherConfig.PrewriteSegments).
func openJournalGrowing(root string, batch int, key []byte, grow bool) (*journal, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	j := &journal{root: root, batch: batch, key: key, prewrite: prewriteMin, noDirect: grow}
	if err := j.claim(); err != nil {
		return nil, err
	}
	if err := j.start(); err != nil {
		j.close()
		return nil, err
	}
	return j, nil
}

// deadJournals returns the segments of every journal directory under root whose lock it
// can take — their process is gone — oldest first per directory, with those directories,
// still locked, to remove once the segments are folded. A directory whose segments cannot
// be read is left alone (unlocked) and named in the error; the others are returned.
func deadJournals(root string, key []byte) ([]segment, []orphan, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var left []segment
	var dead []orphan
	var errs []error
	for _, e := range ents {
		d := filepath.Join(root, e.Name())
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue // a directory being claimed is still dot-named
		}
		lock, err := lockJournal(d, false)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, errJournalBusy) {
			continue // removed as we looked (a clean exit), or its process lives (or is this one)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		segs, err := readSegments(d, key)
		if errors.Is(err, os.ErrNotExist) {
			lock.Close()
			continue
		}
		if err != nil {
			lock.Close()
			errs = append(errs, err)
			continue
		}
		left = append(left, segs...)
		dead = append(dead, orphan{dir: d, lock: lock})
	}
	return left, dead, errors.Join(errs...)
}

// claim makes this process's directory: created under a dot name, locked, then renamed into
// place, so that no other process ever sees it unlocked.
func (j *journal) claim() error {
	id := make([]byte, 8)
	rand.Read(id)
	name := hex.EncodeToString(id)
	tmp := filepath.Join(j.root, ".new-"+name)
	if err := os.MkdirAll(j.root, 0o700); err != nil { // the root removed (rm -rf): made again
		return err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return err
	}
	lock, err := lockJournal(tmp, true)
	if err == nil {
		if err = os.Rename(tmp, filepath.Join(j.root, name)); err == nil {
			err = fsutil.SyncDir(j.root)
		}
		if err != nil {
			lock.Close()
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		return err
	}
	j.lock.Close()
	j.dir, j.lock, j.seq = filepath.Join(j.root, name), lock, 0
	return nil
}

// ours reports whether the process's directory is still there (the one it holds locked).
func (j *journal) ours() bool {
	st, err := os.Stat(j.dir)
	if err != nil {
		return false
	}
	lst, err := j.lock.dir.Stat()
	return err == nil && os.SameFile(st, lst)
}

// readSegments reads the segments in dir, oldest first. Only canonical names count.
func readSegments(dir string, key []byte) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, e := range ents {
		hexSeq, ok := strings.CutSuffix(e.Name(), ".wal")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if seq, err := strconv.ParseUint(hexSeq, 16, 64); err == nil && segmentName(seq) == e.Name() {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	var out []segment
	for _, seq := range seqs {
		p := filepath.Join(dir, segmentName(seq))
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		raw, batch, n, err := scanSegment(b, p, key, false)
		if err != nil {
			return nil, err
		}
		recs := make([]store.AuditEvent, len(raw))
		for i, r := range raw {
			// Only what Submit could have written is folded: a record that is not a
			// canonical event is damage (or a plant), and the segment is refused whole.
			if _, err := ParseEvent(r); err != nil {
				return nil, fmt.Errorf("%s: record %d: %w", p, i, err)
			}
			recs[i] = indexRecord(0, r)
		}
		seg := segment{path: p, recs: recs, batch: batch}
		// Only a v3 segment is linked as its bundle: a v2 one's MACs do not bind its
		// directory, and a served copy of it could be replayed into another. (One ending
		// with an unkeyed empty frame, eight zeros, is not whole: its zeros read as torn.)
		if n == len(b) && bytes.HasPrefix(b, []byte(journalMagic)) {
			sum := sha256.Sum256(b)
			seg.sum = sum[:]
		}
		out = append(out, seg)
	}
	return out, nil
}

// removeOrphan removes a dead process's journal directory once its segments are folded.
func removeOrphan(o orphan) error {
	err := os.RemoveAll(o.dir)
	o.lock.Close()
	return err
}

// start creates the next segment; its name is durable before any record is written to it.
// A process whose directory was removed under it claims a new one first. A failed start is
// retried under the next number.
func (j *journal) start() error {
	if !j.ours() {
		if err := j.claim(); err != nil {
			return err
		}
	}
	seq := j.seq
	j.seq++
	name := segmentName(seq)
	path := filepath.Join(j.dir, name)
	hdr := j.header()
	sp := j.takeSpare()
	if sp != nil && sp.path != path { // prepared for another directory or number: unused
		sp.discard()
		sp = nil
	}
	if sp != nil {
		j.f, j.direct = sp.f, true
		if len(j.page) < pageSize {
			j.page = alignedBytes(256 << 10)
		}
		copy(j.page, hdr)
	} else {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		if _, err = f.Write(hdr); err == nil {
			err = f.Sync()
		}
		if err == nil {
			err = fsutil.SyncDir(j.dir)
		}
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			return err
		}
		j.f, j.direct = f, false
	}
	j.size, j.mac, j.zeroTail = int64(len(hdr)), firstMAC(j.key, macName(j.dir, name)+string(hdr)), false
	j.sum = sha256.New()
	j.sum.Write(hdr)
	j.prepareNext()
	return nil
}

// header is a segment's header: magic, batch size, keyed flag.
func (j *journal) header() []byte {
	hdr := binary.LittleEndian.AppendUint32([]byte(journalMagic), uint32(j.batch))
	keyed := byte(0)
	if j.key != nil {
		keyed = 1
	}
	return append(hdr, keyed)
}

// macName is what a v3 segment's first MAC binds, with its header (whose batch size cuts
// its batches at a refold: an edited one would have batches the log has logged again):
// its directory's name and its own.
func macName(dir, file string) string { return filepath.Base(dir) + "/" + file }

func firstMAC(key []byte, name string) []byte {
	if key == nil {
		return nil
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(name))
	return m.Sum(nil)
}

func nextMAC(key, prev, payload []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(prev)
	m.Write(payload)
	return m.Sum(nil)
}

// append writes one group of records as a frame and syncs it: when it returns nil the
// records survive a crash. After an error the segment must be abandoned (abandon).
func (j *journal) append(recs []store.AuditEvent) error { return j.appendGroups(recs) }

// appendGroups appends one frame per group (an empty group: an empty frame, the disk
// probe) and makes them durable together: one write, one fdatasync. The frames are those
// that appending each group alone would write.
func (j *journal) appendGroups(groups ...[]store.AuditEvent) error {
	if j.f == nil {
		if err := j.start(); err != nil {
			return err
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(j.f.Fd()), &st); err != nil || st.Nlink == 0 {
		return errors.New("journal segment removed from under the process")
	}
	b := j.buf[:0]
	mac := j.mac
	for _, recs := range groups {
		start := len(b)
		b = append(b, make([]byte, 8)...)
		for _, r := range recs {
			b = binary.AppendUvarint(b, uint64(len(r.Raw)))
			b = append(b, r.Raw...)
		}
		frame := b[start+8:]
		if len(frame) > maxFrame {
			return fmt.Errorf("journal frame of %d bytes", len(frame))
		}
		binary.LittleEndian.PutUint32(b[start:], uint32(len(frame)))
		binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(frame, castagnoli))
		if j.key != nil {
			mac = nextMAC(j.key, mac, frame)
			b = append(b, mac...)
		}
	}
	j.buf = b
	if j.direct {
		if err := j.writeInPlace(b); err != nil {
			return err
		}
	} else {
		if _, err := j.f.Write(b); err != nil {
			return err
		}
		if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
			return err
		}
	}
	j.size += int64(len(b))
	j.mac = mac
	j.sum.Write(b)
	// An unkeyed empty frame (the disk probe's) is eight zero bytes: last in a segment, it
	// reads as a crash's zeros, so such a segment is not its bundle as it stands.
	j.zeroTail = j.key == nil && len(groups) > 0 && len(groups[len(groups)-1]) == 0
	for _, recs := range groups {
		j.recs = append(j.recs, recs...)
	}
	return nil
}

// abandon closes the open segment after a failed append, cut back to its last whole frame
// (best effort: a crash before the cut leaves a torn last frame, which reading drops), and
// returns it for folding (nil when it held no acknowledged record). The next append starts
// a new segment, so nothing is ever written after a torn frame.
func (j *journal) abandon() *segment {
	if j.f != nil {
		j.f.Truncate(j.size)
		unix.Fdatasync(int(j.f.Fd()))
	}
	return j.closeSegment(false) // the cut may not have happened: not a bundle as it stands
}

// rotate closes the open segment and starts the next; the closed one is returned for
// folding (nil when it held no record).
func (j *journal) rotate() (*segment, error) {
	seg := j.closeSegment(true)
	return seg, j.start()
}

// closeSegment closes the open segment and returns it with its records (and, when whole,
// the SHA-256 of its file); one that holds no record is removed and nil returned.
func (j *journal) closeSegment(whole bool) *segment {
	if j.f == nil {
		return nil
	}
	if j.direct {
		// Its zeros cut off (whole only if that is durable: the bundle's name is the
		// SHA-256 of the file), and the next preparation sized after it.
		whole = j.cutToSize() && whole
		j.prewrite = min(max(j.size+j.size/4, prewriteMin), prewriteMax)
		j.direct = false
	}
	seg := &segment{path: j.f.Name(), recs: j.recs, batch: j.batch}
	if whole && !j.zeroTail {
		seg.sum = j.sum.Sum(nil)
	}
	j.f.Close()
	j.f, j.recs = nil, nil
	if len(seg.recs) == 0 {
		os.Remove(seg.path)
		return nil
	}
	return seg
}

// close closes the open segment (its records, if any, stay for the next process), and,
// when no segment is left (every one folded), the process's directory; then drops the lock.
func (j *journal) close() {
	j.closeSegment(false)
	j.dropSpare()
	if segs, err := filepath.Glob(filepath.Join(j.dir, "*.wal")); err == nil && len(segs) == 0 && j.ours() {
		os.RemoveAll(j.dir)
	}
	j.lock.Close()
}

// readSegment reads a segment's records and batch size (see parseSegment).
func readSegment(path string, key []byte) ([][]byte, int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	return parseSegment(b, path, key)
}

// parseSegment reads a segment. A short or CRC-failing frame at the end is a write a crash
// cut off (its records were never acknowledged) and ends the segment; one with whole
// frames after it, a frame whose records do not parse, a MAC that fails, or a segment
// written without a MAC when a key is given (or with one when none is) is an error. path
// is the segment's file (its first MAC binds its name and, in v3, its directory's).
func parseSegment(b []byte, path string, key []byte) ([][]byte, int, error) {
	recs, batch, _, err := scanSegment(b, path, key, false)
	return recs, batch, err
}

// scanSegment is parseSegment that also returns how many of b's bytes are whole frames
// (len(b): nothing torn or left unwritten after them). With anyMAC (reading a segment as a
// batch's bundle, whose content its name fixes) key must be nil and frames' MACs are
// skipped unchecked, whichever the header says.
func scanSegment(b []byte, path string, key []byte, anyMAC bool) (recs [][]byte, batch, n int, err error) {
	name := filepath.Base(path)
	macFor := macName(filepath.Dir(path), name)
	if len(b) >= journalHeader {
		macFor += string(b[:journalHeader])
	}
	rest, ok := bytes.CutPrefix(b, []byte(journalMagic))
	if !ok {
		if rest, ok = bytes.CutPrefix(b, []byte(journalMagicV2)); ok {
			macFor = name
		}
	}
	if !ok {
		if strings.HasPrefix(journalMagic, string(b)) || strings.HasPrefix(journalMagicV2, string(b)) {
			return nil, 0, 0, nil // created, cut before its header was whole: no record in it
		}
		return nil, 0, 0, fmt.Errorf("%w: %s: not a strongroom journal segment", ErrEvent, name)
	}
	if len(rest) < 5 {
		return nil, 0, 0, nil // the same, cut inside the header
	}
	batch = int(binary.LittleEndian.Uint32(rest))
	keyed := rest[4]
	rest = rest[5:]
	macLen := 0
	switch {
	case keyed > 1 || batch < 1 || batch > MaxBatch:
		return nil, 0, 0, fmt.Errorf("%w: %s: malformed header", ErrEvent, name)
	case anyMAC:
		macLen = int(keyed) * sha256.Size
	case keyed == 1 && key == nil:
		return nil, 0, 0, fmt.Errorf("%w: %s: written with a MAC key, none given", ErrEvent, name)
	case keyed == 0 && key != nil:
		return nil, 0, 0, fmt.Errorf("%w: %s: no MAC, a key is configured (altered?)", ErrEvent, name)
	case keyed == 1:
		macLen = sha256.Size
	}
	mac := firstMAC(key, macFor)
	for len(rest) > 0 {
		if len(rest) < 8 || allZero(rest) {
			break // torn: the last frame's header cut, or space the crash left unwritten
		}
		m := uint64(binary.LittleEndian.Uint32(rest[0:4]))
		whole := 8 + m + uint64(macLen)
		if m > maxFrame || whole > uint64(len(rest)) {
			if m <= maxFrame || allZero(rest[8:]) {
				break // torn: the last frame, cut short (or its length written in part)
			}
			return nil, 0, 0, fmt.Errorf("%w: %s: frame of %d bytes", ErrEvent, name, m)
		}
		payload := rest[8 : 8+m]
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(rest[4:8]) {
			if allZero(rest[whole:]) {
				break // torn: the last frame, written in part (a prewritten segment's zeros after it)
			}
			return nil, 0, 0, fmt.Errorf("%w: %s: damaged frame with whole frames after it", ErrEvent, name)
		}
		if key != nil {
			want := nextMAC(key, mac, payload)
			if !hmac.Equal(want, rest[8+m:whole]) {
				return nil, 0, 0, fmt.Errorf("%w: %s: frame MAC fails (records altered, reordered or moved)", ErrEvent, name)
			}
			mac = want
		}
		for len(payload) > 0 {
			l, k := binary.Uvarint(payload)
			if k <= 0 || l > uint64(len(payload)-k) || l > MaxEventSize {
				return nil, 0, 0, fmt.Errorf("%w: %s: malformed record in a whole frame", ErrEvent, name)
			}
			recs = append(recs, payload[k:k+int(l)])
			payload = payload[k+int(l):]
		}
		rest = rest[whole:]
	}
	return recs, batch, len(b) - len(rest), nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
