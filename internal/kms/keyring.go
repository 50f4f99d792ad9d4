package kms

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// KeyStore is the part of the store the keyring uses.
type KeyStore interface {
	PutKey(ctx context.Context, k store.Key) error
	GetKey(ctx context.Context, id string) (store.Key, error)
	RewrapKeys(ctx context.Context, fn func(store.Key) (store.Key, error)) (int, error)
}

// Resolver opens a KEK by its id; the keyring calls it for keys wrapped by a KEK other
// than the current one (after a rotation that has not finished, for instance).
type Resolver func(ctx context.Context, id string) (KEK, error)

// Keyring creates data keys, stores them wrapped, and unwraps them on demand.
type Keyring struct {
	store   KeyStore
	current KEK
	resolve Resolver
	now     func() time.Time

	mu     sync.Mutex
	opened map[string]KEK // KEKs opened through resolve, closed by Close
}

// NewKeyring wraps new keys with current and finds others through resolve (may be nil).
func NewKeyring(s KeyStore, current KEK, resolve Resolver, now func() time.Time) *Keyring {
	if now == nil {
		now = time.Now
	}
	return &Keyring{store: s, current: current, resolve: resolve, now: now, opened: map[string]KEK{}}
}

// Current is the KEK that wraps new keys.
func (r *Keyring) Current() KEK { return r.current }

// NewKey makes a fresh DEK for purpose (store.PurposeModel or store.PurposeFile), stores it
// wrapped and returns its id and the plaintext key, which the caller clears after use.
func (r *Keyring) NewKey(ctx context.Context, purpose string) (id [16]byte, dek []byte, err error) {
	if _, err := rand.Read(id[:]); err != nil {
		return id, nil, err
	}
	dek, err = NewDEK()
	if err != nil {
		return id, nil, err
	}
	hexID := hex.EncodeToString(id[:])
	wrapped, err := r.current.Wrap(ctx, dek, []byte(hexID))
	if err == nil {
		err = r.store.PutKey(ctx, store.Key{ID: hexID, KEKID: r.current.ID(), Wrapped: wrapped, Purpose: purpose, CreatedAt: r.now().UTC()})
	}
	if err != nil {
		clear(dek)
		return id, nil, fmt.Errorf("new data key: %w", err)
	}
	return id, dek, nil
}

// Key unwraps the data key with the given id; the caller clears it after use.
func (r *Keyring) Key(ctx context.Context, id string) ([]byte, error) {
	k, err := r.store.GetKey(ctx, id)
	if err != nil {
		return nil, err
	}
	kek, err := r.kek(ctx, k.KEKID)
	if err != nil {
		return nil, fmt.Errorf("data key %s: %w", id, err)
	}
	dek, err := kek.Unwrap(ctx, k.Wrapped, []byte(k.ID))
	if err != nil {
		return nil, fmt.Errorf("data key %s (KEK %s): %w", id, k.KEKID, err)
	}
	return dek, nil
}

func (r *Keyring) kek(ctx context.Context, id string) (KEK, error) {
	if id == r.current.ID() {
		return r.current, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if k, ok := r.opened[id]; ok {
		return k, nil
	}
	if r.resolve == nil {
		return nil, fmt.Errorf("key-encryption key %s is not available", id)
	}
	k, err := r.resolve(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key %s: %w", id, err)
	}
	r.opened[id] = k
	return k, nil
}

// Rotate re-wraps every data key under next in one transaction; sealed files are not
// touched, because they name their data key, not the KEK. On any failure nothing changes.
func (r *Keyring) Rotate(ctx context.Context, next KEK) (int, error) {
	if next.ID() == r.current.ID() {
		return 0, errors.New("rotate: the new KEK is the current one")
	}
	n, err := r.store.RewrapKeys(ctx, func(k store.Key) (store.Key, error) {
		if k.KEKID == next.ID() {
			return k, nil // already moved by an interrupted earlier rotation
		}
		old, err := r.kek(ctx, k.KEKID)
		if err != nil {
			return k, err
		}
		dek, err := old.Unwrap(ctx, k.Wrapped, []byte(k.ID))
		if err != nil {
			return k, err
		}
		defer clear(dek)
		w, err := next.Wrap(ctx, dek, []byte(k.ID))
		if err != nil {
			return k, err
		}
		k.KEKID, k.Wrapped = next.ID(), w
		return k, nil
	})
	if err != nil {
		return 0, err
	}
	r.current = next
	return n, nil
}

// Close closes the KEKs the keyring opened (not the current one, which the caller owns).
func (r *Keyring) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for id, k := range r.opened {
		errs = append(errs, k.Close())
		delete(r.opened, id)
	}
	return errors.Join(errs...)
}
