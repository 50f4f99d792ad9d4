package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/strongroom/strongroom/internal/fsutil"
)

// Blob is a stored sealed file opened for random-access reading.
type Blob interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// PendingBlob is a blob being written. Nothing is visible under its name until Commit
// returns; Abort (safe after Commit) discards it.
type PendingBlob interface {
	io.Writer
	Commit() error
	Abort()
}

// Blobs stores sealed files by name.
type Blobs interface {
	Create(ctx context.Context, name string) (PendingBlob, error)
	Open(ctx context.Context, name string) (Blob, error)
	// List returns the names of all committed blobs.
	List(ctx context.Context) ([]string, error)
	Delete(ctx context.Context, name string) error
}

// FSBlobs keeps blobs as files under a directory. Writes go to a temp file that is
// fsynced and renamed into place, so a crash never leaves a half-written blob under a name.
type FSBlobs struct{ dir string }

var _ Blobs = (*FSBlobs)(nil)

// NewFSBlobs uses dir, creating it (0700) if needed, and removes temp files that a crashed
// writer left behind.
func NewFSBlobs(dir string) (*FSBlobs, error) {
	if err := os.MkdirAll(filepath.Join(dir, ".tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("blobs: %w", err)
	}
	if stale, err := filepath.Glob(filepath.Join(dir, ".tmp", "*")); err == nil {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	return &FSBlobs{dir: dir}, nil
}

func (b *FSBlobs) path(name string) (string, error) {
	clean := filepath.Clean(name)
	if name == "" || filepath.IsAbs(name) || clean != name || strings.HasPrefix(clean, "..") || strings.HasPrefix(clean, ".tmp") {
		return "", fmt.Errorf("blobs: bad blob name %q", name)
	}
	return filepath.Join(b.dir, clean), nil
}

type fsPending struct {
	*os.File
	final string
	done  bool
}

// Create starts a blob; an existing blob with that name is an error.
func (b *FSBlobs) Create(_ context.Context, name string) (PendingBlob, error) {
	final, err := b.path(name)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(final); err == nil {
		return nil, fmt.Errorf("blobs: %s: %w", name, ErrExists)
	}
	var r [8]byte
	rand.Read(r[:])
	f, err := os.OpenFile(filepath.Join(b.dir, ".tmp", hex.EncodeToString(r[:])), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("blobs: %w", err)
	}
	return &fsPending{File: f, final: final}, nil
}

func (p *fsPending) Commit() error {
	if err := p.Sync(); err != nil {
		return fmt.Errorf("blobs: fsync: %w", err)
	}
	if err := p.Close(); err != nil {
		return fmt.Errorf("blobs: close: %w", err)
	}
	dir := filepath.Dir(p.final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("blobs: %w", err)
	}
	if err := os.Rename(p.Name(), p.final); err != nil {
		return fmt.Errorf("blobs: rename: %w", err)
	}
	p.done = true
	return fsutil.SyncDir(dir)
}

func (p *fsPending) Abort() {
	if !p.done {
		p.Close()
		os.Remove(p.Name())
	}
}

type fsBlob struct {
	*os.File
	size int64
}

func (f *fsBlob) Size() int64 { return f.size }

// Open opens a committed blob.
func (b *FSBlobs) Open(_ context.Context, name string) (Blob, error) {
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blobs: %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blobs: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blobs: %w", err)
	}
	return &fsBlob{File: f, size: st.Size()}, nil
}

// List walks the directory for committed blobs.
func (b *FSBlobs) List(_ context.Context) ([]string, error) {
	var names []string
	err := filepath.WalkDir(b.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(b.dir, p)
		if d.IsDir() && rel == ".tmp" {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			names = append(names, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("blobs: list: %w", err)
	}
	return names, nil
}

// Delete removes a blob, and its directory once empty.
func (b *FSBlobs) Delete(_ context.Context, name string) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("blobs: %s: %w", name, ErrNotFound)
		}
		return fmt.Errorf("blobs: %w", err)
	}
	dir := filepath.Dir(p)
	if dir != b.dir && os.Remove(dir) == nil { // fails harmlessly while other blobs remain
		dir = b.dir
	}
	return fsutil.SyncDir(dir)
}
