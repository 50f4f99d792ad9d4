// Package inventory imports model directories sealed, records models, versions, files,
// digests and classification, signs each version's manifest (OMS v1.0) and verifies and
// unseals them again.
package inventory

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/kms"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// Errors callers map to exit codes and statuses.
var (
	// ErrBadInput is a malformed name, version, reference or directory: a usage error.
	ErrBadInput = errors.New("bad input")
	ErrNotFound = store.ErrNotFound
	ErrExists   = store.ErrExists
)

// Meta describes a version being imported.
type Meta struct {
	Name           string
	Version        string
	Classification string // free text: "public", "restricted", "export-controlled:4E091"
	Owner          string
	Env            string
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
)

// Validate checks a Meta before any work is done.
func (m Meta) Validate() error {
	if err := checkRef(m.Name, m.Version); err != nil {
		return err
	}
	if strings.TrimSpace(m.Classification) == "" {
		return fmt.Errorf("%w: classification is required (e.g. public, restricted, export-controlled:4E091)", ErrBadInput)
	}
	return nil
}

func checkRef(name, version string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: model name %q: want lowercase letters, digits, '.', '_' or '-'", ErrBadInput, name)
	}
	if !versionRE.MatchString(version) {
		return fmt.Errorf("%w: version %q: want letters, digits, '.', '_', '+' or '-'", ErrBadInput, version)
	}
	return nil
}

// ParseRef splits "NAME:VERSION".
func ParseRef(ref string) (name, version string, err error) {
	name, version, ok := strings.Cut(ref, ":")
	if !ok {
		return "", "", fmt.Errorf("%w: model reference %q: want NAME:VERSION", ErrBadInput, ref)
	}
	return name, version, checkRef(name, version)
}

// Auditor records security events. An error means the event was not recorded, and the
// operation it was for must not go on (fail closed).
type Auditor interface {
	Audit(ctx context.Context, ev audit.Event) error
}

// Store is the persistence the inventory needs: versions and their records, and the key
// table (garbage collection of keys and blobs of failed imports).
type Store interface {
	CreateVersion(ctx context.Context, v store.Version) error
	CreateExternalVersion(ctx context.Context, v store.Version) error
	GetVersion(ctx context.Context, model, version string) (store.Version, error)
	ListVersions(ctx context.Context, model string) ([]store.Version, error)
	SetVersionAttrs(ctx context.Context, model, version string, a modelrec.Attrs, at time.Time) error
	ModelRecords(ctx context.Context) ([]modelrec.Record, error)
	ListKeys(ctx context.Context) ([]store.Key, error)
	DeleteKey(ctx context.Context, id string) error
}

// Config wires an Inventory.
type Config struct {
	Store   Store
	Blobs   store.Blobs
	Keys    *kms.Keyring
	Signer  *ecdsa.PrivateKey // signs manifests; its public key verifies them
	Auditor Auditor
	Logger  *slog.Logger
	Now     func() time.Time
}

// Inventory is the model inventory.
type Inventory struct {
	st     Store
	blobs  store.Blobs
	keys   *kms.Keyring
	signer *ecdsa.PrivateKey
	audit  Auditor
	log    *slog.Logger
	now    func() time.Time

	afterRead func(path string) // test hook: runs after a file is read, before it is re-checked
}

// New checks cfg and returns an Inventory.
func New(cfg Config) (*Inventory, error) {
	if cfg.Store == nil || cfg.Blobs == nil || cfg.Keys == nil || cfg.Signer == nil || cfg.Auditor == nil {
		return nil, errors.New("inventory: store, blobs, keys, signer and auditor are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Inventory{st: cfg.Store, blobs: cfg.Blobs, keys: cfg.Keys, signer: cfg.Signer, audit: cfg.Auditor, log: cfg.Logger, now: cfg.Now}, nil
}

// Get returns one version.
func (inv *Inventory) Get(ctx context.Context, name, version string) (store.Version, error) {
	if err := checkRef(name, version); err != nil {
		return store.Version{}, err
	}
	return inv.st.GetVersion(ctx, name, version)
}

// List returns the versions of one model, or of all models when name is "".
func (inv *Inventory) List(ctx context.Context, name string) ([]store.Version, error) {
	return inv.st.ListVersions(ctx, name)
}

// fileContext binds a sealed file to its place in the inventory (see package seal).
func fileContext(name, version, path string) string {
	return name + "@" + version + "/" + path
}

func subject(name, version string) map[string]string {
	return map[string]string{"model": name, "version": version}
}

// decision turns an operation's outcome into an audit decision and reason.
func decision(err error) (string, string) {
	if err != nil {
		return "deny", err.Error()
	}
	return "allow", ""
}
