// Package authn establishes who is calling: API keys (shown once, stored as a hash under a
// public key id), with expiry, revocation and rotation with an overlap window.
package authn

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// ErrUnauthenticated is any failure to establish the caller; the reason goes to the
// operator's log, never to the client.
var ErrUnauthenticated = errors.New("unauthenticated")

// ErrStoreUnavailable: the caller could not be established because the store cannot be
// reached (not a bad key: the gateway answers 503, not 401).
var ErrStoreUnavailable = errors.New("store unavailable")

// StoreGrace is how long, once the store cannot be reached, keys verified before keep
// working — marked Unverified, which the gateway serves only for public models. After
// it, every key is refused until the store is back.
const StoreGrace = time.Minute

// Store is what authn needs from persistence.
type Store interface {
	GetPrincipal(ctx context.Context, id string) (store.Principal, error)
	PutAPIKey(ctx context.Context, k store.APIKey) error
	GetAPIKey(ctx context.Context, id string) (store.APIKey, error)
	UpdateAPIKey(ctx context.Context, id string, expires, revoked time.Time) error
	RevokedAPIKeys(ctx context.Context, since time.Time) ([]string, error)
}

// Principal is an authenticated caller.
type Principal struct {
	store.Principal
	KeyID  string
	Models []string  // models the key is limited to; empty: any the policy allows
	MFAAt  time.Time // when the caller last passed MFA (OIDC "auth_time" with an MFA "amr"); zero: never
	// Unverified: the store cannot be reached, so a revocation made elsewhere since the
	// key was last read may not be known here (see StoreGrace).
	Unverified bool
}

// MayUse reports whether the key is limited away from model.
func (p *Principal) MayUse(model string) bool {
	return len(p.Models) == 0 || slices.Contains(p.Models, model)
}

// Token format: "sr_" + 16 hex digits of key id + "." + 43 base64url characters of secret.
const (
	tokenPrefix = "sr_"
	idLen       = 16
	secretLen   = 32
)

// KeyID is the key id s names: s, or — when s is a whole API key, which is what is at hand
// when one has leaked — its id, the secret dropped. Whatever follows a "." is never
// kept: an id has none, and a command or form that recorded what it was given wrote the
// secret into the audit log, and did not revoke the key (outside round 58).
func KeyID(s string) string {
	s, _, _ = strings.Cut(s, ".")
	if rest, ok := strings.CutPrefix(s, tokenPrefix); ok && len(rest) == idLen {
		return rest
	}
	return s
}

// Keys issues and checks API keys. Verified keys are cached for CacheTTL; a revocation
// takes effect at once in the process that revokes, and on every other replica within the
// interval of its Watch.
type Keys struct {
	st       Store
	now      func() time.Time
	cacheTTL time.Duration

	mu    sync.RWMutex
	cache map[string]cached
	// failingSince is when Watch's polls of the store began to fail (unix ns; 0: they
	// succeed).
	failingSince atomic.Int64
}

type cached struct {
	key       store.APIKey
	principal store.Principal
	at        time.Time
}

// NewKeys returns a key manager; now may be nil.
func NewKeys(st Store, now func() time.Time, cacheTTL time.Duration) *Keys {
	if now == nil {
		now = time.Now
	}
	return &Keys{st: st, now: now, cacheTTL: cacheTTL, cache: map[string]cached{}}
}

// Create issues a key for principal and returns the token (show it once) and the record.
func (k *Keys) Create(ctx context.Context, principal string, ttl time.Duration, models []string) (string, store.APIKey, error) {
	if _, err := k.st.GetPrincipal(ctx, principal); err != nil {
		return "", store.APIKey{}, err
	}
	var idb [idLen / 2]byte
	secret := make([]byte, secretLen)
	if _, err := rand.Read(idb[:]); err != nil {
		return "", store.APIKey{}, err
	}
	rand.Read(secret)
	defer clear(secret)
	h := sha256.Sum256(secret)
	rec := store.APIKey{ID: hex.EncodeToString(idb[:]), Principal: principal, Hash: h[:], Models: models, CreatedAt: k.now().UTC()}
	if ttl > 0 {
		rec.ExpiresAt = rec.CreatedAt.Add(ttl)
	}
	if err := k.st.PutAPIKey(ctx, rec); err != nil {
		return "", store.APIKey{}, err
	}
	return tokenPrefix + rec.ID + "." + base64.RawURLEncoding.EncodeToString(secret), rec, nil
}

// Rotate issues a new key like id and lets the old one live for overlap more.
func (k *Keys) Rotate(ctx context.Context, id string, overlap time.Duration) (string, store.APIKey, error) {
	old, err := k.st.GetAPIKey(ctx, id)
	if err != nil {
		return "", store.APIKey{}, err
	}
	if !old.RevokedAt.IsZero() {
		return "", store.APIKey{}, fmt.Errorf("api key %s is revoked", id)
	}
	var ttl time.Duration
	if !old.ExpiresAt.IsZero() {
		ttl = old.ExpiresAt.Sub(old.CreatedAt)
	}
	tok, rec, err := k.Create(ctx, old.Principal, ttl, old.Models)
	if err != nil {
		return "", store.APIKey{}, err
	}
	end := k.now().UTC().Add(overlap)
	if !old.ExpiresAt.IsZero() && old.ExpiresAt.Before(end) {
		end = old.ExpiresAt
	}
	if err := k.st.UpdateAPIKey(ctx, id, end, time.Time{}); err != nil {
		return "", store.APIKey{}, err
	}
	k.forget(id)
	return tok, rec, nil
}

// Revoke ends a key now.
func (k *Keys) Revoke(ctx context.Context, id string) error {
	old, err := k.st.GetAPIKey(ctx, id)
	if err != nil {
		return err
	}
	if err := k.st.UpdateAPIKey(ctx, id, old.ExpiresAt, k.now().UTC()); err != nil {
		return err
	}
	k.forget(id)
	return nil
}

// revocationSkew is how far back Watch looks beyond its last poll, for clocks of other
// hosts (revocation times are the revoker's clock) and commits that land late. Ten
// minutes: a revoker whose clock was 3 minutes behind had been missed by every poll, and
// its key worked until the cache's 5 s ran out (outside round 63); the poll's answer is
// the keys revoked in that window, a few ids.
const revocationSkew = 10 * time.Minute

// Watch drops revoked keys from the cache every interval until ctx ends, so that a key
// revoked by another process (the CLI, another replica) stops working here within one
// interval. While polls fail, cached keys are Unverified, and after StoreGrace refused.
func (k *Keys) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	since := k.now().Add(-revocationSkew)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := k.now()
		ids, err := k.st.RevokedAPIKeys(ctx, since)
		if err != nil {
			k.failingSince.CompareAndSwap(0, now.UnixNano())
			continue
		}
		k.mu.Lock()
		for _, id := range ids {
			if c, ok := k.cache[id]; ok && c.key.RevokedAt.IsZero() {
				delete(k.cache, id)
			}
		}
		k.mu.Unlock()
		k.failingSince.Store(0)
		since = now.Add(-revocationSkew)
	}
}

// Forget drops key id from the cache: the next use reads it from the store (a revocation
// announced by another process).
func (k *Keys) Forget(id string) { k.forget(id) }

func (k *Keys) forget(id string) {
	k.mu.Lock()
	delete(k.cache, id)
	k.mu.Unlock()
}

// ParseToken splits a token into key id and secret.
func ParseToken(tok string) (string, []byte, error) {
	secret := make([]byte, secretLen)
	id, err := parseToken(tok, (*[secretLen]byte)(secret))
	if err != nil {
		return "", nil, err
	}
	return id, secret, nil
}

// secretEncoding is a key secret's encoding (Strict makes a copy: made once), and
// secretEncLen the length of a secret's encoding.
var secretEncoding = base64.RawURLEncoding.Strict()

const secretEncLen = (secretLen*8 + 5) / 6

// parseToken is ParseToken into the caller's secret: no allocation (the id is tok's).
func parseToken(tok string, secret *[secretLen]byte) (string, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok || len(rest) < idLen+1 || rest[idLen] != '.' {
		return "", errors.New("not a strongroom API key")
	}
	id := rest[:idLen]
	for i := range len(id) { // hex.DecodeString's alphabet, either case
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return "", errors.New("bad key id")
		}
	}
	enc := rest[idLen+1:]
	// The only length that decodes to secretLen bytes; checked first, so that Decode's
	// output fits secret whatever the token's length.
	if len(enc) != secretEncLen {
		return "", errors.New("bad key secret")
	}
	var src [secretEncLen]byte // a copy on the stack: []byte(enc) would be one on the heap
	if n, err := secretEncoding.Decode(secret[:], src[:copy(src[:], enc)]); err != nil || n != secretLen {
		clear(secret[:])
		return "", errors.New("bad key secret")
	}
	return id, nil
}

// Authenticate checks a bearer token and returns the principal. Every failure is
// ErrUnauthenticated, wrapped with the reason for the operator.
func (k *Keys) Authenticate(ctx context.Context, tok string) (*Principal, error) {
	var secret [secretLen]byte
	id, err := parseToken(tok, &secret)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	defer clear(secret[:])
	now := k.now()
	k.mu.RLock()
	c, ok := k.cache[id]
	k.mu.RUnlock()
	failing := k.failingSince.Load()
	if failing != 0 && now.Sub(time.Unix(0, failing)) > StoreGrace {
		ok = false // past the grace: only a key read from the store now is good
	}
	unverified := failing != 0
	if !ok || now.Sub(c.at) > k.cacheTTL {
		fresh, err := k.load(ctx, id, now)
		switch {
		case err == nil:
			c, unverified = fresh, false
			k.mu.Lock()
			k.cache[id] = c
			k.mu.Unlock()
		case errors.Is(err, ErrUnauthenticated) || !ok || failing == 0:
			return nil, err
		}
		// The store is unreachable and Watch knows it: the cached key, unverified.
	}
	h := sha256.Sum256(secret[:])
	if subtle.ConstantTimeCompare(h[:], c.key.Hash) != 1 {
		return nil, fmt.Errorf("%w: key %s: wrong secret", ErrUnauthenticated, id)
	}
	// A revocation holds from when it is written, whatever its time says: the time is the
	// revoking host's clock, and a key revoked by a host whose clock ran ahead had kept
	// working here for the difference (outside round 63). Nothing revokes for later.
	if !c.key.RevokedAt.IsZero() {
		return nil, fmt.Errorf("%w: key %s revoked", ErrUnauthenticated, id)
	}
	if !c.key.ExpiresAt.IsZero() && !now.Before(c.key.ExpiresAt) {
		return nil, fmt.Errorf("%w: key %s expired", ErrUnauthenticated, id)
	}
	return &Principal{Principal: c.principal, KeyID: id, Models: c.key.Models, Unverified: unverified}, nil
}

// load reads key id and its principal: ErrUnauthenticated when either does not exist,
// ErrStoreUnavailable when the store cannot say.
func (k *Keys) load(ctx context.Context, id string, now time.Time) (cached, error) {
	key, err := k.st.GetAPIKey(ctx, id)
	if err == nil {
		var p store.Principal
		if p, err = k.st.GetPrincipal(ctx, key.Principal); err == nil {
			return cached{key: key, principal: p, at: now}, nil
		}
	}
	return cached{}, lookupErr("key "+id, err)
}

// lookupErr is a failed store lookup of a caller's record: ErrUnauthenticated when the
// record does not exist, ErrStoreUnavailable when the store cannot say.
func lookupErr(what string, err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s: %v", ErrUnauthenticated, what, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrStoreUnavailable, what, err)
}
