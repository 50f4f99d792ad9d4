package store

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// More sentinels for custody state.
var (
	// ErrConflict is a state change that is no longer possible: a used join token, a revoked
	// lease renewed, an approval request no longer pending, a TOTP step already used.
	ErrConflict = errors.New("conflict")
	// ErrOverBudget is an egress charge that would pass a daily budget.
	ErrOverBudget = errors.New("over budget")
)

// Runtime is an inference runtime that joined with a token and holds a certificate.
type Runtime struct {
	ID           string    `json:"id"`
	Env          string    `json:"env"`
	Region       string    `json:"region"`
	Jurisdiction string    `json:"jurisdiction"`
	Host         string    `json:"host"`
	Owner        string    `json:"owner"` // principal who created its join token
	CertSerial   string    `json:"cert_serial"`
	CertExpires  time.Time `json:"cert_expires"`
	CreatedAt    time.Time `json:"created_at"`
	RevokedAt    time.Time `json:"revoked_at"`
}

// JoinToken is a one-time token, stored as the SHA-256 of its secret, that names the
// attributes the runtime joining with it gets.
type JoinToken struct {
	ID                              string
	Hash                            []byte
	Env, Region, Jurisdiction, Host string
	Owner                           string
	ExpiresAt, UsedAt, CreatedAt    time.Time
}

// Lease is a release of a model version's key to a runtime.
type Lease struct {
	ID          string    `json:"id"`
	Runtime     string    `json:"runtime"`
	Model       string    `json:"model"`
	Version     string    `json:"version"`
	KeyID       string    `json:"key_id"`
	Attestation string    `json:"attestation"` // verifier type and measurement, e.g. "sev-snp:ab12…"
	Bytes       int64     `json:"bytes"`       // sealed bytes the lease unlocks (its egress charge)
	GrantedAt   time.Time `json:"granted_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	RevokedAt   time.Time `json:"revoked_at"`
	Reason      string    `json:"reason"`  // why it was revoked
	SeenAt      time.Time `json:"seen_at"` // when the runtime holding it was last heard from
}

// LeaseQuery selects leases; empty fields match everything.
type LeaseQuery struct {
	Lease, Runtime, Model, Version string
	Leases                         []string  // non-empty: only these leases (ids)
	LiveAt                         time.Time // non-zero: only leases unrevoked and unexpired at this time
	RevokedAfter                   time.Time // non-zero: only leases revoked after this time
	ExpiredBy                      time.Time // non-zero: only leases expired at this time
	SeenBefore                     time.Time // non-zero: only leases whose runtime was last heard from before this time
}

// Empty reports whether q selects every lease.
func (q LeaseQuery) Empty() bool {
	return q.Lease == "" && q.Runtime == "" && q.Model == "" && q.Version == "" && len(q.Leases) == 0 &&
		q.LiveAt.IsZero() && q.RevokedAfter.IsZero() && q.ExpiredBy.IsZero() && q.SeenBefore.IsZero()
}

// ApprovalRequest asks k distinct approvers to allow a release (a lease or an unseal).
type ApprovalRequest struct {
	ID        string     `json:"id"`
	Kind      string     `json:"kind"` // "lease" or "unseal"
	Requester string     `json:"requester"`
	Runtime   string     `json:"runtime"`
	Model     string     `json:"model"`
	Version   string     `json:"version"`
	Needed    int        `json:"needed"`
	State     string     `json:"state"` // pending, approved, denied, consumed
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	Approvals []Approval `json:"approvals"`
}

// Approval is one approver's decision on a request.
type Approval struct {
	Approver string    `json:"approver"`
	Decision string    `json:"decision"` // "approve" or "deny"
	At       time.Time `json:"at"`
}

// Approval request states.
const (
	StatePending  = "pending"
	StateApproved = "approved"
	StateDenied   = "denied"
	StateConsumed = "consumed"
)

// TOTP is a principal's enrolled TOTP secret, sealed under a data key.
type TOTP struct {
	Principal, KeyID string
	Sealed           []byte
	LastStep         int64 // highest time step accepted, so a code works once
}

// Custody is the persistence of runtimes, leases, approvals and egress budgets.
type Custody interface {
	PutRuntime(ctx context.Context, r Runtime) error // insert or replace
	GetRuntime(ctx context.Context, id string) (Runtime, error)
	ListRuntimes(ctx context.Context) ([]Runtime, error)

	PutJoinToken(ctx context.Context, t JoinToken) error
	// UseJoinToken marks the token used at now and returns it, if check accepts it (the
	// caller compares the secret and checks expiry); ErrConflict if it was used. A token
	// that check refuses stays unused, and check's error is returned.
	UseJoinToken(ctx context.Context, id string, now time.Time, check func(JoinToken) error) (JoinToken, error)

	PutLease(ctx context.Context, l Lease) error
	GetLease(ctx context.Context, id string) (Lease, error)
	ListLeases(ctx context.Context, q LeaseQuery) ([]Lease, error)
	// ExtendLease moves a live lease's expiry; ErrConflict if it was revoked.
	ExtendLease(ctx context.Context, id string, expires time.Time) error
	// RevokeLeases revokes every unrevoked lease q matches and returns them.
	RevokeLeases(ctx context.Context, q LeaseQuery, at time.Time, reason string) ([]Lease, error)
	// WatchLease records that lease id's watch stream was (re)connected at `at` and returns
	// the connection's sequence number; ErrNotFound for an unknown lease.
	WatchLease(ctx context.Context, id string, at time.Time) (int64, error)
	// TouchLeases records that the runtimes holding the unrevoked leases ids were heard
	// from at `at` (never moving a lease's time back).
	TouchLeases(ctx context.Context, ids []string, at time.Time) error
	// EndUnwatchedLease revokes lease id only if no watch stream connected after
	// connection seq (the one that dropped) and it is unrevoked; ok reports whether it did.
	EndUnwatchedLease(ctx context.Context, id string, seq int64, at time.Time, reason string) (l Lease, ok bool, err error)

	CreateApproval(ctx context.Context, r ApprovalRequest) error
	GetApproval(ctx context.Context, id string) (ApprovalRequest, error)
	// FindApproval returns the newest pending or approved, unexpired request for a release.
	FindApproval(ctx context.Context, kind, runtime, model, version string, now time.Time) (ApprovalRequest, error)
	ListApprovals(ctx context.Context, state string) ([]ApprovalRequest, error)
	// Decide adds one approver's decision to a pending request and moves it to approved
	// (enough approvals) or denied (any denial) in the same transaction; ErrExists if the
	// approver already decided, ErrConflict if the request is not pending.
	Decide(ctx context.Context, id string, a Approval) (ApprovalRequest, error)
	// ConsumeApproval moves an approved request to consumed; ErrConflict unless approved.
	ConsumeApproval(ctx context.Context, id string) error

	PutTOTP(ctx context.Context, t TOTP) error
	GetTOTP(ctx context.Context, principal string) (TOTP, error)
	// UseTOTPStep records step as used; ErrConflict if it is not above the last one used.
	UseTOTPStep(ctx context.Context, principal string, step int64) error

	// IssueNonce stores a single-use attestation challenge for runtime, valid until
	// expires; expired nonces (anyone's) are dropped, and the runtime's oldest beyond max
	// are retired, so that no runtime can grow the table.
	IssueNonce(ctx context.Context, runtime string, nonce []byte, now, expires time.Time, max int) error
	// TakeNonce consumes a nonce: true only if it was issued to runtime and is unexpired at
	// now. A nonce is gone after the first take, whoever presents it.
	TakeNonce(ctx context.Context, runtime string, nonce []byte, now time.Time) (bool, error)

	// ChargeEgress adds n bytes to runtime's and to the total count of day, unless either
	// would pass its budget (0: unlimited): then nothing is charged and ErrOverBudget.
	ChargeEgress(ctx context.Context, day, runtime string, n, perRuntime, total int64) error

	SetVersionDisabled(ctx context.Context, model, version string, at time.Time) error
}

const runtimeCols = `id, env, region, jurisdiction, host, owner, cert_serial, cert_expires, created_at, revoked_at`

func scanRuntime(row interface{ Scan(...any) error }) (Runtime, error) {
	var r Runtime
	var exp, ts, rev int64
	err := row.Scan(&r.ID, &r.Env, &r.Region, &r.Jurisdiction, &r.Host, &r.Owner, &r.CertSerial, &exp, &ts, &rev)
	r.CertExpires, r.CreatedAt, r.RevokedAt = fromNanos(exp), fromNanos(ts), fromNanos(rev)
	return r, err
}

func (s *sqlStore) PutRuntime(ctx context.Context, r Runtime) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO runtimes (`+runtimeCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET env = excluded.env, region = excluded.region, jurisdiction = excluded.jurisdiction,
		host = excluded.host, owner = excluded.owner, cert_serial = excluded.cert_serial, cert_expires = excluded.cert_expires,
		revoked_at = excluded.revoked_at`),
		r.ID, r.Env, r.Region, r.Jurisdiction, r.Host, r.Owner, r.CertSerial, nanos(r.CertExpires), nanos(r.CreatedAt), nanos(r.RevokedAt))
	if err != nil {
		return fmt.Errorf("store: put runtime: %w", err)
	}
	return nil
}

func (s *sqlStore) GetRuntime(ctx context.Context, id string) (Runtime, error) {
	return getOne(ctx, s, scanRuntime, "runtime "+id, "get runtime", `SELECT `+runtimeCols+` FROM runtimes WHERE id = ?`, id)
}

func (s *sqlStore) ListRuntimes(ctx context.Context) ([]Runtime, error) {
	return list(ctx, s.db, `SELECT `+runtimeCols+` FROM runtimes ORDER BY created_at, id`, nil, scanRuntime)
}

// list runs a query and scans every row.
func list[T any](ctx context.Context, db querier, query string, args []any, scan func(interface{ Scan(...any) error }) (T, error)) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

const tokenCols = `id, hash, env, region, jurisdiction, host, owner, expires_at, used_at, created_at`

func (s *sqlStore) PutJoinToken(ctx context.Context, t JoinToken) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO join_tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		t.ID, t.Hash, t.Env, t.Region, t.Jurisdiction, t.Host, t.Owner, nanos(t.ExpiresAt), nanos(t.UsedAt), nanos(t.CreatedAt))
	if err != nil && s.d.isUnique(err) {
		return fmt.Errorf("join token %s: %w", t.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: put join token: %w", err)
	}
	return nil
}

func (s *sqlStore) UseJoinToken(ctx context.Context, id string, now time.Time, check func(JoinToken) error) (JoinToken, error) {
	var t JoinToken
	var exp, used, ts int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT `+tokenCols+` FROM join_tokens WHERE id = ?`), id).
		Scan(&t.ID, &t.Hash, &t.Env, &t.Region, &t.Jurisdiction, &t.Host, &t.Owner, &exp, &used, &ts)
	if errors.Is(err, sql.ErrNoRows) {
		return t, fmt.Errorf("join token %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return t, fmt.Errorf("store: join token: %w", err)
	}
	t.ExpiresAt, t.UsedAt, t.CreatedAt = fromNanos(exp), fromNanos(used), fromNanos(ts)
	if used != 0 {
		return t, fmt.Errorf("join token %s: already used: %w", id, ErrConflict)
	}
	if err := check(t); err != nil {
		return t, err
	}
	// The conditional update is what makes the token single-use under concurrency.
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE join_tokens SET used_at = ? WHERE id = ? AND used_at = 0`), nanos(now), id)
	if err != nil {
		return t, fmt.Errorf("store: use join token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return t, fmt.Errorf("join token %s: already used: %w", id, ErrConflict)
	}
	t.UsedAt = now
	return t, nil
}

const leaseCols = `id, runtime, model, version, key_id, attestation, bytes, granted_at, expires_at, revoked_at, reason, seen_at`

func scanLease(row interface{ Scan(...any) error }) (Lease, error) {
	var l Lease
	var g, e, r, seen int64
	err := row.Scan(&l.ID, &l.Runtime, &l.Model, &l.Version, &l.KeyID, &l.Attestation, &l.Bytes, &g, &e, &r, &l.Reason, &seen)
	l.GrantedAt, l.ExpiresAt, l.RevokedAt, l.SeenAt = fromNanos(g), fromNanos(e), fromNanos(r), fromNanos(seen)
	return l, err
}

func (s *sqlStore) PutLease(ctx context.Context, l Lease) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO leases (`+leaseCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		l.ID, l.Runtime, l.Model, l.Version, l.KeyID, l.Attestation, l.Bytes, nanos(l.GrantedAt), nanos(l.ExpiresAt), nanos(l.RevokedAt), l.Reason, nanos(l.SeenAt))
	if err != nil && s.d.isUnique(err) {
		return fmt.Errorf("lease %s: %w", l.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: put lease: %w", err)
	}
	return nil
}

func (s *sqlStore) GetLease(ctx context.Context, id string) (Lease, error) {
	return getOne(ctx, s, scanLease, "lease "+id, "get lease", `SELECT `+leaseCols+` FROM leases WHERE id = ?`, id)
}

func leaseWhere(q LeaseQuery) (string, []any) {
	where, args := []string{"1 = 1"}, []any{}
	for _, c := range []struct{ col, v string }{{"id", q.Lease}, {"runtime", q.Runtime}, {"model", q.Model}, {"version", q.Version}} {
		if c.v != "" {
			where, args = append(where, c.col+" = ?"), append(args, c.v)
		}
	}
	if n := len(q.Leases); n > 0 {
		// The list is padded (its last id repeated) to a power of two: the statement is
		// prepared once per length, and few lengths are used (ListLeases takes at most
		// maxLeaseIDs a query).
		width := 1
		for width < n {
			width *= 2
		}
		where = append(where, "id IN (?"+strings.Repeat(", ?", width-1)+")")
		for i := range width {
			args = append(args, q.Leases[min(i, n-1)])
		}
	}
	if !q.LiveAt.IsZero() {
		where, args = append(where, "revoked_at = 0 AND expires_at > ?"), append(args, q.LiveAt.UnixNano())
	}
	if !q.RevokedAfter.IsZero() {
		where, args = append(where, "revoked_at > ?"), append(args, q.RevokedAfter.UnixNano())
	}
	if !q.ExpiredBy.IsZero() {
		where, args = append(where, "expires_at <= ?"), append(args, q.ExpiredBy.UnixNano())
	}
	if !q.SeenBefore.IsZero() {
		where, args = append(where, "seen_at < ?"), append(args, q.SeenBefore.UnixNano())
	}
	return strings.Join(where, " AND "), args
}

// maxLeaseIDs is the most lease ids one query of ListLeases names (LeaseQuery.Leases).
const maxLeaseIDs = 64

func (s *sqlStore) ListLeases(ctx context.Context, q LeaseQuery) ([]Lease, error) {
	if len(q.Leases) > maxLeaseIDs {
		var out []Lease
		ids := q.Leases
		for len(ids) > 0 {
			q.Leases = ids[:min(len(ids), maxLeaseIDs)]
			ids = ids[len(q.Leases):]
			ls, err := s.ListLeases(ctx, q)
			if err != nil {
				return nil, err
			}
			out = append(out, ls...)
		}
		slices.SortFunc(out, func(a, b Lease) int {
			return cmp.Or(a.GrantedAt.Compare(b.GrantedAt), strings.Compare(a.ID, b.ID))
		})
		return slices.CompactFunc(out, func(a, b Lease) bool { return a.ID == b.ID }), nil
	}
	where, args := leaseWhere(q)
	return list(ctx, s.polled(), s.q(`SELECT `+leaseCols+` FROM leases WHERE `+where+` ORDER BY granted_at, id`), args, scanLease)
}

func (s *sqlStore) ExtendLease(ctx context.Context, id string, expires time.Time) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE leases SET expires_at = ? WHERE id = ? AND revoked_at = 0`), nanos(expires), id)
	if err != nil {
		return fmt.Errorf("store: extend lease: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := s.GetLease(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("lease %s: revoked: %w", id, ErrConflict)
	}
	return nil
}

func (s *sqlStore) RevokeLeases(ctx context.Context, q LeaseQuery, at time.Time, reason string) ([]Lease, error) {
	var out []Lease
	err := s.tx(ctx, func(tx *sql.Tx) error {
		where, args := leaseWhere(q)
		where += " AND revoked_at = 0"
		var err error
		if out, err = list(ctx, tx, s.q(`SELECT `+leaseCols+` FROM leases WHERE `+where+` ORDER BY granted_at, id`), args, scanLease); err != nil {
			return err
		}
		for i := range out {
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE leases SET revoked_at = ?, reason = ? WHERE id = ? AND revoked_at = 0`), nanos(at), reason, out[i].ID); err != nil {
				return err
			}
			out[i].RevokedAt, out[i].Reason = at.UTC(), reason
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: revoke leases: %w", err)
	}
	return out, nil
}

func (s *sqlStore) WatchLease(ctx context.Context, id string, at time.Time) (int64, error) {
	var seq int64
	err := s.db.QueryRowContext(ctx, s.q(`UPDATE leases SET watch_seq = watch_seq + 1,
		seen_at = CASE WHEN seen_at < ? THEN ? ELSE seen_at END WHERE id = ? RETURNING watch_seq`), nanos(at), nanos(at), id).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("lease %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("store: watch lease: %w", err)
	}
	return seq, nil
}

func (s *sqlStore) TouchLeases(ctx context.Context, ids []string, at time.Time) error {
	for len(ids) > 0 {
		n := min(len(ids), 500)
		args := []any{nanos(at)}
		for _, id := range ids[:n] {
			args = append(args, id)
		}
		args = append(args, nanos(at))
		_, err := s.db.ExecContext(ctx, s.q(`UPDATE leases SET seen_at = ? WHERE id IN (?`+strings.Repeat(", ?", n-1)+`) AND revoked_at = 0 AND seen_at < ?`), args...)
		if err != nil {
			return fmt.Errorf("store: touch leases: %w", err)
		}
		ids = ids[n:]
	}
	return nil
}

func (s *sqlStore) EndUnwatchedLease(ctx context.Context, id string, seq int64, at time.Time, reason string) (Lease, bool, error) {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE leases SET revoked_at = ?, reason = ? WHERE id = ? AND revoked_at = 0 AND watch_seq = ?`),
		nanos(at), reason, id, seq)
	if err != nil {
		return Lease{}, false, fmt.Errorf("store: end lease: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Lease{}, false, nil
	}
	l, err := s.GetLease(ctx, id)
	return l, err == nil, err
}

const approvalCols = `id, kind, requester, runtime, model, version, needed, state, created_at, expires_at`

func scanApproval(row interface{ Scan(...any) error }) (ApprovalRequest, error) {
	var r ApprovalRequest
	var c, e int64
	err := row.Scan(&r.ID, &r.Kind, &r.Requester, &r.Runtime, &r.Model, &r.Version, &r.Needed, &r.State, &c, &e)
	r.CreatedAt, r.ExpiresAt = fromNanos(c), fromNanos(e)
	return r, err
}

func (s *sqlStore) CreateApproval(ctx context.Context, r ApprovalRequest) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO approval_requests (`+approvalCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		r.ID, r.Kind, r.Requester, r.Runtime, r.Model, r.Version, r.Needed, r.State, nanos(r.CreatedAt), nanos(r.ExpiresAt))
	if err != nil && s.d.isUnique(err) {
		return fmt.Errorf("approval request %s: %w", r.ID, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("store: create approval request: %w", err)
	}
	return nil
}

func (s *sqlStore) withApprovals(ctx context.Context, db querier, rs []ApprovalRequest) ([]ApprovalRequest, error) {
	for i := range rs {
		as, err := list(ctx, db, s.q(`SELECT approver, decision, at FROM approvals WHERE request_id = ? ORDER BY at, approver`), []any{rs[i].ID},
			func(row interface{ Scan(...any) error }) (Approval, error) {
				var a Approval
				var at int64
				err := row.Scan(&a.Approver, &a.Decision, &at)
				a.At = fromNanos(at)
				return a, err
			})
		if err != nil {
			return nil, err
		}
		rs[i].Approvals = as
	}
	return rs, nil
}

func (s *sqlStore) approvals(ctx context.Context, db querier, where string, args ...any) ([]ApprovalRequest, error) {
	rs, err := list(ctx, db, s.q(`SELECT `+approvalCols+` FROM approval_requests `+where), args, scanApproval)
	if err != nil {
		return nil, err
	}
	return s.withApprovals(ctx, db, rs)
}

func (s *sqlStore) GetApproval(ctx context.Context, id string) (ApprovalRequest, error) {
	rs, err := s.approvals(ctx, s.db, `WHERE id = ?`, id)
	if err != nil {
		return ApprovalRequest{}, err
	}
	if len(rs) == 0 {
		return ApprovalRequest{}, fmt.Errorf("approval request %s: %w", id, ErrNotFound)
	}
	return rs[0], nil
}

func (s *sqlStore) FindApproval(ctx context.Context, kind, runtime, model, version string, now time.Time) (ApprovalRequest, error) {
	rs, err := s.approvals(ctx, s.db, `WHERE kind = ? AND runtime = ? AND model = ? AND version = ? AND state IN ('pending', 'approved') AND expires_at > ?
		ORDER BY created_at DESC, id LIMIT 1`, kind, runtime, model, version, now.UnixNano())
	if err != nil {
		return ApprovalRequest{}, err
	}
	if len(rs) == 0 {
		return ApprovalRequest{}, fmt.Errorf("approval request for %s %s:%s: %w", kind, model, version, ErrNotFound)
	}
	return rs[0], nil
}

func (s *sqlStore) ListApprovals(ctx context.Context, state string) ([]ApprovalRequest, error) {
	if state == "" {
		return s.approvals(ctx, s.db, `ORDER BY created_at, id`)
	}
	return s.approvals(ctx, s.db, `WHERE state = ? ORDER BY created_at, id`, state)
}

func (s *sqlStore) Decide(ctx context.Context, id string, a Approval) (ApprovalRequest, error) {
	var out ApprovalRequest
	err := s.tx(ctx, func(tx *sql.Tx) error {
		rs, err := s.approvals(ctx, tx, `WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if len(rs) == 0 {
			return fmt.Errorf("approval request %s: %w", id, ErrNotFound)
		}
		r := rs[0]
		if r.State != StatePending {
			return fmt.Errorf("approval request %s is %s: %w", id, r.State, ErrConflict)
		}
		for _, prev := range r.Approvals {
			if prev.Approver == a.Approver {
				return fmt.Errorf("approval request %s: %s already decided: %w", id, a.Approver, ErrExists)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO approvals (request_id, approver, decision, at) VALUES (?, ?, ?, ?)`),
			id, a.Approver, a.Decision, nanos(a.At)); err != nil {
			return err
		}
		r.Approvals = append(r.Approvals, a)
		approved := 0
		for _, x := range r.Approvals {
			if x.Decision == "approve" {
				approved++
			}
		}
		switch {
		case a.Decision != "approve":
			r.State = StateDenied
		case approved >= r.Needed:
			r.State = StateApproved
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE approval_requests SET state = ? WHERE id = ?`), r.State, id); err != nil {
			return err
		}
		out = r
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) || errors.Is(err, ErrExists) {
			return out, err
		}
		return out, fmt.Errorf("store: decide: %w", err)
	}
	return out, nil
}

func (s *sqlStore) ConsumeApproval(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE approval_requests SET state = ? WHERE id = ? AND state = ?`), StateConsumed, id, StateApproved)
	if err != nil {
		return fmt.Errorf("store: consume approval: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("approval request %s is not approved: %w", id, ErrConflict)
	}
	return nil
}

func (s *sqlStore) PutTOTP(ctx context.Context, t TOTP) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO totp (principal, key_id, sealed, last_step) VALUES (?, ?, ?, ?)
		ON CONFLICT (principal) DO UPDATE SET key_id = excluded.key_id, sealed = excluded.sealed, last_step = excluded.last_step`),
		t.Principal, t.KeyID, t.Sealed, t.LastStep)
	if err != nil {
		return fmt.Errorf("store: put totp: %w", err)
	}
	return nil
}

func (s *sqlStore) GetTOTP(ctx context.Context, principal string) (TOTP, error) {
	return getOne(ctx, s, func(row interface{ Scan(...any) error }) (TOTP, error) {
		var t TOTP
		return t, row.Scan(&t.Principal, &t.KeyID, &t.Sealed, &t.LastStep)
	}, "totp for "+principal, "get totp", `SELECT principal, key_id, sealed, last_step FROM totp WHERE principal = ?`, principal)
}

func (s *sqlStore) UseTOTPStep(ctx context.Context, principal string, step int64) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE totp SET last_step = ? WHERE principal = ? AND last_step < ?`), step, principal, step)
	if err != nil {
		return fmt.Errorf("store: use totp step: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("totp for %s: code already used: %w", principal, ErrConflict)
	}
	return nil
}

func (s *sqlStore) IssueNonce(ctx context.Context, runtime string, nonce []byte, now, expires time.Time, max int) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM custody_nonces WHERE expires_at <= ?`), now.UnixNano()); err != nil {
			return err
		}
		// seq orders a runtime's nonces (clocks tie); two issues racing on PostgreSQL may
		// share one, and the tie is broken by the nonce bytes.
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO custody_nonces (nonce, runtime, seq, expires_at)
			SELECT ?, ?, COALESCE(MAX(seq), 0) + 1, ? FROM custody_nonces WHERE runtime = ?`),
			nonce, runtime, expires.UnixNano(), runtime); err != nil {
			return err
		}
		// Keep the runtime's newest max.
		_, err := tx.ExecContext(ctx, s.q(`DELETE FROM custody_nonces WHERE runtime = ? AND nonce NOT IN (
			SELECT nonce FROM custody_nonces WHERE runtime = ? ORDER BY seq DESC, nonce DESC LIMIT ?)`), runtime, runtime, max)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: issue nonce: %w", err)
	}
	return nil
}

func (s *sqlStore) TakeNonce(ctx context.Context, runtime string, nonce []byte, now time.Time) (bool, error) {
	// One statement removes the nonce and says whose it was: of two takes racing, only the
	// one whose DELETE removed the row sees it.
	var owner string
	var expires int64
	err := s.db.QueryRowContext(ctx, s.q(`DELETE FROM custody_nonces WHERE nonce = ? RETURNING runtime, expires_at`), nonce).Scan(&owner, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: take nonce: %w", err)
	}
	return owner == runtime && now.UnixNano() < expires, nil
}

// TotalEgress is the runtime name under which a day's total is counted.
const TotalEgress = "*"

func (s *sqlStore) ChargeEgress(ctx context.Context, day, runtime string, n, perRuntime, total int64) error {
	over := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for _, c := range []struct {
			who    string
			budget int64
		}{{runtime, perRuntime}, {TotalEgress, total}} {
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO egress (day, runtime, bytes) VALUES (?, ?, 0) ON CONFLICT (day, runtime) DO NOTHING`), day, c.who); err != nil {
				return err
			}
			// The conditional update locks the row (PostgreSQL) or the database (SQLite), so
			// concurrent charges cannot pass the budget together.
			budget := c.budget
			if budget <= 0 {
				budget = 1<<63 - 1
			}
			res, err := tx.ExecContext(ctx, s.q(`UPDATE egress SET bytes = bytes + ? WHERE day = ? AND runtime = ? AND bytes <= ?`), n, day, c.who, budget-n)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k == 0 {
				over = true
				return ErrOverBudget
			}
		}
		return nil
	})
	if over {
		return fmt.Errorf("egress of %s on %s: %w", runtime, day, ErrOverBudget)
	}
	if err != nil {
		return fmt.Errorf("store: charge egress: %w", err)
	}
	return nil
}

func (s *sqlStore) SetVersionDisabled(ctx context.Context, model, version string, at time.Time) error {
	for _, table := range []string{"versions", "external_models"} {
		res, err := s.db.ExecContext(ctx, s.q(`UPDATE `+table+` SET disabled_at = ? WHERE model = ? AND version = ?`), nanos(at), model, version)
		if err != nil {
			return fmt.Errorf("store: disable version: %w", err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			return nil
		}
	}
	return fmt.Errorf("model %s:%s: %w", model, version, ErrNotFound)
}
