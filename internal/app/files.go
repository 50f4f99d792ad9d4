package app

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/seal"
	"github.com/strongroom/strongroom/internal/store"
)

// SealFile seals one file under a fresh data key (stored wrapped in the keyring) and
// returns the key id. The output appears only once complete.
func (a *App) SealFile(ctx context.Context, in, out string) (string, error) {
	src, err := os.Open(in)
	if err != nil {
		return "", err
	}
	defer src.Close()
	id, dek, err := a.Keys.NewKey(ctx, store.PurposeFile)
	if err != nil {
		return "", err
	}
	defer clear(dek)
	err = writeOutput(out, func(w io.Writer) error {
		sw, err := seal.NewWriter(w, dek, seal.Options{KeyID: id, Name: filepath.Base(in)})
		if err != nil {
			return err
		}
		_, rerr := sw.ReadFrom(src)
		return errors.Join(rerr, sw.Close())
	})
	keyID := hex.EncodeToString(id[:])
	if err == nil {
		err = a.Audit(ctx, audit.Event{Kind: audit.KindFileSeal, Decision: audit.Allow, Subject: map[string]string{"file": filepath.Base(in)}, Fields: map[string]string{"key_id": keyID, "out": out}})
	}
	return keyID, err
}

// UnsealFile decrypts a file sealed by SealFile to out ("-" for stdout). A regular output
// file appears only after every chunk authenticated.
func (a *App) UnsealFile(ctx context.Context, in, out string) error {
	src, err := os.Open(in)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	h, err := seal.PeekHeader(src)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	keyID := hex.EncodeToString(h.KeyID[:])
	if err := a.Audit(ctx, audit.Event{Kind: audit.KindFileUnseal, Decision: audit.Allow, Subject: map[string]string{"file": filepath.Base(in)}, Fields: map[string]string{"key_id": keyID, "out": out}}); err != nil {
		return err // no record, no plaintext
	}
	dek, err := a.Keys.Key(ctx, keyID)
	if err != nil {
		return err
	}
	defer clear(dek)
	r, err := seal.Open(src, st.Size(), dek, seal.OpenOptions{Name: in})
	if err != nil {
		return err
	}
	return writeOutput(out, func(w io.Writer) error {
		_, err := r.WriteTo(w)
		return err
	})
}

// writeOutput runs fill against out: stdout for "-", the file itself for a device such as
// /dev/null, otherwise a temp file renamed into place only when fill succeeds.
func writeOutput(out string, fill func(io.Writer) error) error {
	if out == "-" {
		return fill(os.Stdout)
	}
	if st, err := os.Stat(out); err == nil && !st.Mode().IsRegular() {
		f, err := os.OpenFile(out, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		return errors.Join(fill(f), f.Close())
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".strongroom-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := fill(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := errors.Join(tmp.Sync(), tmp.Close()); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(out))
}
