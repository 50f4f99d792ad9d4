package store

import (
	"context"
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

// Sanction is a detector's action in force on a principal, shared by every gateway.
type Sanction struct {
	Principal, Action, Detector string
	Since, Until                time.Time
}

// Incidents persists incident records and sanctions.
type Incidents interface {
	// PutSanction records a sanction, replacing the principal's previous one.
	PutSanction(ctx context.Context, s Sanction) error
	// ListSanctions lists sanctions still in force at now.
	ListSanctions(ctx context.Context, now time.Time) ([]Sanction, error)
	// LiftSanction removes a principal's sanction; ErrNotFound if there is none.
	LiftSanction(ctx context.Context, principal string) error
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
	return getOne(ctx, s, scanIncident, "incident "+id, "get incident", `SELECT `+incidentCols+` FROM incidents WHERE id = ?`, id)
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

func (s *sqlStore) PutSanction(ctx context.Context, sn Sanction) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO sanctions (principal, action, detector, since, until_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (principal) DO UPDATE SET action = excluded.action, detector = excluded.detector, since = excluded.since, until_at = excluded.until_at`),
		sn.Principal, sn.Action, sn.Detector, nanos(sn.Since), nanos(sn.Until))
	if err != nil {
		return fmt.Errorf("store: put sanction: %w", err)
	}
	return nil
}

func (s *sqlStore) ListSanctions(ctx context.Context, now time.Time) ([]Sanction, error) {
	return list(ctx, s.db, s.q(`SELECT principal, action, detector, since, until_at FROM sanctions WHERE until_at > ? ORDER BY principal`), []any{nanos(now)},
		func(row interface{ Scan(...any) error }) (Sanction, error) {
			var sn Sanction
			var a, b int64
			err := row.Scan(&sn.Principal, &sn.Action, &sn.Detector, &a, &b)
			sn.Since, sn.Until = fromNanos(a), fromNanos(b)
			return sn, err
		})
}

func (s *sqlStore) LiftSanction(ctx context.Context, principal string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM sanctions WHERE principal = ?`), principal)
	if err != nil {
		return fmt.Errorf("store: lift sanction: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("sanction on %s: %w", principal, ErrNotFound)
	}
	return nil
}
