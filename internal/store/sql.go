package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/sqlutil"
)

// dialect holds what differs between SQLite and PostgreSQL for our few statements.
type dialect struct {
	name      string
	bytesType string
	dollar    bool // $1 placeholders instead of ?
	isUnique  func(error) bool
	isBusy    func(error) bool // contention that a retry can get past
}

// sqlStore implements Store over database/sql for both backends.
type sqlStore struct {
	db *sql.DB
	d  dialect
	// stmts holds the statements prepared once (prepared): the queries run many times a
	// second by every process (polled), and the insert of a full chunk of indexRows audit
	// events (parsing its 768 parameters for every chunk was a fifth of the index's CPU).
	stmts sync.Map // query text → *sql.Stmt
	// records, once set (SetRecordSource), gives request records' bytes from their batch's
	// bundle: groups indexed after that keep none of their own (auditgroups.go).
	records atomic.Pointer[RecordSource]
}

var _ Store = (*sqlStore)(nil)

// migrations are applied in order, once each; never edit one that has shipped.
var migrations = []string{
	`CREATE TABLE keys (
		id TEXT PRIMARY KEY,
		kek_id TEXT NOT NULL,
		wrapped {{bytes}} NOT NULL,
		created_at BIGINT NOT NULL
	);
	CREATE TABLE versions (
		model TEXT NOT NULL,
		version TEXT NOT NULL,
		classification TEXT NOT NULL,
		owner TEXT NOT NULL,
		env TEXT NOT NULL,
		key_id TEXT NOT NULL REFERENCES keys(id),
		signature {{bytes}} NOT NULL,
		created_at BIGINT NOT NULL,
		PRIMARY KEY (model, version)
	);
	CREATE TABLE files (
		model TEXT NOT NULL,
		version TEXT NOT NULL,
		path TEXT NOT NULL,
		size BIGINT NOT NULL,
		sha256 TEXT NOT NULL,
		blob TEXT NOT NULL,
		PRIMARY KEY (model, version, path),
		FOREIGN KEY (model, version) REFERENCES versions(model, version)
	)`,
	`ALTER TABLE keys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'file'`,
	`CREATE TABLE audit_events (
		idx BIGINT PRIMARY KEY,
		ts BIGINT NOT NULL,
		kind TEXT NOT NULL,
		principal TEXT NOT NULL,
		decision TEXT NOT NULL,
		raw {{bytes}} NOT NULL
	);
	CREATE INDEX audit_events_principal ON audit_events (principal, ts);
	CREATE INDEX audit_events_kind ON audit_events (kind, ts)`,
	`CREATE TABLE principals (
		id TEXT PRIMARY KEY,
		tenant TEXT NOT NULL,
		roles TEXT NOT NULL,
		org TEXT NOT NULL,
		country TEXT NOT NULL,
		screening TEXT NOT NULL,
		created_at BIGINT NOT NULL
	);
	CREATE TABLE api_keys (
		id TEXT PRIMARY KEY,
		principal TEXT NOT NULL REFERENCES principals(id),
		hash {{bytes}} NOT NULL,
		models TEXT NOT NULL,
		expires_at BIGINT NOT NULL,
		revoked_at BIGINT NOT NULL,
		created_at BIGINT NOT NULL
	)`,
	`CREATE TABLE runtimes (
		id TEXT PRIMARY KEY,
		env TEXT NOT NULL,
		region TEXT NOT NULL,
		jurisdiction TEXT NOT NULL,
		host TEXT NOT NULL,
		owner TEXT NOT NULL,
		cert_serial TEXT NOT NULL,
		cert_expires BIGINT NOT NULL,
		created_at BIGINT NOT NULL,
		revoked_at BIGINT NOT NULL
	);
	CREATE TABLE join_tokens (
		id TEXT PRIMARY KEY,
		hash {{bytes}} NOT NULL,
		env TEXT NOT NULL,
		region TEXT NOT NULL,
		jurisdiction TEXT NOT NULL,
		host TEXT NOT NULL,
		owner TEXT NOT NULL,
		expires_at BIGINT NOT NULL,
		used_at BIGINT NOT NULL,
		created_at BIGINT NOT NULL
	);
	CREATE TABLE leases (
		id TEXT PRIMARY KEY,
		runtime TEXT NOT NULL,
		model TEXT NOT NULL,
		version TEXT NOT NULL,
		key_id TEXT NOT NULL,
		attestation TEXT NOT NULL,
		bytes BIGINT NOT NULL,
		granted_at BIGINT NOT NULL,
		expires_at BIGINT NOT NULL,
		revoked_at BIGINT NOT NULL,
		reason TEXT NOT NULL
	);
	CREATE INDEX leases_revoked ON leases (revoked_at);
	CREATE TABLE approval_requests (
		id TEXT PRIMARY KEY,
		kind TEXT NOT NULL,
		requester TEXT NOT NULL,
		runtime TEXT NOT NULL,
		model TEXT NOT NULL,
		version TEXT NOT NULL,
		needed INTEGER NOT NULL,
		state TEXT NOT NULL,
		created_at BIGINT NOT NULL,
		expires_at BIGINT NOT NULL
	);
	CREATE TABLE approvals (
		request_id TEXT NOT NULL REFERENCES approval_requests(id),
		approver TEXT NOT NULL,
		decision TEXT NOT NULL,
		at BIGINT NOT NULL,
		PRIMARY KEY (request_id, approver)
	);
	CREATE TABLE totp (
		principal TEXT PRIMARY KEY REFERENCES principals(id),
		key_id TEXT NOT NULL,
		sealed {{bytes}} NOT NULL,
		last_step BIGINT NOT NULL
	);
	CREATE TABLE egress (
		day TEXT NOT NULL,
		runtime TEXT NOT NULL,
		bytes BIGINT NOT NULL,
		PRIMARY KEY (day, runtime)
	);
	ALTER TABLE versions ADD COLUMN disabled_at BIGINT NOT NULL DEFAULT 0`,
	`CREATE TABLE incidents (
		id TEXT PRIMARY KEY,
		principal TEXT NOT NULL,
		detector TEXT NOT NULL,
		action TEXT NOT NULL,
		score DOUBLE PRECISION NOT NULL,
		summary TEXT NOT NULL,
		evidence TEXT NOT NULL,
		state TEXT NOT NULL,
		opened_at BIGINT NOT NULL,
		closed_at BIGINT NOT NULL,
		note TEXT NOT NULL
	);
	CREATE INDEX incidents_state ON incidents (state, opened_at)`,
	`CREATE TABLE sanctions (
		principal TEXT PRIMARY KEY,
		action TEXT NOT NULL,
		detector TEXT NOT NULL,
		since BIGINT NOT NULL,
		until_at BIGINT NOT NULL
	)`,
	`CREATE TABLE custody_nonces (
		nonce {{bytes}} PRIMARY KEY,
		runtime TEXT NOT NULL,
		seq BIGINT NOT NULL,
		expires_at BIGINT NOT NULL
	);
	CREATE INDEX custody_nonces_runtime ON custody_nonces (runtime, seq);
	CREATE INDEX custody_nonces_expiry ON custody_nonces (expires_at)`,
	`ALTER TABLE leases ADD COLUMN seen_at BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE leases ADD COLUMN watch_seq BIGINT NOT NULL DEFAULT 0`,
	// Issue 15: the inventory is the one record of a model version's attributes.
	`ALTER TABLE versions ADD COLUMN attrs TEXT NOT NULL DEFAULT '';
	ALTER TABLE versions ADD COLUMN attrs_at BIGINT NOT NULL DEFAULT 0`,
	// Issue 17: fingerprinted copies per licensee.
	`CREATE TABLE exports (
		id TEXT PRIMARY KEY,
		model TEXT NOT NULL,
		version TEXT NOT NULL,
		licensee TEXT NOT NULL,
		by_whom TEXT NOT NULL,
		sha256 TEXT NOT NULL,
		log_index BIGINT NOT NULL,
		created_at BIGINT NOT NULL
	);
	CREATE INDEX exports_model ON exports (model, version, created_at)`,
	// Issue 15: model versions served from engines whose weights Strongroom does not hold
	// (records only: no files, no key, no leases). Same columns as versions.
	`CREATE TABLE external_models (
		model TEXT NOT NULL,
		version TEXT NOT NULL,
		classification TEXT NOT NULL,
		owner TEXT NOT NULL,
		env TEXT NOT NULL,
		key_id TEXT NOT NULL,
		signature {{bytes}} NOT NULL,
		created_at BIGINT NOT NULL,
		disabled_at BIGINT NOT NULL DEFAULT 0,
		attrs TEXT NOT NULL DEFAULT '',
		attrs_at BIGINT NOT NULL DEFAULT 0,
		PRIMARY KEY (model, version)
	)`,
	// 13: the console's pages of the search index, newest first by index within a
	// principal or a kind, and its per-hour counts without reading the rows.
	`CREATE INDEX audit_events_principal_idx ON audit_events (principal, idx);
	CREATE INDEX audit_events_principal_kind_idx ON audit_events (principal, kind, idx);
	CREATE INDEX audit_events_kind_idx ON audit_events (kind, idx);
	CREATE INDEX audit_events_kind_ts_decision ON audit_events (kind, ts, decision);
	DROP INDEX audit_events_kind`,
	// 14: request records indexed one row per (batch entry, principal, kind); see
	// auditgroups.go. meta precedes raws so that counting reads no record bytes.
	`CREATE TABLE audit_record_groups (
		entry BIGINT NOT NULL,
		principal TEXT NOT NULL,
		kind TEXT NOT NULL,
		ts_min BIGINT NOT NULL,
		ts_max BIGINT NOT NULL,
		n INTEGER NOT NULL,
		meta {{bytes}} NOT NULL,
		raws {{bytes}} NOT NULL,
		PRIMARY KEY (entry, principal, kind)
	);
	CREATE INDEX audit_record_groups_principal ON audit_record_groups (principal, kind, entry);
	CREATE INDEX audit_record_groups_kind ON audit_record_groups (kind, entry);
	CREATE INDEX audit_record_groups_kind_ts ON audit_record_groups (kind, ts_max)`,
	// 15: bundled = 1: the group keeps no record bytes; they are read from the batch's
	// bundle (auditgroups.go, RecordSource).
	`ALTER TABLE audit_record_groups ADD COLUMN bundled INTEGER NOT NULL DEFAULT 0`,
	// 16: each log entry's digest, to list byte copies as copies (auditcopies.go); the
	// entries indexed before are given theirs by backfillDigests.
	`CREATE TABLE audit_entry_digests (
		idx BIGINT PRIMARY KEY,
		digest {{bytes}} NOT NULL
	);
	CREATE INDEX audit_entry_digests_digest ON audit_entry_digests (digest, idx)`,
}

// migrationDigests is the version of the migration that adds audit_entry_digests.
const migrationDigests = 16

func (s *sqlStore) q(query string) string {
	if !s.d.dollar {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *sqlStore) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	var have int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	for i := have; i < len(migrations); i++ {
		err := s.tx(ctx, func(tx *sql.Tx) error {
			for _, stmt := range strings.Split(strings.ReplaceAll(migrations[i], "{{bytes}}", s.d.bytesType), ";") {
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return err
				}
			}
			if i+1 == migrationDigests {
				if err := s.backfillDigests(ctx, tx); err != nil {
					return err
				}
			}
			_, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version) VALUES (?)`), i+1)
			return err
		})
		if err != nil {
			return fmt.Errorf("store: migration %d: %w", i+1, err)
		}
	}
	return nil
}

// txAttempts bounds how often a transaction that lost to contention is run again (each
// attempt may already have waited busy_timeout for SQLite's write lock).
const txAttempts = 5

// tx runs fn in a transaction, again (from the start) when it failed on contention.
func (s *sqlStore) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	var err error
	for attempt := range txAttempts {
		if err = s.tx1(ctx, fn); err == nil || s.d.isBusy == nil || !s.d.isBusy(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt+1) * 20 * time.Millisecond):
		}
	}
	return err
}

func (s *sqlStore) tx1(ctx context.Context, fn func(*sql.Tx) error) error {
	return sqlutil.InTx(ctx, s.db, fn)
}

func (s *sqlStore) Close() error { return s.db.Close() }

// polled is the store's database for a query that a process runs several times a second
// whatever its load — the custody service's revocation poll (every 100 ms), the key
// cache's — run through a statement prepared once. On SQLite, parsing and planning the
// statement was 60 % of each run: the revocation poll alone cost an idle gateway 11 ms of
// CPU a second (docs/PERFORMANCE.md, twentieth session). A statement that cannot be
// prepared runs as before.
func (s *sqlStore) polled() querier { return pollQuerier{s} }

type pollQuerier struct{ s *sqlStore }

func (p pollQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := p.s.prepared(ctx, query)
	if err != nil {
		return p.s.db.QueryContext(ctx, query, args...)
	}
	return st.QueryContext(ctx, args...)
}

// prepared is query's statement, prepared at its first use. A failure is not kept: the
// next use prepares again (the index's statement once kept its first error, and one
// transient failure — the database away at that moment — stopped indexing full chunks
// until a restart).
func (s *sqlStore) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.stmts.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.stmts.LoadOrStore(query, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// getOne runs a query for one row: no row is ErrNotFound, named by what; other failures
// are named by op.
func getOne[T any](ctx context.Context, s *sqlStore, scan func(interface{ Scan(...any) error }) (T, error), what, op, query string, args ...any) (T, error) {
	v, err := scan(s.db.QueryRowContext(ctx, s.q(query), args...))
	if errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	if err != nil {
		return v, fmt.Errorf("store: %s: %w", op, err)
	}
	return v, nil
}

func (s *sqlStore) PutKey(ctx context.Context, k Key) error {
	if k.Purpose != PurposeModel && k.Purpose != PurposeFile {
		return fmt.Errorf("store: key %s: purpose %q", k.ID, k.Purpose)
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO keys (id, kek_id, wrapped, purpose, created_at) VALUES (?, ?, ?, ?, ?)`),
		k.ID, k.KEKID, k.Wrapped, k.Purpose, k.CreatedAt.UnixNano())
	if err != nil && s.d.isUnique(err) {
		return fmt.Errorf("store: key %s: %w", k.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: put key: %w", err)
	}
	return nil
}

const keyCols = `id, kek_id, wrapped, purpose, created_at`

func scanKey(row interface{ Scan(...any) error }) (Key, error) {
	var k Key
	var ts int64
	err := row.Scan(&k.ID, &k.KEKID, &k.Wrapped, &k.Purpose, &ts)
	k.CreatedAt = time.Unix(0, ts).UTC()
	return k, err
}

func (s *sqlStore) GetKey(ctx context.Context, id string) (Key, error) {
	return getOne(ctx, s, scanKey, "store: key "+id, "get key", `SELECT `+keyCols+` FROM keys WHERE id = ?`, id)
}

func (s *sqlStore) ListKeys(ctx context.Context) ([]Key, error) {
	return listKeys(ctx, s.db)
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func listKeys(ctx context.Context, db querier) ([]Key, error) {
	rows, err := db.QueryContext(ctx, `SELECT `+keyCols+` FROM keys ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("store: list keys: %w", err)
	}
	defer rows.Close()
	var out []Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list keys: %w", err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

func (s *sqlStore) RewrapKeys(ctx context.Context, fn func(Key) (Key, error)) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		keys, err := listKeys(ctx, tx)
		if err != nil {
			return err
		}
		for _, k := range keys {
			nk, err := fn(k)
			if err != nil {
				return fmt.Errorf("key %s: %w", k.ID, err)
			}
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE keys SET kek_id = ?, wrapped = ? WHERE id = ?`), nk.KEKID, nk.Wrapped, k.ID); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: rewrap: %w", err)
	}
	return n, nil
}

func (s *sqlStore) DeleteKey(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM keys WHERE id = ?`), id)
	if err != nil {
		return fmt.Errorf("store: delete key %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: key %s: %w", id, ErrNotFound)
	}
	return nil
}

func (s *sqlStore) CreateVersion(ctx context.Context, v Version) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		extra, err := marshalExtra(v.Attrs())
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO versions (model, version, classification, owner, env, key_id, signature, created_at, attrs, attrs_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			v.Model, v.Version, v.Classification, v.Owner, v.Env, v.KeyID, v.Signature, v.CreatedAt.UnixNano(), extra, nanos(v.AttrsAt))
		if err != nil {
			return err
		}
		for _, f := range v.Files {
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO files (model, version, path, size, sha256, blob) VALUES (?, ?, ?, ?, ?, ?)`),
				v.Model, v.Version, f.Path, f.Size, f.SHA256, f.Blob); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && s.d.isUnique(err) {
		return fmt.Errorf("model %s:%s: %w", v.Model, v.Version, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: create version: %w", err)
	}
	return nil
}

const versionCols = `model, version, classification, owner, env, key_id, signature, created_at, disabled_at, attrs, attrs_at`

// extraAttrs is what the attrs column holds: the attributes besides classification and
// owner, which have columns of their own.
type extraAttrs struct {
	AllowedCountries []string            `json:"allowed_countries,omitempty"`
	DeniedCountries  []string            `json:"denied_countries,omitempty"`
	Watermark        bool                `json:"watermark,omitempty"`
	Hardening        *modelrec.Hardening `json:"hardening,omitempty"`
}

func marshalExtra(a modelrec.Attrs) (string, error) {
	b, err := json.Marshal(extraAttrs{a.AllowedCountries, a.DeniedCountries, a.Watermark, a.Hardening})
	return string(b), err
}

func (v *Version) setExtra(col string) error {
	if col == "" {
		return nil
	}
	var e extraAttrs
	if err := json.Unmarshal([]byte(col), &e); err != nil {
		return fmt.Errorf("store: model %s:%s attributes: %w", v.Model, v.Version, err)
	}
	v.AllowedCountries, v.DeniedCountries, v.Watermark, v.Hardening = e.AllowedCountries, e.DeniedCountries, e.Watermark, e.Hardening
	return nil
}

func (s *sqlStore) SetVersionAttrs(ctx context.Context, model, version string, a modelrec.Attrs, at time.Time) error {
	extra, err := marshalExtra(a)
	if err != nil {
		return err
	}
	for _, table := range []string{"versions", "external_models"} {
		res, err := s.db.ExecContext(ctx, s.q(`UPDATE `+table+` SET classification = ?, owner = ?, attrs = ?, attrs_at = ? WHERE model = ? AND version = ?`),
			a.Classification, a.Owner, extra, at.UnixNano(), model, version)
		if err != nil {
			return fmt.Errorf("store: set attributes of %s:%s: %w", model, version, err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			return nil
		}
	}
	return fmt.Errorf("model %s:%s: %w", model, version, ErrNotFound)
}

func (s *sqlStore) ModelRecords(ctx context.Context) ([]modelrec.Record, error) {
	vs, err := s.scanVersions(ctx, ``)
	if err != nil {
		return nil, err
	}
	out := make([]modelrec.Record, len(vs))
	for i, v := range vs {
		out[i] = v.Record()
	}
	return out, nil
}

func (s *sqlStore) GetVersion(ctx context.Context, model, version string) (Version, error) {
	vs, err := s.versions(ctx, `WHERE model = ? AND version = ?`, model, version)
	if err != nil {
		return Version{}, err
	}
	if len(vs) == 0 {
		return Version{}, fmt.Errorf("model %s:%s: %w", model, version, ErrNotFound)
	}
	return vs[0], nil
}

// CreateExternalVersion records a version served from engines whose weights Strongroom
// does not hold: a model record without files or key; ErrExists if the version exists.
func (s *sqlStore) CreateExternalVersion(ctx context.Context, v Version) error {
	extra, err := marshalExtra(v.Attrs())
	if err != nil {
		return err
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM versions WHERE model = ? AND version = ?`), v.Model, v.Version).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return ErrExists
		}
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO external_models (model, version, classification, owner, env, key_id, signature, created_at, attrs, attrs_at)
			VALUES (?, ?, ?, ?, ?, '', ?, ?, ?, ?)`), v.Model, v.Version, v.Classification, v.Owner, v.Env, []byte{}, v.CreatedAt.UnixNano(), extra, nanos(v.AttrsAt))
		return err
	})
	if errors.Is(err, ErrExists) || (err != nil && s.d.isUnique(err)) {
		return fmt.Errorf("model %s:%s: %w", v.Model, v.Version, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: create external version: %w", err)
	}
	return nil
}

func (s *sqlStore) ListVersions(ctx context.Context, model string) ([]Version, error) {
	if model == "" {
		return s.versions(ctx, ``)
	}
	return s.versions(ctx, `WHERE model = ?`, model)
}

func (s *sqlStore) versions(ctx context.Context, where string, args ...any) ([]Version, error) {
	out, err := s.scanVersions(ctx, where, args...)
	if err != nil {
		return nil, err
	}
	for i := range out {
		if out[i].External {
			continue
		}
		if out[i].Files, err = s.files(ctx, out[i].Model, out[i].Version); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// scanVersions reads versions without their files: imported ones, then external ones.
func (s *sqlStore) scanVersions(ctx context.Context, where string, args ...any) ([]Version, error) {
	out, err := s.scanTable(ctx, "versions", where, args...)
	if err != nil {
		return nil, err
	}
	ext, err := s.scanTable(ctx, "external_models", where, args...)
	for i := range ext {
		ext[i].External = true
	}
	return append(out, ext...), err
}

func (s *sqlStore) scanTable(ctx context.Context, table, where string, args ...any) ([]Version, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+versionCols+` FROM `+table+` `+where+` ORDER BY model, created_at, version`), args...)
	if err != nil {
		return nil, fmt.Errorf("store: list versions: %w", err)
	}
	var out []Version
	for rows.Next() {
		var v Version
		var ts, dis, at int64
		var extra string
		if err := rows.Scan(&v.Model, &v.Version, &v.Classification, &v.Owner, &v.Env, &v.KeyID, &v.Signature, &ts, &dis, &extra, &at); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: list versions: %w", err)
		}
		v.CreatedAt, v.DisabledAt, v.AttrsAt = time.Unix(0, ts).UTC(), fromNanos(dis), fromNanos(at)
		if err := v.setExtra(extra); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list versions: %w", err)
	}
	return out, nil
}

func (s *sqlStore) files(ctx context.Context, model, version string) ([]File, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT path, size, sha256, blob FROM files WHERE model = ? AND version = ? ORDER BY path`), model, version)
	if err != nil {
		return nil, fmt.Errorf("store: files: %w", err)
	}
	defer rows.Close()
	var out []File
	for rows.Next() {
		var f File
		if err := rows.Scan(&f.Path, &f.Size, &f.SHA256, &f.Blob); err != nil {
			return nil, fmt.Errorf("store: files: %w", err)
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// indexRows is how many events one INSERT of the audit index carries (6 parameters each,
// well inside SQLite's and PostgreSQL's parameter limits). One statement per event cost the
// gateway ≈ 10 µs of CPU per request (statement preparation dominated).
const indexRows = 128

func (s *sqlStore) indexQuery(rows int) string {
	return s.q(`INSERT INTO audit_events (idx, ts, kind, principal, decision, raw) VALUES ` +
		strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?), ", rows), ", ") +
		` ON CONFLICT (idx) DO NOTHING`)
}

func (s *sqlStore) IndexAudit(ctx context.Context, evs []AuditEvent) error {
	var recs []AuditEvent
	i := slices.IndexFunc(evs, func(e AuditEvent) bool { return isRecordIndex(e.Index) })
	if i >= 0 && !slices.ContainsFunc(evs[i:], func(e AuditEvent) bool { return !isRecordIndex(e.Index) }) {
		evs, recs = evs[:i], evs[i:] // entries, then records (as the log hands them): no copy
	} else if i >= 0 {
		entries := slices.Clone(evs[:i])
		recs = make([]AuditEvent, 0, len(evs)-i)
		for _, e := range evs[i:] {
			if isRecordIndex(e.Index) {
				recs = append(recs, e)
			} else {
				entries = append(entries, e)
			}
		}
		evs = entries
	}
	var chunkStmt *sql.Stmt
	if len(evs) >= indexRows {
		var err error
		if chunkStmt, err = s.prepared(ctx, s.indexQuery(indexRows)); err != nil {
			return fmt.Errorf("store: index audit events: %w", err)
		}
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		args := make([]any, 0, 6*indexRows)
		var full *sql.Stmt
		for chunk := range slices.Chunk(evs, indexRows) {
			args = args[:0]
			for _, e := range chunk {
				args = append(args, int64(e.Index), e.TS.UnixNano(), e.Kind, e.Principal, e.Decision, e.Raw)
			}
			var err error
			if len(chunk) == indexRows {
				if full == nil {
					full = tx.StmtContext(ctx, chunkStmt)
					defer full.Close()
				}
				_, err = full.ExecContext(ctx, args...)
			} else {
				_, err = tx.ExecContext(ctx, s.indexQuery(len(chunk)), args...)
			}
			if err != nil {
				return err
			}
		}
		if err := s.indexDigests(ctx, tx, evs); err != nil {
			return err
		}
		return s.indexRecordGroups(ctx, tx, recs)
	})
	if err != nil {
		return fmt.Errorf("store: index audit events: %w", err)
	}
	return nil
}

func (s *sqlStore) AuditIndexed(ctx context.Context) (uint64, error) {
	var n sql.NullInt64
	// Batched request records are indexed under numbers with bit 62 set (audit.RecordIndex):
	// only log entries count towards how far the index has come.
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(idx) FROM audit_events WHERE idx < 4611686018427387904`).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: audit index size: %w", err)
	}
	if !n.Valid {
		return 0, nil
	}
	return uint64(n.Int64) + 1, nil
}

func (s *sqlStore) SearchAudit(ctx context.Context, q AuditQuery) ([]AuditEvent, error) {
	evs, err := s.searchEntries(ctx, q)
	if err != nil {
		return nil, err
	}
	recs, err := s.searchRecords(ctx, q)
	if err != nil {
		return nil, err
	}
	return mergeByIndex(evs, recs, q.Desc, q.Limit), nil
}

// searchEntries answers q from audit_events (entries, and request records indexed one row
// each by earlier versions).
func (s *sqlStore) searchEntries(ctx context.Context, q AuditQuery) ([]AuditEvent, error) {
	where, args := []string{"1 = 1"}, []any{}
	if !q.Since.IsZero() {
		where, args = append(where, "ts >= ?"), append(args, q.Since.UnixNano())
	}
	if q.Principal != "" {
		where, args = append(where, "principal = ?"), append(args, q.Principal)
	}
	if q.Kind != "" {
		where, args = append(where, "kind = ?"), append(args, q.Kind)
	}
	if !q.Until.IsZero() {
		where, args = append(where, "ts < ?"), append(args, q.Until.UnixNano())
	}
	if q.Before > 0 {
		where, args = append(where, "idx < ?"), append(args, int64(q.Before))
	}
	if len(q.Indexes) > 0 {
		marks := make([]string, len(q.Indexes))
		for i, x := range q.Indexes {
			marks[i], args = "?", append(args, int64(x))
		}
		where = append(where, "idx IN ("+strings.Join(marks, ", ")+")")
	}
	query := `SELECT idx, ts, kind, principal, decision, raw FROM audit_events WHERE ` + strings.Join(where, " AND ") + ` ORDER BY idx`
	if q.Desc {
		query += ` DESC`
	}
	if q.Limit > 0 {
		query += ` LIMIT ` + strconv.Itoa(q.Limit)
	}
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("store: search audit: %w", err)
	}
	defer rows.Close()
	var out []AuditEvent
	for rows.Next() {
		var e AuditEvent
		var idx, ts int64
		if err := rows.Scan(&idx, &ts, &e.Kind, &e.Principal, &e.Decision, &e.Raw); err != nil {
			return nil, fmt.Errorf("store: search audit: %w", err)
		}
		e.Index, e.TS = uint64(idx), time.Unix(0, ts).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

func (s *sqlStore) AuditHistogram(ctx context.Context, kind string, since time.Time, bucket time.Duration) ([]AuditBucket, error) {
	if bucket <= 0 {
		return nil, fmt.Errorf("store: audit histogram: bucket %v", bucket)
	}
	b := bucket.Nanoseconds()
	type key struct {
		n        int64
		decision string
	}
	counts := map[key]int{}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT ts / ?, decision, COUNT(*) FROM audit_events WHERE kind = ? AND ts >= ? GROUP BY 1, 2`),
		b, kind, since.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("store: audit histogram: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k key
		var c int
		if err := rows.Scan(&k.n, &k.decision, &c); err != nil {
			return nil, fmt.Errorf("store: audit histogram: %w", err)
		}
		counts[k] += c
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: audit histogram: %w", err)
	}
	err = s.eachGroupRecord(ctx, kind, since.UnixNano(), func(e AuditEvent) { counts[key{e.TS.UnixNano() / b, e.Decision}]++ })
	if err != nil {
		return nil, fmt.Errorf("store: audit histogram: %w", err)
	}
	out := make([]AuditBucket, 0, len(counts))
	for k, c := range counts {
		out = append(out, AuditBucket{Start: unixNanoUTC(k.n * b), Decision: k.decision, Count: c})
	}
	slices.SortFunc(out, func(x, y AuditBucket) int {
		return cmp.Or(x.Start.Compare(y.Start), strings.Compare(x.Decision, y.Decision))
	})
	return out, nil
}

func joinList(l []string) string { return strings.Join(l, ",") }

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func (s *sqlStore) PutPrincipal(ctx context.Context, p Principal) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO principals (id, tenant, roles, org, country, screening, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant, roles = excluded.roles, org = excluded.org, country = excluded.country, screening = excluded.screening`),
		p.ID, p.Tenant, joinList(p.Roles), p.Org, p.Country, p.Screening, nanos(p.CreatedAt))
	if err != nil {
		return fmt.Errorf("store: put principal: %w", err)
	}
	return nil
}

const principalCols = `id, tenant, roles, org, country, screening, created_at`

func scanPrincipal(row interface{ Scan(...any) error }) (Principal, error) {
	var p Principal
	var roles string
	var ts int64
	err := row.Scan(&p.ID, &p.Tenant, &roles, &p.Org, &p.Country, &p.Screening, &ts)
	p.Roles, p.CreatedAt = splitList(roles), fromNanos(ts)
	return p, err
}

func (s *sqlStore) GetPrincipal(ctx context.Context, id string) (Principal, error) {
	return getOne(ctx, s, scanPrincipal, "principal "+id, "get principal", `SELECT `+principalCols+` FROM principals WHERE id = ?`, id)
}

func (s *sqlStore) PrincipalsPage(ctx context.Context, after string, limit int) ([]Principal, error) {
	return list(ctx, s.db, s.q(`SELECT `+principalCols+` FROM principals WHERE id > ? ORDER BY id LIMIT `+strconv.Itoa(max(limit, 1))), []any{after}, scanPrincipal)
}

func (s *sqlStore) ListPrincipals(ctx context.Context) ([]Principal, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+principalCols+` FROM principals ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("store: list principals: %w", err)
	}
	defer rows.Close()
	var out []Principal
	for rows.Next() {
		p, err := scanPrincipal(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list principals: %w", err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

func (s *sqlStore) PutAPIKey(ctx context.Context, k APIKey) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO api_keys (id, principal, hash, models, expires_at, revoked_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`),
		k.ID, k.Principal, k.Hash, joinList(k.Models), nanos(k.ExpiresAt), nanos(k.RevokedAt), nanos(k.CreatedAt))
	if err != nil && s.d.isUnique(err) {
		return fmt.Errorf("store: api key %s: %w", k.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: put api key: %w", err)
	}
	return nil
}

const apiKeyCols = `id, principal, hash, models, expires_at, revoked_at, created_at`

func scanAPIKey(row interface{ Scan(...any) error }) (APIKey, error) {
	var k APIKey
	var models string
	var exp, rev, ts int64
	err := row.Scan(&k.ID, &k.Principal, &k.Hash, &models, &exp, &rev, &ts)
	k.Models, k.ExpiresAt, k.RevokedAt, k.CreatedAt = splitList(models), fromNanos(exp), fromNanos(rev), fromNanos(ts)
	return k, err
}

func (s *sqlStore) GetAPIKey(ctx context.Context, id string) (APIKey, error) {
	return getOne(ctx, s, scanAPIKey, "api key "+id, "get api key", `SELECT `+apiKeyCols+` FROM api_keys WHERE id = ?`, id)
}

func (s *sqlStore) ListAPIKeys(ctx context.Context, principal string) ([]APIKey, error) {
	q, args := `SELECT `+apiKeyCols+` FROM api_keys ORDER BY principal, created_at, id`, []any{}
	if principal != "" {
		q, args = `SELECT `+apiKeyCols+` FROM api_keys WHERE principal = ? ORDER BY created_at, id`, []any{principal}
	}
	rows, err := s.db.QueryContext(ctx, s.q(q), args...)
	if err != nil {
		return nil, fmt.Errorf("store: list api keys: %w", err)
	}
	defer rows.Close()
	var out []APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list api keys: %w", err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

func (s *sqlStore) AuditPrincipalsPerDay(ctx context.Context, kind string, since time.Time) (map[string]int, error) {
	const day = int64(24 * time.Hour)
	seen := map[int64]map[string]bool{}
	add := func(d int64, principal string) {
		if seen[d] == nil {
			seen[d] = map[string]bool{}
		}
		seen[d][principal] = true
	}
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT DISTINCT ts / 86400000000000, principal FROM audit_events WHERE kind = ? AND ts >= ?`),
		kind, since.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("store: principals per day: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d int64
		var p string
		if err := rows.Scan(&d, &p); err != nil {
			return nil, fmt.Errorf("store: principals per day: %w", err)
		}
		add(d, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: principals per day: %w", err)
	}
	if err := s.eachGroupRecord(ctx, kind, since.UnixNano(), func(e AuditEvent) { add(e.TS.UnixNano()/day, e.Principal) }); err != nil {
		return nil, fmt.Errorf("store: principals per day: %w", err)
	}
	out := make(map[string]int, len(seen))
	for d, ps := range seen {
		out[dayKey(d)] = len(ps)
	}
	return out, nil
}

func (s *sqlStore) RevokedAPIKeys(ctx context.Context, since time.Time) ([]string, error) {
	rows, err := s.polled().QueryContext(ctx, s.q(`SELECT id FROM api_keys WHERE revoked_at > ? ORDER BY id`), nanos(since))
	if err != nil {
		return nil, fmt.Errorf("store: revoked api keys: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("store: revoked api keys: %w", err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func (s *sqlStore) UpdateAPIKey(ctx context.Context, id string, expires, revoked time.Time) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE api_keys SET expires_at = ?, revoked_at = ? WHERE id = ?`), nanos(expires), nanos(revoked), id)
	if err != nil {
		return fmt.Errorf("store: update api key: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("api key %s: %w", id, ErrNotFound)
	}
	return nil
}
