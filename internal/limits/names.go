package limits

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"sync/atomic"
)

// NamesLabel is the label under which a fleet derives the key of its scopes' Redis key names
// from its audit key (audit.DeriveKey): every replica derives the same.
const NamesLabel = "strongroom/limit-scopes/v1"

// HideNames makes every scope's Redis key name PREFIX + "s:" + the first 128 bits of
// HMAC-SHA256(key, scope name), hex: whoever reads Redis learns no API key id, tenant, model
// or principal name from the keys (DESIGN, "Shared limits"). key must be the same in every
// replica of a fleet (else each counts apart); set before first use.
func (r *Redis) HideNames(key []byte) { r.names = scopeNames{mac: bytes.Clone(key)} }

// ScopeKey is the Redis key that holds scope name's counts (for operators and tests).
func (r *Redis) ScopeKey(name string) string { return r.names.key(r.prefix, name) }

// scopeNames turns scope names into key names: in the clear without a key. Digests are
// kept for the names seen (a gateway's scopes are its keys, tenants, routes and throttled
// principals), up to maxNames; past that they are made for each request.
type scopeNames struct {
	mac  []byte   // nil: names in the clear
	seen sync.Map // name → its key name, prefix and all (one Redis has one prefix)
	n    atomic.Int64
}

const maxNames = 1 << 16

func (s *scopeNames) key(prefix, name string) string {
	if s.mac == nil {
		return prefix + name
	}
	if d, ok := s.seen.Load(name); ok {
		return d.(string)
	}
	m := hmac.New(sha256.New, s.mac)
	m.Write([]byte(name))
	var sum [sha256.Size]byte
	d := prefix + "s:" + hex.EncodeToString(m.Sum(sum[:0])[:16])
	if s.n.Load() < maxNames {
		if _, loaded := s.seen.LoadOrStore(name, d); !loaded {
			s.n.Add(1)
		}
	}
	return d
}
