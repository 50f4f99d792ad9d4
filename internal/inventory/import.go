package inventory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/modelsig"
	"github.com/strongroom/strongroom/internal/seal"
	"github.com/strongroom/strongroom/internal/store"
)

// ignored are paths the OMS reference implementation leaves out of a signature by default;
// leaving them out too keeps our signatures verifiable by it.
var ignored = map[string]bool{".git": true, ".github": true, ".gitattributes": true, ".gitignore": true, "model.sig": true}

// listFiles returns the regular files under dir, slash-separated and sorted. Symbolic links
// and special files are refused: what is signed must be what is sealed.
func listFiles(dir string) ([]string, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: model directory: %v", ErrBadInput, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", ErrBadInput, dir)
	}
	var files []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if ignored[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			return fmt.Errorf("%w: %s is a symbolic link; copy the file in", ErrBadInput, rel)
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			return fmt.Errorf("%w: %s is not a regular file", ErrBadInput, rel)
		}
		files = append(files, rel)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: %s holds no files", ErrBadInput, dir)
	}
	slices.Sort(files)
	return files, nil
}

// Import seals every file of dir into the blob store, signs the manifest and records the
// version. The plaintext is read once, in constant memory. The version row is written
// last, in one transaction, so a failed or killed import leaves no version behind and
// can simply be run again.
func (inv *Inventory) Import(ctx context.Context, dir string, meta Meta) (v store.Version, err error) {
	if err := meta.Validate(); err != nil {
		return store.Version{}, err
	}
	if _, err := inv.st.GetVersion(ctx, meta.Name, meta.Version); err == nil {
		return store.Version{}, fmt.Errorf("model %s:%s: %w", meta.Name, meta.Version, ErrExists)
	} else if !errors.Is(err, store.ErrNotFound) {
		return store.Version{}, err
	}
	paths, err := listFiles(dir)
	if err != nil {
		return store.Version{}, err
	}
	keyID, dek, err := inv.keys.NewKey(ctx, store.PurposeModel)
	if err != nil {
		return store.Version{}, err
	}
	defer clear(dek)
	defer func() {
		if err != nil {
			inv.discard(ctx, hex.EncodeToString(keyID[:]))
			// Best effort: the import is failing anyway.
			inv.audit.Audit(context.WithoutCancel(ctx), audit.Event{Kind: audit.KindModelImport, Decision: audit.Deny, Reason: err.Error(), Subject: subject(meta.Name, meta.Version)})
		}
	}()
	v = store.Version{
		Model: meta.Name, Version: meta.Version, Classification: meta.Classification,
		Owner: meta.Owner, Env: meta.Env, KeyID: hex.EncodeToString(keyID[:]), CreatedAt: inv.now().UTC(),
	}
	// A new version keeps the newest earlier version's country lists, watermarking and
	// hardening: a route that serves "NAME" moves to it, and must not lose a restriction.
	inherited, err := inv.inherit(ctx, meta.Name)
	if err != nil {
		return store.Version{}, err
	}
	v.AllowedCountries, v.DeniedCountries, v.Watermark, v.Hardening = inherited.AllowedCountries, inherited.DeniedCountries, inherited.Watermark, inherited.Hardening
	var resources []modelsig.Resource
	for i, rel := range paths {
		if err := ctx.Err(); err != nil {
			return store.Version{}, err
		}
		f := store.File{Path: rel, Blob: fmt.Sprintf("%s/%d.srs", v.KeyID, i)}
		opts := seal.Options{KeyID: keyID, Context: fileContext(meta.Name, meta.Version, rel), Name: rel}
		if f.Size, f.SHA256, err = inv.sealFile(ctx, filepath.Join(dir, filepath.FromSlash(rel)), f.Blob, dek, opts); err != nil {
			return store.Version{}, err
		}
		v.Files = append(v.Files, f)
		resources = append(resources, modelsig.Resource{Name: rel, Digest: f.SHA256})
		inv.log.Debug("sealed", "model", meta.Name, "version", meta.Version, "file", rel, "bytes", f.Size)
	}
	if v.Signature, err = modelsig.Sign(inv.signer, meta.Name, resources); err != nil {
		return store.Version{}, err
	}
	var total int64
	for _, f := range v.Files {
		total += f.Size
	}
	manifest := sha256.Sum256(v.Signature)
	if err := inv.audit.Audit(ctx, audit.Event{Kind: audit.KindModelImport, Decision: audit.Allow, Subject: subject(meta.Name, meta.Version), Fields: map[string]string{
		"classification": meta.Classification, "owner": meta.Owner, "env": meta.Env, "key_id": v.KeyID,
		"files": fmt.Sprint(len(v.Files)), "bytes": fmt.Sprint(total), "model_sig_sha256": hex.EncodeToString(manifest[:]),
		"attrs": attrsJSON(v.Attrs()),
	}}); err != nil {
		return store.Version{}, err // not recorded, so not imported
	}
	if err := inv.st.CreateVersion(ctx, v); err != nil {
		return store.Version{}, err
	}
	inv.log.Info("imported", "model", meta.Name, "version", meta.Version, "files", len(v.Files), "classification", meta.Classification)
	return v, nil
}

// sealFile seals one file into a new blob and returns its size and SHA-256. A file that
// changes while it is read is refused.
func (inv *Inventory) sealFile(ctx context.Context, path, blob string, dek []byte, opts seal.Options) (int64, string, error) {
	fail := func(err error) (int64, string, error) {
		return 0, "", fmt.Errorf("import %s: %w", opts.Name, err)
	}
	src, err := os.Open(path)
	if err != nil {
		return fail(err)
	}
	defer src.Close()
	before, err := src.Stat()
	if err != nil {
		return fail(err)
	}
	dst, err := inv.blobs.Create(ctx, blob)
	if err != nil {
		return fail(err)
	}
	defer dst.Abort()
	w, err := seal.NewWriter(dst, dek, opts)
	if err != nil {
		return fail(err)
	}
	h := sha256.New()
	n, rerr := w.ReadFrom(io.TeeReader(src, h))
	if err := errors.Join(rerr, w.Close()); err != nil {
		return fail(err)
	}
	if inv.afterRead != nil {
		inv.afterRead(path)
	}
	after, err := src.Stat()
	if err != nil {
		return fail(err)
	}
	if n != before.Size() || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		return fail(errors.New("file changed while it was being read; nothing was recorded, run the import again"))
	}
	if err := dst.Commit(); err != nil {
		return fail(err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}
