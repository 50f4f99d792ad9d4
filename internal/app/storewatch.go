package app

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/strongroom/strongroom/internal/redact"
)

// ErrStoreMissing means an initialised data directory has no store file: it was deleted
// or moved. Creating an empty one would make every key, revocation and lease vanish, so
// commands refuse instead.
var ErrStoreMissing = errors.New("store missing")

// sqlitePath returns the store's file, "" when the store is not a SQLite file.
func sqlitePath(dsn string) string {
	if p, pg, err := redact.StoreAddress(dsn); err == nil && !pg {
		return p
	}
	return ""
}

// storeWatch notices when the SQLite file a running process opened is deleted or replaced:
// SQLite would go on using the unlinked file while every other process (the CLI) sees a
// different store, so a key revoked there would keep working here.
type storeWatch struct {
	path     string
	dev, ino uint64
	mu       sync.Mutex
	checked  time.Time
	err      error
}

func watchStore(path string) (*storeWatch, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return &storeWatch{path: path, dev: uint64(st.Dev), ino: st.Ino}, nil
}

// check stats the file at most every 500 ms; an error sticks (restart after restoring).
func (w *storeWatch) check() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || time.Since(w.checked) < 500*time.Millisecond {
		return w.err
	}
	w.checked = time.Now()
	var st syscall.Stat_t
	switch err := syscall.Stat(w.path, &st); {
	case errors.Is(err, os.ErrNotExist):
		w.err = fmt.Errorf("%w: %s was deleted under the running process", ErrStoreMissing, w.path)
	case err != nil:
		w.err = fmt.Errorf("store %s: %w", w.path, err)
	case uint64(st.Dev) != w.dev || st.Ino != w.ino:
		w.err = fmt.Errorf("%w: %s was replaced under the running process", ErrStoreMissing, w.path)
	}
	return w.err
}

// StoreHealthy is nil while the store this process opened is still the data directory's
// store; serving stops (fail closed) once it is not.
func (a *App) StoreHealthy() error {
	if a.storeWatch == nil {
		return nil
	}
	err := a.storeWatch.check()
	if err != nil {
		a.storeAlert.Do(func() { a.Log.Error("ALERT store file gone or replaced; refusing requests until restart", "err", err) })
	}
	return err
}
