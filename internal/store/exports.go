package store

import (
	"context"
	"fmt"
	"time"
)

// Export is one licensee's fingerprinted copy of a model version (issue 17).
type Export struct {
	ID        string
	Model     string
	Version   string
	Licensee  string
	By        string // who asked for it
	SHA256    string // digest of the copy's manifest (every file's path and SHA-256)
	LogIndex  uint64 // the model.export entry in the transparency log
	CreatedAt time.Time
}

// Exports persists the record of fingerprinted copies.
type Exports interface {
	// CreateExport records a copy; ErrExists if the id is taken.
	CreateExport(ctx context.Context, e Export) error
	// ListExports lists a version's copies (every version's when version is ""), oldest first.
	ListExports(ctx context.Context, model, version string) ([]Export, error)
}

const exportCols = `id, model, version, licensee, by_whom, sha256, log_index, created_at`

func scanExport(row interface{ Scan(...any) error }) (Export, error) {
	var e Export
	var at, idx int64
	err := row.Scan(&e.ID, &e.Model, &e.Version, &e.Licensee, &e.By, &e.SHA256, &idx, &at)
	e.CreatedAt, e.LogIndex = fromNanos(at), uint64(idx)
	return e, err
}

func (s *sqlStore) CreateExport(ctx context.Context, e Export) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO exports (`+exportCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
		e.ID, e.Model, e.Version, e.Licensee, e.By, e.SHA256, int64(e.LogIndex), nanos(e.CreatedAt))
	if err != nil && s.d.isUnique(err) {
		return fmt.Errorf("export %s: %w", e.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: create export: %w", err)
	}
	return nil
}

func (s *sqlStore) ListExports(ctx context.Context, model, version string) ([]Export, error) {
	if version == "" {
		return list(ctx, s.db, s.q(`SELECT `+exportCols+` FROM exports WHERE model = ? ORDER BY created_at, id`), []any{model}, scanExport)
	}
	return list(ctx, s.db, s.q(`SELECT `+exportCols+` FROM exports WHERE model = ? AND version = ? ORDER BY created_at, id`), []any{model, version}, scanExport)
}
