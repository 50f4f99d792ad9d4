package inventory

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/kms"
	"github.com/strongroom/strongroom/internal/modelsig"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/store"
)

// fakeAuditor is a unit-test double of our own Auditor interface; the real log is tested
// in package audit and end to end in the CLI scripts.
type fakeAuditor struct {
	events []string // "kind decision"
	fail   error
}

func (f *fakeAuditor) Audit(_ context.Context, ev audit.Event) error {
	if f.fail != nil {
		return f.fail
	}
	f.events = append(f.events, string(ev.Kind)+" "+ev.Decision)
	return nil
}

type env struct {
	audit *fakeAuditor
	inv   *Inventory
	st    store.Store
	blobs string
	model string
}

func newEnv(t *testing.T, blobs func(store.Blobs) store.Blobs) *env {
	t.Helper()
	dir := t.TempDir()
	model := filepath.Join(dir, "model")
	o := refmodel.DefaultSynth()
	o.MinBytes = 3 << 20 // several chunks
	if err := refmodel.Synthesize(model, o); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(model, "sub"), 0o755)
	os.WriteFile(filepath.Join(model, "sub", "notes.txt"), []byte("nested file\n"), 0o644)
	e := newEnvAt(t, dir, model)
	if blobs != nil {
		e.inv.blobs = blobs(e.inv.blobs)
	}
	return e
}

// newEnvAt builds an inventory whose database, keys and blobs live in dir.
func newEnvAt(t testing.TB, dir, model string) *env {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	id, err := kms.GenerateLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := kms.OpenLocal(kms.LocalPath(dir, id))
	if err != nil {
		t.Fatal(err)
	}
	fb, err := store.NewFSBlobs(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fa := &fakeAuditor{}
	inv, err := New(Config{Store: st, Blobs: fb, Keys: kms.NewKeyring(st, kek, nil, nil), Signer: signer, Auditor: fa})
	if err != nil {
		t.Fatal(err)
	}
	return &env{audit: fa, inv: inv, st: st, blobs: filepath.Join(dir, "blobs"), model: model}
}

var meta = Meta{Name: "demo", Version: "1.0.0", Classification: "export-controlled:4E091", Owner: "lab", Env: "prod"}

func TestImportVerifyUnseal(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	v, err := e.inv.Import(ctx, e.model, meta)
	if err != nil {
		t.Fatal(err)
	}
	wantPaths := []string{"config.json", "model.safetensors", "sub/notes.txt", "tokenizer.json"}
	var got []string
	for _, f := range v.Files {
		got = append(got, f.Path)
		plain, _ := os.ReadFile(filepath.Join(e.model, filepath.FromSlash(f.Path)))
		d := sha256.Sum256(plain)
		if f.SHA256 != hex.EncodeToString(d[:]) || f.Size != int64(len(plain)) {
			t.Fatalf("%s: recorded digest or size wrong", f.Path)
		}
		// The blob holds no plaintext.
		sealed, _ := os.ReadFile(filepath.Join(e.blobs, f.Blob))
		if len(plain) > 64 && bytes.Contains(sealed, plain[len(plain)/2:len(plain)/2+32]) {
			t.Fatalf("%s: plaintext visible in blob", f.Path)
		}
	}
	if strings.Join(got, ",") != strings.Join(wantPaths, ",") {
		t.Fatalf("files = %v, want %v", got, wantPaths)
	}
	if _, err := e.inv.Import(ctx, e.model, meta); !errors.Is(err, ErrExists) {
		t.Fatalf("second import: %v", err)
	}
	if _, err := e.inv.Verify(ctx, "demo", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := e.inv.Unseal(ctx, "demo", "1.0.0", out); err != nil {
		t.Fatal(err)
	}
	for _, p := range wantPaths {
		a, _ := os.ReadFile(filepath.Join(e.model, p))
		b, err := os.ReadFile(filepath.Join(out, p))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("unsealed %s differs: %v", p, err)
		}
	}
	// The unsealed directory with its model.sig verifies as an OMS-signed model.
	sig, _ := os.ReadFile(filepath.Join(out, "model.sig"))
	m, err := modelsig.Verify(sig, &e.inv.signer.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range m.Resources {
		b, _ := os.ReadFile(filepath.Join(out, r.Name))
		if d := sha256.Sum256(b); hex.EncodeToString(d[:]) != r.Digest {
			t.Fatalf("unsealed %s does not match its signed digest", r.Name)
		}
	}
	if _, err := e.inv.Unseal(ctx, "demo", "1.0.0", out); !errors.Is(err, ErrBadInput) {
		t.Fatalf("unseal into non-empty dir: %v", err)
	}
}

func TestVerifyNamesBadFileAndChunk(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	v, err := e.inv.Import(ctx, e.model, meta)
	if err != nil {
		t.Fatal(err)
	}
	var big store.File
	for _, f := range v.Files {
		if f.Path == "model.safetensors" {
			big = f
		}
	}
	p := filepath.Join(e.blobs, big.Blob)
	b, _ := os.ReadFile(p)
	b[92+(1<<20)+16+100] ^= 1 // a byte inside chunk 1
	os.WriteFile(p, b, 0o600)
	_, err = e.inv.Verify(ctx, "demo", "1.0.0")
	if !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), "model.safetensors: chunk 1:") {
		t.Fatalf("verify after tamper: %v", err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := e.inv.Unseal(ctx, "demo", "1.0.0", out); err == nil {
		t.Fatal("unsealed a tampered file")
	}
	if _, err := os.Stat(filepath.Join(out, "model.safetensors")); err == nil {
		t.Fatal("tampered plaintext written out")
	}
}

func TestVerifyDetectsSwappedBlobs(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	v, _ := e.inv.Import(ctx, e.model, meta)
	a, b := filepath.Join(e.blobs, v.Files[0].Blob), filepath.Join(e.blobs, v.Files[3].Blob)
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	os.WriteFile(a, bb, 0o600)
	os.WriteFile(b, ab, 0o600)
	if _, err := e.inv.Verify(ctx, "demo", "1.0.0"); !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), v.Files[0].Path+": header:") {
		t.Fatalf("swapped blobs: %v", err)
	}
}

func TestImportBadInput(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	for _, m := range []Meta{
		{Name: "Bad Name", Version: "1", Classification: "public"},
		{Name: "ok", Version: "1/../2", Classification: "public"},
		{Name: "ok", Version: "1", Classification: " "},
	} {
		if _, err := e.inv.Import(ctx, e.model, m); !errors.Is(err, ErrBadInput) {
			t.Fatalf("%+v: %v", m, err)
		}
	}
	if _, err := e.inv.Import(ctx, filepath.Join(e.model, "missing"), meta); !errors.Is(err, ErrBadInput) {
		t.Fatalf("missing dir: %v", err)
	}
	os.Symlink("/etc/hostname", filepath.Join(e.model, "link"))
	if _, err := e.inv.Import(ctx, e.model, meta); !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("symlink: %v", err)
	}
	if _, _, err := ParseRef("demo"); !errors.Is(err, ErrBadInput) {
		t.Fatal("ref without version accepted")
	}
	if _, err := e.inv.Verify(ctx, "nope", "1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown model: %v", err)
	}
}

func TestImportRefusesChangedFile(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	e.inv.afterRead = func(path string) {
		if strings.HasSuffix(path, "model.safetensors") {
			f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte("more"))
			f.Close()
		}
	}
	_, err := e.inv.Import(ctx, e.model, meta)
	if err == nil || !strings.Contains(err.Error(), "changed while it was being read") {
		t.Fatalf("changed file: %v", err)
	}
	if vs, _ := e.st.ListVersions(ctx, ""); len(vs) != 0 {
		t.Fatal("failed import recorded a version")
	}
	e.inv.afterRead = nil
	if _, err := e.inv.Import(ctx, e.model, meta); err != nil {
		t.Fatalf("re-run after failure: %v", err)
	}
}

// fullDisk fails the nth blob commit, like a disk that fills up.
type fullDisk struct {
	store.Blobs
	n *int
}

type failingPending struct {
	store.PendingBlob
	fail bool
}

func (f failingPending) Commit() error {
	if f.fail {
		return errors.New("no space left on device")
	}
	return f.PendingBlob.Commit()
}

func (d fullDisk) Create(ctx context.Context, name string) (store.PendingBlob, error) {
	p, err := d.Blobs.Create(ctx, name)
	*d.n--
	return failingPending{p, *d.n == 0}, err
}

func TestImportDiskFullLeavesNothing(t *testing.T) {
	ctx := context.Background()
	n := 2
	e := newEnv(t, func(b store.Blobs) store.Blobs { return fullDisk{b, &n} })
	_, err := e.inv.Import(ctx, e.model, meta)
	if err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("disk full: %v", err)
	}
	if vs, _ := e.st.ListVersions(ctx, ""); len(vs) != 0 {
		t.Fatal("failed import recorded a version")
	}
	if left, _ := os.ReadDir(filepath.Join(e.blobs, ".tmp")); len(left) != 0 {
		t.Fatalf("%d temp blobs left behind", len(left))
	}
	if _, err := e.inv.Import(ctx, e.model, meta); err != nil {
		t.Fatalf("re-run: %v", err)
	}
	if _, err := e.inv.Verify(ctx, "demo", "1.0.0"); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyDetectsAlteredRecord(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	e.inv.Import(ctx, e.model, meta)
	// Another inventory with a different signing key refuses the manifest.
	other := *e.inv
	other.signer, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := other.Verify(ctx, "demo", "1.0.0"); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("foreign signer: %v", err)
	}
}

func TestFailedImportCleansUp(t *testing.T) {
	ctx := context.Background()
	n := 2
	e := newEnv(t, func(b store.Blobs) store.Blobs { return fullDisk{b, &n} })
	if _, err := e.inv.Import(ctx, e.model, meta); err == nil {
		t.Fatal("import on a full disk succeeded")
	}
	if keys, _ := e.st.ListKeys(ctx); len(keys) != 0 {
		t.Fatalf("%d key rows left by a failed import", len(keys))
	}
	if names, _ := e.inv.blobs.List(ctx); len(names) != 0 {
		t.Fatalf("blobs left by a failed import: %v", names)
	}
}

// TestGC: what a killed import leaves (a model key and blobs no version names) goes, after
// the grace period; versions' keys and single-file keys stay.
func TestGC(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	if _, err := e.inv.Import(ctx, e.model, meta); err != nil {
		t.Fatal(err)
	}
	// A killed import: key row and one committed blob, no version.
	id, dek, _ := e.inv.keys.NewKey(ctx, store.PurposeModel)
	clear(dek)
	orphanKey := hex.EncodeToString(id[:])
	p, _ := e.inv.blobs.Create(ctx, orphanKey+"/0.srs")
	p.Write([]byte("sealed bytes"))
	p.Commit()
	fid, fdek, _ := e.inv.keys.NewKey(ctx, store.PurposeFile)
	clear(fdek)

	rep, err := e.inv.GC(ctx, time.Hour)
	if err != nil || rep != (GCReport{}) {
		t.Fatalf("GC within grace = %+v, %v", rep, err)
	}
	e.inv.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	rep, err = e.inv.GC(ctx, time.Hour)
	if err != nil || rep != (GCReport{Keys: 1, Blobs: 1}) {
		t.Fatalf("GC = %+v, %v", rep, err)
	}
	if _, err := e.st.GetKey(ctx, orphanKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("orphan key kept")
	}
	if _, err := e.st.GetKey(ctx, hex.EncodeToString(fid[:])); err != nil {
		t.Fatal("single-file key collected")
	}
	if _, err := e.inv.Verify(ctx, "demo", "1.0.0"); err != nil {
		t.Fatalf("GC damaged a version: %v", err)
	}
}

// TestAuditFailClosed: when the audit log cannot record, nothing is imported and no
// plaintext is released; the events that were recorded say what happened.
func TestAuditFailClosed(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	if _, err := e.inv.Import(ctx, e.model, meta); err != nil {
		t.Fatal(err)
	}
	if _, err := e.inv.Verify(ctx, "demo", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	want := []string{"model.import allow", "model.verify allow"}
	if strings.Join(e.audit.events, ",") != strings.Join(want, ",") {
		t.Fatalf("events %v, want %v", e.audit.events, want)
	}
	e.audit.fail = errors.New("audit log unavailable")
	out := filepath.Join(t.TempDir(), "out")
	if _, err := e.inv.Unseal(ctx, "demo", "1.0.0", out); err == nil {
		t.Fatal("unsealed without an audit record")
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Fatalf("plaintext written without an audit record: %d files", len(entries))
	}
	m := meta
	m.Version = "2"
	if _, err := e.inv.Import(ctx, e.model, m); err == nil {
		t.Fatal("imported without an audit record")
	}
	if _, err := e.st.GetVersion(ctx, "demo", "2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("version recorded without an audit record")
	}
	if _, err := e.inv.Verify(ctx, "demo", "1.0.0"); err == nil {
		t.Fatal("verify reported success without an audit record")
	}
}
