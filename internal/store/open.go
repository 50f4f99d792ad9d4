package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/strongroom/strongroom/internal/redact"
)

// Open opens a store from a DSN: "postgres://..." or "postgresql://..." (any case), or
// the keyword/value form, for PostgreSQL; another scheme, or white space at either end, is
// refused (redact.StoreAddress); anything else is a SQLite file path. Migrations run before
// it returns.
func Open(ctx context.Context, dsn string) (Store, error) {
	addr, pg, err := redact.StoreAddress(dsn)
	switch {
	case err != nil:
		return nil, err
	case pg:
		return OpenPostgres(ctx, addr)
	}
	return OpenSQLite(ctx, addr)
}

// OpenSQLite opens (creating) a SQLite database file in WAL mode with full fsync, so that
// a committed row survives a crash.
func OpenSQLite(ctx context.Context, path string) (Store, error) {
	// The database holds wrapped keys and the inventory: readable by its owner only.
	if f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600); err == nil {
		f.Close()
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(1)", "busy_timeout(10000)"} {
		q.Add("_pragma", p)
	}
	// BEGIN IMMEDIATE: a transaction takes the write lock when it begins, waiting for it
	// under busy_timeout. A deferred one that reads and then writes fails at once with
	// SQLITE_BUSY when another process wrote in between (the busy handler cannot help a
	// stale read snapshot) — what `approval approve` hit while `serve` ran.
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("store: sqlite %s: %w", path, err)
	}
	db.SetMaxOpenConns(1) // one writer; avoids SQLITE_BUSY inside the process
	s := &sqlStore{db: db, d: dialect{name: "sqlite", bytesType: "BLOB", isUnique: func(err error) bool {
		var se *sqlite.Error
		return errors.As(err, &se) && (se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE)
	}, isBusy: func(err error) bool {
		var se *sqlite.Error
		return errors.As(err, &se) && (se.Code()&0xff == sqlite3.SQLITE_BUSY || se.Code()&0xff == sqlite3.SQLITE_LOCKED)
	}}}
	return s.start(ctx, path)
}

// OpenPostgres connects to PostgreSQL through pgx.
func OpenPostgres(ctx context.Context, dsn string) (Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: postgres: %w", redact.Error(err, redact.DSN, dsn))
	}
	s := &sqlStore{db: db, d: dialect{name: "postgres", bytesType: "BYTEA", dollar: true, isUnique: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "23505"
	}, isBusy: func(err error) bool {
		var pe *pgconn.PgError // serialization failure, deadlock detected
		return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
	}}}
	st, err := s.start(ctx, "postgres")
	return st, redact.Error(err, redact.DSN, dsn)
}

func (s *sqlStore) start(ctx context.Context, what string) (Store, error) {
	if err := s.db.PingContext(ctx); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("store: %s unreachable: %w", what, err)
	}
	if err := s.migrate(ctx); err != nil {
		s.db.Close()
		return nil, err
	}
	return s, nil
}
