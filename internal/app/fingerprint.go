package app

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/fingerprint"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/store"
)

// FingerprintSecret is the deployment's weight-fingerprint secret (keys/fingerprint.key,
// 32 bytes, 0600), created on first use; per model and licensee keys are derived from it.
func (a *App) FingerprintSecret() ([]byte, error) { return a.deploymentSecret("fingerprint.key") }

// fingerprintKeys derives the model key of ref (NAME:VERSION).
func (a *App) fingerprintModelKey(ref string) (fingerprint.Key, []byte, error) {
	secret, err := a.FingerprintSecret()
	if err != nil {
		return fingerprint.Key{}, nil, err
	}
	k, err := fingerprint.ModelKey(secret, ref)
	return k, secret, err
}

// ProtectedModel decrypts a version's safetensors files into memory, through the seal
// (chunks authenticated as they are read); the plaintext never reaches a disk.
func (a *App) ProtectedModel(ctx context.Context, name, version string) (*fingerprint.Model, error) {
	v, err := a.Inventory.Get(ctx, name, version)
	if err != nil {
		return nil, err
	}
	dek, err := a.Keys.Key(ctx, v.KeyID)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	m := &fingerprint.Model{Path: name + ":" + version, Format: "inventory"}
	for _, f := range v.Files {
		switch {
		case f.Path == "config.json":
			b, err := a.readSealed(ctx, v, f, dek, 1<<20)
			if err != nil {
				return nil, err
			}
			m.Heads, m.KVHeads = fingerprint.HeadsFromConfig(b)
		case strings.HasSuffix(f.Path, ".safetensors"):
			r, closer, err := a.Inventory.OpenFile(ctx, v, f, dek)
			if err != nil {
				return nil, err
			}
			sub, err := fingerprint.Read(r, r.Size())
			closer.Close()
			if err != nil {
				return nil, fmt.Errorf("%s:%s: %s: %w", name, version, f.Path, err)
			}
			m.Tensors = append(m.Tensors, sub.Tensors...)
		}
	}
	if len(m.Tensors) == 0 {
		return nil, fmt.Errorf("%w: %w: %s:%s", inventory.ErrBadInput, errNoWeights, name, version)
	}
	return m, nil
}

func (a *App) readSealed(ctx context.Context, v store.Version, f store.File, dek []byte, limit int64) ([]byte, error) {
	if f.Size > limit {
		return nil, fmt.Errorf("%s: %d bytes is too large", f.Path, f.Size)
	}
	r, closer, err := a.Inventory.OpenFile(ctx, v, f, dek)
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
}

var errNoWeights = errors.New("no safetensors weights")

// ExportResult describes a fingerprinted copy.
type ExportResult struct {
	ID       string       `json:"id"`
	Model    string       `json:"model"`
	Version  string       `json:"version"`
	Licensee string       `json:"licensee"`
	Out      string       `json:"out"`
	SHA256   string       `json:"sha256"` // of the manifest: "SHA256  PATH\n" per file, sorted by path
	LogIndex uint64       `json:"log_index"`
	Files    []store.File `json:"files"`
}

// ErrBadLicensee is a licensee name that cannot be used.
var ErrBadLicensee = errors.New("bad licensee name")

func checkLicensee(l string) error {
	if l == "" || len(l) > 128 || strings.IndexFunc(l, func(r rune) bool { return !unicode.IsPrint(r) || r == ',' }) >= 0 {
		return fmt.Errorf("%w: %q (1-128 printable characters, no commas)", ErrBadLicensee, l)
	}
	return nil
}

// Export writes licensee's fingerprinted copy of a version to out (absent or empty): every
// safetensors file with the licensee's mark in its weights (same dtype), the other files
// as they are; model.sig is not copied (the weights differ from what was signed). The
// custody rule of unsealing applies (approvals for classifications that need them, for
// requester as), and the export is recorded in the log — who, licensee, digest of the copy
// — before the copy appears under its names; if the record fails, nothing is left.
func (a *App) Export(ctx context.Context, name, version, licensee, out, as string) (ExportResult, error) {
	res := ExportResult{Model: name, Version: version, Licensee: licensee}
	if err := checkLicensee(licensee); err != nil {
		return res, err
	}
	if err := a.RequireUnsealApproval(ctx, name, version, as); err != nil {
		return res, err
	}
	if entries, err := os.ReadDir(out); err == nil && len(entries) > 0 {
		return res, fmt.Errorf("%w: output directory %s is not empty", inventory.ErrBadInput, out)
	}
	v, err := a.Inventory.Get(ctx, name, version)
	if err != nil {
		return res, err
	}
	ref := name + ":" + version
	mk, secret, err := a.fingerprintModelKey(ref)
	if err != nil {
		return res, err
	}
	lk, err := fingerprint.LicenseeKey(secret, ref, licensee)
	clear(secret)
	if err != nil {
		return res, err
	}
	dek, err := a.Keys.Key(ctx, v.KeyID)
	if err != nil {
		return res, err
	}
	defer clear(dek)
	if err := os.MkdirAll(out, 0o700); err != nil {
		return res, err
	}
	res.Out, _ = filepath.Abs(out)
	var temps []string // temp names, in v.Files order
	defer func() {
		for _, t := range temps {
			os.Remove(t)
		}
	}()
	for _, f := range v.Files {
		dst := filepath.Join(out, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return res, err
		}
		tmp, err := os.CreateTemp(filepath.Dir(dst), ".export-*")
		if err != nil {
			return res, err
		}
		temps = append(temps, tmp.Name())
		h := sha256.New()
		w := io.MultiWriter(tmp, h)
		r, closer, err := a.Inventory.OpenFile(ctx, v, f, dek)
		if err == nil {
			if strings.HasSuffix(f.Path, ".safetensors") {
				err = markFile(r, r.Size(), w, mk, lk)
			} else {
				_, err = io.Copy(w, io.NewSectionReader(r, 0, r.Size()))
			}
			closer.Close()
		}
		if err == nil {
			err = errors.Join(tmp.Sync(), tmp.Close())
		} else {
			tmp.Close()
		}
		if err != nil {
			return res, fmt.Errorf("export %s: %s: %w", ref, f.Path, err)
		}
		st, _ := os.Stat(tmp.Name())
		res.Files = append(res.Files, store.File{Path: f.Path, Size: st.Size(), SHA256: hex.EncodeToString(h.Sum(nil))})
	}
	res.SHA256 = manifestDigest(res.Files)
	var id [8]byte
	rand.Read(id[:])
	res.ID = "exp_" + hex.EncodeToString(id[:])
	by := a.actor["principal"]
	if as != "" {
		by = as
	}
	// on the record before the copy appears under its names (fail closed)
	idx, err := a.record(ctx, audit.Event{Kind: audit.KindModelExport,
		Subject: map[string]string{"model": name, "version": version}, Decision: audit.Allow,
		Fields: map[string]string{"licensee": licensee, "export": res.ID, "sha256": res.SHA256, "out": res.Out, "requester": as, "files": strconv.Itoa(len(res.Files))}})
	if err != nil {
		return res, fmt.Errorf("model.export refused: %w", err)
	}
	res.LogIndex = idx
	for i, f := range v.Files {
		if err := os.Rename(temps[i], filepath.Join(out, filepath.FromSlash(f.Path))); err != nil {
			return res, err
		}
	}
	temps = nil
	err = a.Store.CreateExport(ctx, store.Export{ID: res.ID, Model: name, Version: version, Licensee: licensee, By: by,
		SHA256: res.SHA256, LogIndex: idx, CreatedAt: time.Now().UTC()})
	return res, err
}

// markFile writes a marked copy of one safetensors file, in its own dtype (F32 where
// the file mixes dtypes or holds integers).
func markFile(r io.ReaderAt, size int64, w io.Writer, mk, lk fingerprint.Key) error {
	st, err := fingerprint.OpenSafetensors(r, size)
	if err != nil {
		return err
	}
	dtype := ""
	for _, ti := range st.Tensors {
		if dtype == "" {
			dtype = ti.DType
		} else if dtype != ti.DType {
			dtype = "F32"
		}
	}
	if dtype != "BF16" && dtype != "F16" {
		dtype = "F32"
	}
	m, err := fingerprint.Read(r, size)
	if err != nil {
		return err
	}
	fingerprint.Embed(m, mk, lk)
	return fingerprint.WriteSafetensors(w, m.Tensors, dtype, map[string]string{"format": "pt"})
}

func manifestDigest(fs []store.File) string {
	m := make(map[string]string, len(fs))
	for _, f := range fs {
		m[f.Path] = f.SHA256
	}
	return fingerprint.ManifestDigest(m)
}

// TraceResult is a trace of a suspect copy with what identifies it.
type TraceResult struct {
	*fingerprint.TraceResult
	Model    string `json:"model"`
	Path     string `json:"path"`
	SHA256   string `json:"sha256"` // of the file, or of the directory's manifest
	LogIndex uint64 `json:"log_index"`
}

// Trace names the licensee whose mark a suspect copy carries, among the licensees of the
// version's recorded exports and extra candidates; recorded as model.trace.
func (a *App) Trace(ctx context.Context, name, version, path string, extra []string, threshold float64) (*TraceResult, error) {
	ref := name + ":" + version
	orig, err := a.ProtectedModel(ctx, name, version)
	if err != nil {
		return nil, err
	}
	suspect, err := fingerprint.Load(path)
	if err != nil {
		return nil, err
	}
	digest, err := fingerprint.Digest(path)
	if err != nil {
		return nil, err
	}
	mk, cands, err := a.traceCandidates(ctx, name, version, extra)
	if err != nil {
		return nil, err
	}
	r := fingerprint.Trace(orig, suspect, mk, cands, threshold)
	res := &TraceResult{TraceResult: r, Model: ref, Path: path, SHA256: digest}
	fields := map[string]string{"path": path, "sha256": digest, "verdict": r.Verdict, "named": strings.Join(r.Named, ","), "candidates": strconv.Itoa(len(cands))}
	if len(r.Scores) > 0 {
		fields["best_z"] = strconv.FormatFloat(r.Scores[0].Z, 'f', 2, 64)
		fields["best_p"] = strconv.FormatFloat(r.Scores[0].P, 'g', 3, 64)
	}
	res.LogIndex, err = a.record(ctx, audit.Event{Kind: audit.KindModelTrace,
		Subject: map[string]string{"model": name, "version": version}, Decision: audit.Allow, Fields: fields})
	if err != nil {
		return nil, fmt.Errorf("model.trace refused: %w", err)
	}
	return res, nil
}
