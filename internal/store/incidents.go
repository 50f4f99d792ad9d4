package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Incident is what an alert opens: who, which detector, the action taken, and the audit-log
// entries that are its evidence.
type Incident struct {
	ID        string
	Principal string
	Detector  string
	Action    string
	Score     float64
	Summary   string
	Evidence  []uint64 // audit-log indices: the alert, the action, the principal's recent requests
	State     string   // "open" or "closed"
	OpenedAt  time.Time
	ClosedAt  time.Time
	Note      string // why it was closed
}

// Incidents persists incident records.
type Incidents interface {
	CreateIncident(ctx context.Context, in Incident) error
	GetIncident(ctx context.Context, id string) (Incident, error)
	// ListIncidents lists incidents in state ("" for all), newest first.
	ListIncidents(ctx context.Context, state string) ([]Incident, error)
	// CloseIncident closes an open incident; ErrConflict if it is not open.
	CloseIncident(ctx context.Context, id string, at time.Time, note string) error
}

const incidentCols = `id, principal, detector, action, score, summary, evidence, state, opened_at, closed_at, note`

func joinIdx(xs []uint64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatUint(x, 10)
	}
	return strings.Join(parts, ",")
}

func scanIncident(row interface{ Scan(...any) error }) (Incident, error) {
	var in Incident
	var ev string
	var o, c int64
	err := row.Scan(&in.ID, &in.Principal, &in.Detector, &in.Action, &in.Score, &in.Summary, &ev, &in.State, &o, &c, &in.Note)
	in.OpenedAt, in.ClosedAt = fromNanos(o), fromNanos(c)
	for _, p := range splitList(ev) {
		if n, perr := strconv.ParseUint(p, 10, 64); perr == nil {
			in.Evidence = append(in.Evidence, n)
		}
	}
	return in, err
}

func (s *sqlStore) CreateIncident(ctx context.Context, in Incident) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO incidents (`+incidentCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		in.ID, in.Principal, in.Detector, in.Action, in.Score, in.Summary, joinIdx(in.Evidence), in.State, nanos(in.OpenedAt), nanos(in.ClosedAt), in.Note)
	if err != nil && s.d.isUnique(err) {
		return fmt.Errorf("incident %s: %w", in.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: create incident: %w", err)
	}
	return nil
}

func (s *sqlStore) GetIncident(ctx context.Context, id string) (Incident, error) {
	in, err := scanIncident(s.db.QueryRowContext(ctx, s.q(`SELECT `+incidentCols+` FROM incidents WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return in, fmt.Errorf("incident %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return in, fmt.Errorf("store: get incident: %w", err)
	}
	return in, nil
}

func (s *sqlStore) ListIncidents(ctx context.Context, state string) ([]Incident, error) {
	if state == "" {
		return list(ctx, s.db, `SELECT `+incidentCols+` FROM incidents ORDER BY opened_at DESC, id`, nil, scanIncident)
	}
	return list(ctx, s.db, s.q(`SELECT `+incidentCols+` FROM incidents WHERE state = ? ORDER BY opened_at DESC, id`), []any{state}, scanIncident)
}

func (s *sqlStore) CloseIncident(ctx context.Context, id string, at time.Time, note string) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE incidents SET state = 'closed', closed_at = ?, note = ? WHERE id = ? AND state = 'open'`), nanos(at), note, id)
	if err != nil {
		return fmt.Errorf("store: close incident: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := s.GetIncident(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("incident %s is not open: %w", id, ErrConflict)
	}
	return nil
}
