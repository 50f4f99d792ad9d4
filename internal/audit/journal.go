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
	"sync/atomic"
	"syscall"
	"time"

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
//	segment = "strongroom-journal/v4\n" || u32le(batch) || u8(flags) || link || (zeros || frame)*
//	                                                         (DIR/<process>/<16 hex digits>.wal)
//	flags   = 2 | 1 if keyed                        (2: each write one frame from a page boundary)
//	link    = u64le(floor) || u64le(prev + 1, 0: none) || u32le(prev records) || prev MAC[32]
//	frame   = u32le(len(payload)) || u32le(CRC-32C(the length's 4 bytes)) ||
//	          u32le(CRC-32C(payload)) || payload || mac?      from a 4 KiB boundary, zeros before
//	payload = (uvarint(len(event)) || event)*             one write's groups of records
//	mac     = HMAC-SHA256(key, previous mac || payload)     when keyed; the first frame's
//	          "previous mac" is HMAC-SHA256(key, directory name "/" segment file name || header)
//
// batch is the records per batch entry the segment's writer folds with, so that a refold
// by another process cuts the same batches (and recognizes those already in the log).
// floor is a log size the writer knew when it started the segment: every batch of its
// records is at that index or later, so a refold looks for the batches the log already has
// from there (however old a segment put back into the journal is). prev is the number of
// the process's last segment before this one that held records, with its record count and
// last MAC (zeros unkeyed): a dead journal whose middle segment was removed, or whose
// segment lost its last frames while a later one exists, is refused unless the missing
// records are in the log (the segment folded and removed). The length has a check of its
// own: a damaged length is damage, not a frame cut short by a crash.
//
// Each write — one frame holding the groups gathered for it — starts on a fresh page (the
// bytes before it zeros: a hole, or a prewritten segment's zeros) and is synced before its
// records' futures resolve and before the next is written; after a failed append the
// segment is closed (cut back to its last whole frame) and the next group starts a new
// one. So only a segment's last frame can be torn by a crash, it held no acknowledged
// record, and no write changes a page holding an acknowledged frame (a growing file's last
// partial page may be written again, with the same bytes: zeros after EOF). A crash loses whole
// sectors of the last write, in any order (a device persists a multi-page write's pages
// as it likes; a file system flushes a growing file's new blocks with any journal commit),
// and lost sectors read as zeros: a frame that fails its checks is that torn write when
// one of its sectors is zeros (or the file ends inside it) and no frame checks on a later
// page boundary; otherwise it is damage and the segment is refused — a flipped byte leaves
// no zero sector. With a key (the deployment's audit key, derived), a frame whose MAC
// fails is refused too (unless it is the torn write): records cannot be altered,
// reordered, or moved between segments or directories while they wait in the journal
// without the key. Dropping the last frames of a process's last segment (or its last
// segments) cannot be told from a crash, nor can a sector of zeros in its last frame.
// A segment file of zeros (its header lost by a crash) holds no record.
//
// Versions before (still read, as they were written): v3 (the eleventh session), no link,
// an 8-byte frame header (length, payload CRC), frames one after another, a frame per
// group, a damaged frame torn only when zeros follow it; v2, whose first MAC binds the
// segment's file name only.

const journalMagic = "strongroom-journal/v4\n"

// journalMagicV3 begins the segments of the eleventh session: no link, no length check.
const journalMagicV3 = "strongroom-journal/v3\n"

// journalMagicV2 begins the segments of versions before the eleventh session, whose first
// MAC binds the segment's file name only (v3: its directory's name too, so that a segment
// copied into another process's directory — a bundle is a closed segment, served — fails
// its MAC).
const journalMagicV2 = "strongroom-journal/v2\n"

// journalHeader is a v4 header's length: magic, batch size, flags, link.
const journalHeader = len(journalMagic) + 4 + 1 + linkSize

// linkSize is a v4 header's link: floor, previous segment, its records, its last MAC.
const linkSize = 8 + 8 + 4 + sha256.Size

// journalHeaderV3 is a v2 or v3 header's length.
const journalHeaderV3 = len(journalMagicV3) + 4 + 1

// A v4 header's flags (v2, v3: 1 keyed, 0 not).
const (
	flagKeyed = 1 // frames carry a MAC
	flagPaged = 2 // each write is one frame from a fresh page, zeros before it: set in every v4 segment but a packed one
	// flagPacked (instead of flagPaged): frames one after another from the segment's
	// second page, written through a shared mapping (journal_mapped.go).
	flagPacked = 4
	// flagLeafMAC (with flagPacked, set in every packed segment since it was added): a
	// frame holds one record, and its MAC is chained over the record's RFC 6962 leaf hash
	// (SHA-256 of 0x00 and the record), not over its bytes — the leaf the batch's Merkle
	// root needs, so a written record's bytes are hashed for it once, not twice (the
	// frame's MAC, then the fold's root). Equally binding: the leaf hash is collision
	// resistant, the frame's length is CRC-checked and the payload must be exactly one
	// record.
	flagLeafMAC = 8
)

// sectorSize is the smallest unit a device writes whole: a torn write loses whole sectors.
const sectorSize = 512

// frameHeader is a v4 frame's header (length, its CRC, the payload's CRC); frameHeaderV3
// a v2 or v3 frame's (length, the payload's CRC).
const (
	frameHeader   = 12
	frameHeaderV3 = 8
)

// maxFrame bounds a frame's payload (a group of at most MaxBatch records).
const maxFrame = MaxBatch * (MaxEventSize + binary.MaxVarintLen64)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type journal struct {
	root     string
	dir      string      // this process's own directory under the journal root
	lock     journalLock // held for the process's life: others leave the directory alone
	f        *os.File
	seq      uint64
	batch    int                 // records per batch entry, written in each segment's header
	key      []byte              // MAC key; nil: frames carry no MAC
	mac      []byte              // the open segment's last MAC
	size     int64               // the open segment's bytes up to its last whole frame
	recs     []store.AuditEvent  // the open segment's records, in order
	leaves   [][sha256.Size]byte // packed: their RFC 6962 leaf hashes (flagLeafMAC)
	lastRecs int                 // how many the last closed packed segment held (its successor's room)
	buf      []byte
	sum      hash.Hash // SHA-256 of the open segment's bytes up to its last whole frame
	open     uint64    // the open segment's number
	// prev is the link the next segment's header carries: the last closed segment that
	// held records (zero: none in this directory yet).
	prev segLink
	// floor is a log size known before the open segment's records can be folded (the
	// Batcher sets it: the log's size at its start, then each fold's entry index).
	floor atomic.Uint64
	// prevFloor is the floor when prev was closed: its batches are at that index or later,
	// so the next segment's floor is at most that (a refold looks for prev's batches from
	// there when prev is gone) — the floor may have moved past them since (an abandoned
	// segment is folded before the next one starts).
	prevFloor uint64
	// Prewritten segments (journal_direct.go).
	direct   bool        // the open segment was prepared: written in place
	page     []byte      // direct: a write's bytes, page-aligned (O_DIRECT)
	spare    chan *spare // the next segment, being prepared (nil: none)
	noDirect bool        // a preparation failed: segments grow
	prewrite int64       // how many bytes of zeros the next preparation writes
	// Packed segments written through a shared mapping (journal_mapped.go).
	packed bool
	mapped
}

// segLink names a segment from the next one's header: its number + 1 (0: none), its
// record count, its last MAC (the MAC chain's end; zeros unkeyed).
type segLink struct {
	seq  uint64
	recs uint32
	mac  [sha256.Size]byte
}

// segment is a closed journal segment: its file, its records, its batch size.
type segment struct {
	path string
	recs []store.AuditEvent // those not yet folded
	// leaves are recs' RFC 6962 leaf hashes when the writer kept them (a packed segment
	// closed by this process), else nil: the fold computes them.
	leaves [][sha256.Size]byte
	batch  int
	done   int // records folded from its start
	// Read from a dead journal (readSegments): its number, header and MAC chain's end.
	seq  uint64
	scan segScan
	// shadows are where a dead journal's segment may have its shadow (deadShadowDirs, as
	// readSegments found them): removed from there once it is folded.
	shadows []shadowDir
	// shadowGone: the dead directory's last segment, written into shadows
	// (shadowedMarker), and no shadow of it found — an ALERT when folded.
	shadowGone bool
	// sum is the SHA-256 of the segment's file when the file is exactly its whole frames
	// (closed by rotate, or read whole after a crash): such a segment of at most batch
	// records is its batch's bundle as it stands (bundle v2, batch.go), linked into place
	// instead of written again. nil: the file may hold more (a torn or cut-back frame).
	sum []byte
	// own holds the records' bytes (their Raw) of a packed segment this process wrote:
	// released once it is folded (fold), and by the index once it has them.
	own *ownBuf
}

// legacy reports whether the segment is of a version whose batches may have been folded
// before batch entries named their place in the journal (v2): those are recognized by
// their bundle's name. Later ones only by their place — two segments can hold the same
// bytes (identical records), and a batch with the same bundle is not this one.
func (s *segment) legacy() bool { return s.scan.v2 }

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
	return openJournalFrom(root, batch, key, grow, 0)
}

// openJournalFrom is openJournalGrowing with the first segment's floor (the log's size).
func openJournalFrom(root string, batch int, key []byte, grow bool, floor uint64) (*journal, error) {
	return openJournalWith(&journal{root: root, batch: batch, key: key, prewrite: prewriteMin, noDirect: grow}, floor)
}

// openJournalWith claims a directory for j (set up, not yet opened) under j.root and
// starts its first segment, whose floor is floor.
func openJournalWith(j *journal, floor uint64) (*journal, error) {
	if err := os.MkdirAll(j.root, 0o700); err != nil {
		return nil, err
	}
	j.floor.Store(floor)
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
		if e.IsDir() && strings.HasPrefix(e.Name(), ".new-") {
			removeStaleClaim(d)
		}
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

// staleClaim is how old a directory still being claimed (".new-*") must be to be taken
// for one a process died claiming: a claim takes a mkdir, a lock and a rename.
const staleClaim = time.Minute

// removeStaleClaim removes a directory a process died claiming (killed between its mkdir
// and its rename): it never holds a segment — they are made after the rename — so it is
// only litter. One younger than staleClaim, or locked, is left alone.
func removeStaleClaim(d string) {
	st, err := os.Lstat(d)
	if err != nil || time.Since(st.ModTime()) < staleClaim {
		return
	}
	lock, err := lockJournal(d, false)
	if err != nil {
		return
	}
	os.RemoveAll(d)
	lock.Close()
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
	j.dir, j.lock, j.seq, j.prev = filepath.Join(j.root, name), lock, 0, segLink{}
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

// readSegments reads the segments in dir, oldest first. Only canonical names count. A
// segment whose file is gone but whose shadow holds records (deadShadowDirs) is read from
// the shadow: a directory put back in part (a restore being copied, an older copy) is
// then refused by its links, not folded without its last segment's records.
func readSegments(dir string, key []byte) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, e := range ents {
		if seq, ok := segmentSeq(e.Name()); ok && e.Type().IsRegular() {
			seqs = append(seqs, seq)
		}
	}
	shadows := deadShadowDirs(dir)
	for _, seq := range deadShadowNames(shadows) {
		if !slices.Contains(seqs, seq) {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	var out []segment
	for _, seq := range seqs {
		p := filepath.Join(dir, segmentName(seq))
		b, err := readRegular(p, maxSegmentBytes)
		if errors.Is(err, os.ErrNotExist) {
			b = nil // its shadow's alone
		} else if err != nil {
			return nil, fmt.Errorf("journal segment %s: %w", p, err) // a FIFO, a link, a huge file: named for an operator
		}
		var sc segScan
		if b != nil {
			if sc, err = scanSegment(b, p, key, false); err != nil {
				return nil, err
			}
		}
		whole := b != nil && sc.n == len(b) && !sc.v2
		if sc, whole, err = withShadow(sc, whole, p, b, key, shadows); err != nil {
			return nil, err
		}
		if b == nil && len(sc.recs) == 0 {
			continue // a shadow of no record of its name: another segment's, kept
		}
		recs := make([]store.AuditEvent, len(sc.recs))
		for i, r := range sc.recs {
			// Only what Submit could have written is folded: a record that is not a
			// canonical event is damage (or a plant), and the segment is refused whole.
			if _, err := ParseEvent(r); err != nil {
				return nil, fmt.Errorf("%s: record %d: %w", p, i, err)
			}
			recs[i] = indexRecord(0, r)
		}
		seg := segment{path: p, recs: recs, batch: sc.batch, seq: seq, scan: sc, shadows: shadows}
		seg.scan.recs = nil
		seg.shadowGone = seq == seqs[len(seqs)-1] && !slices.Contains(deadShadowNames(shadows), seq) &&
			fileExists(filepath.Join(dir, shadowedMarker))
		// Only a v3 or v4 segment is linked as its bundle: a v2 one's MACs do not bind its
		// directory, and a served copy of it could be replayed into another.
		if whole {
			sum := sha256.Sum256(b)
			seg.sum = sum[:]
		}
		out = append(out, seg)
	}
	return out, nil
}

// dropBroken takes out of a dead journal's segments (left) and directories (dead) those of
// each directory that check refuses (its links do not hold: checkLinks; the log's word
// for its records does not: Batcher.checkLogged), unlocking it, and says why.
func dropBroken(left []segment, dead []orphan, check func([]segment) error) ([]segment, []orphan, []error) {
	var errs []error
	keep := dead[:0]
	for _, o := range dead {
		mine := func(s segment) bool { return filepath.Dir(s.path) == o.dir }
		i := slices.IndexFunc(left, mine)
		k := i
		for k >= 0 && k < len(left) && mine(left[k]) {
			k++
		}
		if i >= 0 {
			if err := check(left[i:k]); err != nil {
				errs = append(errs, err)
				left = slices.Delete(left, i, k)
				o.lock.Close()
				continue
			}
		}
		keep = append(keep, o)
	}
	return left, keep, errs
}

// checkLinks checks a dead journal directory's segments (oldest first) against their
// links: a v4 segment that holds records names the one before it that did, which must be
// there and end as named (after one of its frames), or have every record up to the link in
// the log (have: folded, then removed or left short — linkedInLog). Nothing is checked
// after the last segment: a process's last segments removed cannot be told from a crash
// before they were written.
//
// held says whether a logged batch's bundle holds what its entry says (nil: taken on the
// entry's word): a link is taken on the log's batches only when each one it counts does.
func checkLinks(segs []segment, have map[string]loggedBatch, held func(loggedBatch) bool) error {
	var before *segment // the last segment seen that holds records
	for i := range segs {
		s := &segs[i]
		if !s.scan.v4 && len(s.recs) > 0 {
			before = s
		}
		// An empty segment's link is checked too (a crash right after a rotate leaves one,
		// naming the segment before it); one that links none — the first, or a prepared
		// segment never started — has nothing to check. (Its header has no MAC: someone
		// without the key can rewrite it, as they can remove the segment — a process's
		// last segments are not protected.)
		if !s.scan.v4 || len(s.recs) == 0 && s.scan.prev.seq == 0 {
			continue
		}
		p := s.scan.prev
		name := filepath.Base(s.path)
		switch {
		case p.seq == 0 && before != nil:
			return fmt.Errorf("%w: %s: a segment that names none before it, after %s", ErrEvent, s.path, filepath.Base(before.path))
		case p.seq == 0:
		case before != nil && before.seq == p.seq-1:
			// Short or altered, it is still taken when every record its link names is in
			// the log: folded from the process's memory (a close whose flush failed folds
			// so) before the segment was removed — nothing of it is lost.
			if !slices.Contains(before.scan.ends, segLink{recs: p.recs, mac: p.mac}) && !linkedInLog(before.path, p, have, held) {
				return fmt.Errorf("%w: %s does not end as %s names it (frames removed or altered)", ErrEvent, before.path, name)
			}
		case before != nil && before.seq > p.seq-1:
			return fmt.Errorf("%w: %s: %s is between it and the segment it names", ErrEvent, s.path, filepath.Base(before.path))
		default:
			gone := filepath.Join(filepath.Dir(s.path), segmentName(p.seq-1))
			if !linkedInLog(gone, p, have, held) {
				return fmt.Errorf("%w: %s: the segment it names, %s, is missing and its records are not in the log", ErrEvent, s.path, filepath.Base(gone))
			}
		}
		if len(s.recs) > 0 {
			before = s
		}
	}
	return nil
}

// linkedInLog says whether every record a link names, of the segment at path, is in the
// log: its batches' places (have, with their counts), walked from the first record as fold
// cut them, reach the link's count. (The last batch alone was not enough: one folded from
// a shorter copy of the segment holds fewer records than the link names — outside round
// 48.)
func linkedInLog(path string, p segLink, have map[string]loggedBatch, held func(loggedBatch) bool) bool {
	at := 0
	for at < int(p.recs) {
		lb := have["journal:"+journalSource(path, at)]
		if lb.n <= 0 || held != nil && !held(lb) {
			return false
		}
		at += lb.n
	}
	return p.recs > 0
}

// segmentSeq is the number a canonical segment name (segmentName) stands for.
func segmentSeq(name string) (uint64, bool) {
	hexSeq, ok := strings.CutSuffix(name, ".wal")
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(hexSeq, 16, 64)
	return seq, err == nil && segmentName(seq) == name
}

// removeOrphan removes a dead process's journal directory once its segments are folded,
// and its shadows (those this user's alone: deadShadowDirs).
func removeOrphan(o orphan) error {
	removeDeadShadows(o.dir)
	err := os.RemoveAll(o.dir)
	o.lock.Close()
	return err
}

// nextSegment takes the next segment's number, name and path, claiming a new directory
// first when the process's own was removed under it.
func (j *journal) nextSegment() (seq uint64, name, path string, err error) {
	if !j.ours() {
		if err := j.claim(); err != nil {
			return 0, "", "", err
		}
	}
	seq = j.seq
	j.seq++
	name = segmentName(seq)
	return seq, name, filepath.Join(j.dir, name), nil
}

// start creates the next segment; its name is durable before any record is written to it.
// A process whose directory was removed under it claims a new one first. A failed start is
// retried under the next number.
func (j *journal) start() error {
	if j.packed {
		return j.startMapped()
	}
	seq, name, path, err := j.nextSegment()
	if err != nil {
		return err
	}
	sp := j.takeSpare()
	if sp != nil && sp.path != path { // prepared for another directory or number: unused
		sp.discard()
		sp = nil
	}
	hdr := j.header()
	if sp != nil {
		// The header as it is now (its link, its floor) over the one prepared, before any
		// write: writes start on the pages after it.
		j.f, j.direct = sp.f, true
		if err := j.writeInPlace(hdr, 0); err != nil {
			j.f, j.direct = nil, false
			sp.discard()
			return err
		}
	} else {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_CLOEXEC, 0o600)
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
	j.size, j.mac, j.open = int64(len(hdr)), firstMAC(j.key, macName(j.dir, name)+string(hdr)), seq
	j.sum = sha256.New()
	j.sum.Write(hdr)
	j.prepareNext()
	return nil
}

// header is a segment's header: magic, batch size, flags, link (floor, the previous
// segment that held records).
func (j *journal) header() []byte {
	hdr := binary.LittleEndian.AppendUint32([]byte(journalMagic), uint32(j.batch))
	flags := byte(flagPaged)
	if j.key != nil {
		flags |= flagKeyed
	}
	if j.packed {
		flags ^= flagPaged | flagPacked | flagLeafMAC
	}
	hdr = append(hdr, flags)
	floor := j.floor.Load()
	if j.prev.seq != 0 {
		floor = min(floor, j.prevFloor)
	}
	hdr = binary.LittleEndian.AppendUint64(hdr, floor)
	hdr = binary.LittleEndian.AppendUint64(hdr, j.prev.seq)
	hdr = binary.LittleEndian.AppendUint32(hdr, j.prev.recs)
	return append(hdr, j.prev.mac[:]...)
}

// macName is what a v3 or v4 segment's first MAC binds, with its header (whose batch size cuts
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

// sealFrame completes the frame that starts at b[start] — frameHeader bytes left for its
// header, then its payload, to b's end — and appends its MAC (keyed: chained from prev,
// returned; else prev is returned as it is).
func sealFrame(b []byte, start int, key, prev []byte) ([]byte, []byte) {
	payload := b[start+frameHeader:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(b[start:start+4], castagnoli))
	binary.LittleEndian.PutUint32(b[start+8:], crc32.Checksum(payload, castagnoli))
	if key == nil {
		return b, prev
	}
	mac := nextMAC(key, prev, payload)
	return append(b, mac...), mac
}

// append writes one group of records as a frame and syncs it: when it returns nil the
// records survive a crash. After an error the segment must be abandoned (abandon).
func (j *journal) append(recs []store.AuditEvent) error { return j.appendGroups(recs) }

// appendGroups appends the groups' records as one frame (no record: an empty frame, the
// disk probe) from the next page boundary, and makes it durable: one write, one fdatasync
// (prewritten segments: one O_DIRECT|O_DSYNC write).
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
	// A write is one frame (all its groups), from a fresh page: a torn write is then always
	// the last frame, and a frame on a later page boundary another write.
	b := append(j.buf[:0], make([]byte, frameHeader)...)
	for _, recs := range groups {
		for _, r := range recs {
			b = binary.AppendUvarint(b, uint64(len(r.Raw)))
			b = append(b, r.Raw...)
		}
	}
	if n := len(b) - frameHeader; n > maxFrame {
		return fmt.Errorf("journal frame of %d bytes", n)
	}
	b, mac := sealFrame(b, 0, j.key, j.mac)
	j.buf = b
	base := (j.size + pageSize - 1) &^ (pageSize - 1) // a fresh page: zeros (a hole) before it
	if j.direct {
		if err := j.writeInPlace(b, base); err != nil {
			return err
		}
	} else {
		if err := fsutil.WriteAt(j.f, b, base); err != nil {
			return err
		}
		if err := fsutil.SyncData(j.f); err != nil {
			return err
		}
	}
	j.sum.Write(zeroPage[:base-j.size])
	j.size = base + int64(len(b))
	j.mac = mac
	j.sum.Write(b)
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
		fsutil.SyncData(j.f)
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
	if j.packed {
		seg, _ := j.closeMapped(whole)
		return seg
	}
	if j.direct {
		// Its zeros cut off (whole only if that is durable: the bundle's name is the
		// SHA-256 of the file), and the next preparation sized after it.
		whole = j.cutToSize() && whole
		j.prewrite = min(max(j.size+j.size/4, prewriteMin), prewriteMax)
		j.direct = false
	}
	seg := &segment{path: j.f.Name(), recs: j.recs, batch: j.batch}
	if whole {
		seg.sum = j.sum.Sum(nil)
	}
	if len(seg.recs) > 0 { // the next segment names this one
		j.prev, j.prevFloor = segLink{seq: j.open + 1, recs: uint32(len(seg.recs))}, j.floor.Load()
		copy(j.prev.mac[:], j.mac)
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
	j.dropShadow()
	j.dropSpare()
	if segs, err := filepath.Glob(filepath.Join(j.dir, "*.wal")); err == nil && len(segs) == 0 && j.ours() {
		removeShadows(j.dir)
		os.RemoveAll(j.dir)
	}
	j.releaseShadowLock()
	j.lock.Close()
}

// readSegment reads a segment's records and batch size (see parseSegment).
func readSegment(path string, key []byte) ([][]byte, int, error) {
	b, err := readRegular(path, maxSegmentBytes)
	if err != nil {
		return nil, 0, err
	}
	return parseSegment(b, path, key)
}

// parseSegment reads a segment. A short or CRC-failing frame at the end is a write a crash
// cut off (its records were never acknowledged) and ends the segment; one with whole
// frames after it, a damaged length, a frame whose records do not parse, a MAC that fails,
// or a segment written without a MAC when a key is given (or with one when none is) is an
// error. path is the segment's file (its first MAC binds its name and, from v3, its
// directory's).
func parseSegment(b []byte, path string, key []byte) ([][]byte, int, error) {
	sc, err := scanSegment(b, path, key, false)
	return sc.recs, sc.batch, err
}

// segScan is what reading a segment finds.
type segScan struct {
	recs  [][]byte
	batch int
	n     int  // how many bytes are the header and whole frames (len: nothing torn or unwritten after)
	v4    bool // the header has a link
	v2    bool // a version before the eleventh session's
	floor uint64
	prev  segLink
	// lost: a packed segment has bytes after its last whole frame that are not zeros and
	// not a frame — a crash of the host before they were synced, or damage (an ALERT).
	lost bool
	// ends is, after each whole frame, the records so far and the MAC chain's value: the
	// next segment's link must name one of them (its last, unless an append failed after
	// its frame was written: those records were refused, and are folded all the same).
	ends []segLink
}

// scanSegment is parseSegment with all it finds. With anyMAC (reading a segment as a
// batch's bundle, whose content its name fixes) key must be nil and frames' MACs are
// skipped unchecked, whichever the header says.
func scanSegment(b []byte, path string, key []byte, anyMAC bool) (sc segScan, err error) {
	name := filepath.Base(path)
	macFor := macName(filepath.Dir(path), name)
	hdrLen, fh := journalHeader, frameHeader
	rest, ok := bytes.CutPrefix(b, []byte(journalMagic))
	sc.v4 = ok
	if !ok {
		hdrLen, fh = journalHeaderV3, frameHeaderV3
		if rest, ok = bytes.CutPrefix(b, []byte(journalMagicV3)); !ok {
			if rest, ok = bytes.CutPrefix(b, []byte(journalMagicV2)); ok {
				macFor, hdrLen, sc.v2 = name, -1, true
			}
		}
	}
	if !ok {
		for _, m := range []string{journalMagic, journalMagicV3, journalMagicV2} {
			if strings.HasPrefix(m, string(b)) {
				return segScan{}, nil // created, cut before its header was whole: no record in it
			}
		}
		if allZero(b) {
			// Created, and a crash lost its header (a growing segment's before its sync,
			// a prepared one's before its preparation's): no record in it.
			return segScan{}, nil
		}
		return segScan{}, fmt.Errorf("%w: %s: not a strongroom journal segment", ErrEvent, name)
	}
	if len(b) < max(hdrLen, journalHeaderV3) {
		return segScan{}, nil // the same, cut inside the header
	}
	if hdrLen > 0 {
		macFor += string(b[:hdrLen])
	}
	sc.batch = int(binary.LittleEndian.Uint32(rest))
	flags := rest[4]
	keyed := flags & flagKeyed
	rest = b[max(hdrLen, journalHeaderV3):]
	if sc.v4 {
		l := b[journalHeaderV3:journalHeader]
		sc.floor = binary.LittleEndian.Uint64(l)
		sc.prev.seq = binary.LittleEndian.Uint64(l[8:])
		sc.prev.recs = binary.LittleEndian.Uint32(l[16:])
		copy(sc.prev.mac[:], l[20:])
	}
	macLen := 0
	switch {
	case sc.v4 && !slices.Contains([]byte{flagPaged, flagPacked, flagPacked | flagLeafMAC}, flags&^flagKeyed), !sc.v4 && flags > 1, sc.batch < 1, sc.batch > MaxBatch:
		return segScan{}, fmt.Errorf("%w: %s: malformed header", ErrEvent, name)
	case anyMAC:
		macLen = int(keyed) * sha256.Size
	case keyed == 1 && key == nil:
		return segScan{}, fmt.Errorf("%w: %s: written with a MAC key, none given", ErrEvent, name)
	case keyed == 0 && key != nil:
		return segScan{}, fmt.Errorf("%w: %s: no MAC, a key is configured (altered?)", ErrEvent, name)
	case keyed == 1:
		macLen = sha256.Size
	}
	mac := firstMAC(key, macFor)
	if sc.v4 && flags&flagPacked != 0 {
		return scanPacked(b, sc, name, key, macLen, mac, flags&flagLeafMAC != 0)
	}
scan:
	for len(rest) > 0 {
		if len(rest) < fh || allZero(rest) {
			break // torn: the last frame's header cut, or space the crash left unwritten
		}
		off := len(b) - len(rest)
		if next := (off + pageSize - 1) &^ (pageSize - 1); sc.v4 && next != off {
			if !allZero(b[off:min(next, len(b))]) {
				return segScan{}, fmt.Errorf("%w: %s: bytes between a frame and the next page", ErrEvent, name)
			}
			rest = b[min(next, len(b)):] // a write's padding to the next page
			continue
		}
		// Each write of a v4 segment is one frame from a page boundary. A crash tears only
		// the last write, and loses whole pages of it — in any order: a device persists a
		// multi-page write's pages as it likes, and a file system flushes a growing file's
		// new blocks with any journal commit; a device with 512-byte sectors may keep part
		// of a page — which read as zeros (prepared, or never written); the page before
		// the write is never written again. So a frame that fails is that torn write when
		// one of its sectors (in span bytes from its start) is zeros, or the file ends
		// inside it, and no frame checks on a later page boundary (a later write);
		// anything else is damage.
		torn := func(span int, cut bool) bool {
			lost := cut
			for p := 0; p < span && !lost; p += sectorSize {
				lost = allZero(rest[p:min(p+sectorSize, len(rest))])
			}
			for p := off + pageSize; lost && p+fh <= len(b); p += pageSize {
				if _, _, later := frameAt(b[p:], fh, macLen, true); later == "" {
					lost = false
				}
			}
			return lost
		}
		m, whole, bad := frameAt(rest, fh, macLen, sc.v4)
		if bad != "" && sc.v4 {
			span := pageSize
			if bad != badLength {
				span = int(min(whole, uint64(len(rest))))
			}
			if !torn(span, bad == badSize && m <= maxFrame) { // a checked length over the bound: damage
				return segScan{}, fmt.Errorf("%w: %s: %s, not a torn last write", ErrEvent, name, bad)
			}
			break scan
		}
		// v2, v3: groups one after another, each synced before the next.
		switch {
		case bad == "":
		case bad == badSize && (m <= maxFrame || allZero(rest[fh:])):
			break scan // torn: the last frame, cut short (or its length written in part)
		case bad == badCRC && allZero(rest[whole:]):
			break scan // torn: the last frame, written in part (zeros after it)
		case bad == badCRC:
			return segScan{}, fmt.Errorf("%w: %s: damaged frame with whole frames after it", ErrEvent, name)
		default:
			return segScan{}, fmt.Errorf("%w: %s: frame of %d bytes", ErrEvent, name, m)
		}
		payload := rest[fh : uint64(fh)+m]
		if key != nil {
			want := nextMAC(key, mac, payload)
			if got := rest[uint64(fh)+m : whole]; !hmac.Equal(want, got) {
				// A torn last write can have kept the payload and lost the MAC's page.
				if sc.v4 && torn(int(whole), false) {
					break scan
				}
				return segScan{}, fmt.Errorf("%w: %s: frame MAC fails (records altered, reordered or moved)", ErrEvent, name)
			}
			mac = want
		}
		if err := sc.addFrame(payload, mac, name); err != nil {
			return segScan{}, err
		}
		rest = rest[whole:]
	}
	sc.n = len(b) - len(rest)
	return sc, nil
}

// addFrame takes a whole frame's records (its payload; mac the chain's value after it).
func (sc *segScan) addFrame(payload, mac []byte, name string) error {
	for len(payload) > 0 {
		l, k := binary.Uvarint(payload)
		if k <= 0 || l > uint64(len(payload)-k) || l > MaxEventSize {
			return fmt.Errorf("%w: %s: malformed record in a whole frame", ErrEvent, name)
		}
		sc.recs = append(sc.recs, payload[k:k+int(l)])
		payload = payload[k+int(l):]
	}
	end := segLink{recs: uint32(len(sc.recs))}
	copy(end.mac[:], mac)
	sc.ends = append(sc.ends, end)
	return nil
}

// Why a frame fails its checks (frameAt).
const (
	badLength = "damaged frame length"
	badSize   = "frame runs past the segment's end"
	badCRC    = "damaged frame"
)

// frameAt checks the frame at r's start: its length (v4: against its CRC), that it fits in
// r, its payload's CRC. It returns the payload's length and the frame's, and why it fails
// ("" when it holds).
func frameAt(r []byte, fh, macLen int, v4 bool) (m, whole uint64, bad string) {
	m = uint64(binary.LittleEndian.Uint32(r[0:4]))
	if v4 && crc32.Checksum(r[0:4], castagnoli) != binary.LittleEndian.Uint32(r[4:8]) {
		return m, 0, badLength
	}
	whole = uint64(fh) + m + uint64(macLen)
	if m > maxFrame || whole > uint64(len(r)) {
		return m, whole, badSize
	}
	if crc32.Checksum(r[fh:uint64(fh)+m], castagnoli) != binary.LittleEndian.Uint32(r[fh-4:fh]) {
		return m, whole, badCRC
	}
	return m, whole, ""
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
