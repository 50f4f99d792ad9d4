// Package fsutil holds the few file-system steps that make writes crash-safe.
package fsutil

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteFileAtomic writes data to path so that a crash leaves either the old or the new
// file, never a torn one.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeSynced(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// CreateFileOnce writes data to path only if no file is there yet, atomically: a crash
// leaves no file or a whole one, and of concurrent writers the first wins (the others'
// data is dropped without error; read the file back to see what is there).
func CreateFileOnce(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeSynced(path, data, mode)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	// link fails if the file exists: then it stays as the first writer left it.
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// writeSynced writes data with mode to a new temporary file beside path, fsynced, and
// returns its name (the caller renames or links it into place, then removes it).
func writeSynced(path string, data []byte, mode os.FileMode) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return "", err
	}
	err = tmp.Chmod(mode)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// SyncDir fsyncs a directory so that a rename in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ReadPrivate reads a secret file, refusing one that group or others can access. The mode
// is checked on the opened file, so the file read is the file checked.
func ReadPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if mode := st.Mode().Perm(); mode&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o: group or others can access it; chmod 600 it", path, mode)
	}
	return io.ReadAll(f)
}
