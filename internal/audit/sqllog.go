package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"database/sql"
	"database/sql/driver"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/redact"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/client"
	tmysql "github.com/transparency-dev/tessera/storage/mysql"
	"golang.org/x/mod/sumdb/note"
)

// The log on a shared SQL engine (issue 16): every replica of a fleet appends to one tree
// kept by tessera's storage/mysql driver in one MariaDB/MySQL database (sequencing, tiles,
// entry bundles, checkpoint), request batches' bundles live in a table beside it, and one
// replica at a time signs checkpoints: the one holding the log's named lock (signerLock) on
// a dedicated connection (leader below).

// tesseraSchema is tessera v1.0.4's storage/mysql/schema.sql, statement by statement, the
// table of request batches' bundles, and the witnessed checkpoint's.
var tesseraSchema = []string{
	"CREATE TABLE IF NOT EXISTS `Tessera` (`id` TINYINT UNSIGNED NOT NULL, `compatibilityVersion` BIGINT UNSIGNED NOT NULL, PRIMARY KEY (`id`))",
	"INSERT IGNORE INTO `Tessera` (`id`, `compatibilityVersion`) VALUES (0, 1)",
	"CREATE TABLE IF NOT EXISTS `Checkpoint` (`id` TINYINT UNSIGNED NOT NULL, `note` MEDIUMBLOB NOT NULL, `published_at` BIGINT NOT NULL, PRIMARY KEY(`id`))",
	"CREATE TABLE IF NOT EXISTS `TreeState` (`id` TINYINT UNSIGNED NOT NULL, `size` BIGINT UNSIGNED NOT NULL, `root` TINYBLOB NOT NULL, PRIMARY KEY(`id`))",
	"CREATE TABLE IF NOT EXISTS `Subtree` (`level` TINYINT UNSIGNED NOT NULL, `index` BIGINT UNSIGNED NOT NULL, `nodes` MEDIUMBLOB NOT NULL, PRIMARY KEY(`level`, `index`))",
	"CREATE TABLE IF NOT EXISTS `TiledLeaves` (`tile_index` BIGINT UNSIGNED NOT NULL, `size` SMALLINT UNSIGNED NOT NULL, `data` LONGBLOB NOT NULL, PRIMARY KEY(`tile_index`))",
	"CREATE TABLE IF NOT EXISTS `StrongroomBatch` (`name` CHAR(64) NOT NULL, `data` LONGBLOB NOT NULL, PRIMARY KEY(`name`))",
	witnessedSchema,     // cosign.go
	replicaPolicySchema, // witnesspolicy.go
}

// signerLock is the name of the MariaDB named lock whose holder signs the checkpoints of
// the log in database db. Named locks are the server's, not a database's: one name for
// every log would let a replica of one log (another tenant's, a test's) hold the signing
// of every other log on the engine, which would then publish no checkpoint at all. The
// database's name is used as it is when it is short and plain (lower-case letters, digits,
// "_"); any other is hashed: lock names are at most 64 characters, and the server may
// compare them without regard to case where database names ("Fleet", "fleet") differ.
func signerLock(db string) string {
	const prefix = "strongroom.log.signer/"
	plain := len(prefix)+len(db) <= 64
	for _, c := range db {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			plain = false
			break
		}
	}
	if plain {
		return prefix + db
	}
	h := sha256.Sum256([]byte(db))
	return prefix + "sha256:" + hex.EncodeToString(h[:16])
}

// databaseName asks the server which database the log's connections use.
func databaseName(ctx context.Context, db *sql.DB) (string, error) {
	var name sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT DATABASE()").Scan(&name); err != nil {
		return "", err
	}
	if !name.Valid || name.String == "" {
		return "", errors.New("the DSN names no database")
	}
	return name.String, nil
}

// IsSQLLog says whether a log location is a MariaDB/MySQL DSN rather than a directory.
func IsSQLLog(loc string) bool {
	return len(loc) >= len(sqlScheme) && strings.EqualFold(loc[:len(sqlScheme)], sqlScheme)
}

const sqlScheme = "mysql://"

// LooksLikeDSN: loc reads as a database DSN written without its scheme
// ("user:pass@tcp(host)/db"): something to refuse without repeating it (it may hold a
// password), not a directory to look for (outside round 36 had `audit verify` print one
// in its "no such file" error).
func LooksLikeDSN(loc string) bool {
	at := strings.LastIndex(loc, "@")
	return !IsSQLLog(loc) && at > 0 && strings.Contains(loc[at:], "(")
}

// ParseLogDSN turns "mysql://user:pass@tcp(host:port)/db?params" into a driver config,
// with the settings the log relies on: dial and I/O timeouts, so that a replica whose
// engine is gone learns it within seconds and refuses what needs a record.
func ParseLogDSN(loc string) (*mysql.Config, error) {
	if !IsSQLLog(loc) {
		return nil, errors.New("audit: log database must be a mysql:// DSN")
	}
	dsn := loc[len(sqlScheme):]
	c, err := mysql.ParseDSN(dsn)
	if err == nil && strings.ContainsAny(loc, " \t\r\n") {
		err = errors.New("white space") // "user:pw tcp(…)" parses, and the network named is the password
	}
	if err != nil {
		// The driver's error may quote the DSN, password and all: say only what is wrong.
		return nil, fmt.Errorf("audit: log database %s: malformed DSN", redact.DSN(loc))
	}
	// TLS that does not check the server is no TLS against whoever sits on the path (and
	// "preferred" falls back to plaintext when the path says the server has no TLS): give
	// the server's CA in audit.log_db_tls instead.
	if c.AllowFallbackToPlaintext {
		return nil, fmt.Errorf("audit: log database %s: tls=preferred or allowFallbackToPlaintext let the path turn TLS off; name the server's CA in audit.log_db_tls", redact.DSN(loc))
	}
	if c.TLS != nil && c.TLS.InsecureSkipVerify {
		return nil, fmt.Errorf("audit: log database %s: tls=skip-verify does not check the server's certificate; name its CA in audit.log_db_tls", redact.DSN(loc))
	}
	if c.Timeout == 0 {
		c.Timeout = 3 * time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 30 * time.Second
	}
	// Every session ends on the server after sessionIdle seconds without a word from its
	// client, rolling back what it held: a replica cut off mid-transaction (a partition, a
	// host gone) held tessera's row locks — the tree state's, the checkpoint's — and with
	// them every replica's appends and every checkpoint, for the server's default of 8
	// hours (outside round 36). A session waiting on a lock is not idle; the pool retires
	// idle connections sooner (openSQL), so it never hands out one the server closed.
	if _, set := c.Params["wait_timeout"]; !set {
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		c.Params["wait_timeout"] = strconv.Itoa(sessionIdle)
	}
	return c, nil
}

// sessionIdle is the log database's session wait_timeout, in seconds: how long a replica
// that vanished holding a transaction can stall the fleet's appends and checkpoints. It
// must exceed a checkpoint publication's pause inside its transaction (signing, and the
// witnesses' timeout: 3 s in the app).
const sessionIdle = 10

// logPool is a pool of up to open connections (idle kept) to the log database at loc,
// over TLS with tc if it is not nil (whatever the DSN's tls parameter says).
func logPool(loc string, tc *tls.Config, open, idle int) (*sql.DB, error) {
	c, err := ParseLogDSN(loc)
	if err != nil {
		return nil, err
	}
	if tc != nil {
		c.TLS, c.TLSConfig = tc.Clone(), "" // the driver names the server from the DSN's host
	}
	conn, err := mysql.NewConnector(c)
	if err != nil {
		return nil, fmt.Errorf("audit: log database %s: %v", redact.DSN(loc), redact.Error(err, redact.DSN, loc))
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(open)
	db.SetMaxIdleConns(idle)
	db.SetConnMaxLifetime(10 * time.Minute)
	db.SetConnMaxIdleTime(sessionIdle * time.Second / 2) // before the server's wait_timeout
	return db, nil
}

// openSQL opens the log database and creates its tables if missing.
func openSQL(ctx context.Context, loc string, tc *tls.Config) (*sql.DB, error) {
	db, err := logPool(loc, tc, 32, 16)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, q := range tesseraSchema {
		if _, err := db.ExecContext(pctx, q); err != nil {
			db.Close()
			return nil, fmt.Errorf("%w: log database %s: schema: %v", ErrUnavailable, redact.DSN(loc), redact.Error(err, redact.DSN, loc))
		}
	}
	return db, nil
}

// openProbe is the log database's probe (Log.probe): a pool of its own, of one
// connection. Pinged through the log's pool, the engine was "unreachable" whenever every
// connection of the pool was busy for the ping's second (appends waiting on the tree's
// lock under load, say), and the replica refused everything that needs a record while the
// engine answered. Whether appends keep up is the write watch's to say (writeWatch); the
// probe says whether the engine can be reached.
func openProbe(loc string, tc *tls.Config) (*sql.DB, error) { return logPool(loc, tc, 1, 1) }

// SQLBundles keeps request batches' bundles in the log database (table StrongroomBatch),
// so that every replica serves, verifies and indexes every batch.
type SQLBundles struct{ DB *sql.DB }

// treeLockable says whether an append could lock the tree state's row now — the row every
// append's integration takes (tessera's TreeState, SELECT … FOR UPDATE) — without waiting:
// NOWAIT (MariaDB 10.3+, MySQL 8) fails at once on a row or table another session holds.
// The lock is given back at once (rolled back).
func (l *Log) treeLockable(ctx context.Context) error {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var size uint64
	err = tx.QueryRowContext(ctx, "SELECT `size` FROM `TreeState` WHERE `id` = 0 FOR UPDATE NOWAIT").Scan(&size)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // a log with no entry yet: nothing to hold
	}
	return err
}

func (s SQLBundles) PutBundle(ctx context.Context, name string, b []byte) error {
	if !validBundleName(name) {
		return fmt.Errorf("%w: bundle name %q", ErrEvent, name)
	}
	// Content-addressed: a second write of the same name is the same bytes.
	_, err := s.DB.ExecContext(ctx, "INSERT IGNORE INTO `StrongroomBatch` (`name`, `data`) VALUES (?, ?)", name, b)
	return err
}

func (s SQLBundles) Bundle(ctx context.Context, name string) ([]byte, error) {
	if !validBundleName(name) {
		return nil, fmt.Errorf("%w: bundle name %q", ErrEvent, name)
	}
	var b []byte
	err := s.DB.QueryRowContext(ctx, "SELECT `data` FROM `StrongroomBatch` WHERE `name` = ?", name).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, os.ErrNotExist
	}
	return b, err
}

// leader holds the checkpoint signer's lock: GET_LOCK on one dedicated connection. The
// server releases a named lock when its connection ends, so a replica that dies (its
// socket closed by the kernel) hands the lock over at once; one whose host vanishes, when
// the server drops the silent connection (session wait_timeout leaderIdle). Every
// replica tries to take the lock every leaderPoll.
type leader struct {
	db   *sql.DB
	name string
	log  *slog.Logger
	held atomic.Bool

	mu   sync.Mutex // serializes use of conn
	conn *sql.Conn  // the lock's connection, nil while not held
}

const (
	leaderPoll = 250 * time.Millisecond
	leaderIdle = 5 // seconds: the server's wait_timeout on the lock's connection
)

func (l *leader) tick(ctx context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if l.conn != nil {
		if err := l.conn.PingContext(ctx); err == nil {
			l.checkPublished(ctx)
			return
		}
		l.drop("lock connection lost")
	}
	c, err := l.db.Conn(ctx)
	if err != nil {
		return
	}
	var got sql.NullInt64
	if _, err := c.ExecContext(ctx, fmt.Sprintf("SET SESSION wait_timeout = %d", leaderIdle)); err == nil {
		err = c.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", l.name).Scan(&got)
	}
	if !got.Valid || got.Int64 != 1 {
		c.Close()
		return
	}
	l.conn = c
	l.held.Store(true)
	l.log.Info("audit log: this replica signs checkpoints now", "lock", l.name)
}

// publishSkew is how far ahead of the signer's clock the checkpoint's publication time may
// be before the signer takes it for a clock gone wrong or an altered row.
const publishSkew = 5 * time.Second

// checkPublished keeps checkpoints coming. tessera's driver publishes only once the last
// publication (Checkpoint.published_at, a replica's clock in ms) is an interval old, so a
// time in the future — a replica whose clock ran ahead, or someone with write access to the
// database — stops publication without an error: records stay durable but reach no signed
// checkpoint, and verifiers keep accepting the old one (an outside test set it a year
// ahead). The signer resets such a time, with an alert. Called with the lock held.
func (l *leader) checkPublished(ctx context.Context) {
	var at int64
	if err := l.db.QueryRowContext(ctx, "SELECT `published_at` FROM `Checkpoint` WHERE `id` = 0").Scan(&at); err != nil {
		return // no checkpoint yet, or the engine is away: the next tick sees
	}
	if at <= time.Now().Add(publishSkew).UnixMilli() {
		return
	}
	res, err := l.db.ExecContext(ctx, "UPDATE `Checkpoint` SET `published_at` = 0 WHERE `id` = 0 AND `published_at` = ?", at)
	if err != nil {
		return
	}
	if n, _ := res.RowsAffected(); n == 1 {
		l.log.Error("ALERT audit log: the checkpoint's publication time was in the future (a replica's clock ahead, or the row altered); reset so that checkpoints are published again",
			"published_at", time.UnixMilli(at).UTC())
	}
}

// drop forgets the lock (l.mu held).
func (l *leader) drop(why string) {
	if l.conn == nil {
		return
	}
	l.conn.Raw(func(any) error { return driver.ErrBadConn }) // never back into the pool
	l.conn.Close()
	l.conn = nil
	if l.held.Swap(false) {
		l.log.Warn("audit log: this replica no longer signs checkpoints", "why", why)
	}
}

// check asks the server whether this replica still holds the lock.
func (l *leader) check(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return ErrNotSigner
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var mine sql.NullInt64
	if err := l.conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", l.name).Scan(&mine); err != nil {
		l.drop(err.Error())
		return ErrNotSigner
	}
	if !mine.Valid || mine.Int64 != 1 {
		l.drop("lock taken by another replica")
		return ErrNotSigner
	}
	return nil
}

func (l *leader) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l.conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", l.name)
		cancel()
		l.drop("closed")
	}
}

// ErrNotSigner is what a replica that does not hold the signer's lock answers when tessera
// asks it to sign a checkpoint: its publish attempt fails and the leader's stands.
var ErrNotSigner = errors.New("audit: not the checkpoint signer")

// leaderSigner signs only while its replica holds the lock (asked of the server each time),
// and, with an entry key, only trees whose every entry since the last checkpoint carries a
// replica's MAC (entrymac.go).
type leaderSigner struct {
	note.Signer
	l *leader

	key    []byte                            // entry MAC key; nil: entries are not checked
	reader atomic.Pointer[tessera.LogReader] // set once the appender exists
	log    *slog.Logger

	mu      sync.Mutex // tessera signs from one goroutine; the lock keeps it so
	checked uint64     // the tree of entries [0, checked) is known good,
	root    []byte     // with this root
	alerted string     // the last ALERT's cause
	// floorPath keeps, on this replica's own disk, the largest checkpoint it has seen
	// signed by the log key ("" : memory only). The database's Checkpoint row is the
	// attacker's to write — an older authentic checkpoint put back, or none — so a replica
	// that restarts or takes over signing starts from what it saw itself, never lower.
	floorPath string
	seen      uint64 // the size of the largest checkpoint seen signed (kept at floorPath)
	// published is the size of the largest checkpoint read from the database's row: what a
	// published one must not go below. Not seen: this replica's own signature comes before
	// tessera writes the row (or fails to), and the row read in between is not a rollback
	// (an outside test's runs raised that ALERT falsely).
	published uint64

	refusals  prometheus.Counter // strongroom_audit_signer_refusals_total
	pubFailed prometheus.Counter // strongroom_audit_publications_failed_total (nil: none)

	// pub is the last checkpoint this replica signed for publication, and what became of
	// it (publishBackoff).
	pub struct {
		msg      []byte    // its text; nil: none pending
		at       time.Time // when it was signed
		failures int       // publications in a row that did not reach the row
		retryAt  time.Time // no signature before this (zero: none refused)
	}
	now func() time.Time                      // nil: time.Now; tests move it
	row func(context.Context) ([]byte, error) // nil: the Checkpoint row (readRow); tests fake it
}

func (s *leaderSigner) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}

// publishBackoff is how long the next try waits after a publication that failed — a
// checkpoint the signer signed never reached the database's row, or a witness round got
// no quorum (cosign.go) — given how long that attempt took and how many failed in a row.
// Waiting three times the failed attempt's time, doubling with each failure in a row up to
// max(3 × it, 10 s), keeps a failing database or witness busy with us at most a quarter
// of the time (outside round 39: tessera retried at once, at every append batch), and a
// recovered one is asked again within that bound (at most 30 s).
func publishBackoff(took time.Duration, failures int) time.Duration {
	base := min(max(3*took, time.Second), 30*time.Second)
	limit := max(base, 10*time.Second)
	d := base
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// errPublishBackoff is the signer's refusal while it waits after a failed publication.
var errPublishBackoff = errors.New("audit: the signer waits before the next checkpoint publication (the last failed)")

// publishGate decides whether tessera may publish now. It first learns what became of the
// last checkpoint signed: published (the row holds it) ends a run of failures; not
// published, once per signature, is a failure, and sets when the next may be signed
// (publishBackoff): tessera retries a failed publication at its next append batch,
// milliseconds later, and each try takes the tree state's row. A row that cannot be read
// decides nothing (the publication itself will fail or not).
func (s *leaderSigner) publishGate(ctx context.Context) error {
	now := s.clock()
	if s.pub.msg != nil && s.pub.retryAt.IsZero() {
		if cp, err := s.readRow(ctx); err == nil {
			if len(cp) > len(s.pub.msg) && bytes.HasPrefix(cp, s.pub.msg) && cp[len(s.pub.msg)] == '\n' {
				s.pub.failures = 0
				s.pub.msg = nil
			} else {
				s.pub.failures++
				if s.pubFailed != nil {
					s.pubFailed.Inc()
				}
				wait := publishBackoff(now.Sub(s.pub.at), s.pub.failures)
				s.pub.retryAt = now.Add(wait)
				s.log.Warn("audit log: a checkpoint publication failed (the row's write failed); the signer waits before the next",
					"failures_in_a_row", s.pub.failures, "attempt", now.Sub(s.pub.at).Round(time.Millisecond), "wait", wait)
			}
		}
	}
	if now.Before(s.pub.retryAt) {
		return errPublishBackoff
	}
	return nil
}

// readRow reads the shared log's Checkpoint row through tessera's reader.
func (s *leaderSigner) readRow(ctx context.Context) ([]byte, error) {
	if s.row != nil {
		return s.row(ctx)
	}
	r := s.reader.Load()
	if r == nil {
		return nil, errors.New("audit: the signer's reader is not ready")
	}
	return (*r).ReadCheckpoint(ctx)
}

func (s *leaderSigner) Sign(msg []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.l.check(ctx); err != nil {
		s.pub.msg, s.pub.failures, s.pub.retryAt = nil, 0, time.Time{} // another replica signs
		return nil, err
	}
	if err := s.publishGate(ctx); err != nil {
		return nil, err
	}
	if s.key != nil {
		if err := s.checkEntries(ctx, msg); err != nil {
			return nil, err
		}
	}
	sig, err := s.Signer.Sign(msg)
	if err == nil {
		s.pub.msg, s.pub.at, s.pub.retryAt = bytes.Clone(msg), s.clock(), time.Time{}
		// What this replica signs is its floor from now on, published or not: it will not
		// sign a smaller tree, or another at this size, even after a restart.
		s.observe(append(append(bytes.Clone(msg), '\n'), sigLine(s.Signer, sig)...), false)
	}
	return sig, err
}

// checkEntries checks, before the tree of the checkpoint body msg is signed, that it is the
// tree last signed (the last checkpoint this key signed, or the last tree this signer
// checked) with entries appended that each carry a replica's MAC: a consistency proof from
// the old root to the new one, and for every new entry its MAC and an inclusion proof of
// its bytes in the new root, all built from the log's tiles. A root that commits to other
// leaves than the entries read (tiles or tree state written by someone else), a tree
// smaller than one already signed, or an entry without a valid MAC is refused with an
// ALERT, once per cause.
func (s *leaderSigner) checkEntries(ctx context.Context, msg []byte) error {
	r := s.reader.Load()
	if r == nil {
		return errors.New("audit: the signer's reader is not ready")
	}
	var cand log.Checkpoint
	if _, err := cand.Unmarshal(msg); err != nil {
		return fmt.Errorf("audit: checkpoint to sign: %v", err)
	}
	if cp, err := (*r).ReadCheckpoint(ctx); err == nil {
		s.observe(cp, false)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.extends(ctx, *r, cand)
	if err == nil {
		s.checked, s.root = cand.Size, cand.Hash
		return nil
	}
	if errors.Is(err, ErrSecurity) {
		s.refusals.Inc()
		if why := alertCause(err); why != s.alerted {
			s.alerted = why
			s.log.Error("ALERT audit log: an entry in the shared log was not written by a replica, or its tree was altered (someone with write access to the log's database); no checkpoint will cover it — the log publishes none past it until this is resolved",
				"err", err)
		}
	}
	return err
}

// sizesAndHashes are the parts of a refusal that change as the tree grows.
var sizesAndHashes = regexp.MustCompile(`size \d+|\[[0-9 \n]+\]`)

// alertCause is what tells two ALERTs apart: the error without tree sizes and hashes, so
// that a signer refusing the same entry at every new tree size says so once.
func alertCause(err error) string { return sizesAndHashes.ReplaceAllString(err.Error(), "") }

// observe raises the signer's starting point to cp when cp is a checkpoint the log key
// signed of a larger tree (and keeps it on disk). For cp read from the database's row
// (published), it reports whether cp is smaller than one read there before (a checkpoint
// put back: the database rolled back). Every replica observes the published checkpoint at
// each lock poll (250 ms), so one that takes over signing knows how far the log had come.
// Without an entry key the signer checks nothing, this included.
func (s *leaderSigner) observe(cp []byte, published bool) (older bool) {
	if !signedBy(s.Signer, cp) {
		return false
	}
	var c log.Checkpoint
	if _, err := c.Unmarshal(cp); err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.Size > s.checked {
		s.checked, s.root = c.Size, c.Hash
	}
	if published {
		if c.Size < s.published {
			return true
		}
		if c.Size > s.published && s.floorPath != "" {
			// Kept on this replica's disk, so that a rollback across its restart is seen.
			err := os.MkdirAll(filepath.Dir(s.floorPath), 0o700)
			if err == nil {
				err = fsutil.WriteFileAtomic(publishedPath(s.floorPath), strconv.AppendUint(nil, c.Size, 10), 0o600)
			}
			if err != nil {
				s.log.Warn("audit log: cannot keep the published checkpoint's size on this replica's disk", "err", err)
			}
		}
		s.published = c.Size
	}
	if c.Size < s.seen {
		return false
	}
	if c.Size == s.seen && s.seen > 0 {
		return false
	}
	s.seen = c.Size
	if s.floorPath != "" {
		err := os.MkdirAll(filepath.Dir(s.floorPath), 0o700)
		if err == nil {
			err = fsutil.WriteFileAtomic(s.floorPath, cp, 0o600)
		}
		if err != nil {
			s.log.Warn("audit log: cannot keep the last signed checkpoint on this replica's disk", "err", err)
		}
	}
	return false
}

// floorPath is where a replica whose local directory is dir keeps the last signed
// checkpoint it saw of the shared log ("" without one).
func floorPath(dir string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, ".state", "shared-log-checkpoint")
}

// publishedPath is where, beside the floor, a replica keeps the size of the largest
// checkpoint it read published in the database (observe): one the row later holds a
// smaller one than, even after a restart, is a rollback.
func publishedPath(floor string) string { return floor + ".published" }

// loadFloor starts the signer from the checkpoint kept on this replica's disk, if any,
// and the rollback watch from the published size kept beside it.
func (s *leaderSigner) loadFloor() {
	if s.floorPath == "" {
		return
	}
	if cp, err := readRegular(s.floorPath, 1<<20); err == nil { // a planted FIFO must not hang the start
		s.observe(cp, false) // perhaps signed here and never published: a floor, not a rollback mark
	}
	if b, err := readRegular(publishedPath(s.floorPath), 1<<20); err == nil {
		if n, err := strconv.ParseUint(string(b), 10, 64); err == nil {
			s.mu.Lock()
			s.published = max(s.published, n)
			s.mu.Unlock()
		}
	}
}

// checkRowAtStart compares the database's Checkpoint row, when a replica starts, with the
// largest published checkpoint it read before it stopped (loadFloor): a smaller one is a
// rollback while it was away. The replica's first checkpoint may replace the row before
// the watch (watchCheckpoint) reads it, so it is said here.
func (s *leaderSigner) checkRowAtStart(ctx context.Context, db *sql.DB) {
	var cp []byte
	if err := db.QueryRowContext(ctx, "SELECT `note` FROM `Checkpoint` WHERE `id` = 0").Scan(&cp); err != nil || !signedBy(s.Signer, cp) {
		return
	}
	size, ok := checkpointSize(cp)
	s.mu.Lock()
	was, signed := s.published, s.seen
	s.mu.Unlock()
	switch {
	case !ok:
	case size < was:
		s.log.Error(rollbackAlert+" (while this replica was stopped)", "published_size", size, "largest_seen", was)
	case size < signed:
		// Its own last checkpoint, published or not: the row read back by the watch comes up
		// to a second later, and a replica killed in between kept only its signature (an
		// outside round put the row back so, unsaid). Rarely, a publication that failed as
		// the replica stopped: the witnesses hold what was published.
		s.log.Error("ALERT audit log: the published checkpoint went back to an older one than the largest this replica saw signed before it stopped (the Checkpoint row was put back — or, if that one was this replica's own, its publication failed as it stopped: the witnesses hold the latest published); this replica will not sign a tree smaller than, or forked from, the largest it has seen",
			"published_size", size, "largest_signed_seen", signed)
	}
}

// rollbackAlert is the ALERT of a Checkpoint row older than one read before.
const rollbackAlert = "ALERT audit log: the published checkpoint went back to an older one (the log's database rolled back or its Checkpoint row replaced); this replica will not sign a tree smaller than, or forked from, the largest it has seen"

// extends checks that cand is the checked tree (size s.checked, root s.root) with entries
// appended that replicas wrote (s.mu held).
func (s *leaderSigner) extends(ctx context.Context, r tessera.LogReader, cand log.Checkpoint) error {
	switch {
	case cand.Size < s.checked:
		return securityf("the tree to sign (size %d) is smaller than one already signed (%d): the tree state was rolled back", cand.Size, s.checked)
	case cand.Size == s.checked:
		if s.checked > 0 && !bytes.Equal(cand.Hash, s.root) {
			return securityf("the tree to sign (size %d) has another root than the one signed at that size: a fork", cand.Size)
		}
		return nil
	}
	pb, err := client.NewProofBuilder(ctx, cand.Size, r.ReadTile)
	if err != nil {
		return err
	}
	if s.checked > 0 {
		p, err := pb.ConsistencyProof(ctx, s.checked, cand.Size)
		if err != nil {
			return err
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, s.checked, cand.Size, p, s.root, cand.Hash); err != nil {
			return securityf("the tree to sign (size %d) does not extend the one signed at size %d: %v", cand.Size, s.checked, err)
		}
	}
	// Every new entry must be sealed, or be a foreign entry an operator acknowledged in a
	// sealed entry after it in this tree (foreign.go).
	seals := sealCheck{key: s.key, origin: s.Name()}
	err = ReadEntries(ctx, r.ReadEntryBundle, s.checked, cand.Size, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			seals.add(e.Index, e.Raw)
			p, err := pb.InclusionProof(ctx, e.Index)
			if err != nil {
				return err
			}
			if err := VerifyInclusion(e.Raw, e.Index, cand.Size, p, cand.Hash); err != nil {
				return securityf("the root to sign (size %d) does not commit to entry %d as the log holds it: %v", cand.Size, e.Index, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	acked, err := seals.unacknowledged()
	if err == nil && len(acked) > 0 {
		s.log.Warn("audit log: signing a tree that holds foreign entries an operator acknowledged", "entries", acked, "size", cand.Size)
	}
	return err
}

// checkOrigin refuses a replica whose log key is not the one that signed the shared log's
// checkpoint: every replica must hold the same key (copy keys/log.key and keys/log.pub).
func checkOrigin(ctx context.Context, r tessera.LogReader, s note.Signer) error {
	cp, err := r.ReadCheckpoint(ctx)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(cp) == 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: read checkpoint: %v", ErrUnavailable, err)
	}
	got, _, _ := bytes.Cut(cp, []byte("\n"))
	if string(got) != s.Name() {
		return fmt.Errorf("audit: the shared log is %q but this replica's log key is %q: copy keys/log.key and keys/log.pub from a replica", got, s.Name())
	}
	// The same name is not the same key: a replica with another key of that name would sign
	// checkpoints no verifier accepts (an outside test had one take the signer's lock).
	if !signedBy(s, cp) {
		return fmt.Errorf("audit: the shared log's checkpoint was not signed by this replica's log key (same name %q, another key): copy keys/log.key and keys/log.pub from a replica", s.Name())
	}
	return nil
}

// signedBy reports whether the signed note msg carries s's signature of its text. Ed25519
// signatures are deterministic, so signing the text again gives the very line to look
// for: this checks the signature itself with the signer alone (another key of the same
// name, or a line with this key's hash and a made-up signature, is not s's).
func signedBy(s note.Signer, msg []byte) bool {
	i := bytes.Index(msg, []byte("\n\n"))
	if i < 0 {
		return false
	}
	sig, err := s.Sign(msg[:i+1])
	if err != nil {
		return false
	}
	return bytes.Contains(msg[i:], []byte("\n"+sigLine(s, sig)))
}

// sigLine is the signed note's line for s's signature sig: "— name base64(hash || sig)".
func sigLine(s note.Signer, sig []byte) string {
	return "\u2014 " + s.Name() + " " + base64.StdEncoding.EncodeToString(append(binary.BigEndian.AppendUint32(nil, s.KeyHash()), sig...)) + "\n"
}

// trimReader answers partial tiles and entry bundles with exactly the width asked: tessera's
// SQL driver returns the largest it has, and tlog-tiles clients (and ReadEntries) need
// exactly p hashes or entries.
type trimReader struct{ tessera.LogReader }

func (r trimReader) ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
	t, err := r.LogReader.ReadTile(ctx, level, index, p)
	if err == nil && p > 0 && len(t) > int(p)*32 {
		t = t[:int(p)*32]
	}
	return t, err
}

func (r trimReader) ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error) {
	b, err := r.LogReader.ReadEntryBundle(ctx, index, p)
	if err != nil || p == 0 {
		return b, err
	}
	// SPEC: https://c2sp.org/tlog-tiles — an entry bundle is a sequence of
	// uint16-length-prefixed entries.
	off := 0
	for i := range p {
		if off+2 > len(b) {
			return nil, fmt.Errorf("entry bundle %d: %d entries, %d asked: %w", index, i, p, os.ErrNotExist)
		}
		off += 2 + int(binary.BigEndian.Uint16(b[off:]))
		if off > len(b) {
			return nil, securityf("entry bundle %d: entry %d truncated", index, i)
		}
	}
	return b[:off], nil
}

// OpenSQLReader reads a log on a shared engine (for `audit verify` inside a replica's data
// directory): its checkpoint, tiles and entry bundles, and its batches' bundles.
func OpenSQLReader(ctx context.Context, loc string, tc *tls.Config) (tessera.LogReader, BundleStore, func() error, error) {
	db, err := openSQL(ctx, loc, tc)
	if err != nil {
		return nil, nil, nil, err
	}
	quietDependencies()
	st, err := tmysql.New(ctx, db)
	if err != nil {
		db.Close()
		return nil, nil, nil, fmt.Errorf("%w: log database %s: %v", ErrUnavailable, redact.DSN(loc), redact.Error(err, redact.DSN, loc))
	}
	return trimReader{st}, SQLBundles{DB: db}, db.Close, nil
}

// go-sql-driver/mysql's process-global logger is stopped from writing to stderr
// ("packets.go: unexpected EOF" when a connection drops): failures reach callers as
// errors. It is set at the package's initialization, before any goroutine can read it:
// set lazily at the first Open, it raced with a DSN parsed on another goroutine (the race
// detector caught it when only parallel MariaDB tests ran, twentieth session).
func init() { mysql.SetLogger(stdlog.New(io.Discard, "", 0)) }
