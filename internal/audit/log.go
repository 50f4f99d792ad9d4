package audit

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/strongroom/strongroom/internal/redact"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
	tmysql "github.com/transparency-dev/tessera/storage/mysql"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ErrUnavailable means the log could not record an event; callers refuse the operation the
// event was for (fail closed).
var ErrUnavailable = errors.New("audit log unavailable")

// Index is the search index beside the log (the store).
type Index interface {
	IndexAudit(ctx context.Context, evs []store.AuditEvent) error
	AuditIndexed(ctx context.Context) (uint64, error)
	AuditDigests(ctx context.Context, digests [][32]byte) (map[[32]byte]uint64, error)
	AuditDigestsAt(ctx context.Context, idxs []uint64) (map[uint64][32]byte, error)
	ForgetAudit(ctx context.Context, from uint64) error // after Repair
}

// Config configures a Log. Zero values take the defaults set in Open.
type Config struct {
	Dir string // tessera POSIX directory; served read-only at /log/
	// DB, when set, puts the log on a shared MariaDB/MySQL engine ("mysql://DSN", see
	// sqllog.go) instead of Dir: every replica appends, one signs checkpoints.
	DB string
	// DBTLS, when set, is the TLS with which DB is reached (tlsclient: the fleet's CA and
	// the replica's client certificate), whatever DB's tls parameter says.
	DBTLS              *tls.Config
	Signer             note.Signer // the deployment's Ed25519 log key
	Index              Index       // optional search index
	Witnesses          *tessera.WitnessGroup
	WitnessTimeout     time.Duration
	CheckpointStall    time.Duration         // the stall ALERT's wait (0: the package's CheckpointStall)
	BatchMaxSize       uint                  // default 1024
	BatchMaxAge        time.Duration         // default 2ms (request records come in batches of their own: audit.Batcher): the longest an event waits for companions
	CheckpointInterval time.Duration         // default 200ms (1s, the driver's least, with DB)
	ShutdownTimeout    time.Duration         // how long Close waits for a covering checkpoint; default 30s
	ScrubEvery         time.Duration         // a shared log: one step of the history walk (scrub.go); default DefaultScrubEvery
	AppendStall        time.Duration         // a write in flight this long makes the log unavailable (stall.go); default DefaultAppendStall
	Metrics            prometheus.Registerer // optional: records, failures, health
	Logger             *slog.Logger
	// Bundles keeps request batches' records (batch.go); default DirBundles{Dir}.
	Bundles BundleStore
	// Journal is the request-record journal's directory (journal.go; a log on local disk
	// only): Open folds what dead processes left there, JournalBatch records per batch
	// entry (default 1024), before it brings the index up to date.
	Journal      string
	JournalBatch int
	JournalKey   []byte // the journal's MAC key (BatcherConfig.JournalKey)
	// EntryKey (EntryKey(audit HMAC key), the same in every replica) seals each entry this
	// process appends with a MAC, and with DB the signer checks every entry's before it
	// signs (entrymac.go). Without it entries carry no MAC and a database writer can append.
	EntryKey []byte

	tempSweepAge time.Duration // tests': tempsweep.go's tempSweepAge
}

// Log is the audit log.
type Log struct {
	add      tessera.AddFn
	shutdown func(context.Context) error
	cancel   context.CancelFunc
	reader   tessera.LogReader
	idx      Index
	log      *slog.Logger
	origin   string
	dir      string
	db       *sql.DB   // the shared engine, nil for a POSIX log
	probeDB  *sql.DB   // db's probe: a connection of its own (openProbe)
	scrub    *scrubber // a shared log's history walk (scrub.go), nil for a POSIX log
	gate     *seqGate  // a POSIX log's sequencing gate (seqgate.go), nil for a shared log
	entryKey []byte    // seals appended entries (entrymac.go); nil: no MACs
	leader   *leader   // with db: holds the checkpoint signer's lock
	signer   *leaderSigner
	// witnesses is the log's witness policy (nil: none); a repair asks them (repairwitness.go).
	witnesses      *tessera.WitnessGroup
	witnessTimeout time.Duration
	// cosign asks a shared log's witnesses outside tessera's transaction (cosign.go; nil:
	// no witnesses, or a log on local disk, whose tessera asks them); served is the log as
	// outsiders read it — with cosign, its checkpoint is the witnessed row's.
	cosign *cosigner
	served tessera.LogReader
	goodCP atomic.Pointer[goodCheckpoint] // with cosign: the largest good witnessed checkpoint seen (checkWitnessed)
	// policies compares this replica's witness policy with the other live replicas' (a
	// shared log only; witnesspolicy.go).
	policies *policyWatch

	records *prometheus.CounterVec
	// segments counts the request journal's closed segments by why (written records):
	// "full" — a request's writer filled it and closed it, every request waiting meanwhile
	// (a close syncs; docs/PERFORMANCE.md, eighteenth session); "due" — its first record
	// was FoldEvery old.
	segments *prometheus.CounterVec
	healthy  prometheus.GaugeFunc
	bundles  BundleStore
	// bundleRecs holds the records of batches this process committed, by bundle name,
	// until the index has them (then they are read back from the bundle store).
	bundleMu   sync.Mutex
	bundleRecs map[string]keptRecords
	ownsHeld   int // bundleRecs' entries holding a journal buffer
	// checked keeps the records of the last few bundles a search read (batchRecords), by
	// name: a bundle is named by its digest, so what was checked once stays true.
	checkedMu sync.Mutex
	checked   []checkedBundle
	// Log lag: events submitted and not yet durable, the time each took to become durable,
	// and entries integrated but not yet in the search index.
	inflight atomic.Int64
	durable  prometheus.Histogram
	indexLag prometheus.Gauge
	cpLag    prometheus.Gauge
	// The checkpoint watch (watchCheckpoint, the index loop's goroutine only): the published
	// size last seen, since when, and whether the stall was alerted.
	cpSeen    uint64 // the largest published size seen
	stallSeen uint64 // the largest size whose progress the stall watch saw (the witnessed checkpoint's with cosign)
	cpSize    uint64 // the integrated size last read
	cpBack    bool   // the published checkpoint is older than one seen (alerted)
	cpSince   time.Time
	cpStalled bool
	stall     atomic.Pointer[stallState] // set while the stall is alerted (CheckpointStalled)
	cpEvery   time.Duration              // how often tessera publishes a checkpoint
	cpStall   time.Duration              // Config.CheckpointStall, or CheckpointStall
	// treeHeldSince: since when the tree's row has been seen held (reapHolders; indexLoop only).
	treeHeldSince time.Time
	reapDenied    bool // the engine would not say who holds the tree (warned once)
	mu            sync.Mutex
	lastErr       error
	lastRetry     time.Time // the last write probe after a failure (probe's goroutine only)
	stop          chan struct{}
	closeOnce     sync.Once
	closeMu       sync.RWMutex
	closed        bool
	pending       sync.WaitGroup
	loops         sync.WaitGroup // the index catch-up, the writability probe and its sweeps; Close waits

	// writable is nil while the log directory accepts writes (probed every probeEvery);
	// else why not. Submit refuses at once then, before tessera can meet the condition
	// itself: its POSIX driver panics when it cannot open its lock file.
	writable atomic.Pointer[error]
	// temps sweeps the temporary files tessera leaves after failed writes (a POSIX log
	// only; tempsweep.go).
	temps     *tempSweep
	probePath string
	probes    atomic.Uint64 // probes done (tests wait on it)
	// provenUntil (Unix ns) is set when a write to the log directory's disk succeeded —
	// the request journal's sync (runWritten) — to when the next sync is due, plus a
	// probe's period: until then probes skip their open unless probeOpenEvery has passed
	// since the last (lastOpen: the probe's goroutine only). A sync proves the disk until
	// the next one, whose failure refuses at once (setJournalErr); a proof taken by one
	// probe only had the three probes between two syncs open the file, ~15 opens a
	// second under load.
	provenUntil atomic.Int64
	lastOpen    time.Time
	// journalErr is nil while the request-record journal takes appends (journal.go); its
	// batcher sets and clears it (an empty frame appended is its probe).
	journalErr atomic.Pointer[error]
	// requestMode says how request records are made durable (the batcher sets it):
	// written, and written into a shadow (journal_mapped.go).
	requestMode atomic.Pointer[func() (written, shadowed bool)]
	// writes are the writes to the log's storage in flight, watched by the probe (stall.go).
	writes writeWatch

	// recent holds index records of events this process appended, keyed by log index,
	// so that the index catch-up need not read them back from disk and parse them.
	recentMu       sync.Mutex
	recent         map[uint64]store.AuditEvent
	mineMu         sync.Mutex  // durable.go
	mine           []mineEntry // entries this replica appended to a shared log, until signed and found
	mineFull       bool
	minePath       string       // where they are kept on this replica's disk ("": memory only)
	mineF          *os.File     // minePath, open for appending
	mineDiskFailed bool         // the last write or rewrite of minePath failed (ALERTed once)
	mineUnsure     []lostEntry  // entries appended again whose commit's outcome is not known yet
	lost           lostResolver // failed appends that may be in the log (lostcommit.go)
	// lostCtx bounds resolutions: cancelled when Close's context ends, and after Close.
	lostCtx    context.Context
	lostCancel context.CancelFunc
	// idxOwned: the search index was found to hold this log's entries (ownIndex), checked
	// once per process; only catchUp (indexMu held) reads and sets it.
	idxOwned bool
	indexMu  sync.Mutex
	indexOut []store.AuditEvent // indexMu: indexWithRecords's slice, kept for the next catch-up
	// validated: the index's entries below it were compared with the log's, entry by entry,
	// once a checkpoint this replica trusts covered them (validateIndex; indexMu held).
	validated uint64
	// idxRefused: the index refused the last write handed to it (indexChunked; indexMu held).
	idxRefused bool
}

// maxRecent bounds recent: beyond it (an index that cannot keep up) entries are read back
// from the log instead.
const maxRecent = 1 << 18

// Open opens (creating) the log in cfg.Dir and brings the search index up to date.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if (cfg.Dir == "" && cfg.DB == "") || cfg.Signer == nil {
		return nil, errors.New("audit: log directory (or database) and signer are required")
	}
	if cfg.BatchMaxSize == 0 {
		cfg.BatchMaxSize = 1024
	}
	if cfg.BatchMaxAge == 0 {
		cfg.BatchMaxAge = 2 * time.Millisecond
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = 200 * time.Millisecond
	}
	if cfg.AppendStall <= 0 {
		cfg.AppendStall = DefaultAppendStall
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var wj *witnessJudge // every answer of the policy's witnesses judged (witnessanswers.go)
	if cfg.Witnesses != nil {
		wj = newWitnessJudge(*cfg.Witnesses, cfg.Logger)
	}
	var (
		driver tessera.Driver
		db     *sql.DB
		ld     *leader
		ls     *leaderSigner
		signer = cfg.Signer
	)
	if cfg.DB != "" {
		var err error
		if db, err = openSQL(ctx, cfg.DB, cfg.DBTLS); err != nil {
			return nil, err
		}
		quietDependencies()
		st, err := tmysql.New(ctx, db)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("%w: log database %s: %v", ErrUnavailable, redact.DSN(cfg.DB), redact.Error(err, redact.DSN, cfg.DB))
		}
		if err := checkOrigin(ctx, st, cfg.Signer); err != nil {
			db.Close()
			return nil, err
		}
		dbName, err := databaseName(ctx, db)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("%w: log database %s: %v", ErrUnavailable, redact.DSN(cfg.DB), redact.Error(err, redact.DSN, cfg.DB))
		}
		driver = st
		ld = &leader{db: db, name: signerLock(dbName), log: cfg.Logger}
		ld.tick(ctx)
		ls = &leaderSigner{Signer: cfg.Signer, l: ld, key: cfg.EntryKey, log: cfg.Logger, floorPath: floorPath(cfg.Dir),
			refusals: prometheus.NewCounter(prometheus.CounterOpts{Name: "strongroom_audit_signer_refusals_total",
				Help: "Checkpoints this replica refused to sign because the shared log's database holds what no replica wrote (an entry without a valid MAC, a root over other leaves, a rolled-back or forked tree)."}),
			pubFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "strongroom_audit_publications_failed_total",
				Help: "Checkpoint publications of a shared log that failed: a checkpoint this replica signed never reached the row (its write failed), or its witness round got no quorum of cosignatures; after each the next waits."})}
		ls.loadFloor()
		ls.checkRowAtStart(ctx, db)
		signer = ls
		cfg.CheckpointInterval = max(cfg.CheckpointInterval, time.Second)
		if cfg.Bundles == nil {
			cfg.Bundles = SQLBundles{DB: db}
		}
	} else {
		var err error
		// tessera asks a local log's witnesses itself, through this client (by default
		// net/http's, which follows a witness's redirects and reads its answer whole).
		hc := witnessClient(witnessTransport{rt: http.DefaultTransport, max: witnessAnswerMax, judge: wj}, 0)
		if driver, err = posix.New(ctx, posix.Config{Path: cfg.Dir, HTTPClient: hc}); err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
	}
	opts := tessera.NewAppendOptions().
		WithCheckpointSigner(signer).
		WithBatching(cfg.BatchMaxSize, cfg.BatchMaxAge).
		WithCheckpointInterval(cfg.CheckpointInterval).
		WithPushback(1 << 16).
		WithShutdownTimeout(cfg.ShutdownTimeout)
	if cfg.Witnesses != nil && db == nil {
		// A shared log's witnesses are asked outside tessera's transaction (cosign.go).
		opts = opts.WithWitnesses(*cfg.Witnesses, &tessera.WitnessOptions{Timeout: cfg.WitnessTimeout})
	}
	quietDependencies()
	// The appender's background work (integration, checkpoints) outlives the caller's ctx
	// and ends in Close.
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if lc, ok := driver.(appendLifecycle); ok && quietTesseraStats {
		driver = quietStats{lc} // quietstats.go
	}
	var gate *seqGate // a local log: one process's sequencer at a time (seqgate.go)
	if db == nil {
		var err error
		if gate, err = openSeqGate(cfg.Dir); err != nil {
			cancel()
			return nil, err
		}
		if err := gate.enterStart(ctx); err != nil { // the appender's start integrates
			cancel()
			gate.close()
			return nil, err
		}
	}
	app, shutdown, reader, err := tessera.NewAppender(context.WithValue(bg, tesseraOwn{}, true), driver, opts)
	if gate != nil {
		gate.leave()
	}
	if err != nil {
		cancel()
		if gate != nil {
			gate.close()
		}
		if db != nil {
			ld.release()
			db.Close()
		}
		return nil, fmt.Errorf("audit: open log: %w", err)
	}
	var probeDB *sql.DB
	if db != nil {
		reader = trimReader{reader}
		ls.reader.Store(&reader)
		if probeDB, err = openProbe(cfg.DB, cfg.DBTLS); err != nil { // parsed before: never
			cancel()
			ld.release()
			db.Close()
			return nil, err
		}
	}
	l := &Log{probeDB: probeDB, writes: writeWatch{stall: cfg.AppendStall}, dir: cfg.Dir, db: db, leader: ld, signer: ls, probePath: filepath.Join(cfg.Dir, ".state", "strongroom.probe"), recent: map[uint64]store.AuditEvent{}, add: app.Add, shutdown: shutdown, cancel: cancel, reader: reader, idx: cfg.Index, log: cfg.Logger,
		origin: cfg.Signer.Name(), entryKey: cfg.EntryKey, stop: make(chan struct{}), bundles: cfg.Bundles, bundleRecs: map[string]keptRecords{},
		witnesses: cfg.Witnesses, witnessTimeout: cfg.WitnessTimeout, cpEvery: cfg.CheckpointInterval, cpStall: cmp.Or(cfg.CheckpointStall, CheckpointStall)}
	if l.bundles == nil {
		l.bundles = DirBundles{Dir: cfg.Dir}
	}
	if db == nil {
		l.gate, l.add = gate, gate.add(app.Add)
		l.temps = &tempSweep{dir: cfg.Dir, age: cmp.Or(cfg.tempSweepAge, tempSweepAge)}
		l.temps.failed(time.Now()) // what an earlier process left: swept once it is old enough
	}
	l.served = reader
	if db != nil && cfg.Witnesses != nil {
		l.cosign = newCosigner(l, cfg.Signer, *cfg.Witnesses, wj, witnessWait(cfg), cfg.Logger, ls.pubFailed)
		l.served = witnessedReader{reader, l.servedCheckpoint}
	}
	if db != nil {
		l.policies = newPolicyWatch(l, cfg.Witnesses)
	}
	l.lostCtx, l.lostCancel = context.WithCancel(context.Background())

	// The search index keeps request records' bytes out of its rows and reads them from
	// their bundles, checked against the batch's entry (store.RecordSource).
	if rs, ok := cfg.Index.(interface{ SetRecordSource(store.RecordSource) }); ok {
		rs.SetRecordSource(l.batchRecords)
	}
	l.records = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_audit_records_total",
		Help: "Audit events submitted, by result (ok: durable; failed: not recorded, operation refused)."}, []string{"result"})
	l.lost.outcomes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_audit_failed_appends_resolved_total",
		Help: "Shared log: failed appends looked for in the log (a lost commit answer), by outcome (found: in the log, acknowledged; absent: not recorded; unresolved: the engine did not answer, looked for again; refused_later: found later, an audit.refused_entry recorded)."}, []string{"outcome"})
	l.segments = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_audit_request_segments_total",
		Help: "Request journal segments closed, by why: full (a request's writer closed it, requests waiting on the close's sync), due (fold interval)."}, []string{"closed"})
	// Derived from Healthy when scraped, never set: a gauge set after each cause changed
	// lagged /healthz (the app's TestAttack13PathFaults read /healthz 503 and the gauge 1
	// while the probe was still logging its ALERT; helper-23 before that had a record
	// durable during a stall set it back to 1).
	l.healthy = l.healthGauge()
	l.durable = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "strongroom_audit_durable_seconds",
		Help: "Time from submitting an event to its being sequenced and durable.", Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}})
	l.indexLag = prometheus.NewGauge(prometheus.GaugeOpts{Name: "strongroom_audit_index_lag_entries",
		Help: "Log entries integrated but not yet in the search index (audit search)."})
	l.cpLag = prometheus.NewGauge(prometheus.GaugeOpts{Name: "strongroom_audit_checkpoint_lag_entries",
		Help: "Log entries integrated but not yet covered by the published checkpoint."})
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_audit_inflight_events",
		Help: "Events submitted to the log and not yet durable."}, func() float64 { return float64(l.inflight.Load()) })
	signing := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_audit_log_signer",
		Help: "1 while this replica signs the log's checkpoints (always, for a log on local disk)."}, func() float64 {
		if l.Signer() {
			return 1
		}
		return 0
	})
	written := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_audit_request_records_written",
		Help: "1 while request records are written before their answers and synced every request_sync_interval (a host crash can lose that interval); 0: each answer waits for an fdatasync, or no journal."}, func() float64 {
		w, _ := l.requestRecordsMode()
		return b2f(w)
	})
	shadowed := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_audit_request_records_shadowed",
		Help: "1 while written request records go to a shadow on tmpfs; 0 with written records: a system call each (no usable tmpfs)."}, func() float64 {
		_, sh := l.requestRecordsMode()
		return b2f(sh)
	})
	stalled := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_audit_checkpoint_stalled",
		Help: "1 while entries have waited audit.checkpoint_stall (30s) or longer for a published checkpoint (a shared log's with witnesses: a cosigned one)."}, func() float64 {
		return b2f(l.stall.Load() != nil)
	})
	collectors := []prometheus.Collector{l.records, l.lost.outcomes, l.segments, l.healthy, l.durable, l.indexLag, l.cpLag, inflight, signing, written, shadowed, stalled}
	if ls != nil {
		l.scrub = newScrubber(cmp.Or(cfg.ScrubEvery, DefaultScrubEvery))
		collectors = append(collectors, ls.refusals, ls.pubFailed, l.scrub.failures)
	}
	if wj != nil {
		collectors = append(collectors, wj.bad)
	}
	if l.policies != nil {
		collectors = append(collectors, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_audit_witness_policies",
			Help: "How many witness policies the live replicas of this shared log run (1: they agree; more: ALERT, the signer's policy decides what is cosigned; 0: not read yet)."},
			func() float64 { return float64(l.policies.count.Load()) }))
	}
	if cfg.Metrics != nil {
		for _, c := range collectors {
			if err := cfg.Metrics.Register(c); err != nil {
				cancel()
				return nil, fmt.Errorf("audit: metrics: %w", err)
			}
		}
	}
	if ls != nil && cfg.Dir != "" {
		l.openMine(filepath.Join(cfg.Dir, ".state", "shared-log-mine"))
	}
	if cfg.Journal != "" && db == nil {
		fb := &Batcher{log: l, bundles: l.bundles, maxRecords: cfg.JournalBatch, journalKey: cfg.JournalKey}
		if fb.maxRecords <= 0 || fb.maxRecords > MaxBatch {
			fb.maxRecords = 1024
		}
		if err := fb.foldDead(cfg.Journal); err != nil {
			err = fmt.Errorf("audit: request journal %s: %w", cfg.Journal, err)
			l.Close(ctx)
			return nil, err
		}
	}
	if err := l.catchUp(ctx); err != nil {
		l.log.Warn("audit index behind the log", "err", err)
	}
	l.probe()
	l.loops.Go(l.indexLoop)
	l.loops.Go(func() { l.every(probeEvery, l.probe) })
	if l.scrub != nil {
		l.loops.Go(func() {
			l.every(l.scrub.every, func() {
				ctx, cancel := context.WithTimeout(bg, 10*time.Second)
				defer cancel()
				l.scrubStep(ctx)
			})
		})
	}
	if l.policies != nil {
		// A round in progress ends with Close: a database away must not hold Close for
		// its statements' bounds.
		pctx, pcancel := l.untilStop(bg)
		l.loops.Go(func() {
			defer pcancel()
			l.policies.round(pctx)
			l.every(policyEvery, func() { l.policies.round(pctx) })
		})
	}
	if l.cosign != nil {
		// A round in progress ends with Close (its witnesses are not waited for).
		cctx, ccancel := l.untilStop(bg)
		l.loops.Go(func() {
			defer ccancel()
			l.every(cosignEvery, func() {
				ctx, cancel := context.WithTimeout(cctx, witnessWait(cfg)+5*time.Second)
				defer cancel()
				l.cosign.round(ctx)
			})
		})
	}
	if ld != nil {
		l.loops.Go(func() {
			l.every(leaderPoll, func() {
				ld.tick(bg)
				// Every replica learns each checkpoint within a lock poll of its publication,
				// so that one taking over signing starts from the latest (observe).
				ctx, cancel := context.WithTimeout(bg, time.Second)
				if cp, err := l.reader.ReadCheckpoint(ctx); err == nil {
					// A floor, not a rollback mark: only the watch, reading the row in
					// one sequence, judges rollbacks (answers on two pooled connections
					// can be handled out of order: an outside test saw a false ALERT).
					ls.observe(cp, false)
				}
				cancel()
			})
		})
	}
	return l, nil
}

type checkedBundle struct {
	entry string // the batch entry's bytes
	recs  [][]byte
}

// checkedBundles is how many bundles' records batchRecords keeps (≤ MaxBatch records each).
const checkedBundles = 4

// batchRecords is a batch entry's records, read from its bundle and checked against the
// entry (CheckBatch): altered, dropped or reordered records are an error, not an answer.
// Console pages read the newest batches again and again: the last few are kept.
func (l *Log) batchRecords(ctx context.Context, entry []byte) ([][]byte, error) {
	l.checkedMu.Lock()
	for _, c := range l.checked {
		if c.entry == string(entry) {
			l.checkedMu.Unlock()
			return c.recs, nil
		}
	}
	l.checkedMu.Unlock()
	ev, err := ParseEvent(entry)
	if err != nil {
		return nil, err
	}
	if ev.Kind != KindBatch {
		return nil, fmt.Errorf("entry is a %s, not a batch", ev.Kind)
	}
	b, err := l.bundles.Bundle(ctx, ev.Subject["bundle"])
	if err != nil {
		return nil, err
	}
	recs, err := CheckBatch(ev, b)
	if err != nil {
		return nil, err
	}
	l.checkedMu.Lock()
	if len(l.checked) == checkedBundles {
		l.checked = l.checked[1:]
	}
	l.checked = append(l.checked, checkedBundle{string(entry), recs})
	l.checkedMu.Unlock()
	return recs, nil
}

// Bundles is where this log keeps request batches' bundles.
func (l *Log) Bundles() BundleStore { return l.bundles }

// loggedBatch is a batch the log holds of a journal place: how many records it says it
// holds and its entry's bytes (nil: committed by this process — no need to read it back).
type loggedBatch struct {
	n     int
	entry []byte
}

// loggedBatches names the batch entries at index from and later (up to size, the log's
// integrated size), each with the number of records it holds: "journal:<place>" for those
// folded from a journal (journalSource), "bundle:<name>" for those before the place. The
// count matters: a batch folded from a segment cut short (a dead process's torn tail, or
// an older copy put back) holds fewer records than the same place in the whole segment
// (outside round 48 had the rest skipped by the name alone, five acknowledged records
// gone). A count the entry does not give as a number is taken as a whole batch; a refold
// skips records on an entry's word only once its bundle holds them (Batcher.checkLogged).
func (l *Log) loggedBatches(ctx context.Context, from, size uint64) (map[string]loggedBatch, error) {
	have := map[string]loggedBatch{}
	err := ReadEntries(ctx, l.reader.ReadEntryBundle, min(from, size), size, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			if e.Kind == string(KindBatch) {
				ev, err := ParseEvent(e.Raw)
				if err != nil {
					return fmt.Errorf("batch entry %d: %w", e.Index, err)
				}
				n, err := strconv.Atoi(ev.Fields["records"])
				if err != nil || n <= 0 || n > MaxBatch {
					n = MaxBatch
				}
				k := "bundle:" + ev.Subject["bundle"] // folded before batches named their place
				if src := ev.Fields["journal"]; src != "" {
					k = "journal:" + src
				}
				if n > have[k].n { // a place logged twice holds what its largest batch does
					have[k] = loggedBatch{n: n, entry: e.Raw}
				}
			}
		}
		return nil
	})
	return have, err
}

// Signer says whether this process signs the log's checkpoints now.
func (l *Log) Signer() bool { return l.leader == nil || l.leader.held.Load() }

// probeEvery is how often the log directory's writability is checked: the longest a
// read-only or full directory (or a process out of file descriptors) goes unnoticed.
const probeEvery = 50 * time.Millisecond

// probeOpenEvery is the longest the probe goes without opening its file while the request
// journal's syncs prove the disk takes writes (one every DefaultSyncEvery under load): a sync
// proves what the open does — the directory's file system is writable and not out of
// space for what was written — but not that the process can still open files, which
// tessera needs (it panics when it cannot open its lock file). Under load each open
// cost ~0.3 ms of CPU, contending with the journal's and tessera's own writes in the
// directory: 20 a second were ~7 µs a request at 2,000 requests a second
// (docs/PERFORMANCE.md, twentieth session).
const probeOpenEvery = time.Second

// probe opens (creating) a file beside tessera's lock file for writing. It must not be the
// lock file itself: closing any descriptor of it would drop this process's fcntl lock.
// A log on a shared engine is probed with a ping instead, over a connection of the probe's
// own (openProbe): a replica that cannot reach it refuses what needs a record at once
// rather than after a failed append.
func (l *Log) probe() {
	now := time.Now()
	l.watchWrites(now)
	l.temps.poll(now, l.loops.Go, l.stop, l.sweptTemps)
	var err error
	defer l.probes.Add(1)
	if l.db != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err = l.probeDB.PingContext(ctx); err != nil {
			err = fmt.Errorf("%w: log database unreachable: %v", ErrUnavailable, err)
		}
		cancel()
	} else if l.writable.Load() == nil && now.UnixNano() < l.provenUntil.Load() && now.Sub(l.lastOpen) < probeOpenEvery {
		// A journal sync proved the disk, and the next is not yet overdue; the open can wait.
	} else {
		l.lastOpen = time.Now()
		var f *os.File
		// The file is opened for writing as it is (O_CREATE only when it is missing: an
		// open with O_CREAT takes the directory's lock exclusively, even for a file that
		// exists, and under load it was 2 % of the gateway's samples).
		f, err = os.OpenFile(l.probePath, os.O_RDWR|syscall.O_CLOEXEC, 0)
		if errors.Is(err, os.ErrNotExist) {
			f, err = os.OpenFile(l.probePath, os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o644)
		}
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			err = fmt.Errorf("%w: log directory not writable: %v", ErrUnavailable, err)
		}
	}
	if err != nil {
		l.temps.failed(now)
		if l.writable.Swap(&err) == nil {
			l.log.Error("ALERT audit log storage unavailable; refusing what needs a record", "err", err)
		}
		return
	}
	if l.writable.Swap(nil) != nil {
		l.log.Warn("audit log storage available again")
		l.mu.Lock()
		l.lastErr = nil // the failures were the directory's; the next record proves it
		l.mu.Unlock()
		return
	}
	l.retryAfterFailure()
}

// sweptTemps reports a sweep of tessera's temporary files (tempsweep.go).
func (l *Log) sweptTemps(n int, size int64, err error) {
	if n > 0 {
		l.log.Warn("audit log: removed temporary files left by failed writes", "files", n, "bytes", size)
	}
	if err != nil {
		l.log.Warn("audit log: sweeping temporary files", "err", err)
	}
}

// retryWriteEvery spaces the write probes of a log whose last recording failed.
const retryWriteEvery = 500 * time.Millisecond

// retryAfterFailure clears a recording failure once the storage takes a write again. The
// storage stayed reachable (or the probe above would have cleared it on its return), so
// only a write tells: a failed bundle write — a query killed, a connection reset — left
// lastErr set, every record was refused while it was, and so no record could ever clear
// it (an outside test kept a fleet replica refusing for good after one reset). The write
// is the empty bundle's: content-addressed, named by no batch, harmless to write again.
// A shared log must also be able to lock its tree state's row, which every append's
// integration takes: with that row held by another session each append timed out while
// the bundle write went through, and the replica turned healthy between the timeouts
// (an outside test, helper-23), each new request waiting out the next one.
func (l *Log) retryAfterFailure() {
	l.mu.Lock()
	failed := l.lastErr
	l.mu.Unlock()
	if failed == nil || time.Since(l.lastRetry) < retryWriteEvery {
		return
	}
	l.lastRetry = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	b, name := EncodeBundle(nil)
	if err := l.bundles.PutBundle(ctx, name, b); err != nil {
		return
	}
	if l.db != nil && l.treeLockable(ctx) != nil {
		return
	}
	l.mu.Lock()
	cleared := l.lastErr == failed // a newer failure stands
	if cleared {
		l.lastErr = nil
	}
	l.mu.Unlock()
	if cleared {
		l.log.Warn("audit log storage takes writes again after a recording failure", "failure", failed)
	}
}

// every calls fn every d until Close.
// untilStop is a context of parent that ends when Close stops the loops (or cancel is
// called): a loop's work in progress ends with Close rather than holding it.
func (l *Log) untilStop(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		select {
		case <-l.stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	return ctx, cancel
}

func (l *Log) every(d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			fn()
		}
	}
}

// Origin is the log's name in its checkpoints.
func (l *Log) Origin() string { return l.origin }

// Future resolves to an event's index once it is durable. Every future must be resolved:
// Close waits for all of them.
type Future func() (uint64, error)

// Submit queues an event for the log and returns at once; the gateway's hot path calls
// Submit for many requests and resolves the futures together. The event is durable only
// when its future returns without error.
func (l *Log) Submit(ctx context.Context, ev Event) Future { return l.submit(ctx, ev, false) }

// submit is Submit; internal: the log's own record, taken while the log closes too.
func (l *Log) submit(ctx context.Context, ev Event, internal bool) Future {
	ev.MAC = ""
	b, err := ev.Marshal()
	if err == nil && l.entryKey != nil && len(b)+macSuffix > MaxEventSize {
		err = ErrTooLarge // too large once sealed
	}
	if errors.Is(err, ErrTooLarge) {
		ev = ev.Truncated()
		b, err = ev.Marshal()
	}
	if err == nil && l.entryKey != nil {
		b = sealEntry(l.entryKey, l.origin, b)
	}
	if err != nil {
		l.records.WithLabelValues("failed").Inc()
		l.log.Error("audit event not recorded", "kind", ev.Kind, "err", err)
		return func() (uint64, error) { return 0, err }
	}
	if werr := l.writable.Load(); werr != nil {
		l.records.WithLabelValues("failed").Inc()
		return func() (uint64, error) { return 0, *werr }
	}
	if serr := l.writes.err.Load(); serr != nil { // writes do not end (stall.go): none joins them
		l.records.WithLabelValues("failed").Inc()
		return func() (uint64, error) { return 0, *serr }
	}
	l.closeMu.RLock()
	if l.closed && !internal {
		l.closeMu.RUnlock()
		return func() (uint64, error) { return 0, fmt.Errorf("%w: log closed", ErrUnavailable) }
	}
	l.pending.Add(1)
	l.closeMu.RUnlock()
	l.inflight.Add(1)
	t0 := time.Now()
	var after uint64 // shared log: the entry is not below the tree trusted now (lostcommit.go)
	if l.db != nil && l.signer != nil {
		after, _ = l.signer.trusted()
	}
	end := l.beginWrite(writeEntry)
	f := l.add(ctx, tessera.NewEntry(b))
	finish := func() (uint64, error) {
		defer l.pending.Done()
		i, err := f()
		if err != nil && l.db != nil && l.signer != nil && mayHideCommit(err) {
			switch index, size, found, rerr := l.resolveLost(time.Now(), b, after); {
			case found:
				l.lost.outcomes.WithLabelValues("found").Inc()
				l.log.Warn("audit log: an append's commit answer was lost; the entry is in the log", "entry", index, "err", err)
				i, err = tessera.Index{Index: index}, nil
			case rerr != nil:
				l.lost.outcomes.WithLabelValues("unresolved").Inc()
				l.log.Error("ALERT audit log: a failed append cannot be looked for in the log; reported not recorded, and watched for", "err", rerr)
				l.watch(b, after, after, false)
			default:
				l.lost.outcomes.WithLabelValues("absent").Inc()
				l.watch(b, after, size, true)
			}
		}
		end()
		l.inflight.Add(-1)
		l.durable.Observe(time.Since(t0).Seconds())
		if err != nil {
			err = fmt.Errorf("%w: %v", ErrUnavailable, err)
			l.setErr(err)
			return 0, err
		}
		l.setErr(nil)
		l.rememberMine(i.Index, b)
		if l.db != nil {
			l.acknowledged([32]byte(rfc6962.DefaultHasher.HashLeaf(b)), i.Index)
		}
		if l.idx != nil {
			l.recentMu.Lock()
			if len(l.recent) < maxRecent {
				l.recent[i.Index] = store.AuditEvent{Index: i.Index, TS: ev.TS, Kind: string(ev.Kind), Principal: ValidUTF8(ev.Actor["principal"]), Decision: ev.Decision, Raw: b}
			}
			l.recentMu.Unlock()
		}
		return i.Index, nil
	}
	if l.db == nil || ctx.Done() == nil {
		return sync.OnceValues(finish)
	}
	// A shared log's append can hang on a dead connection until the driver's read timeout
	// (30 s): the caller's context bounds its wait (round 37). What it abandons may still
	// be appended; then the log gets a record saying it was refused.
	return sync.OnceValues(func() (uint64, error) {
		type result struct {
			i   uint64
			err error
		}
		// Held until the refusal below is submitted, if it comes to that: its submit's Add
		// then comes while the count is above zero (finish's own Done can come first), and
		// Close's pending.Wait waits for the refusal. Taken here, while finish (not yet
		// run) holds this entry's count, so never from zero.
		l.pending.Add(1)
		done := make(chan result, 1)
		go func() {
			i, err := finish()
			done <- result{i, err}
		}()
		select {
		case r := <-done:
			l.pending.Done()
			return r.i, r.err
		case <-ctx.Done():
		}
		err := fmt.Errorf("%w: gave up waiting for the append: %v", ErrUnavailable, context.Cause(ctx))
		l.records.WithLabelValues("failed").Inc()
		go func() {
			defer l.pending.Done()
			if r := <-done; r.err == nil {
				l.unacknowledged([32]byte(rfc6962.DefaultHasher.HashLeaf(b)), r.i)
				l.log.Error("ALERT audit log: an append its caller gave up on (its operation refused) is in the log; recording that it was refused", "entry", r.i)
				if _, err := l.submit(context.Background(), RefusedEntryEvent(r.i, b), true)(); err != nil {
					l.watch(b, r.i, r.i, false) // recorded by the watch once it can be
				} else {
					l.lost.outcomes.WithLabelValues("refused_later").Inc()
				}
			}
		}()
		return 0, err
	})
}

// Record returns only once the event is sequenced and durable on disk, with its index.
// An error means it was not recorded: the caller must refuse what it was about to do.
func (l *Log) Record(ctx context.Context, ev Event) (uint64, error) {
	return l.Submit(ctx, ev)()
}

func (l *Log) setErr(err error) {
	l.mu.Lock()
	if err != nil {
		l.log.Error("audit log cannot record", "err", err)
		l.records.WithLabelValues("failed").Inc()
		l.temps.failed(time.Now())
	} else {
		l.records.WithLabelValues("ok").Inc()
	}
	l.lastErr = err
	l.mu.Unlock()
}

// clearErr clears the log's last error if it is still err (a batcher whose failed start
// it reported has opened its journal since).
func (l *Log) clearErr(err error) {
	l.mu.Lock()
	if l.lastErr == err {
		l.lastErr = nil
	}
	l.mu.Unlock()
}

// setJournalErr records whether the request-record journal takes appends.
func (l *Log) setJournalErr(err error) {
	if err != nil {
		if l.journalErr.Swap(&err) == nil {
			l.log.Error("ALERT request journal cannot append; refusing what needs a record", "err", err)
		}
		return
	}
	if l.journalErr.Swap(nil) != nil {
		l.log.Warn("request journal appends again")
	}
}

// healthGauge is strongroom_audit_log_healthy: Healthy, read when scraped.
func (l *Log) healthGauge() prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_audit_log_healthy",
		Help: "1 while the audit log records, 0 after a recording failure."}, func() float64 {
		if l.Healthy() != nil {
			return 0
		}
		return 1
	})
}

// Healthy returns the last recording error, nil while the log records.
func (l *Log) Healthy() error {
	if serr := l.writes.err.Load(); serr != nil {
		return *serr
	}
	if werr := l.writable.Load(); werr != nil {
		return *werr
	}
	if jerr := l.journalErr.Load(); jerr != nil {
		return *jerr
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastErr
}

// IntegratedSize is the number of durable entries.
func (l *Log) IntegratedSize(ctx context.Context) (uint64, error) {
	return l.reader.IntegratedSize(ctx)
}

// Checkpoint returns the latest published checkpoint.
// On a shared log with witnesses it is the latest cosigned under their policy.
func (l *Log) Checkpoint(ctx context.Context) ([]byte, error) { return l.served.ReadCheckpoint(ctx) }

// Reader gives read access to tiles, entry bundles and the published checkpoint.
func (l *Log) Reader() tessera.LogReader { return l.served }

func (l *Log) indexLoop() {
	l.every(time.Second, func() {
		if err := l.catchUp(context.Background()); err != nil {
			l.log.Warn("audit index behind the log", "err", err)
		}
		// The durable check uses the checkpoint the watch read (one read of the row a
		// round; the watch's is bounded, so a row locked by an attacker with LOCK TABLES
		// keeps neither from going on).
		signed := l.watchCheckpoint(time.Now())
		l.checkMine(context.Background(), signed)
		if l.db != nil {
			l.watchRound(signed)
			if l.leader.held.Load() {
				l.reapHolders(time.Now())
			} else {
				l.treeHeldSince = time.Time{}
			}
		}
	})
}

// witnessWait is how long a publication may wait on cfg's witnesses (0: none).
func witnessWait(cfg Config) time.Duration {
	if cfg.Witnesses == nil {
		return 0
	}
	return cmp.Or(cfg.WitnessTimeout, tessera.DefaultWitnessTimeout)
}

// CheckpointStall is how long entries may wait, integrated, for a signed checkpoint before
// the log alerts: far above the publication interval (1 s on a shared engine) and a
// signer's failover (seconds), so that only a stuck publication trips it — a witness
// quorum not met, a signer that cannot sign, a tampered or skewed publication time.
var CheckpointStall = 30 * time.Second

// watchCheckpoint sets strongroom_audit_checkpoint_lag_entries and alerts (once, until it
// recovers) when the published checkpoint has not grown for CheckpointStall while entries
// wait for it, or could not be read that long (its table renamed, locked or altered by
// someone with access to the database: publication then stops too, and tessera's own
// errors go to a logger nobody reads). Records stay durable meanwhile; what stalls is their
// proof to outsiders. It returns the checkpoint it read when the log key signed it (nil
// otherwise, and for a log on local disk).
func (l *Log) watchCheckpoint(now time.Time) (signed []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var why error // the checkpoint or the tree's size could not be read
	size, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		size, why = l.cpSize, err
	}
	l.cpSize = size
	published, read := l.cpSeen, false
	if cp, err := l.reader.ReadCheckpoint(ctx); err == nil && l.signer != nil && !signedBy(l.signer.Signer, cp) {
		// A shared log's row not signed by the log key says nothing: its sizes are the
		// attacker's (one claiming 2^64-1 entries made the lag 0 and silenced this watch).
		why = fmt.Errorf("the published checkpoint is not signed by the log key")
	} else if err == nil {
		if l.signer != nil {
			signed = cp
		}
		published, _ = checkpointSize(cp)
		read = true
		older := published < l.cpSeen
		if l.signer != nil && l.signer.observe(cp, true) {
			older = true
		}
		if older && !l.cpBack {
			l.log.Error(rollbackAlert,
				"published_size", published, "largest_seen", max(l.cpSeen, l.signerFloor()))
		}
		l.cpBack = older
		published = max(published, l.cpSeen) // progress is a larger tree, not another one
	} else if errors.Is(err, os.ErrNotExist) {
		published, read = l.cpSeen, true // none, or removed: no progress either way
	} else {
		why = err
	}
	if read {
		l.cpSeen = published
	}
	if l.cosign != nil {
		// What outsiders are given is the witnessed checkpoint: its progress is what stalls.
		published, read, why = l.witnessedProgress(ctx, why)
	}
	lag := size - min(size, published)
	l.cpLag.Set(float64(lag))
	if (read && (published != l.stallSeen || l.cpSince.IsZero())) || (why == nil && lag == 0) {
		l.stallSeen, l.cpSince = published, now
		if l.cpStalled {
			l.cpStalled = false
			l.stall.Store(nil)
			l.log.Warn("audit log: checkpoints are published again", "checkpoint_size", published, "integrated", size)
		}
		return signed
	}
	if l.cpSince.IsZero() {
		l.cpSince = now
	}
	if now.Sub(l.cpSince) >= l.cpStall {
		st := &stallState{since: l.cpSince, waiting: lag, size: published}
		if why != nil {
			st.why = why.Error()
		}
		l.stall.Store(st)
		if !l.cpStalled {
			l.cpStalled = true
			args := []any{"waiting_entries", lag, "checkpoint_size", published, "for", now.Sub(l.cpSince).Round(time.Second), "signer_here", l.Signer()}
			if why != nil {
				args = append(args, "unreadable", why.Error())
			}
			l.log.Error("ALERT audit log: entries are durable but no signed checkpoint covers them", args...)
		}
	}
	return signed
}

// stallState is what the stall watch last saw while it alerted.
type stallState struct {
	since   time.Time // the published checkpoint's last progress
	waiting uint64    // entries integrated past it
	size    uint64    // its size
	why     string    // it could not be read, or not trusted ("": it was)
}

// CheckpointStalled is non-nil while the stall watch alerts: entries have waited
// CheckpointStall or longer for a signed checkpoint (on a shared log with witnesses, a
// cosigned one: a witness policy unmet). Records stay durable meanwhile, so it is a
// warning (/healthz says it and stays 200), not a refusal.
func (l *Log) CheckpointStalled() error {
	st := l.stall.Load()
	if st == nil {
		return nil
	}
	msg := fmt.Sprintf("audit log: %d entries are durable but no published checkpoint has covered them since %s (the checkpoint's size %d)",
		st.waiting, st.since.UTC().Format(time.RFC3339), st.size)
	if st.why != "" {
		msg += ": " + st.why
	}
	if l.cosign != nil {
		msg += "; the witness policy may be unmet"
	}
	return errors.New(msg)
}

// witnessedProgress is the size of a shared log's witnessed checkpoint for the stall watch
// (never below one seen before: progress is a larger tree), whether it was read, and why
// not (why: the tessera row's error, kept when this one reads).
func (l *Log) witnessedProgress(ctx context.Context, why error) (uint64, bool, error) {
	cp, err := readWitnessed(ctx, l)
	switch {
	case errors.Is(err, os.ErrNotExist) && l.stallSeen > 0:
		return l.stallSeen, false, errors.New("the witnessed checkpoint's row was removed")
	case errors.Is(err, os.ErrNotExist):
		return l.stallSeen, true, why
	case err != nil:
		return l.stallSeen, false, err
	}
	if err := l.checkWitnessed(cp); err != nil {
		return l.stallSeen, false, err
	}
	n, _ := checkpointSize(cp)
	return max(n, l.stallSeen), true, why
}

// signerFloor is the size of the largest signed checkpoint this replica of a shared log has
// seen (0 for a log on local disk).
func (l *Log) signerFloor() uint64 {
	if l.signer == nil {
		return 0
	}
	l.signer.mu.Lock()
	defer l.signer.mu.Unlock()
	return l.signer.seen
}

// awaitCovered waits, on a log on local disk, until a published checkpoint covers every
// entry integrated now — not only this process's own (tessera's shutdown waits for those):
// a process killed after integrating entries and before its next checkpoint leaves them
// durable and in no checkpoint, and one that then opened and closed at once (folding
// nothing of its own) left them so for an outside verifier, who reads the log up to its
// checkpoint (round 12's kill test lost acknowledged records that way under load;
// TestCloseCoversAPredecessorsEntries). tessera's publisher reads the tree from the disk,
// so its next checkpoint covers them; this waits for it. A shared log's checkpoints are
// the signer replica's, which may be another: not waited for here.
func (l *Log) awaitCovered(ctx context.Context) error {
	if l.db != nil {
		return nil
	}
	// Bounded whatever ctx says: a checkpoint that cannot be published (its witnesses
	// refuse, the disk is read-only) must not hold Close for ever; the entries stay
	// durable, and the next process's checkpoint covers them.
	ctx, cancel := context.WithTimeout(ctx, 5*l.cpEvery+2*time.Second)
	defer cancel()
	size, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		return fmt.Errorf("audit log: reading its size before closing: %w", err)
	}
	tick := time.NewTicker(max(l.cpEvery/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		// A checkpoint that is not a regular file is not read: os.ReadFile of a FIFO put
		// there (outside round 55) waited past the bound for good.
		if st, err := os.Lstat(filepath.Join(l.dir, "checkpoint")); err == nil && !st.Mode().IsRegular() {
			return fmt.Errorf("audit log: its checkpoint is not a regular file (%v)", st.Mode().Type())
		}
		if cp, err := l.reader.ReadCheckpoint(ctx); err == nil {
			if n, ok := checkpointSize(cp); ok && n >= size {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("audit log: entries up to %d are in no published checkpoint: %w", size, ctx.Err())
		case <-tick.C:
		}
	}
}

// checkpointSize is a checkpoint's tree size (its second line).
func checkpointSize(cp []byte) (uint64, bool) {
	_, rest, ok := bytes.Cut(cp, []byte("\n"))
	line, _, ok2 := bytes.Cut(rest, []byte("\n"))
	if !ok || !ok2 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(line), 10, 64)
	return n, err == nil
}

// catchUp indexes entries the search index does not have yet, reading them from the log.
func (l *Log) catchUp(ctx context.Context) error {
	if l.idx == nil {
		return nil
	}
	l.indexMu.Lock() // one catch-up at a time, and none during a repair (Repair)
	defer l.indexMu.Unlock()
	from, err := l.idx.AuditIndexed(ctx)
	if err != nil {
		return err
	}
	size, err := l.reader.IntegratedSize(ctx)
	if err != nil {
		return err
	}
	if !l.idxOwned {
		if from, err = l.ownIndex(ctx, from, size); err != nil {
			return err
		}
	}
	if from, err = l.indexTip(ctx, from, size); err != nil {
		return err
	}
	if from, err = l.validateIndex(ctx, from, size); err != nil {
		return err
	}
	if from >= size {
		return nil
	}
	l.indexLag.Set(float64(size - from))
	defer func() {
		if done, err := l.idx.AuditIndexed(ctx); err == nil && done <= size {
			l.indexLag.Set(float64(size - done))
			l.pruneRemembered(done)
		}
	}()
	// Entries this process appended are indexed from memory, in order, as far as they
	// reach; the rest (other processes' events, a restart, a full buffer) from the log.
	// A bundle's width at a time, as from the log, and one entry at a time while the index
	// refuses (indexChunked): an index whose store is away then costs each round one
	// entry's work — its batch's records gathered, read back from their bundle if not kept
	// in memory, and checked — not the whole backlog's, every second for as long as it is
	// away.
	l.recentMu.Lock()
	for i := range l.recent {
		if i < from {
			delete(l.recent, i) // indexed already (read back from the log)
		}
	}
	l.recentMu.Unlock()
	for from < size {
		var batch []store.AuditEvent
		l.recentMu.Lock()
		for i := from; i < size && len(batch) < layout.EntryBundleWidth; i++ {
			e, ok := l.recent[i]
			if !ok {
				break
			}
			batch = append(batch, e)
			delete(l.recent, i)
		}
		l.recentMu.Unlock()
		if len(batch) == 0 {
			break
		}
		n, err := l.indexChunked(ctx, batch)
		from += uint64(n)
		if err != nil {
			l.recentMu.Lock()
			for _, e := range batch[n:] { // keep them for the next round
				l.recent[e.Index] = e
			}
			l.recentMu.Unlock()
			return err
		}
	}
	if from >= size {
		return nil
	}
	return ReadEntries(ctx, l.reader.ReadEntryBundle, from, size, func(batch []store.AuditEvent) error {
		l.markUnsealed(batch)
		_, err := l.indexChunked(ctx, batch)
		return err
	})
}

// indexChunked indexes evs (consecutive entries) and says how many it indexed: all at once,
// or, once the index refused a write, one entry first and the rest only after the index
// took it. A refusing index (its store read-only or full) is handed one entry a round.
// indexMu held.
func (l *Log) indexChunked(ctx context.Context, evs []store.AuditEvent) (int, error) {
	n := 0
	if l.idxRefused && len(evs) > 1 {
		if err := l.indexWithRecords(ctx, evs[:1]); err != nil {
			return 0, err
		}
		n = 1
	}
	if n < len(evs) {
		if err := l.indexWithRecords(ctx, evs[n:]); err != nil {
			l.idxRefused = true
			return n, err
		}
	}
	l.idxRefused = false
	return len(evs), nil
}

// ownIndex checks, once, that the search index holds this log's entries: its entry 0 must
// have the bytes of the log's entry 0 (store/auditcopies.go keeps each entry's digest). A
// data directory whose log moved (from local disk to a shared engine: the same origin, a
// new log) or two logs writing one store would otherwise leave another log's entries
// where this log's should be — searched, counted and proved as this log's — and this
// log's first entries never indexed. Such an index is rebuilt from this log, with an
// ALERT. It returns where indexing goes on from.
func (l *Log) ownIndex(ctx context.Context, from, size uint64) (uint64, error) {
	if l.signer != nil { // entries under a tree this replica trusted at start were validated before
		l.validated, _ = l.signer.trusted()
	}
	if from == 0 || size == 0 {
		l.idxOwned = size > 0
		return from, nil
	}
	first, err := ReadEntry(ctx, l.reader, 0, size)
	if err != nil {
		return from, err
	}
	d := store.EntryDigest(first)
	seen, err := l.idx.AuditDigests(ctx, [][32]byte{d})
	if err != nil {
		return from, err
	}
	if at, ok := seen[d]; !ok || at != 0 {
		l.log.Error("ALERT audit log: the search index holds another log's entries (the log moved to another engine, or two logs share one store); it is rebuilt from this log",
			"indexed", from, "log_size", size)
		if err := l.idx.ForgetAudit(ctx, 0); err != nil {
			return from, err
		}
		from = 0
	}
	l.idxOwned = true
	return from, nil
}

// indexTip checks, at each catch-up, that the last entry the index holds is the log's entry
// at that index (their digests). It is not when the unsigned tail was rebuilt (Repair, in
// this process or another) after the index read it, or when the log's size went back: the
// index then finds where it and the log part — they agree up to a point; a binary search
// over entries — and forgets from there, to read the rest again. An index past the log's
// end forgets what lies past it. It returns where indexing goes on from.
func (l *Log) indexTip(ctx context.Context, from, size uint64) (uint64, error) {
	if from == 0 || size == 0 {
		return from, nil
	}
	agrees := func(i uint64) (bool, error) {
		raw, err := ReadEntry(ctx, l.reader, i, size)
		if err != nil {
			return false, err
		}
		got, err := l.idx.AuditDigestsAt(ctx, []uint64{i})
		if err != nil {
			return false, err
		}
		d, ok := got[i]
		return !ok || d == store.EntryDigest(raw), nil // no digest kept: cannot tell
	}
	top := min(from, size) - 1
	ok, err := agrees(top)
	if err != nil {
		return from, err
	}
	forgetFrom := size // the index past the log's end
	if !ok {
		lo, hi := uint64(0), top // the first entry that disagrees is in [lo, hi]; hi does
		for lo < hi {
			mid := lo + (hi-lo)/2
			ok, err := agrees(mid)
			if err != nil {
				return from, err
			}
			if ok {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		forgetFrom = lo
	}
	if forgetFrom >= from {
		return from, nil
	}
	l.log.Warn("audit index: the index held entries the log no longer holds there (its unsigned tail was rebuilt, or its size went back); they are indexed again",
		"from", forgetFrom, "indexed", from, "log_size", size)
	if err := l.idx.ForgetAudit(ctx, forgetFrom); err != nil {
		return from, err
	}
	return forgetFrom, nil
}

// validateIndex compares, entry by entry, the index with a shared log's entries that a
// checkpoint this replica trusts has come to cover since the last time: a repair (in any
// replica) rewrites only the unsigned part of the tree, so entries the index read before
// they were signed may have moved; once signed, they stay. indexTip catches a rebuilt tail
// at the index's tip; this catches what the tip does not show (a byte copy placed where the
// tip was, an index stopped mid-way). A difference is indexed again from the first one.
// Entries under the tree the replica trusted when it started were validated before.
func (l *Log) validateIndex(ctx context.Context, from, size uint64) (uint64, error) {
	if l.db == nil || l.signer == nil {
		return from, nil
	}
	signed, _ := l.signer.trusted()
	end := min(signed, from, size)
	if end <= l.validated {
		return from, nil
	}
	bad := end
	err := ReadEntries(ctx, l.reader.ReadEntryBundle, l.validated, end, func(batch []store.AuditEvent) error {
		idxs := make([]uint64, len(batch))
		for i, e := range batch {
			idxs[i] = e.Index
		}
		got, err := l.idx.AuditDigestsAt(ctx, idxs)
		if err != nil {
			return err
		}
		for _, e := range batch {
			if d, ok := got[e.Index]; (!ok || d != store.EntryDigest(e.Raw)) && e.Index < bad {
				bad = e.Index
			}
		}
		return nil
	})
	if err != nil {
		return from, err
	}
	if bad == end {
		l.validated = end
		return from, nil
	}
	l.log.Warn("audit index: the index held entries the log no longer holds there (its unsigned tail was rebuilt after they were indexed); they are indexed again",
		"from", bad, "indexed", from, "log_size", size)
	if err := l.idx.ForgetAudit(ctx, bad); err != nil {
		return from, err
	}
	l.validated = bad
	return bad, nil
}

// markUnsealed lists, in the search index, a shared log's entries that no replica sealed
// (entrymac.go: appended by someone with access to the database) under KindUnsealedEntry,
// with no principal: a search by kind or principal does not return them as what they
// claim to be, and a forged batch's records are not indexed as requests. Their bytes are
// kept. (On a log on local disk, entries from before entry MACs are unsealed: not marked.)
func (l *Log) markUnsealed(evs []store.AuditEvent) {
	if l.db == nil || l.entryKey == nil {
		return
	}
	for i := range evs {
		if checkEntry(l.entryKey, l.origin, evs[i].Raw) != nil {
			evs[i].Kind, evs[i].Principal, evs[i].Decision = string(KindUnsealedEntry), "", ""
		}
	}
}

// markCopies gives entries their digests and lists, in the search index, an entry whose
// bytes repeat an earlier entry's (store/auditcopies.go: appended again by someone with
// access to the log's database, or a batch folded twice after an append whose outcome was
// lost) under KindCopiedEntry, with no principal and no decision: it is counted once, and a
// copied batch's records are not indexed again. Each copy raises an ALERT.
func (l *Log) markCopies(ctx context.Context, evs []store.AuditEvent) error {
	ds := make([][32]byte, len(evs))
	for i := range evs {
		ds[i] = store.EntryDigest(evs[i].Raw)
		evs[i].Digest = ds[i][:]
	}
	seen, err := l.idx.AuditDigests(ctx, ds)
	if err != nil {
		return err
	}
	for i := range evs {
		e := &evs[i]
		if first, ok := seen[ds[i]]; ok && first < e.Index {
			l.log.Error("ALERT audit log: an entry repeats an earlier entry byte for byte (a copy appended through the log's database, or a batch folded twice); the search index counts it once",
				"entry", e.Index, "copy_of", first, "kind", e.Kind)
			e.Kind, e.Principal, e.Decision = string(KindCopiedEntry), "", ""
			continue
		}
		seen[ds[i]] = e.Index
	}
	return nil
}

// indexWithRecords indexes entries, and for each request batch among them its records
// (RecordIndex numbers), read from this process's memory or the bundle store. A batch
// whose bundle cannot be read is an error: the index waits rather than skip records.
func (l *Log) indexWithRecords(ctx context.Context, evs []store.AuditEvent) error {
	if err := l.markCopies(ctx, evs); err != nil {
		return err
	}
	type batch struct {
		index uint64
		ev    *Event
	}
	var batches []batch
	records := 0
	for _, e := range evs {
		if e.Kind != string(KindBatch) {
			continue
		}
		ev, err := ParseEvent(e.Raw)
		if err != nil {
			return fmt.Errorf("batch entry %d: %w", e.Index, err)
		}
		batches = append(batches, batch{e.Index, ev})
		if n, err := strconv.Atoi(ev.Fields["records"]); err == nil && n > 0 && n <= MaxBatch {
			records += n
		}
	}
	if len(batches) == 0 {
		return l.idx.IndexAudit(ctx, evs)
	}
	// One slice for the entries and their records (a batch holds up to MaxBatch): grown
	// record by record, this slice was most of the index's CPU. It is the last catch-up's,
	// cleared (indexMu held: one at a time): made anew each second under load, its ~2 MB
	// were faulted in again each time (the thirty-ninth session).
	out := l.indexOut[:0]
	if cap(out) < len(evs)+records {
		out = make([]store.AuditEvent, 0, len(evs)+records)
	}
	out = append(out, evs...) // do not append into the caller's slice
	defer func() {
		clear(out) // no record's strings kept alive
		l.indexOut = nil
		if cap(out) <= 1<<16 { // a backlog's catch-up does not keep its size for good
			l.indexOut = out[:0]
		}
	}()
	for _, bt := range batches {
		name := bt.ev.Subject["bundle"]
		l.bundleMu.Lock()
		k, ok := l.bundleRecs[name]
		l.bundleMu.Unlock()
		recs := k.recs
		if ok { // this process's batch: the fields were kept from the events, not parsed
			for pos := range recs {
				recs[pos].Index = RecordIndex(bt.index, pos) // the log's own copy (rememberRecords)
			}
			out = append(out, recs...)
			continue
		}
		b, err := l.bundles.Bundle(ctx, name)
		var raw [][]byte
		if err == nil {
			raw, err = CheckBatch(bt.ev, b)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, ErrSecurity) {
			return fmt.Errorf("batch entry %d: bundle %s: %w", bt.index, name, err) // the store is away: wait
		}
		if err != nil {
			// Gone or altered (its bundle is written before its entry, so not yet written is
			// not a case): the entry is indexed without its records, rather than the index
			// stopping for good at it (an outside test deleted every bundle row).
			l.log.Error("ALERT audit log: a request batch's records cannot be read (bundle deleted or altered); the batch entry is indexed without them — restore the bundle and re-index to search them",
				"entry", bt.index, "bundle", name, "err", err)
			continue
		}
		for pos, r := range raw {
			out = append(out, indexRecord(RecordIndex(bt.index, pos), r))
		}
	}
	if err := l.idx.IndexAudit(ctx, out); err != nil {
		return err
	}
	l.bundleMu.Lock()
	for _, bt := range batches {
		l.dropRemembered(bt.ev.Subject["bundle"]) // out, which read them, is done with
	}
	l.bundleMu.Unlock()
	return nil
}

// rememberRecords keeps a batch's records for the index, before its entry is appended (an
// index catching up meanwhile would read the entry from the log and the records from the
// bundle, and what was kept after would be kept for good: outside round 44), and says
// whether it did: bounded at maxRemembered batches (past it they are read back from the
// bundle store). own holds the records' bytes when a journal's buffer does: held until the
// index has them — at most maxOwnsHeld buffers (4 MiB each) at a time, past which the
// records are copied out at their size (an index away held a buffer per one-record
// segment: round 44).
func (l *Log) rememberRecords(name string, recs []store.AuditEvent, own *ownBuf) bool {
	l.bundleMu.Lock()
	defer l.bundleMu.Unlock()
	if _, dup := l.bundleRecs[name]; dup || len(l.bundleRecs) >= maxRemembered {
		return false
	}
	if own != nil && l.ownsHeld >= maxOwnsHeld {
		recs, own = copyRecords(recs), nil
	}
	if own != nil {
		own.hold()
		l.ownsHeld++
	}
	l.bundleRecs[name] = keptRecords{recs: recs, own: own}
	return true
}

// Bounds of what Log.rememberRecords keeps.
const (
	maxRemembered = 64
	maxOwnsHeld   = 4
)

// copyRecords copies records and their bytes (one allocation for all the bytes).
func copyRecords(recs []store.AuditEvent) []store.AuditEvent {
	n := 0
	for _, r := range recs {
		n += len(r.Raw)
	}
	out, arena := slices.Clone(recs), make([]byte, 0, n)
	for i := range out {
		arena = append(arena, out[i].Raw...)
		out[i].Raw = arena[len(arena)-len(out[i].Raw) : len(arena) : len(arena)]
	}
	return out
}

// rememberedAt says the remembered batch name is entry idx of the log (its append
// succeeded): once the index is past it, it is dropped whoever indexed it.
func (l *Log) rememberedAt(name string, idx uint64) {
	l.bundleMu.Lock()
	defer l.bundleMu.Unlock()
	if k, ok := l.bundleRecs[name]; ok {
		k.entry, k.logged = idx, true
		l.bundleRecs[name] = k
	}
}

// forgetRecords drops a remembered batch (its append failed, or the index has it).
func (l *Log) forgetRecords(name string) {
	l.bundleMu.Lock()
	defer l.bundleMu.Unlock()
	l.dropRemembered(name)
}

// dropRemembered is forgetRecords with bundleMu held.
func (l *Log) dropRemembered(name string) {
	k, ok := l.bundleRecs[name]
	if !ok {
		return
	}
	delete(l.bundleRecs, name)
	if k.own != nil {
		k.own.release()
		l.ownsHeld--
	}
}

// pruneRemembered drops the remembered batches whose entries are below the index's size:
// indexed without them (by another process sharing the index, or before they were kept).
func (l *Log) pruneRemembered(indexed uint64) {
	l.bundleMu.Lock()
	defer l.bundleMu.Unlock()
	for name, k := range l.bundleRecs {
		if k.logged && k.entry < indexed {
			l.dropRemembered(name)
		}
	}
}

// keptRecords are a batch's records kept for the index, what holds their bytes (nil: their
// own), and their entry once appended (logged).
type keptRecords struct {
	recs   []store.AuditEvent
	own    *ownBuf
	entry  uint64
	logged bool
}

// indexRecord is an entry's (or a batched record's) row in the search index: it needs four
// fields, not a canonical check (Verify does that).
func indexRecord(idx uint64, raw []byte) store.AuditEvent {
	ae := store.AuditEvent{Index: idx, Raw: raw}
	var ev struct {
		TS       time.Time `json:"ts"`
		Kind     string    `json:"kind"`
		Decision string    `json:"decision"`
		Actor    struct {
			Principal string `json:"principal"`
		} `json:"actor"`
	}
	if json.Unmarshal(raw, &ev) == nil {
		ae.TS, ae.Kind, ae.Decision, ae.Principal = ev.TS, ev.Kind, ev.Decision, ev.Actor.Principal
	} else {
		ae.Kind = "invalid"
	}
	return ae
}

// ReadEntries reads entries [from, size) of a log of the given size and passes them, in
// bundles, to fn as index records. A bundle that holds fewer entries than its place in
// the tree says (256, or the partial width), or a full one that holds more, is a security
// error: the storage's own row size is the attacker's to write, and entries skipped here
// would be skipped by every check that reads through it (an outside test got a forged
// entry signed by cutting it out of its full bundle).
func ReadEntries(ctx context.Context, readBundle func(ctx context.Context, i uint64, p uint8) ([]byte, error), from, size uint64, fn func([]store.AuditEvent) error) error {
	for from < size {
		bundleIdx := from / layout.EntryBundleWidth
		partial := uint8(0)
		if end := (bundleIdx + 1) * layout.EntryBundleWidth; end > size {
			partial = uint8(size - bundleIdx*layout.EntryBundleWidth)
		}
		raw, err := readBundle(ctx, bundleIdx, partial)
		if err != nil {
			return fmt.Errorf("entry bundle %d: %w", bundleIdx, err)
		}
		var b api.EntryBundle
		if err := b.UnmarshalText(raw); err != nil {
			return securityf("entry bundle %d malformed: %v", bundleIdx, err)
		}
		want := uint64(layout.EntryBundleWidth)
		if partial != 0 {
			want = uint64(partial)
		}
		if n := uint64(len(b.Entries)); n < want || (partial == 0 && n > want) {
			return securityf("entry bundle %d holds %d entries, want %d (entries deleted or inserted)", bundleIdx, n, want)
		}
		var batch []store.AuditEvent
		for i, e := range b.Entries {
			idx := bundleIdx*layout.EntryBundleWidth + uint64(i)
			if idx < from || idx >= size {
				continue
			}
			batch = append(batch, indexRecord(idx, e))
		}
		if err := fn(batch); err != nil {
			return err
		}
		from = (bundleIdx + 1) * layout.EntryBundleWidth
	}
	return nil
}

// Close waits until a published checkpoint covers every recorded event, then stops.
// Close may be called more than once; later calls return nil.
func (l *Log) Close(ctx context.Context) error {
	var err error
	l.closeOnce.Do(func() {
		// A resolution still running (lostcommit.go) ends with Close's context: pending
		// appends waiting on one must not hold Close past it (round 38).
		defer context.AfterFunc(ctx, l.lostCancel)()
		defer l.lostCancel()
		l.closeMu.Lock()
		l.closed = true // no Submit after this point, so Wait cannot race an Add
		l.closeMu.Unlock()
		l.pending.Wait() // every submitted event is durable (or failed) before shutdown
		if l.db != nil && l.signer != nil {
			l.drainWatched(ctx) // before shutdown: this replica may be the one that signs
		}
		cerr := l.awaitCovered(ctx)
		if err = errors.Join(cerr, l.shutdown(ctx)); errors.Is(err, context.DeadlineExceeded) {
			// The entries are durable; only their checkpoint is late (a shared log's signer
			// is another replica, or the witnesses are slow): the next one covers them.
			err = fmt.Errorf("audit log: no checkpoint covering this process's entries was published before closing (they are recorded; a later checkpoint covers them): %w", err)
		}
		close(l.stop)
		l.loops.Wait() // no probe writes into the directory after Close
		err = errors.Join(err, l.catchUp(ctx))
		l.cancel()
		if l.db == nil {
			awaitPOSIXTasks(ctx, l.dir)
			l.gate.close()
		}
		l.mineMu.Lock()
		if l.mineF != nil {
			l.mineF.Close() // what it holds is checked at the next start
			l.mineF = nil
		}
		l.mineMu.Unlock()
		if l.db != nil {
			l.policies.leave(ctx)
			l.leader.release() // the next replica signs without waiting for a dead socket
			l.db.Close()
			l.probeDB.Close()
		}
	})
	return err
}

// posixTaskLocks are the lock files, in a local log's .state, that tessera's POSIX driver
// holds while a task of its own writes the log: an integration (treeState), a checkpoint
// publication (publish), a garbage collection (gcState).
var posixTaskLocks = []string{"treeState.lock", "publish.lock", "gcState.lock"}

// posixTaskWait bounds awaitPOSIXTasks: the longest task, a checkpoint publication, waits
// on its witnesses for at most their timeout (Config.WitnessTimeout, seconds).
const posixTaskWait = 30 * time.Second

// awaitPOSIXTasks waits (until ctx ends) for the tasks of tessera's POSIX driver that are
// in flight when its context is cancelled: they stop only at their next turn, and nothing
// of tessera's says when; one that runs on wrote its state files into the directory after
// Close returned (a test's temporary directory failed to be removed: "directory not
// empty"). Each task holds its lock file (a process-associated fcntl lock) while it
// writes; an open file description lock conflicts with those even within one process, so
// taking each in turn waits for the task holding it. A task that has not taken its lock
// yet when this passes is not waited for. The wait is bounded (posixTaskWait) besides ctx:
// a task of this process's takes far less, and a lock held longer is another's.
func awaitPOSIXTasks(ctx context.Context, dir string) {
	ctx, cancel := context.WithTimeout(ctx, posixTaskWait)
	defer cancel()
	for _, name := range posixTaskLocks {
		f, err := os.OpenFile(filepath.Join(dir, ".state", name), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // never taken: no task of that kind ran
		}
		got := make(chan struct{})
		go func() {
			defer close(got)
			lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
			for unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLKW, &lk) == unix.EINTR {
			}
			// Closing drops this lock, and any process-associated lock this process holds on
			// the file: none, as ours was granted.
			f.Close()
		}()
		select {
		case <-got:
		case <-ctx.Done():
			return // the goroutine closes its file once the lock comes
		}
	}
}

// quietDependencies stops tessera's klog from writing to stderr: the CLI's stderr carries
// one-line errors only. klog is process-global, hence the once.
var quietDependencies = sync.OnceFunc(func() {
	klog.SetLogger(logr.Discard())
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
})

// requestRecordsMode is how request records are made durable now (Log.requestMode).
func (l *Log) requestRecordsMode() (written, shadowed bool) {
	if f := l.requestMode.Load(); f != nil {
		return (*f)()
	}
	return false, false
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
