// Package custody releases a model version's data key only to a runtime that holds a lease:
// decided by policy, sealed to the runtime's ephemeral key with HPKE (RFC 9180), short-lived,
// renewable while policy still agrees, revocable by lease, runtime or model, and on the record.
//
// This is the first slice of the custody issue: leases and key release. Not built yet:
// runtime join and certificates, attestation verification, k-of-n approvals, egress budgets,
// persistence of leases (they live in memory), the launcher and its revocation watch.
package custody

import (
	"context"
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Errors callers act on.
var (
	ErrDenied  = errors.New("lease denied")
	ErrRevoked = errors.New("lease revoked")
	ErrExpired = errors.New("lease expired")
	ErrUnknown = errors.New("no such lease")
)

// The HPKE suite: X25519 DHKEM, HKDF-SHA256, AES-256-GCM.
var (
	kdf  = hpke.HKDFSHA256()
	aead = hpke.AES256GCM()
)

// Runtime describes the requester.
type Runtime struct {
	ID, Env, Region, Host string
	Attested              bool // attestation verified (only "dev" software attestation exists yet)
}

// Request asks for a lease on a model version for a runtime's ephemeral X25519 key.
type Request struct {
	Runtime   Runtime
	Model     string
	Version   string
	PublicKey []byte // X25519 public key, 32 bytes, fresh per launch
}

// Lease is a grant.
type Lease struct {
	ID        string
	Runtime   Runtime
	Model     string
	Version   string
	KeyID     string
	Granted   time.Time
	ExpiresAt time.Time
	RevokedAt time.Time
}

// Interfaces the manager consumes.
type (
	// Decider says whether a runtime may hold a lease on a model version (Cedar in production).
	Decider func(ctx context.Context, r Request, classification string) (bool, string)
	// Keys returns a version's data key id, classification and plaintext DEK (caller clears).
	Keys func(ctx context.Context, model, version string) (keyID, classification string, dek []byte, err error)
	// Auditor records an event; an error means it was not recorded and the release must not happen.
	Auditor func(ctx context.Context, kind, decision, reason string, subject, fields map[string]string) error
)

// Manager grants, renews and revokes leases.
type Manager struct {
	decide Decider
	keys   Keys
	audit  Auditor
	ttl    time.Duration
	now    func() time.Time

	mu     sync.Mutex
	leases map[string]*Lease
}

// NewManager returns a manager with leases of ttl (default 10 minutes).
func NewManager(d Decider, k Keys, a Auditor, ttl time.Duration, now func() time.Time) *Manager {
	if ttl == 0 {
		ttl = 10 * time.Minute
	}
	if now == nil {
		now = time.Now
	}
	return &Manager{decide: d, keys: k, audit: a, ttl: ttl, now: now, leases: map[string]*Lease{}}
}

// info binds a sealed key to its lease, so it cannot be replayed under another.
func info(l *Lease) []byte {
	return []byte("strongroom/custody/v1\x00" + l.ID + "\x00" + l.Model + "@" + l.Version + "\x00" + l.Runtime.ID)
}

func subject(l *Lease) map[string]string {
	return map[string]string{"lease": l.ID, "runtime": l.Runtime.ID, "model": l.Model, "version": l.Version}
}

// Grant decides, records and returns a lease with the version's DEK sealed to the runtime's
// key. The plaintext DEK never leaves this function unsealed.
func (m *Manager) Grant(ctx context.Context, r Request) (*Lease, []byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(r.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("custody: runtime key: %w", err)
	}
	hpub, err := hpke.NewDHKEMPublicKey(pub)
	if err != nil {
		return nil, nil, err
	}
	keyID, class, dek, err := m.keys(ctx, r.Model, r.Version)
	if err != nil {
		return nil, nil, err
	}
	defer clear(dek)
	var idb [12]byte
	rand.Read(idb[:])
	now := m.now().UTC()
	l := &Lease{ID: hex.EncodeToString(idb[:]), Runtime: r.Runtime, Model: r.Model, Version: r.Version, KeyID: keyID,
		Granted: now, ExpiresAt: now.Add(m.ttl)}
	ok, reason := m.decide(ctx, r, class)
	fields := map[string]string{"classification": class, "env": r.Runtime.Env, "region": r.Runtime.Region, "host": r.Runtime.Host}
	if !ok {
		m.audit(ctx, "lease.grant", "deny", reason, subject(l), fields)
		return nil, nil, fmt.Errorf("%w: %s", ErrDenied, reason)
	}
	sealed, err := hpke.Seal(hpub, kdf, aead, info(l), dek)
	if err != nil {
		return nil, nil, err
	}
	fields["expires"] = l.ExpiresAt.Format(time.RFC3339)
	if err := m.audit(ctx, "lease.grant", "allow", reason, subject(l), fields); err != nil {
		return nil, nil, err // not on the record, not released
	}
	m.mu.Lock()
	m.leases[l.ID] = l
	m.mu.Unlock()
	cp := *l
	return &cp, sealed, nil
}

// OpenKey is the runtime's side: it opens the sealed DEK with its ephemeral private key.
func OpenKey(priv *ecdh.PrivateKey, l *Lease, sealed []byte) ([]byte, error) {
	hpriv, err := hpke.NewDHKEMPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	dek, err := hpke.Open(hpriv, kdf, aead, info(l), sealed)
	if err != nil {
		return nil, fmt.Errorf("custody: cannot open the sealed key for lease %s: %w", l.ID, err)
	}
	return dek, nil
}

// Renew extends a live lease after asking the policy again.
func (m *Manager) Renew(ctx context.Context, id string) (*Lease, error) {
	m.mu.Lock()
	l, ok := m.leases[id]
	var cp Lease
	if ok {
		cp = *l
	}
	m.mu.Unlock()
	if !ok {
		return nil, ErrUnknown
	}
	now := m.now().UTC()
	switch {
	case !cp.RevokedAt.IsZero():
		m.audit(ctx, "lease.renew", "deny", "revoked", subject(&cp), nil)
		return nil, ErrRevoked
	case !now.Before(cp.ExpiresAt):
		m.audit(ctx, "lease.renew", "deny", "expired", subject(&cp), nil)
		return nil, ErrExpired
	}
	_, class, dek, err := m.keys(ctx, cp.Model, cp.Version)
	clear(dek)
	if err != nil {
		return nil, err
	}
	if ok, reason := m.decide(ctx, Request{Runtime: cp.Runtime, Model: cp.Model, Version: cp.Version}, class); !ok {
		m.audit(ctx, "lease.renew", "deny", reason, subject(&cp), nil)
		return nil, fmt.Errorf("%w: %s", ErrDenied, reason)
	}
	if err := m.audit(ctx, "lease.renew", "allow", "", subject(&cp), nil); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !l.RevokedAt.IsZero() { // revoked while we asked
		return nil, ErrRevoked
	}
	l.ExpiresAt = now.Add(m.ttl)
	cp = *l
	return &cp, nil
}

// Selector picks leases to revoke; empty fields match everything.
type Selector struct {
	Lease, Runtime, Model, Version string
}

// Revoke ends every live lease the selector matches and returns them.
func (m *Manager) Revoke(ctx context.Context, s Selector, reason string) ([]Lease, error) {
	now := m.now().UTC()
	m.mu.Lock()
	var hit []Lease
	for _, l := range m.leases {
		if l.RevokedAt.IsZero() && (s.Lease == "" || s.Lease == l.ID) && (s.Runtime == "" || s.Runtime == l.Runtime.ID) &&
			(s.Model == "" || s.Model == l.Model) && (s.Version == "" || s.Version == l.Version) {
			l.RevokedAt = now
			hit = append(hit, *l)
		}
	}
	m.mu.Unlock()
	var errs []error
	for i := range hit {
		errs = append(errs, m.audit(ctx, "lease.revoke", "allow", reason, subject(&hit[i]), nil))
	}
	return hit, errors.Join(errs...)
}

// Live lists leases that are neither revoked nor expired: where each version runs now.
func (m *Manager) Live() []Lease {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Lease
	for _, l := range m.leases {
		if l.RevokedAt.IsZero() && now.Before(l.ExpiresAt) {
			out = append(out, *l)
		}
	}
	return out
}
