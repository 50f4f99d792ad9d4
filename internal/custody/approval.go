package custody

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
)

// ApproverRoles are the roles that may approve releases.
var ApproverRoles = []string{"custodian", "admin"}

var totpOpts = totp.ValidateOpts{Period: 30, Skew: 1, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// approvalFor returns "" when v's classification needs no approvals, the id of an approved
// request to consume, or a *PendingError (creating the request if there is none). named is
// the request the caller waits on, if any: its denial is ErrRejected and its expiry
// ErrApproval, so that a refused release ends the wait instead of filing a new request.
func (s *Service) approvalFor(ctx context.Context, kind, requester, subject string, v store.Version, named string) (string, error) {
	k := s.cfg.Approvals[v.Classification]
	if k <= 0 {
		return "", nil
	}
	now := s.now()
	if named != "" {
		r, err := s.cfg.Store.GetApproval(ctx, named)
		if errors.Is(err, store.ErrNotFound) || (err == nil && (r.Kind != kind || r.Runtime != subject || r.Model != v.Model || r.Version != v.Version)) {
			return "", fmt.Errorf("%w: approval request %s is not one for this release", ErrApproval, named)
		}
		if err != nil {
			return "", err
		}
		switch {
		case r.State == store.StateDenied:
			var by []string
			for _, a := range r.Approvals {
				if a.Decision != "approve" {
					by = append(by, a.Approver)
				}
			}
			return "", fmt.Errorf("%w: approval request %s denied by %s", ErrRejected, r.ID, strings.Join(by, ", "))
		case r.State == store.StateConsumed:
			return "", fmt.Errorf("%w: approval request %s was already used", ErrApproval, r.ID)
		case !now.Before(r.ExpiresAt):
			return "", fmt.Errorf("%w: approval request %s expired at %s", ErrApproval, r.ID, r.ExpiresAt.Format(time.RFC3339))
		case r.State == store.StateApproved:
			return r.ID, nil
		}
		return "", &PendingError{Request: r}
	}
	r, err := s.cfg.Store.FindApproval(ctx, kind, subject, v.Model, v.Version, now)
	if errors.Is(err, store.ErrNotFound) {
		r = store.ApprovalRequest{ID: "ap-" + newID(6), Kind: kind, Requester: requester, Runtime: subject, Model: v.Model, Version: v.Version,
			Needed: k, State: store.StatePending, CreatedAt: now, ExpiresAt: now.Add(s.cfg.ApprovalTTL)}
		if err := s.audit(ctx, audit.Event{Kind: audit.KindApprovalRequest, Decision: audit.Allow, Subject: map[string]string{"approval": r.ID, "model": v.Model, "version": v.Version}, Fields: map[string]string{"kind": kind, "requester": requester, "subject": subject, "needed": strconv.Itoa(k)}}); err != nil {
			return "", err
		}
		if err := s.cfg.Store.CreateApproval(ctx, r); err != nil {
			return "", err
		}
		return "", &PendingError{Request: r, Created: true}
	}
	if err != nil {
		return "", err
	}
	if r.State == store.StateApproved {
		return r.ID, nil
	}
	return "", &PendingError{Request: r}
}

// RequireApproval gates an unseal to disk by requester: nil when v needs no approvals, or
// when request id is approved for exactly this (consuming it); a *PendingError otherwise.
func (s *Service) RequireApproval(ctx context.Context, requester string, v store.Version) error {
	id, err := s.approvalFor(ctx, "unseal", requester, "principal:"+requester, v, "")
	if err != nil || id == "" {
		return err
	}
	return s.cfg.Store.ConsumeApproval(ctx, id)
}

// Approvals lists requests in state ("" for all).
func (s *Service) Approvals(ctx context.Context, state string) ([]store.ApprovalRequest, error) {
	return s.cfg.Store.ListApprovals(ctx, state)
}

// Decide records approver's decision on request id after checking a fresh TOTP code. The
// requester cannot decide their own request; only custodians and admins decide.
func (s *Service) Decide(ctx context.Context, id, approver, code string, approve bool) (store.ApprovalRequest, error) {
	return s.DecideWith(ctx, ApprovalDecision{ID: id, Approver: approver, Code: code, Approve: approve})
}

// ApprovalDecision is an approver's answer to an approval request; Justification, if any, is
// recorded with it (the console asks for one).
type ApprovalDecision struct {
	ID, Approver, Code, Justification string
	Approve                           bool
}

// DecideWith is Decide with a justification.
func (s *Service) DecideWith(ctx context.Context, d ApprovalDecision) (store.ApprovalRequest, error) {
	id, approver, code, approve := d.ID, d.Approver, d.Code, d.Approve
	decision, kind := "deny", audit.KindApprovalDeny
	if approve {
		decision, kind = "approve", audit.KindApprovalApprove
	}
	subject := map[string]string{"approval": id, "approver": approver}
	refuse := func(reason string) (store.ApprovalRequest, error) {
		if err := s.audit(ctx, audit.Event{Kind: kind, Decision: audit.Deny, Reason: reason, Subject: subject}); err != nil {
			return store.ApprovalRequest{}, err
		}
		return store.ApprovalRequest{}, fmt.Errorf("%w: %s", ErrApproval, reason)
	}
	r, err := s.cfg.Store.GetApproval(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return refuse("no such approval request")
	}
	if err != nil {
		return r, err
	}
	subject["model"], subject["version"] = r.Model, r.Version
	now := s.now()
	switch {
	case approver == r.Requester:
		return refuse("the requester cannot approve their own request")
	case r.State != store.StatePending:
		return refuse("request is " + r.State)
	case !now.Before(r.ExpiresAt):
		return refuse("request expired at " + r.ExpiresAt.Format(time.RFC3339))
	}
	p, err := s.cfg.Store.GetPrincipal(ctx, approver)
	if errors.Is(err, store.ErrNotFound) {
		return refuse("unknown approver")
	}
	if err != nil {
		return r, err
	}
	if !slices.ContainsFunc(p.Roles, func(role string) bool { return slices.Contains(ApproverRoles, role) }) || p.Screening != "clear" {
		return refuse("approver lacks the custodian or admin role, or is not cleared by screening")
	}
	if err := s.checkTOTP(ctx, approver, code, now); err != nil {
		return refuse(err.Error())
	}
	fields := map[string]string{"requester": r.Requester, "kind": r.Kind}
	if d.Justification != "" {
		fields["justification"] = d.Justification
	}
	if err := s.audit(ctx, audit.Event{Kind: kind, Decision: audit.Allow, Subject: subject, Fields: fields}); err != nil {
		return r, err
	}
	out, err := s.cfg.Store.Decide(ctx, id, store.Approval{Approver: approver, Decision: decision, At: now})
	if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrConflict) {
		return out, fmt.Errorf("%w: %v", ErrApproval, err)
	}
	return out, err
}

// EnrollTOTP creates (or replaces) principal's TOTP secret, sealed under a fresh data key,
// and returns its otpauth:// URL, to be shown once.
func (s *Service) EnrollTOTP(ctx context.Context, principal string) (string, error) {
	if _, err := s.cfg.Store.GetPrincipal(ctx, principal); err != nil {
		return "", err
	}
	key, err := totp.Generate(totp.GenerateOpts{Issuer: "Strongroom", AccountName: principal, Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		return "", err
	}
	id, dek, err := s.cfg.Keys.NewKey(ctx, store.PurposeFile)
	if err != nil {
		return "", err
	}
	defer clear(dek)
	sealed, err := gcmSeal(dek, []byte(key.Secret()), totpAAD(principal))
	if err != nil {
		return "", err
	}
	if err := s.audit(ctx, audit.Event{Kind: audit.KindPrincipalTOTP, Decision: audit.Allow, Reason: "enrolled", Subject: map[string]string{"principal": principal}}); err != nil {
		return "", err
	}
	if err := s.cfg.Store.PutTOTP(ctx, store.TOTP{Principal: principal, KeyID: hex.EncodeToString(id[:]), Sealed: sealed}); err != nil {
		return "", err
	}
	return key.URL(), nil
}

func totpAAD(principal string) []byte { return []byte("strongroom/totp/v1\x00" + principal) }

// VerifyTOTP checks principal's TOTP code (each 30-second step accepted once): the console's
// second factor at sign-in and its step-up before destructive actions.
func (s *Service) VerifyTOTP(ctx context.Context, principal, code string) error {
	return s.checkTOTP(ctx, principal, code, s.now())
}

// checkTOTP accepts a code of the current, previous or next 30-second step, once.
func (s *Service) checkTOTP(ctx context.Context, principal, code string, now time.Time) error {
	t, err := s.cfg.Store.GetTOTP(ctx, principal)
	if errors.Is(err, store.ErrNotFound) {
		return errors.New("approver has no TOTP enrolled (strongroom principal totp)")
	}
	if err != nil {
		return err
	}
	dek, err := s.cfg.Keys.Key(ctx, t.KeyID)
	if err != nil {
		return err
	}
	secret, err := gcmOpen(dek, t.Sealed, totpAAD(principal))
	clear(dek)
	if err != nil {
		return fmt.Errorf("TOTP secret of %s does not open: %v", principal, err)
	}
	defer clear(secret)
	step := now.Unix() / 30
	for _, st := range []int64{step - 1, step, step + 1} {
		want, err := totp.GenerateCodeCustom(string(secret), time.Unix(st*30, 0), totpOpts)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			if err := s.cfg.Store.UseTOTPStep(ctx, principal, st); err != nil {
				return errors.New("TOTP code already used")
			}
			return nil
		}
	}
	return errors.New("wrong TOTP code")
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func gcmSeal(key, plain, aad []byte) ([]byte, error) {
	g, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	n := make([]byte, g.NonceSize())
	rand.Read(n)
	return g.Seal(n, n, plain, aad), nil
}

func gcmOpen(key, sealed, aad []byte) ([]byte, error) {
	g, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < g.NonceSize() {
		return nil, errors.New("sealed secret too short")
	}
	return g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], aad)
}
