package audit

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
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
// its answer completes; its place in a signed checkpoint comes at the next checkpoint
// (200 ms) at the earliest anyway. So with a journal a group of records is durable after
// one append and one fdatasync here, and the journal is folded into the log — one batch
// entry per MaxRecords records, as without it — every FoldEvery, and at once by Barrier
// and Close. A process that dies leaves its unfolded segments; the next Batcher on the
// directory folds them before it takes a record, skipping any batch the log already has
// (a fold that died between its entry and the segment's removal).
//
//	segment = "strongroom-journal/v1\n" || frame*         (DIR/<process>/<16 hex digits>.wal)
//	frame   = u32le(len(payload)) || u32le(CRC-32C(payload)) || payload
//	payload = (uvarint(len(event)) || event)*             one group of records
//
// Each frame is synced before its records' futures resolve and before the next frame is
// written, so only a segment's last frame can be torn by a crash, and a torn frame held
// no acknowledged record: reading stops at the first frame that is short or fails its CRC.

const journalMagic = "strongroom-journal/v1\n"

// maxFrame bounds a frame's payload (a group of at most MaxBatch records).
const maxFrame = MaxBatch * (MaxEventSize + binary.MaxVarintLen64)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type journal struct {
	dir  string   // this process's own directory under the journal root
	lock *os.File // flock'ed for the process's life: others leave the directory alone
	f    *os.File
	seq  uint64
	recs []store.AuditEvent // the open segment's records, in order
	buf  []byte
}

// segment is a closed journal segment: its file and its records.
type segment struct {
	path string
	recs []store.AuditEvent
}

// orphan is the journal directory of a process that is gone, locked by this one until its
// segments are folded (then removed).
type orphan struct {
	dir  string
	lock *os.File
}

func segmentName(seq uint64) string { return fmt.Sprintf("%016x.wal", seq) }

// openJournal opens this process's journal under root. Processes sharing a data directory
// (replicas on one host, like the log itself) each write their own directory,
// root/<random id>, holding an exclusive flock on its "lock" file while they live.
func openJournal(root string) (*journal, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	j, err := claimJournalDir(root)
	if err != nil {
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
// still locked, to remove once the segments are folded.
func deadJournals(root string) ([]segment, []orphan, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var left []segment
	var dead []orphan
	for _, e := range ents {
		d := filepath.Join(root, e.Name())
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue // a directory being claimed is still dot-named
		}
		lock, err := os.OpenFile(filepath.Join(d, "lock"), os.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			continue // removed meanwhile, or never claimed
		}
		if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			lock.Close() // its process lives (or it is this process's own)
			continue
		}
		segs, err := readSegments(d)
		if errors.Is(err, os.ErrNotExist) {
			lock.Close() // its process removed it on a clean exit as we looked
			continue
		}
		if err != nil {
			lock.Close()
			for _, o := range dead {
				o.lock.Close()
			}
			return nil, nil, err
		}
		left = append(left, segs...)
		dead = append(dead, orphan{dir: d, lock: lock})
	}
	return left, dead, nil
}

// claimJournalDir makes this process's directory: created under a dot name, locked, then
// renamed into place, so that no other process ever sees it unlocked.
func claimJournalDir(root string) (*journal, error) {
	id := make([]byte, 8)
	rand.Read(id)
	name := hex.EncodeToString(id)
	tmp := filepath.Join(root, ".new-"+name)
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(tmp, "lock"), os.O_CREATE|os.O_EXCL|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err == nil {
		if err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			lock.Close()
		}
	}
	if err == nil {
		if err = os.Rename(tmp, filepath.Join(root, name)); err == nil {
			err = fsutil.SyncDir(root)
		}
		if err != nil {
			lock.Close()
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return &journal{dir: filepath.Join(root, name), lock: lock}, nil
}

// readSegments reads the segments in dir, oldest first.
func readSegments(dir string) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, e := range ents {
		hexSeq, ok := strings.CutSuffix(e.Name(), ".wal")
		if !ok || len(hexSeq) != 16 || !e.Type().IsRegular() {
			continue
		}
		if seq, err := strconv.ParseUint(hexSeq, 16, 64); err == nil {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	var out []segment
	for _, seq := range seqs {
		p := filepath.Join(dir, segmentName(seq))
		raw, err := readSegment(p)
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
		out = append(out, segment{path: p, recs: recs})
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
// A failed start is retried under the next number (the failed file may be left behind).
func (j *journal) start() error {
	seq := j.seq
	j.seq++
	f, err := os.OpenFile(filepath.Join(j.dir, segmentName(seq)), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.WriteString(journalMagic); err == nil {
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
	j.f = f
	return nil
}

// append writes one group of records as a frame and syncs it: when it returns nil the
// records survive a crash.
func (j *journal) append(recs []store.AuditEvent) error {
	if j.f == nil {
		if err := j.start(); err != nil {
			return err
		}
	}
	b := append(j.buf[:0], make([]byte, 8)...)
	for _, r := range recs {
		b = binary.AppendUvarint(b, uint64(len(r.Raw)))
		b = append(b, r.Raw...)
	}
	if len(b)-8 > maxFrame {
		return fmt.Errorf("journal frame of %d bytes", len(b)-8)
	}
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)-8))
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:], castagnoli))
	j.buf = b
	if _, err := j.f.Write(b); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return err
	}
	j.recs = append(j.recs, recs...)
	return nil
}

// rotate closes the open segment and starts the next; the closed one is returned for
// folding (nil when it held no record: it is removed).
func (j *journal) rotate() (*segment, error) {
	var seg *segment
	if j.f != nil {
		seg = &segment{path: j.f.Name(), recs: j.recs}
		j.f.Close()
		j.f, j.recs = nil, nil
		if len(seg.recs) == 0 {
			os.Remove(seg.path)
			seg = nil
		}
	}
	return seg, j.start()
}

// close closes the open segment, removing it when it holds no record, and, when no
// segment is left (every one folded), the process's directory; then drops the lock.
func (j *journal) close() {
	if j.f != nil {
		j.f.Close()
		if len(j.recs) == 0 {
			os.Remove(j.f.Name())
		}
		j.f = nil
	}
	if segs, err := filepath.Glob(filepath.Join(j.dir, "*.wal")); err == nil && len(segs) == 0 {
		os.RemoveAll(j.dir)
	}
	j.lock.Close()
}

// readSegment reads a segment's records. A short or corrupt last frame is a write a crash
// cut off (its records were never acknowledged) and ends the segment; a frame whose CRC
// holds but whose records do not parse is an error.
func readSegment(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseSegment(b, path)
}

func parseSegment(b []byte, name string) ([][]byte, error) {
	rest, ok := bytes.CutPrefix(b, []byte(journalMagic))
	if !ok {
		if strings.HasPrefix(journalMagic, string(b)) {
			return nil, nil // created, cut before its header was whole: no record in it
		}
		return nil, fmt.Errorf("%w: %s: not a strongroom journal segment", ErrEvent, name)
	}
	var recs [][]byte
	for len(rest) >= 8 {
		n := uint64(binary.LittleEndian.Uint32(rest[0:4]))
		if n > maxFrame || n > uint64(len(rest)-8) {
			break // torn
		}
		payload := rest[8 : 8+n]
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(rest[4:8]) {
			break // torn
		}
		for len(payload) > 0 {
			m, k := binary.Uvarint(payload)
			if k <= 0 || m > uint64(len(payload)-k) || m > MaxEventSize {
				return nil, fmt.Errorf("%w: %s: malformed record in a whole frame", ErrEvent, name)
			}
			recs = append(recs, payload[k:k+int(m)])
			payload = payload[k+int(m):]
		}
		rest = rest[8+n:]
	}
	return recs, nil
}
