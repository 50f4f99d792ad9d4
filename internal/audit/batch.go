package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/transparency-dev/merkle/compact"
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
//	entry   = Event{Kind: "audit.batch", Subject: {bundle: <sha256 hex>},
//	                Fields: {records: N, root: <hex RFC 6962 root over the events>,
//	                         first_ts, last_ts}}
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

// BundleStore keeps batch bundles beside the log.
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
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(p, b, 0o644)
}

func (d DirBundles) Bundle(_ context.Context, name string) ([]byte, error) {
	p, err := d.path(name)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
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
	n := len(bundleMagic)
	for _, r := range records {
		n += binary.MaxVarintLen64 + len(r)
	}
	b := make([]byte, 0, n)
	b = append(b, bundleMagic...)
	for _, r := range records {
		b = binary.AppendUvarint(b, uint64(len(r)))
		b = append(b, r...)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// DecodeBundle splits a bundle into its records, refusing anything malformed.
func DecodeBundle(b []byte) ([][]byte, error) {
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

// BatchRoot is the RFC 6962 Merkle root over the records (as log leaves).
func BatchRoot(records [][]byte) []byte {
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for _, rec := range records {
		r.Append(rfc6962.DefaultHasher.HashLeaf(rec), nil)
	}
	root, _ := r.GetRootHash(nil)
	if root == nil {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	return root
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

// Batcher gathers request records into batches: one log entry per batch, committed when
// MaxRecords are waiting or MaxDelay has passed since the first. One goroutine commits; a
// record costs its marshalling and a slice append under a mutex on the caller's side.
type Batcher struct {
	log        *Log
	bundles    BundleStore
	maxRecords int
	maxDelay   time.Duration

	mu      sync.Mutex
	cur     *pendingBatch   // filling
	ready   []*pendingBatch // full, waiting for the committer
	last    *pendingBatch   // the last batch handed to the committer
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	closed  bool
	closeMu sync.Once
}

type pendingBatch struct {
	records  [][]byte
	first    time.Time
	last     time.Time
	finished chan struct{}
	index    uint64
	err      error
}

// BatcherConfig tunes a Batcher (zero: 1024 records, DefaultBatchDelay).
type BatcherConfig struct {
	MaxRecords int
	MaxDelay   time.Duration
}

// NewBatcher starts a batcher on l, storing bundles in bundles.
func NewBatcher(l *Log, bundles BundleStore, cfg BatcherConfig) *Batcher {
	if cfg.MaxRecords <= 0 || cfg.MaxRecords > MaxBatch {
		cfg.MaxRecords = 1024
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = DefaultBatchDelay
	}
	b := &Batcher{log: l, bundles: bundles, maxRecords: cfg.MaxRecords, maxDelay: cfg.MaxDelay,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go b.run()
	return b
}

// Submit adds a record. Its Future resolves once the batch holding it is durable in the
// log, with the record's RecordIndex.
func (b *Batcher) Submit(ctx context.Context, ev Event) Future {
	raw, err := ev.Marshal()
	if errors.Is(err, ErrTooLarge) {
		ev = ev.Truncated()
		raw, err = ev.Marshal()
	}
	if err != nil {
		return func() (uint64, error) { return 0, err }
	}
	if werr := b.log.Healthy(); werr != nil {
		return func() (uint64, error) { return 0, werr }
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return func() (uint64, error) { return 0, fmt.Errorf("%w: log closed", ErrUnavailable) }
	}
	p := b.cur
	if p == nil {
		p = &pendingBatch{first: ev.TS, finished: make(chan struct{})}
		b.cur = p
	}
	pos := len(p.records)
	p.records = append(p.records, raw)
	p.last = ev.TS
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
	return func() (uint64, error) {
		<-p.finished
		if p.err != nil {
			return 0, p.err
		}
		return RecordIndex(p.index, pos), nil
	}
}

// Healthy is the log's health.
func (b *Batcher) Healthy() error { return b.log.Healthy() }

func (b *Batcher) run() {
	defer close(b.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	for {
		select {
		case <-b.stop:
			for _, p := range b.takeReady() {
				b.commit(p)
			}
			b.commit(b.take())
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
			b.commit(b.take())
		}
	}
}

func (b *Batcher) takeReady() []*pendingBatch {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.ready
	b.ready = nil
	return r
}

func (b *Batcher) take() *pendingBatch {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.cur
	if p != nil {
		b.last = p
	}
	b.cur = nil
	return p
}

// Barrier commits the records submitted so far without waiting for the batch to fill or
// age, and returns the log index of the batch entry that covers them (false: none was
// ever submitted). Detectors call it before gathering an incident's evidence.
func (b *Batcher) Barrier(ctx context.Context) (uint64, bool, error) {
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
	ctx := context.Background()
	bundle, name := EncodeBundle(p.records)
	if err := b.bundles.PutBundle(ctx, name, bundle); err != nil {
		p.err = fmt.Errorf("%w: batch bundle: %v", ErrUnavailable, err)
		b.log.records.WithLabelValues("failed").Add(float64(len(p.records)))
		b.log.setErr(p.err)
		return
	}
	ev := Event{V: 1, TS: p.last.UTC(), Kind: KindBatch, Decision: Allow,
		Actor:   map[string]string{"principal": "strongroom/gateway"},
		Subject: map[string]string{"bundle": name},
		Fields: map[string]string{"records": strconv.Itoa(len(p.records)), "root": hex.EncodeToString(BatchRoot(p.records)),
			"first_ts": p.first.UTC().Format(time.RFC3339Nano), "last_ts": p.last.UTC().Format(time.RFC3339Nano)}}
	p.index, p.err = b.log.Record(ctx, ev)
	if p.err == nil && b.log.idx != nil {
		b.log.rememberRecords(name, p.records)
	}
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
