package inventory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/modelsig"
	"github.com/strongroom/strongroom/internal/seal"
	"github.com/strongroom/strongroom/internal/store"
)

// ErrIntegrity wraps every failure of a signature, a digest or a sealed chunk.
var ErrIntegrity = errors.New("integrity check failed")

// checkManifest verifies the version's signature with our signing key and checks that it
// vouches for exactly the recorded files.
func (inv *Inventory) checkManifest(v store.Version) error {
	m, err := modelsig.Verify(v.Signature, &inv.signer.PublicKey)
	if err != nil {
		return fmt.Errorf("%w: model %s:%s: %v", ErrIntegrity, v.Model, v.Version, err)
	}
	if m.Model != v.Model || len(m.Resources) != len(v.Files) {
		return fmt.Errorf("%w: model %s:%s: signed manifest does not match the inventory", ErrIntegrity, v.Model, v.Version)
	}
	for i, r := range m.Resources {
		f := v.Files[i]
		if r.Name != f.Path || r.Digest != f.SHA256 {
			return fmt.Errorf("%w: model %s:%s: file %s: signed digest does not match the inventory", ErrIntegrity, v.Model, v.Version, f.Path)
		}
	}
	return nil
}

// OpenFile opens one sealed file of a version for random-access decryption. The data key
// stays in the returned reader's cipher; close the returned closer when done.
func (inv *Inventory) OpenFile(ctx context.Context, v store.Version, f store.File, dek []byte) (*seal.Reader, io.Closer, error) {
	b, err := inv.blobs.Open(ctx, f.Blob)
	if err != nil {
		return nil, nil, fmt.Errorf("file %s: %w", f.Path, err)
	}
	r, err := seal.Open(b, b.Size(), dek, seal.OpenOptions{Context: fileContext(v.Model, v.Version, f.Path), Name: f.Path})
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	return r, b, nil
}

// forEachFile checks the manifest, unwraps the data key and streams each file's plaintext
// into the writer that open returns, checking size and SHA-256 against the signed record.
// before runs once the manifest checks out and before any key is unwrapped.
func (inv *Inventory) forEachFile(ctx context.Context, name, version string, before func(store.Version) error, open func(store.File) (io.Writer, func(ok bool) error, error)) (store.Version, error) {
	v, err := inv.Get(ctx, name, version)
	if err != nil {
		return v, err
	}
	if v.External {
		return v, fmt.Errorf("%w: %s:%s is an external model (a record only): Strongroom holds no weights for it", ErrBadInput, name, version)
	}
	if err := inv.checkManifest(v); err != nil {
		return v, err
	}
	if err := before(v); err != nil {
		return v, err
	}
	dek, err := inv.keys.Key(ctx, v.KeyID)
	if err != nil {
		return v, err
	}
	defer clear(dek)
	for _, f := range v.Files {
		if err := ctx.Err(); err != nil {
			return v, err
		}
		w, finish, err := open(f)
		if err != nil {
			return v, err
		}
		err = inv.copyFile(ctx, v, f, dek, w)
		if ferr := finish(err == nil); err == nil {
			err = ferr
		}
		if err != nil {
			return v, fmt.Errorf("model %s:%s: %w", name, version, err)
		}
	}
	return v, nil
}

func (inv *Inventory) copyFile(ctx context.Context, v store.Version, f store.File, dek []byte, w io.Writer) error {
	r, c, err := inv.OpenFile(ctx, v, f, dek)
	if err != nil {
		if errors.Is(err, seal.ErrIntegrity) {
			return fmt.Errorf("%w: %w", ErrIntegrity, err)
		}
		return err
	}
	defer c.Close()
	h := sha256.New()
	n, err := r.WriteTo(io.MultiWriter(w, h))
	if err != nil {
		if errors.Is(err, seal.ErrIntegrity) {
			return fmt.Errorf("%w: %w", ErrIntegrity, err)
		}
		return err
	}
	if n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return fmt.Errorf("%w: %s: plaintext does not match the signed digest", ErrIntegrity, f.Path)
	}
	return nil
}

// Verify re-checks the signature and decrypts and hashes every file. The error names the
// first bad file and chunk.
func (inv *Inventory) Verify(ctx context.Context, name, version string) (store.Version, error) {
	v, err := inv.forEachFile(ctx, name, version, func(store.Version) error { return nil }, func(store.File) (io.Writer, func(bool) error, error) {
		return io.Discard, func(bool) error { return nil }, nil
	})
	d, reason := decision(err)
	if aerr := inv.audit.Audit(ctx, audit.Event{Kind: audit.KindModelVerify, Decision: d, Reason: reason, Subject: subject(name, version), Fields: map[string]string{"files": fmt.Sprint(len(v.Files))}}); aerr != nil {
		return v, errors.Join(err, aerr)
	}
	return v, err
}

// Unseal writes the plaintext of every file, and model.sig, into outDir, which must not
// exist or be empty. Each file appears only after it decrypted and hashed correctly.
func (inv *Inventory) Unseal(ctx context.Context, name, version, outDir string) (store.Version, error) {
	if entries, err := os.ReadDir(outDir); err == nil && len(entries) > 0 {
		return store.Version{}, fmt.Errorf("%w: output directory %s is not empty", ErrBadInput, outDir)
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return store.Version{}, err
	}
	abs, _ := filepath.Abs(outDir)
	released := false
	v, err := inv.forEachFile(ctx, name, version, func(store.Version) error {
		// Plaintext leaves the vault only once the release is on the record.
		if err := inv.audit.Audit(ctx, audit.Event{Kind: audit.KindModelUnseal, Decision: audit.Allow, Subject: subject(name, version), Fields: map[string]string{"out": abs}}); err != nil {
			return err
		}
		released = true
		return nil
	}, func(f store.File) (io.Writer, func(bool) error, error) {
		dst := filepath.Join(outDir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return nil, nil, err
		}
		tmp, err := os.CreateTemp(filepath.Dir(dst), ".unseal-*")
		if err != nil {
			return nil, nil, err
		}
		return tmp, func(ok bool) error {
			defer os.Remove(tmp.Name())
			if !ok {
				tmp.Close()
				return nil
			}
			if err := errors.Join(tmp.Sync(), tmp.Close()); err != nil {
				return err
			}
			return os.Rename(tmp.Name(), dst)
		}, nil
	})
	if err != nil {
		if released { // best effort: say the release did not complete, and why
			inv.audit.Audit(context.WithoutCancel(ctx), audit.Event{Kind: audit.KindModelUnseal, Decision: audit.Deny, Reason: err.Error(), Subject: subject(name, version), Fields: map[string]string{"out": abs}})
		}
		return v, err
	}
	return v, fsutil.WriteFileAtomic(filepath.Join(outDir, "model.sig"), v.Signature, 0o644)
}

// CheckSignature verifies a version's OMS signature with the deployment's signing key and
// that it vouches for exactly the recorded digests, without reading the sealed files (the
// console's signature status; Verify also decrypts and hashes every file).
func (inv *Inventory) CheckSignature(v store.Version) error { return inv.checkManifest(v) }
