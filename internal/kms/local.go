package kms

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/strongroom/strongroom/internal/fsutil"
)

// A local key file is one line: "strongroom-kek-v1 ID BASE64KEY\n", mode 0600.
const localPrefix = "strongroom-kek-v1"

// Local is a KEK held in a file on this machine.
type Local struct {
	id   string
	aead cipher.AEAD
}

var _ KEK = (*Local)(nil)

// LocalPath is where a local KEK with the given id lives in dir.
func LocalPath(dir, id string) string { return filepath.Join(dir, id+".kek") }

// GenerateLocal writes a new random KEK to dir/ID.kek (mode 0600, never overwriting) and
// returns its id.
func GenerateLocal(dir string) (string, error) {
	var key [32]byte
	var idb [8]byte
	if _, err := rand.Read(key[:]); err != nil {
		return "", err
	}
	defer clear(key[:])
	rand.Read(idb[:])
	id := "local-" + hex.EncodeToString(idb[:])
	path := LocalPath(dir, id)
	line := fmt.Sprintf("%s %s %s\n", localPrefix, id, base64.StdEncoding.EncodeToString(key[:]))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("kms: create key file: %w", err)
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return "", fmt.Errorf("kms: write key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	return id, f.Close()
}

// OpenLocal loads a key file. It refuses a file that group or others can read or write.
func OpenLocal(path string) (*Local, error) {
	raw, err := fsutil.ReadPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("kms: key file: %w", err)
	}
	defer clear(raw)
	fields := strings.Fields(string(bytes.TrimSpace(raw)))
	if len(fields) != 3 || fields[0] != localPrefix {
		return nil, fmt.Errorf("kms: key file %s: not a strongroom key file", path)
	}
	key, err := base64.StdEncoding.DecodeString(fields[2])
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("kms: key file %s: key is not 32 base64 bytes", path)
	}
	defer clear(key)
	aead, err := softGCM(key)
	if err != nil {
		return nil, err
	}
	return &Local{id: fields[1], aead: aead}, nil
}

func (l *Local) ID() string { return l.id }

func (l *Local) Wrap(_ context.Context, dek, aad []byte) ([]byte, error) {
	return gcmWrap(func(n, pt, a []byte) ([]byte, error) { return l.aead.Seal(nil, n, pt, a), nil }, l.id, dek, aad)
}

func (l *Local) Unwrap(_ context.Context, wrapped, aad []byte) ([]byte, error) {
	return gcmUnwrap(func(n, ct, a []byte) ([]byte, error) { return l.aead.Open(nil, n, ct, a) }, l.id, wrapped, aad)
}

func (l *Local) Close() error { return nil }

var errClosed = errors.New("kms: closed")
