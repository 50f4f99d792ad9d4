// Package kms holds the key-encryption keys (KEKs) that wrap each model version's data
// encryption key (DEK): a local key file for one machine, or a PKCS#11 token (an HSM).
package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// ErrUnwrap means a wrapped key could not be opened: the wrong KEK, or a record altered in
// storage. It is an integrity failure; nothing is decrypted.
var ErrUnwrap = errors.New("kms: cannot unwrap data key (wrong key-encryption key or altered key record)")

// KEK wraps and unwraps data keys. aad binds a wrapped key to its record (the DEK's id), so
// a wrapped key moved to another record does not unwrap.
type KEK interface {
	// ID names this KEK; it is stored beside every key it wrapped.
	ID() string
	Wrap(ctx context.Context, dek, aad []byte) ([]byte, error)
	Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error)
	Close() error
}

// NewDEK returns a fresh random 32-byte data key. Callers clear it after use.
func NewDEK() ([]byte, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("kms: random: %w", err)
	}
	return k, nil
}

// Wrapped key layout shared by providers whose primitive is AES-256-GCM:
// 1 byte version (1) || 12 byte nonce || ciphertext+tag. The KEK id is part of the AAD.
const wrapVersion = 1

func gcmAAD(kekID string, aad []byte) []byte {
	return append([]byte("strongroom/kms/v1\x00"+kekID+"\x00"), aad...)
}

// gcmWrap and gcmUnwrap frame any AES-GCM primitive (software or token) the same way.
func gcmWrap(seal func(nonce, pt, aad []byte) ([]byte, error), kekID string, dek, aad []byte) ([]byte, error) {
	nonce := make([]byte, 12)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	ct, err := seal(nonce, dek, gcmAAD(kekID, aad))
	if err != nil {
		return nil, err
	}
	return append(append([]byte{wrapVersion}, nonce...), ct...), nil
}

func gcmUnwrap(open func(nonce, ct, aad []byte) ([]byte, error), kekID string, wrapped, aad []byte) ([]byte, error) {
	if len(wrapped) < 1+12+16 || wrapped[0] != wrapVersion {
		return nil, ErrUnwrap
	}
	pt, err := open(wrapped[1:13], wrapped[13:], gcmAAD(kekID, aad))
	if err != nil {
		return nil, ErrUnwrap
	}
	return pt, nil
}

func softGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// PKCS11Config names a token and an AES-256 key on it.
type PKCS11Config struct {
	Module     string // path of the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
	TokenLabel string
	PIN        string // user PIN; read from the environment or a file by the caller, never logged
	KeyLabel   string
}
