package custody

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
)

// Attributes are what a join token gives the runtime that uses it.
type Attributes struct {
	Env, Region, Jurisdiction, Host string
	Owner                           string // the principal responsible for it; may not approve its releases
}

var (
	envs    = map[string]bool{"prod": true, "staging": true, "dev": true}
	tokenRE = regexp.MustCompile(`^srj_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})\.([0-9a-f]{64})$`)
)

// JoinToken is a parsed token: "srj_<id>.<secret>.<CA pin>".
type JoinToken struct {
	ID, Secret, Pin string
}

// ParseJoinToken splits and checks a token's shape.
func ParseJoinToken(s string) (JoinToken, error) {
	m := tokenRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return JoinToken{}, fmt.Errorf("%w: malformed (want srj_<id>.<secret>.<ca-pin>)", ErrJoinToken)
	}
	return JoinToken{ID: m[1], Secret: m[2], Pin: m[3]}, nil
}

func (t JoinToken) String() string { return "srj_" + t.ID + "." + t.Secret + "." + t.Pin }

func tokenHash(secret string) []byte {
	h := sha256.Sum256([]byte("strongroom/join/v1\x00" + secret))
	return h[:]
}

// CreateJoinToken makes a one-time token valid for ttl. Only its hash is stored; the token
// is shown once.
func (s *Service) CreateJoinToken(ctx context.Context, a Attributes, ttl time.Duration) (JoinToken, error) {
	if !envs[a.Env] {
		return JoinToken{}, fmt.Errorf("%w: environment %q: want prod, staging or dev", ErrBadRequest, a.Env)
	}
	if a.Owner == "" {
		return JoinToken{}, fmt.Errorf("%w: a join token needs an owner principal", ErrBadRequest)
	}
	if _, err := s.cfg.Store.GetPrincipal(ctx, a.Owner); err != nil {
		return JoinToken{}, fmt.Errorf("%w: owner: %v", ErrBadRequest, err)
	}
	if ttl <= 0 {
		ttl = time.Hour
	}
	sec := make([]byte, 32)
	rand.Read(sec)
	t := JoinToken{ID: newID(8), Secret: base64.RawURLEncoding.EncodeToString(sec), Pin: s.cfg.CA.Pin()}
	clear(sec)
	now := s.now()
	row := store.JoinToken{ID: t.ID, Hash: tokenHash(t.Secret), Env: a.Env, Region: a.Region, Jurisdiction: a.Jurisdiction, Host: a.Host,
		Owner: a.Owner, ExpiresAt: now.Add(ttl), CreatedAt: now}
	if err := s.audit(ctx, audit.Event{Kind: audit.KindRuntimeToken, Decision: audit.Allow, Subject: map[string]string{"token": t.ID}, Fields: attrFields(a)}); err != nil {
		return JoinToken{}, err
	}
	if err := s.cfg.Store.PutJoinToken(ctx, row); err != nil {
		return JoinToken{}, err
	}
	return t, nil
}

func attrFields(a Attributes) map[string]string {
	return map[string]string{"env": a.Env, "region": a.Region, "jurisdiction": a.Jurisdiction, "host": a.Host, "owner": a.Owner}
}

// Join exchanges a token for a runtime identity: the certificate of csr's key.
func (s *Service) Join(ctx context.Context, token string, csr *x509.CertificateRequest) (store.Runtime, *x509.Certificate, error) {
	t, err := ParseJoinToken(token)
	if err != nil {
		s.audit(ctx, audit.Event{Kind: audit.KindRuntimeJoin, Decision: audit.Deny, Reason: "malformed token"})
		return store.Runtime{}, nil, err
	}
	deny := func(reason string) (store.Runtime, *x509.Certificate, error) {
		if err := s.audit(ctx, audit.Event{Kind: audit.KindRuntimeJoin, Decision: audit.Deny, Reason: reason, Subject: map[string]string{"token": t.ID}}); err != nil {
			return store.Runtime{}, nil, err
		}
		return store.Runtime{}, nil, fmt.Errorf("%w: %s", ErrJoinToken, reason)
	}
	if err := csr.CheckSignature(); err != nil {
		return deny("certificate request signature invalid")
	}
	now := s.now()
	// The secret is compared (in constant time) and expiry checked before the token is
	// spent: a wrong guess, which cannot succeed against 256 bits, does not burn it for
	// its owner (its id appears in the audit log).
	errWrong, errExpired := errors.New("wrong token secret"), errors.New("token expired")
	row, err := s.cfg.Store.UseJoinToken(ctx, t.ID, now, func(row store.JoinToken) error {
		if subtle.ConstantTimeCompare(tokenHash(t.Secret), row.Hash) != 1 {
			return errWrong
		}
		if !now.Before(row.ExpiresAt) {
			return errExpired
		}
		return nil
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return deny("unknown token")
	case errors.Is(err, store.ErrConflict):
		return deny("token already used")
	case errors.Is(err, errWrong):
		return deny("wrong token secret")
	case errors.Is(err, errExpired):
		return deny("token expired at " + row.ExpiresAt.Format(time.RFC3339))
	case err != nil:
		return store.Runtime{}, nil, err
	}
	rt := store.Runtime{ID: "rt-" + newID(8), Env: row.Env, Region: row.Region, Jurisdiction: row.Jurisdiction, Host: row.Host,
		Owner: row.Owner, CreatedAt: now}
	cert, err := s.cfg.CA.IssueClient(csr.PublicKey, rt.ID, now, s.cfg.CertTTL)
	if err != nil {
		return store.Runtime{}, nil, err
	}
	rt.CertSerial, rt.CertExpires = hex.EncodeToString(cert.SerialNumber.Bytes()), cert.NotAfter.UTC()
	if err := s.cfg.Store.PutRuntime(ctx, rt); err != nil {
		return store.Runtime{}, nil, err
	}
	if err := s.audit(ctx, audit.Event{Kind: audit.KindRuntimeJoin, Decision: audit.Allow, Subject: map[string]string{"token": t.ID, "runtime": rt.ID}, Fields: attrFields(Attributes{rt.Env, rt.Region, rt.Jurisdiction, rt.Host, rt.Owner})}); err != nil {
		return store.Runtime{}, nil, err
	}
	return rt, cert, nil
}

// Authenticate maps a verified client certificate to its live runtime.
func (s *Service) Authenticate(ctx context.Context, cert *x509.Certificate) (store.Runtime, error) {
	rt, err := s.cfg.Store.GetRuntime(ctx, cert.Subject.CommonName)
	if errors.Is(err, store.ErrNotFound) {
		return rt, fmt.Errorf("%w: unknown runtime %s", ErrRuntimeRevoked, cert.Subject.CommonName)
	}
	if err != nil {
		return rt, err
	}
	if !rt.RevokedAt.IsZero() {
		return rt, fmt.Errorf("%w: %s since %s", ErrRuntimeRevoked, rt.ID, rt.RevokedAt.Format(time.RFC3339))
	}
	return rt, nil
}

// RenewCert certifies a new key (or the same) for an authenticated runtime.
func (s *Service) RenewCert(ctx context.Context, rt store.Runtime, csr *x509.CertificateRequest) (*x509.Certificate, error) {
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: certificate request signature invalid", ErrBadRequest)
	}
	now := s.now()
	cert, err := s.cfg.CA.IssueClient(csr.PublicKey, rt.ID, now, s.cfg.CertTTL)
	if err != nil {
		return nil, err
	}
	rt.CertSerial, rt.CertExpires = hex.EncodeToString(cert.SerialNumber.Bytes()), cert.NotAfter.UTC()
	if err := s.audit(ctx, audit.Event{Kind: audit.KindRuntimeCert, Decision: audit.Allow, Subject: map[string]string{"runtime": rt.ID}, Fields: map[string]string{"expires": rt.CertExpires.Format(time.RFC3339)}}); err != nil {
		return nil, err
	}
	return cert, s.cfg.Store.PutRuntime(ctx, rt)
}

// RevokeRuntime ends a runtime's identity and every lease it holds.
func (s *Service) RevokeRuntime(ctx context.Context, id, reason string) ([]store.Lease, error) {
	rt, err := s.cfg.Store.GetRuntime(ctx, id)
	if err != nil {
		return nil, err
	}
	if rt.RevokedAt.IsZero() {
		rt.RevokedAt = s.now()
		if err := s.cfg.Store.PutRuntime(ctx, rt); err != nil {
			return nil, err
		}
	}
	if err := s.audit(ctx, audit.Event{Kind: audit.KindRuntimeRevoke, Decision: audit.Allow, Reason: reason, Subject: map[string]string{"runtime": id}}); err != nil {
		return nil, err
	}
	return s.Revoke(ctx, store.LeaseQuery{Runtime: id}, "runtime revoked: "+reason)
}
