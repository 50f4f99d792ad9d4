package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// Request records (issue 16). Security decisions are one log entry each, recorded before
// they take effect. Request events are many and each matters little alone: they are
// gathered into batches, and each batch is one log entry (kind KindBatch) that commits to
// its records with an RFC 6962 Merkle root, while the records themselves are kept in a
// bundle beside the log, content-addressed by the bundle's SHA-256:
//
//	bundle  = "strongroom-batch/v1\n" || record*       (DATA/log/batches/<sha256 hex>,
//	record  = uvarint(len(event)) || event               served at /log/batches/<hex>)
//	event   = the record's canonical Event bytes (Event.Marshal)
//	bundle  = a closed request-journal segment, as it stands (v3: journal.go; the batch's
//	          records are its frames' records, in order)
//	entry   = Event{Kind: "audit.batch", Subject: {bundle: <sha256 hex>},
//	                Fields: {records: N, root: <hex RFC 6962 root over the events>,
//	                         first_ts, last_ts[, journal]}}   journal: folded from it
//
// "Request R was recorded in checkpoint C" is two inclusion proofs: R's event in its
// batch's root (leaf index = its position, tree size = N), and the batch entry in C. Verify
// re-reads every bundle a batch entry names and recomputes its root and count, so an
// altered, dropped, inserted or reordered record is found as surely as an altered entry.
// A bundle is written and fsynced before its entry is appended, and a record's Future
// resolves only once the entry is durable.

// KindBatch is the log entry that commits to a batch of request records.
const KindBatch Kind = "audit.batch"

const bundleMagic = "strongroom-batch/v1\n"

// DefaultBatchDelay is how long a batch waits for companions after its first record.
const DefaultBatchDelay = 10 * time.Millisecond

// MaxBatch bounds the records of one batch (and so a record's position, below 2^16).
const MaxBatch = 4096

// BundleStore keeps batch bundles beside the log. PutBundle must not keep b after it
// returns: the batcher writes its next bundle into the same buffer.
type BundleStore interface {
	PutBundle(ctx context.Context, name string, b []byte) error
	Bundle(ctx context.Context, name string) ([]byte, error)
}

// DirBundles stores bundles as files under Dir/batches (written atomically and fsynced).
type DirBundles struct{ Dir string }

func (d DirBundles) path(name string) (string, error) {
	if !validBundleName(name) {
		return "", fmt.Errorf("%w: bundle name %q", ErrEvent, name)
	}
	return filepath.Join(d.Dir, "batches", name[:2], name), nil
}

func (d DirBundles) PutBundle(_ context.Context, name string, b []byte) error {
	p, err := d.path(name)
	if err != nil {
		return err
	}
	if err := mkdirSynced(filepath.Dir(p)); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(p, b, 0o644)
}

// BundleLinker is a BundleStore that can take a file as a bundle without copying it.
type BundleLinker interface {
	// LinkBundle puts the file at src, whose SHA-256 is name and whose data is durable
	// already, in place as bundle name.
	LinkBundle(ctx context.Context, name, src string) error
}

// LinkBundle hard-links src (a closed journal segment, a bundle v2: its frames were each
// synced as they were written) as bundle name: the records are written once, in the
// journal, and only the new name is synced here. An existing bundle of that name is
// replaced, atomically, as PutBundle does.
func (d DirBundles) LinkBundle(_ context.Context, name, src string) error {
	p, err := d.path(name)
	if err != nil {
		return err
	}
	if err := mkdirSynced(filepath.Dir(p)); err != nil {
		return err
	}
	var r [8]byte
	rand.Read(r[:])
	tmp := p + ".tmp-link-" + hex.EncodeToString(r[:])
	if err := os.Link(src, tmp); err != nil {
		return err
	}
	defer os.Remove(tmp) // renamed away, or (the same file was there already) still here
	if err := os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(p))
}

// mkdirSynced makes dir and its missing parents, syncing the parent of each one made, so
// that a file synced into dir cannot be lost with a directory entry above it.
func mkdirSynced(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirSynced(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return fsutil.SyncDir(parent)
}

func (d DirBundles) Bundle(_ context.Context, name string) ([]byte, error) {
	p, err := d.path(name)
	if err != nil {
		return nil, err
	}
	b, err := readRegular(p, maxSegmentBytes)
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, os.ErrPermission) {
		// Not a file a bundle could be (a FIFO, a device, a link, over any bundle's size):
		// replaced by someone, as an altered bundle is (round 33).
		return nil, securityf("batch bundle %s: %v", name, err)
	}
	return b, err
}

func validBundleName(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// EncodeBundle is the bundle of records (canonical event bytes) and its name.
func EncodeBundle(records [][]byte) (bundle []byte, name string) {
	return AppendBundle(nil, records)
}

// AppendBundle is EncodeBundle writing into dst's storage (dst[:0], grown if it is too
// small): a batcher reuses one buffer for its bundles, each a few MB, instead of leaving
// one to the garbage collector (and the runtime's scavenger) per fold.
func AppendBundle(dst []byte, records [][]byte) (bundle []byte, name string) {
	n := len(bundleMagic)
	for _, r := range records {
		n += binary.MaxVarintLen64 + len(r)
	}
	b := dst[:0]
	if cap(b) < n {
		b = make([]byte, 0, n)
	}
	b = append(b, bundleMagic...)
	for _, r := range records {
		b = binary.AppendUvarint(b, uint64(len(r)))
		b = append(b, r...)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// DecodeBundle splits a bundle into its records, refusing anything malformed. A bundle is
// v1 (written by the batcher) or a request journal's closed segment taken as it stands
// (v4 and v3; v2 is read too, though none is linked: journal.go): whole frames, each
// CRC-checked; their MACs (the journal key's) are not checked here — the bundle's name,
// its SHA-256, fixes its content.
func DecodeBundle(b []byte) ([][]byte, error) {
	if bytes.HasPrefix(b, []byte(journalMagic)) || bytes.HasPrefix(b, []byte(journalMagicV3)) || bytes.HasPrefix(b, []byte(journalMagicV2)) {
		sc, err := scanSegment(b, "bundle", nil, true)
		switch {
		case err != nil:
			return nil, err
		case sc.n == 0 || sc.n != len(b):
			return nil, fmt.Errorf("%w: bundle (a journal segment) cut short or with bytes after its last frame", ErrEvent)
		case len(sc.recs) > MaxBatch:
			return nil, fmt.Errorf("%w: bundle holds over %d records", ErrEvent, MaxBatch)
		}
		return sc.recs, nil
	}
	rest, ok := bytes.CutPrefix(b, []byte(bundleMagic))
	if !ok {
		return nil, fmt.Errorf("%w: not a strongroom batch bundle", ErrEvent)
	}
	var out [][]byte
	for len(rest) > 0 {
		n, k := binary.Uvarint(rest)
		if k <= 0 || n > uint64(len(rest)-k) || n > MaxEventSize {
			return nil, fmt.Errorf("%w: bundle record %d: bad length", ErrEvent, len(out))
		}
		out = append(out, rest[k:k+int(n)])
		rest = rest[k+int(n):]
		if len(out) > MaxBatch {
			return nil, fmt.Errorf("%w: bundle holds over %d records", ErrEvent, MaxBatch)
		}
	}
	return out, nil
}

// BatchRoot is the RFC 6962 Merkle root over the records (as log leaves). It folds the
// leaves as a compact range does (merkle/compact), with one digest and a stack of perfect
// subtrees' roots instead of a digest and a slice per hash: the fold hashes every request
// record, so this runs for each of them (TestBatchRootMatchesCompactRange).
func BatchRoot(records [][]byte) []byte {
	h := sha256.New()
	return merkleRoot(len(records), h, func(i int, dst *[sha256.Size]byte) { recordLeaf(h, records[i], dst) })
}

// leavesRoot is BatchRoot of the records whose leaf hashes (recordLeaf) are leaves.
func leavesRoot(leaves [][sha256.Size]byte) []byte {
	return merkleRoot(len(leaves), sha256.New(), func(i int, dst *[sha256.Size]byte) { *dst = leaves[i] })
}

// recordLeaf sets dst to rec's RFC 6962 leaf hash (h: a SHA-256, reset here).
func recordLeaf(h hash.Hash, rec []byte, dst *[sha256.Size]byte) {
	h.Reset()
	h.Write(leafPrefix)
	h.Write(rec)
	h.Sum(dst[:0])
}

// merkleRoot is the RFC 6962 root over n leaves, leaf(i, dst) setting leaf i's hash.
func merkleRoot(n int, h hash.Hash, leaf func(i int, dst *[sha256.Size]byte)) []byte {
	if n == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	var stack [64][sha256.Size]byte // stack[k]: the root of a perfect subtree, larger below
	top := 0
	for i := range n {
		leaf(i, &stack[top])
		top++
		// Leaf i completes a subtree for each trailing one bit of i: merge that many pairs.
		for n := i; n&1 == 1; n >>= 1 {
			top--
			hashChildren(h, &stack[top-1], &stack[top-1], &stack[top])
		}
	}
	for top > 1 { // the perfect subtrees' roots, merged from the right
		top--
		hashChildren(h, &stack[top-1], &stack[top-1], &stack[top])
	}
	return bytes.Clone(stack[0][:])
}

var leafPrefix, nodePrefix = []byte{rfc6962.RFC6962LeafHashPrefix}, []byte{rfc6962.RFC6962NodeHashPrefix}

// hashChildren sets dst to the RFC 6962 hash of the nodes l and r (dst may be l).
func hashChildren(h hash.Hash, dst, l, r *[sha256.Size]byte) {
	h.Reset()
	h.Write(nodePrefix)
	h.Write(l[:])
	h.Write(r[:])
	h.Sum(dst[:0])
}

// BatchInclusion is the RFC 6962 inclusion proof of records[i] in BatchRoot(records).
func BatchInclusion(records [][]byte, i int) ([][]byte, error) {
	if i < 0 || i >= len(records) {
		return nil, fmt.Errorf("record %d of %d", i, len(records))
	}
	leaves := make([][]byte, len(records))
	for j, r := range records {
		leaves[j] = rfc6962.DefaultHasher.HashLeaf(r)
	}
	return path(leaves, i), nil
}

// path is RFC 6962 §2.1.1 PATH(m, D[n]) over leaf hashes.
func path(leaves [][]byte, m int) [][]byte {
	n := len(leaves)
	if n <= 1 {
		return nil
	}
	k := 1
	for k<<1 < n {
		k <<= 1
	}
	if m < k {
		return append(path(leaves[:k], m), mth(leaves[k:]))
	}
	return append(path(leaves[k:], m-k), mth(leaves[:k]))
}

func mth(leaves [][]byte) []byte {
	if len(leaves) == 1 {
		return leaves[0]
	}
	k := 1
	for k<<1 < len(leaves) {
		k <<= 1
	}
	return rfc6962.DefaultHasher.HashChildren(mth(leaves[:k]), mth(leaves[k:]))
}

// VerifyRecord checks a record's inclusion proof against a batch root.
func VerifyRecord(record []byte, pos, count uint64, p [][]byte, root []byte) error {
	return proof.VerifyInclusion(rfc6962.DefaultHasher, pos, count, rfc6962.DefaultHasher.HashLeaf(record), p, root)
}

// CheckBatch checks a batch entry against its bundle: the bundle's name, its record count
// and the Merkle root over its records must be the entry's. It returns the records.
func CheckBatch(entry *Event, bundle []byte) ([][]byte, error) {
	name := entry.Subject["bundle"]
	sum := sha256.Sum256(bundle)
	if hex.EncodeToString(sum[:]) != name {
		return nil, securityf("batch bundle %s: content does not match its name (records altered)", name)
	}
	recs, err := DecodeBundle(bundle)
	if err != nil {
		return nil, securityf("batch bundle %s: %v", name, err)
	}
	if strconv.Itoa(len(recs)) != entry.Fields["records"] {
		return nil, securityf("batch bundle %s: %d records, the log entry says %s (records dropped or inserted)", name, len(recs), entry.Fields["records"])
	}
	if hex.EncodeToString(BatchRoot(recs)) != entry.Fields["root"] {
		return nil, securityf("batch bundle %s: Merkle root differs from the log entry's (records altered or reordered)", name)
	}
	return recs, nil
}

// RecordIndex names record pos of the batch at log index entry in the search index (its
// own number space: bit 62 set, the entry index above 16 bits of position).
func RecordIndex(entry uint64, pos int) uint64 { return 1<<62 | entry<<16 | uint64(pos) }

// SplitRecordIndex undoes RecordIndex; ok is false for a plain log index.
func SplitRecordIndex(i uint64) (entry uint64, pos int, ok bool) {
	if i&(1<<62) == 0 {
		return i, 0, false
	}
	return (i &^ (1 << 62)) >> 16, int(i & 0xffff), true
}

// Batcher gathers request records into batches, one log entry per batch of at most
// MaxRecords. Without a journal a batch is committed when MaxRecords are waiting or
// MaxDelay has passed since its first record, and its futures resolve once its entry is
// durable. With a journal (BatcherConfig.Journal: a log on local disk, journal.go) a group
// of records gathered for MaxDelay is durable after one append to the journal, where the
// futures resolve, and the journal is folded into the log every FoldEvery. One goroutine
// commits (and one folds); a record costs its marshalling and a slice append under a mutex
// on the caller's side.
type Batcher struct {
	log        *Log
	bundles    BundleStore
	maxRecords int
	maxDelay   time.Duration
	foldEvery  time.Duration

	mu      sync.Mutex
	cur     *pendingBatch   // filling
	ready   []*pendingBatch // full, waiting for the committer
	last    *pendingBatch   // the last batch handed to the committer (no journal)
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	closed  bool
	closeMu sync.Once
	// broken: the journal cannot be used — every record is refused — while a start's
	// refold or journal failed and its retry (retryStart) has not yet succeeded.
	broken atomic.Pointer[error]

	// With a journal: the committer sends closed segments (and barriers) to the folder.
	j            *journal
	journalRoot  string
	journalKey   []byte
	growSegments bool
	barrier      chan chan barrierResult
	folds        chan foldItem
	foldDone     chan struct{}
	lastIdx      uint64 // the folder's last batch entry
	folded       bool   // the folder has made one

	written      bool          // records are written by their submitters (BatcherConfig.Written)
	syncEvery    time.Duration // written: how often the open segment is synced
	segmentBytes int64         // BatcherConfig.segmentBytes

	bundleBuf  []byte // the last bundle's storage, reused by commitRecords (one goroutine at a time)
	linkWarned bool   // commitRecords said a segment could not be linked
}

type pendingBatch struct {
	records  []store.AuditEvent // Raw: the canonical event; the rest for the search index
	finished chan struct{}
	index    uint64
	err      error
}

type barrierResult struct {
	index uint64
	ok    bool
	err   error
}

type foldItem struct {
	seg  *segment
	done chan barrierResult // a barrier: answered once every segment before it is folded
}

// BatcherConfig tunes a Batcher (zero: 1024 records, DefaultBatchDelay, no journal).
type BatcherConfig struct {
	MaxRecords int
	MaxDelay   time.Duration // with a journal: how long a group gathers (DefaultGroupDelay)
	// Journal is a directory for the request-record journal (journal.go); only for a log on
	// local disk — a replica of a fleet must not hold records the shared log lacks.
	Journal   string
	FoldEvery time.Duration // with a journal: how often it is folded into the log (DefaultFoldEvery)
	// JournalKey MACs the journal's frames (journal.go); serve derives it from the audit
	// key. Without it frames carry only a CRC.
	JournalKey []byte
	// PrewriteSegments: journal segments are prepared ahead and written in place with
	// O_DIRECT|O_DSYNC (journal_direct.go) instead of growing with each group (a write
	// and an fdatasync). Off by default (config audit.journal_prewritten_segments): see
	// journal_direct.go.
	PrewriteSegments bool
	// Written (with a journal): a request's goroutine writes its record into the journal
	// through a shared mapping, and its Future is resolved when that returns — the record
	// survives the process at once and the host after SyncEvery (journal_mapped.go) —
	// instead of a group commit whose Futures resolve after its fdatasync.
	Written   bool
	SyncEvery time.Duration // Written: how often written records are synced (DefaultSyncEvery)
	// segmentBytes: a packed segment's room (tests; 0: mappedSize, 4 MiB).
	segmentBytes int64
}

// DefaultGroupDelay is how long a group of records gathers before one journal append.
const DefaultGroupDelay = 5 * time.Millisecond

// DefaultFoldEvery is how often the journal is folded into the log. Each fold costs a
// bundle write and a log entry (two atomic file writes, each with its fsyncs): at 200 ms
// they were ~5 % of a loaded gateway's CPU. A record is durable (in the journal) before
// its answer goes out either way; it is in a signed checkpoint ≤ DefaultFoldEvery + the
// checkpoint interval later.
const DefaultFoldEvery = time.Second

// NewBatcher starts a batcher on l, storing bundles in bundles. With a journal, segments
// a dead process left are folded first; a journal that cannot be opened or folded makes
// every record fail (and the log unhealthy) rather than lose or reorder records.
func NewBatcher(l *Log, bundles BundleStore, cfg BatcherConfig) *Batcher {
	if cfg.MaxRecords <= 0 || cfg.MaxRecords > MaxBatch {
		cfg.MaxRecords = 1024
		if cfg.Journal != "" {
			cfg.MaxRecords = MaxBatch // records wait in the journal, not in memory
		}
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = DefaultBatchDelay
		if cfg.Journal != "" {
			cfg.MaxDelay = DefaultGroupDelay
		}
	}
	if cfg.FoldEvery <= 0 {
		cfg.FoldEvery = DefaultFoldEvery
	}
	b := &Batcher{log: l, bundles: bundles, maxRecords: cfg.MaxRecords, maxDelay: cfg.MaxDelay, foldEvery: cfg.FoldEvery,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if cfg.Journal == "" {
		go b.run()
		return b
	}
	b.barrier, b.folds, b.foldDone = make(chan chan barrierResult), make(chan foldItem, 1024), make(chan struct{})
	b.journalRoot, b.journalKey, b.growSegments = cfg.Journal, cfg.JournalKey, !cfg.PrewriteSegments
	b.written, b.syncEvery, b.segmentBytes = cfg.Written, cfg.SyncEvery, cfg.segmentBytes
	if b.syncEvery <= 0 {
		b.syncEvery = DefaultSyncEvery
	}
	if err := b.openJournal(cfg.Journal); err != nil {
		broken := fmt.Errorf("%w: request journal: %v", ErrUnavailable, err)
		b.broken.Store(&broken)
		l.log.Error("ALERT request journal unusable; refusing what needs a record until it can be opened", "err", err)
		l.setErr(broken)
		go b.retryStart(broken)
		return b
	}
	b.start()
	return b
}

// maxStartRetry bounds retryStart's wait between tries.
const maxStartRetry = 5 * time.Second

// retryStart tries a failed start's refold and journal again (openJournal: a bundle store
// that was away, a full disk), every foldEvery doubling up to maxStartRetry, until one
// succeeds — then the batcher takes records (start) — or the batcher or its log is
// closed. Until then every record is refused (Healthy). A refold is safe to repeat: what
// the log holds is skipped, what a try left is folded by the next.
func (b *Batcher) retryStart(first error) {
	wait := b.foldEvery
	for {
		t := time.NewTimer(wait)
		stopped := false
		select {
		case <-b.stop:
			stopped = true
		case <-b.log.stop:
			stopped = true
		case <-t.C:
		}
		if stopped {
			t.Stop()
			close(b.done)
			close(b.foldDone)
			return
		}
		err := b.openJournal(b.journalRoot)
		if err == nil {
			break
		}
		broken := fmt.Errorf("%w: request journal: %v", ErrUnavailable, err)
		b.broken.Store(&broken)
		wait = min(2*wait, maxStartRetry)
		b.log.log.Warn("request journal still unusable; refusing what needs a record", "err", err, "retry_in", wait)
	}
	b.start()
	b.broken.Store(nil)
	b.log.clearErr(first)
	b.log.log.Warn("request journal opened after a failed start: request records are taken again")
}

// start runs the batcher's loops over its opened journal.
func (b *Batcher) start() {
	go b.foldLoop()
	if b.written {
		mode := func() (bool, bool) {
			b.j.wmu.Lock()
			defer b.j.wmu.Unlock()
			return true, !b.j.noShm
		}
		b.log.requestMode.Store(&mode)
		go b.runWritten()
	} else {
		go b.runJournal()
	}
}

// openJournal folds what dead processes left in the journal (Open did at the log's
// opening; one may have died since), then opens this process's own, its first segment's
// floor the log's size now.
func (b *Batcher) openJournal(root string) error {
	if err := b.foldDead(root); err != nil {
		return err
	}
	if b.written {
		// After the refold, which reads a dead directory's shadows wherever its journal
		// root was (deadShadowDirs): a root moved since its process died is gone by its
		// old name.
		sweepShadows(b.log.log)
	}
	size, err := b.log.reader.IntegratedSize(context.Background())
	if err != nil {
		return fmt.Errorf("reading the log's size: %w", err)
	}
	j, err := openJournalWith(&journal{root: root, batch: b.maxRecords, key: b.journalKey, prewrite: prewriteMin, noDirect: b.growSegments, packed: b.written, mapped: mapped{warn: b.log.log.Warn, segBytes: b.segmentBytes}}, size)
	if err != nil {
		return err
	}
	b.j = j
	return nil
}

// foldDead folds the segments of dead processes' journals under root into the log,
// skipping batches the log has (from the oldest segment's floor on), and removes their
// directories. A directory whose segments' links do not hold (a segment missing whose
// records are not in the log, one that lost frames) is left alone and named in the error.
func (b *Batcher) foldDead(root string) error {
	left, dead, derr := deadJournals(root, b.journalKey)
	defer func() {
		for _, o := range dead {
			o.lock.Close() // on success removeOrphan has closed it already
		}
	}()
	if len(left) > 0 {
		ctx := context.Background()
		size, err := b.log.reader.IntegratedSize(ctx)
		if err != nil {
			return fmt.Errorf("reading the log's size: %w", err)
		}
		from := size
		for _, seg := range left {
			if seg.scan.lost {
				b.log.log.Error("ALERT request journal segment of a stopped process ends in bytes that are not a frame: records written after its last sync were lost (the host crashed) or the segment was damaged; the records before them are folded",
					"segment", filepath.Base(seg.path), "records", len(seg.recs))
			}
			if seg.shadowGone {
				b.log.log.Error("ALERT request journal of a stopped process wrote into shadows on tmpfs, and its last segment's is gone (the host restarted, or /dev/shm was replaced or cleared): records it acknowledged after its last sync, up to request_sync_interval of answers, may be lost; those on the disk are folded",
					"segment", filepath.Base(seg.path), "records", len(seg.recs))
			}
			switch {
			case seg.scan.v4 && (len(seg.recs) > 0 || seg.scan.prev.seq != 0):
				from = min(from, seg.scan.floor)
			case len(seg.recs) > 0:
				// A segment of a version before v4 has no floor: the whole log is read
				// (once, after the upgrade; again only if one is put back — a served v3
				// bundle, replayed after any number of entries, is then still skipped).
				from = 0
			}
		}
		have, err := b.log.loggedBatches(ctx, from, size)
		if err != nil {
			return fmt.Errorf("reading the log's entries: %w", err)
		}
		var errs []error
		left, dead, errs = dropBroken(left, dead, func(segs []segment) error {
			if err := checkLinks(segs, have, func(lb loggedBatch) bool { return b.batchHeld(ctx, lb) == nil }); err != nil {
				return err
			}
			return b.checkLogged(ctx, segs, have)
		})
		derr = errors.Join(append(errs, derr)...)
		for i := range left {
			if err := b.fold(&left[i], have); err != nil {
				return fmt.Errorf("%s: %w", filepath.Dir(left[i].path), err) // named: the operator's to look at
			}
		}
		if len(left) > 0 {
			b.log.log.Warn("request records of a stopped process folded from its journal into the log", "segments", len(left))
		}
	}
	for _, o := range dead {
		if err := removeOrphan(o); err != nil {
			return err
		}
	}
	return derr // a directory that could not be read or whose links fail: its records wait, the operator is told
}

// Submit adds a record. Its Future resolves once the record is durable: without a journal
// once its batch entry is in the log, with the record's RecordIndex; with a journal once
// its group is in the journal, with index 0 (its place in the log is fixed when the journal
// is folded: Barrier).
func (b *Batcher) Submit(ctx context.Context, ev Event) Future {
	raw, err := ev.Marshal()
	if errors.Is(err, ErrTooLarge) {
		ev = ev.Truncated()
		raw, err = ev.Marshal()
	}
	if err != nil {
		return func() (uint64, error) { return 0, err }
	}
	return b.submit(store.AuditEvent{TS: ev.TS, Kind: string(ev.Kind), Principal: ValidUTF8(ev.Actor["principal"]), Decision: ev.Decision, Raw: raw}, true)
}

// SubmitEncoded is Submit for a record whose canonical bytes (rec.Raw: what Marshal gives
// for the event, at most MaxEventSize) the caller wrote itself, with the fields the search
// index needs. The gateway writes its request records so, without an Event's maps; its
// tests hold the bytes equal to Marshal's. rec.Raw is not kept past the call: the caller
// may write its next record into the same buffer (a written record is copied into the
// journal's segment, where it stays until indexed; one waiting for its group, copied).
func (b *Batcher) SubmitEncoded(ctx context.Context, rec store.AuditEvent) Future {
	return b.submit(rec, false)
}

// submit is SubmitEncoded; owned: rec.Raw is the batcher's to keep.
func (b *Batcher) submit(rec store.AuditEvent, owned bool) Future {
	if len(rec.Raw) == 0 || len(rec.Raw) > MaxEventSize {
		err := fmt.Errorf("%w: a record of %d bytes", ErrEvent, len(rec.Raw))
		return func() (uint64, error) { return 0, err }
	}
	// The batch entry carries its records' times: one that no entry can carry would be
	// acknowledged (journaled) and then hold every later fold behind it.
	if y := rec.TS.UTC().Year(); rec.TS.IsZero() || y < 0 || y > 9999 {
		err := fmt.Errorf("%w: a record's time %v", ErrEvent, rec.TS)
		return func() (uint64, error) { return 0, err }
	}
	if werr := b.Healthy(); werr != nil {
		return func() (uint64, error) { return 0, werr }
	}
	if b.written {
		return b.write(rec)
	}
	if !owned {
		rec.Raw = bytes.Clone(rec.Raw)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return func() (uint64, error) { return 0, fmt.Errorf("%w: log closed", ErrUnavailable) }
	}
	p := b.cur
	if p == nil {
		p = &pendingBatch{finished: make(chan struct{})}
		b.cur = p
	}
	pos := len(p.records)
	p.records = append(p.records, rec)
	full := len(p.records) >= b.maxRecords
	if full {
		b.ready = append(b.ready, p)
		b.last = p
		b.cur = nil
	}
	b.mu.Unlock()
	if full || pos == 0 {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	journaled := b.j != nil
	return func() (uint64, error) {
		<-p.finished
		if p.err != nil || journaled {
			return 0, p.err
		}
		return RecordIndex(p.index, pos), nil
	}
}

// CommitNow ends the group being gathered: its records are committed at once instead of
// at the end of the group (batch) delay. The gateway calls it when every request it is
// serving waits on a record — no one is left to join the group, so waiting longer only
// adds latency.
func (b *Batcher) CommitNow() {
	if b.written {
		return // no group: each record is written by its request
	}
	b.mu.Lock()
	if p := b.cur; p != nil && len(p.records) > 0 {
		b.ready = append(b.ready, p)
		b.last = p
		b.cur = nil
	}
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Healthy is nil while records can be made durable.
func (b *Batcher) Healthy() error {
	if broken := b.broken.Load(); broken != nil {
		return *broken
	}
	return b.log.Healthy()
}

func (b *Batcher) run() {
	defer close(b.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	for {
		select {
		case <-b.stop:
			for _, p := range b.takeAll() {
				b.commit(p)
			}
			return
		case <-b.kick:
			for _, p := range b.takeReady() {
				b.commit(p)
			}
			if !armed {
				timer.Reset(b.maxDelay)
				armed = true
			}
		case <-timer.C:
			armed = false
			for _, p := range b.takeAll() {
				b.commit(p)
			}
		}
	}
}

// runJournal is the committer with a journal: groups go to the journal as they come;
// the open segment is closed and handed to the folder when it holds MaxRecords or has
// been open FoldEvery, and at a barrier or Close.
func (b *Batcher) runJournal() {
	defer close(b.done)
	group, fold := time.NewTimer(time.Hour), time.NewTimer(time.Hour)
	group.Stop()
	fold.Stop()
	probe := time.NewTicker(min(b.foldEvery, 200*time.Millisecond))
	defer probe.Stop()
	groupArmed, foldArmed := false, false
	write := func(ps ...*pendingBatch) {
		b.journalCommit(ps...)
		if len(b.j.recs) >= b.maxRecords {
			b.rotate()
		} else if len(b.j.recs) > 0 && !foldArmed {
			fold.Reset(b.foldEvery)
			foldArmed = true
		}
	}
	for {
		select {
		case <-b.stop:
			write(b.takeAll()...)
			b.rotate()
			close(b.folds)
			<-b.foldDone
			b.j.close()
			return
		case <-b.kick:
			write(b.takeReady()...)
			if !groupArmed {
				group.Reset(b.maxDelay)
				groupArmed = true
			}
		case <-group.C:
			groupArmed = false
			write(b.takeAll()...)
		case <-fold.C:
			foldArmed = false
			b.rotate()
		case <-probe.C:
			// After a failed append (a full or read-only disk) an empty frame is the probe:
			// records are taken again once one is durable.
			if b.log.journalErr.Load() != nil {
				if err := b.j.append(nil); err == nil {
					b.log.setJournalErr(nil)
				} else {
					b.abandonSegment() // never write after a partial frame
				}
			}
		case reply := <-b.barrier:
			write(b.takeAll()...)
			b.rotate()
			b.folds <- foldItem{done: reply}
		}
	}
}

// journalCommit makes groups durable in the journal — one frame each, one write and one
// fdatasync for all (several are ready when CommitNow ran during the last fdatasync) — and
// resolves their futures. A segment never holds more than MaxRecords records (groups hold
// at most that many): a group that would take it past is written to the next, so that a
// segment is one batch, and its file the batch's bundle (fold).
func (b *Batcher) journalCommit(ps ...*pendingBatch) {
	var live []*pendingBatch
	for _, p := range ps {
		if p != nil && len(p.records) > 0 {
			live = append(live, p)
		}
	}
	var err error
	for len(live) > 0 && err == nil {
		k, n := 0, len(b.j.recs)
		for k < len(live) && n+len(live[k].records) <= b.maxRecords {
			n += len(live[k].records)
			k++
		}
		if k == 0 && len(b.j.recs) > 0 {
			b.rotate()
			continue
		}
		k = max(k, 1)
		err = b.journalAppend(live[:k])
		live = live[k:]
		if len(live) > 0 && err == nil {
			b.rotate()
		}
	}
	for _, p := range live { // not written: an earlier group's append failed
		p.err = err
		b.log.records.WithLabelValues("failed").Add(float64(len(p.records)))
		close(p.finished)
	}
}

// journalAppend appends groups to the open segment together and resolves their futures.
func (b *Batcher) journalAppend(live []*pendingBatch) error {
	groups := make([][]store.AuditEvent, len(live))
	n := 0
	for i, p := range live {
		groups[i], n = p.records, n+len(p.records)
	}
	end := b.log.beginWrite(writeJournal)
	err := b.j.appendGroups(groups...)
	end()
	if err != nil {
		err = fmt.Errorf("%w: request journal: %v", ErrUnavailable, err)
		for _, p := range live {
			p.err = err
		}
		b.log.records.WithLabelValues("failed").Add(float64(n))
		b.log.setJournalErr(err)
		b.abandonSegment()
	}
	for _, p := range live {
		close(p.finished)
	}
	return err
}

// abandonSegment follows a failed append: nothing more goes after a (perhaps partial)
// frame, so the segment is cut back and folded with what it acknowledged, and the next
// group starts a new one.
func (b *Batcher) abandonSegment() {
	if seg := b.j.abandon(); seg != nil {
		b.folds <- foldItem{seg: seg}
	}
}

// rotate hands the open segment to the folder.
func (b *Batcher) rotate() {
	seg, err := b.j.rotate()
	if seg != nil {
		b.folds <- foldItem{seg: seg}
	}
	if err != nil {
		// The next append retries the segment; until then groups fail (closed).
		b.log.log.Error("ALERT request journal: cannot start a segment", "err", err)
	}
}

// foldLoop folds closed segments into the log in order, and answers barriers.
// It also folds, every DeadJournalEvery, the journals of processes that died while this
// one runs (replicas sharing the data directory).
func (b *Batcher) foldLoop() {
	defer close(b.foldDone)
	var failed error
	dead := time.NewTicker(DeadJournalEvery)
	defer dead.Stop()
	for {
		select {
		case it, ok := <-b.folds:
			if !ok {
				return
			}
			if it.seg != nil && failed == nil { // after a failure (only at Close) the rest wait for the next process, in order
				failed = b.foldRetrying(it.seg)
			}
			if it.done != nil {
				it.done <- barrierResult{index: b.lastIdx, ok: b.folded && failed == nil, err: failed}
			}
		case <-dead.C:
			if err := b.foldDead(b.journalRoot); err != nil {
				b.log.log.Error("ALERT a stopped process's request journal cannot be folded into the log", "err", err)
			}
		}
	}
}

// perBatch is how many records a batch of seg holds: as its writer cut them, so that a
// refold recognizes its batches.
func (b *Batcher) perBatch(seg *segment) int {
	if seg.batch <= 0 || seg.batch > MaxBatch {
		return b.maxRecords
	}
	return seg.batch
}

// eachBatch walks seg's records as a fold cuts them: from seg.done, per records at a time,
// a batch the log has (have: its place logged; a dead journal's refold) cut to the records
// it holds — the rest then a batch of their own place. fn gets each batch's place, its
// records, their leaf hashes when the writer kept them (else nil) and the log's batch of
// that place (nil: none); seg is moved past each batch fn took.
func (seg *segment) eachBatch(per int, have map[string]loggedBatch, fn func(src string, chunk []store.AuditEvent, leaves [][sha256.Size]byte, logged *loggedBatch) error) error {
	for len(seg.recs) > 0 {
		chunk := seg.recs[:min(len(seg.recs), per)]
		src := journalSource(seg.path, seg.done)
		var logged *loggedBatch
		if lb, ok := have["journal:"+src]; ok {
			logged = &lb
		} else if have != nil && seg.legacy() { // folded before batches named their place?
			_, name := EncodeBundle(raws(chunk))
			if lb, ok := have["bundle:"+name]; ok {
				logged = &lb
			}
		}
		if logged != nil {
			// What it holds, even past a batch of the writer's (a count over the segment's
			// batch size: refused by checkLogged unless the bundle holds those records).
			chunk = seg.recs[:min(logged.n, len(seg.recs))]
		}
		kept := len(seg.leaves) == len(seg.recs)
		var leaves [][sha256.Size]byte
		if kept {
			leaves = seg.leaves[:len(chunk)]
		}
		if err := fn(src, chunk, leaves, logged); err != nil {
			return err
		}
		if kept {
			seg.leaves = seg.leaves[len(chunk):]
		} else {
			seg.leaves = nil
		}
		seg.recs, seg.done = seg.recs[len(chunk):], seg.done+len(chunk)
	}
	return nil
}

// checkLogged holds a dead journal directory's segments to the log's word where a refold
// would skip their records: a batch the log has of one of their places must hold them —
// its bundle read and checked against its entry (CheckBatch), these records first, byte
// for byte. An entry alone is not the records: one whose bundle is missing or altered, or
// that counts records its bundle does not hold (written by a hand in the log's storage),
// would have the refold skip acknowledged records. Refused as a broken link is: the
// directory is left alone and named.
//
// A batch is of one segment: one the log has that reaches past the records its segment
// held — the count the next segment's link names for it (a segment on the disk can be
// short of that: its tail folded from memory) — or is placed at or past that count, would
// have the next segment's own records logged again: refused too (outside round 50).
func (b *Batcher) checkLogged(ctx context.Context, segs []segment, have map[string]loggedBatch) error {
	for i, s := range segs { // a copy: eachBatch moves it
		places := map[string]bool{}
		all := s.done + len(s.recs)
		held := linkedCount(segs[i:])
		at := s.done
		err := s.eachBatch(b.perBatch(&s), have, func(src string, chunk []store.AuditEvent, _ [][sha256.Size]byte, logged *loggedBatch) error {
			places["journal:"+src] = true
			from := at
			at += len(chunk)
			if logged == nil {
				return nil
			}
			if held >= 0 && from+logged.n > held {
				return fmt.Errorf("%w: %s: the log's batch of %s holds %d records, past the %d the segment held (the next one's)", ErrEvent, s.path, src, logged.n, held)
			}
			if logged.entry == nil {
				return nil
			}
			recs, err := b.log.batchRecords(ctx, logged.entry)
			if err != nil {
				return fmt.Errorf("%w: %s: the log's batch of %s does not hold its records: %v", ErrEvent, s.path, src, err)
			}
			for i, r := range chunk {
				if i >= len(recs) || !bytes.Equal(r.Raw, recs[i]) {
					return fmt.Errorf("%w: %s: record %d is not the log's batch of %s's (a batch entry not of these records)", ErrEvent, s.path, s.done+i, src)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		// A batch the log has at a place inside the segment that the walk does not reach
		// (a place within a batch) holds records the refold logs again: not one of this
		// segment's batches as its writer or a refold cut them.
		prefix := "journal:" + journalSource(s.path, 0)
		prefix = prefix[:len(prefix)-1]
		for k := range have {
			if at, ok := strings.CutPrefix(k, prefix); ok && !places[k] {
				if n, err := strconv.Atoi(at); err == nil && n < all {
					return fmt.Errorf("%w: %s: the log has a batch at record %d, inside one of its batches", ErrEvent, s.path, n)
				} else if err == nil && held >= 0 && n >= held {
					return fmt.Errorf("%w: %s: the log has a batch at record %d, at or past the %d records it held", ErrEvent, s.path, n, held)
				}
			}
		}
	}
	return nil
}

// linkedCount is how many records segs[0] held as the next segment of its directory that
// links one (segs are a directory's, oldest first) names it: that link's count when it
// names segs[0], else -1 (unknown: the last segment, or a later one links past a missing
// one).
func linkedCount(segs []segment) int {
	for _, o := range segs[1:] {
		if o.scan.prev.seq != 0 {
			if o.scan.prev.seq == segs[0].seq+1 {
				return int(o.scan.prev.recs)
			}
			return -1
		}
	}
	return -1
}

// batchHeld checks a logged batch against its bundle (read and held to its entry:
// CheckBatch); one this process committed (no entry kept) is held.
func (b *Batcher) batchHeld(ctx context.Context, lb loggedBatch) error {
	if lb.entry == nil {
		return nil
	}
	_, err := b.log.batchRecords(ctx, lb.entry)
	return err
}

// DeadJournalEvery is how often a running batcher looks for journals of dead processes.
var DeadJournalEvery = 5 * time.Second

// foldRetrying folds a segment, retrying while the log refuses (its records are durable in
// the journal meanwhile, and the log's failure refuses new records); after Close it tries
// closeFoldTries times, then leaves the segment for the next process.
func (b *Batcher) foldRetrying(seg *segment) error {
	for closing := 0; ; {
		err := b.fold(seg, nil)
		if err == nil {
			return nil
		}
		select {
		case <-b.stop:
			// Closing: a few quick tries (one transient fault at Close left every record of
			// a gateway that was then retired out of the log), then the next process's.
			if closing++; closing >= closeFoldTries {
				b.log.log.Error("ALERT request records durable in the journal are not in the log; the next process on this data directory folds them", "segment", filepath.Base(seg.path), "err", err)
				return err
			}
			b.log.log.Error("ALERT request records durable in the journal are not yet in the log; retrying before closing", "segment", filepath.Base(seg.path), "err", err)
			time.Sleep(closeFoldRetry)
		default:
			b.log.log.Error("ALERT request records durable in the journal are not yet in the log; retrying", "segment", filepath.Base(seg.path), "err", err)
			select {
			case <-b.stop:
			case <-time.After(b.foldEvery):
			}
		}
	}
}

// A closing batcher tries a failing fold closeFoldTries times, closeFoldRetry apart.
const (
	closeFoldTries = 5
	closeFoldRetry = 100 * time.Millisecond
)

// fold commits a segment's records as batch entries of at most MaxRecords, from where an
// earlier attempt stopped, skipping batches in have, then removes the segment's file.
// Each batch entry names where its records were in the journal (Fields["journal"]:
// journalSource), and a refold skips the batches so named from the segment's floor on
// (loggedBatches) — not batches of the same bytes: two acknowledged records can be byte
// for byte the same, and an outside test had the second dropped when batches were
// recognized by their bundle. Batch entries of versions before the name are recognized
// by their bundle, as they were.
//
// have counts the records each logged batch holds: a batch of this place that holds fewer
// than the segment has there (folded from a shorter copy) is skipped for those only, and
// the rest are folded as a batch of their own place. (A dead journal's batches the log
// has were held to their bundles first: checkLogged.)
func (b *Batcher) fold(seg *segment, have map[string]loggedBatch) error {
	err := seg.eachBatch(b.perBatch(seg), have, func(src string, chunk []store.AuditEvent, leaves [][sha256.Size]byte, logged *loggedBatch) error {
		if logged != nil {
			return nil // in the log (a dead journal's: checkLogged held the batch's bundle to them)
		}
		var whole *segment // the segment is this batch's bundle as it stands
		if seg.sum != nil && seg.done == 0 && len(chunk) == len(seg.recs) {
			whole = seg
		}
		idx, err := b.commitRecords(chunk, src, whole, leaves, seg.own)
		if err != nil {
			return err
		}
		if have != nil {
			have["journal:"+src] = loggedBatch{n: len(chunk)}
		} else {
			b.lastIdx, b.folded = idx, true // Barrier's answer: this batcher's records only
		}
		if b.j != nil {
			b.j.floor.Store(idx) // later segments' batches come after it
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, d := range seg.shadows {
		if d.mine {
			os.Remove(filepath.Join(d.path, filepath.Base(seg.path))) // a dead process's open segment's
		}
	}
	seg.own.release() // folded: the index holds what it still needs
	seg.own = nil
	return nil
}

func (b *Batcher) takeReady() []*pendingBatch {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.ready
	b.ready = nil
	return r
}

// takeAll takes the full batches and then the one being gathered, under one lock: the
// gathered one is newer than every full one, and committing it first (a group timer that
// fired while full batches waited) would put records in the log out of order.
func (b *Batcher) takeAll() []*pendingBatch {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.ready
	b.ready = nil
	if p := b.cur; p != nil {
		r = append(r, p)
		b.last = p
		b.cur = nil
	}
	return r
}

// Barrier commits the records submitted so far without waiting for the batch to fill or
// age (with a journal: folds the journal), and returns the log index of the batch entry
// that covers them (false: none was ever submitted). Detectors call it before gathering
// an incident's evidence.
func (b *Batcher) Barrier(ctx context.Context) (uint64, bool, error) {
	if broken := b.broken.Load(); broken != nil {
		return 0, false, *broken
	}
	if b.j != nil {
		reply := make(chan barrierResult, 1)
		select {
		case b.barrier <- reply:
		case <-b.done:
			return 0, false, fmt.Errorf("%w: log closed", ErrUnavailable)
		case <-ctx.Done():
			return 0, false, ctx.Err()
		}
		select {
		case r := <-reply:
			return r.index, r.ok, r.err
		case <-ctx.Done():
			return 0, false, ctx.Err()
		}
	}
	b.mu.Lock()
	if b.cur != nil {
		b.ready = append(b.ready, b.cur)
		b.last = b.cur
		b.cur = nil
	}
	p := b.last
	b.mu.Unlock()
	if p == nil {
		return 0, false, nil
	}
	select {
	case b.kick <- struct{}{}:
	default:
	}
	select {
	case <-p.finished:
		return p.index, p.err == nil, p.err
	case <-ctx.Done():
		return 0, false, ctx.Err()
	}
}

// commit writes the bundle, then the entry, and resolves the batch's futures.
func (b *Batcher) commit(p *pendingBatch) {
	if p == nil || len(p.records) == 0 {
		return
	}
	defer close(p.finished)
	p.index, p.err = b.commitRecords(p.records, "", nil, nil, nil)
}

// commitRecords writes records' bundle, then their batch entry, and returns its index.
// source: where in the journal the records were (journalSource), "" when committed directly.
// seg: a journal segment holding exactly these records, whole (segment.sum), linked in as
// the bundle when the store can (BundleLinker) instead of written again. leaves: the
// records' leaf hashes when the writer kept them (nil: computed here).
// own: what holds the records' bytes when it is a journal's buffer (nil: their own).
func (b *Batcher) commitRecords(recs []store.AuditEvent, source string, seg *segment, leaves [][sha256.Size]byte, own *ownBuf) (uint64, error) {
	ctx := context.Background()
	rs := raws(recs)
	var name string
	var err error
	linked := false
	end := b.log.beginWrite(writeBundle)
	if l, ok := b.bundles.(BundleLinker); ok && seg != nil {
		name = hex.EncodeToString(seg.sum)
		if lerr := l.LinkBundle(ctx, name, seg.path); lerr == nil {
			linked = true
		} else if !b.linkWarned {
			b.linkWarned = true // once: a store that cannot link (another file system) fails every time
			b.log.log.Warn("request journal segment not linked as its batch's bundle; writing the bundle (said once)", "segment", filepath.Base(seg.path), "err", lerr)
		}
	}
	if !linked {
		var bundle []byte
		bundle, name = AppendBundle(b.bundleBuf, rs)
		b.bundleBuf = bundle
		err = b.bundles.PutBundle(ctx, name, bundle)
	}
	end()
	if err != nil {
		err = fmt.Errorf("%w: batch bundle: %v", ErrUnavailable, err)
		b.log.records.WithLabelValues("failed").Add(float64(len(recs)))
		b.log.setErr(err)
		return 0, err
	}
	var root []byte
	if len(leaves) == len(recs) {
		root = leavesRoot(leaves)
	} else {
		root = BatchRoot(rs)
	}
	first, last := recs[0].TS.UTC(), recs[len(recs)-1].TS.UTC()
	ev := Event{V: 1, TS: last, Kind: KindBatch, Decision: Allow,
		Actor:   map[string]string{"principal": "strongroom/gateway"},
		Subject: map[string]string{"bundle": name},
		Fields: map[string]string{"records": strconv.Itoa(len(recs)), "root": hex.EncodeToString(root),
			"first_ts": first.Format(time.RFC3339Nano), "last_ts": last.Format(time.RFC3339Nano)}}
	if source != "" {
		ev.Fields["journal"] = source
	}
	remembered := b.log.idx != nil && b.log.rememberRecords(name, recs, own)
	idx, err := b.log.Record(ctx, ev)
	switch {
	case remembered && err != nil:
		b.log.forgetRecords(name)
	case remembered:
		b.log.rememberedAt(name, idx)
	}
	return idx, err
}

// raws is the records' canonical bytes.
func raws(recs []store.AuditEvent) [][]byte {
	out := make([][]byte, len(recs))
	for i, r := range recs {
		out[i] = r.Raw
	}
	return out
}

// Close commits what is waiting and stops; later Submits fail.
func (b *Batcher) Close() {
	b.closeMu.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		close(b.stop)
		<-b.done
	})
}
