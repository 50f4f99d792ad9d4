// Package app wires Strongroom's pieces together from a data directory and its config, so
// that every command and the dev server build them the same way.
package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/redis/go-redis/v9"
	"github.com/strongroom/strongroom/internal/detect"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/fsutil"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/kms"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/netguard"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/redact"
	"github.com/strongroom/strongroom/internal/store"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// App is an opened data directory.
type App struct {
	DataDir    string
	ConfigPath string // --config, "" for DATA/config.json
	// KeyWatchInterval is how often a gateway polls the store for keys revoked elsewhere
	// (default 250 ms; with Redis, revocations also arrive at once by publish).
	KeyWatchInterval time.Duration
	// ModelWatchInterval is how often the model records are re-read (default 1 s).
	ModelWatchInterval time.Duration
	Config             config.Config
	Detect             detect.Config // Config.Detect parsed (detect.ParseConfig)
	Store              store.Store
	Blobs              store.Blobs
	KEK                kms.KEK
	Keys               *kms.Keyring
	Inventory          *inventory.Inventory
	AuditLog           *audit.Log
	Metrics            *prometheus.Registry
	Redactor           *audit.Redactor
	Log                *slog.Logger
	actor              map[string]string

	policyMu sync.Mutex
	policy   *policy.Engine
	redisMu  sync.Mutex
	redis    *redis.Client
	// responders opened by Responder: Close waits for their incidents in flight.
	responders []*detect.Responder
	gateways   []*gateway.Gateway
	keysOnce   sync.Once
	keys       *authn.Keys
	storeWatch *storeWatch
	storeAlert sync.Once
	guardOnce  sync.Once
	guard      *netguard.Guard
	guardErr   error
	modelsMu   sync.Mutex
	models     *modelrec.Table
	authOnce   sync.Once
	auth       authn.Chain
	authErr    error
	custodyMu  sync.Mutex
	custody    *custody.Service
	caOnce     sync.Once
	ca         *custody.CA
	caErr      error
	batchOnce  sync.Once
	batcher    *audit.Batcher
	journalKey []byte // MACs the request journal's frames (derived from the audit key)
	busKey     []byte // seals the detection bus's records (derived from the audit key)
	limitsKey  []byte // names the shared limiter's scopes in Redis (derived from the audit key)
	revokeKey  []byte // seals key-revocation announcements on Redis (derived from the audit key)
	// revocationsRejected counts announcements dropped unopened (revocation.go).
	revocationsRejected prometheus.Counter
	tracerMu            sync.Mutex
	tracer              trace.Tracer
	tracerProvider      *sdktrace.TracerProvider

	// The App's own goroutines (goBackground) run until Close cancels bg and waits.
	bg     context.Context
	bgStop context.CancelFunc
	bgWG   sync.WaitGroup
}

// goBackground runs f in a goroutine the App owns: f's context ends at Close, which
// waits for f to return before closing what f may use.
func (a *App) goBackground(f func(ctx context.Context)) {
	a.bgWG.Add(1)
	go func() {
		defer a.bgWG.Done()
		f(a.bg)
	}()
}

// InitOptions choose the KEK provider for a new data directory.
type InitOptions struct {
	KMS          string // "local" (default) or "pkcs11"
	PKCS11       config.PKCS11
	PKCS11KeyLbl string // key label on the token; created if missing
	Store        string // optional store DSN (default: SQLite in the data directory)
	// InternalCountry: gateway.internal_country (where loopback and private clients are).
	InternalCountry string
}

// Init creates a data directory: config, KEK, manifest signing key (all 0600). It refuses
// to touch a directory that already has a config.
func Init(ctx context.Context, dataDir string, o InitOptions) (config.Config, error) {
	cfgPath := filepath.Join(dataDir, config.FileName)
	if _, err := os.Stat(cfgPath); err == nil {
		return config.Config{}, fmt.Errorf("init: %s already exists", cfgPath)
	}
	for _, d := range []string{"keys", "policies"} {
		if err := os.MkdirAll(filepath.Join(dataDir, d), 0o700); err != nil {
			return config.Config{}, fmt.Errorf("init: %w", err)
		}
	}
	if err := os.Chmod(dataDir, 0o700); err != nil {
		return config.Config{}, fmt.Errorf("init: %w", err)
	}
	c := config.Defaults()
	// A new deployment watches before it acts: every detector starts in shadow mode until
	// the operator promotes it (`detect promote`), having read `detect report`.
	c.Detect = detect.Config{Modes: map[string]string{"*": "shadow"}}.JSON()
	if o.Store != "" {
		c.Store = o.Store
	}
	if o.InternalCountry != "" && (len(o.InternalCountry) != 2 || strings.ToUpper(o.InternalCountry) != o.InternalCountry) {
		return c, fmt.Errorf("init: --internal-country %q: want an ISO 3166-1 alpha-2 code such as US", o.InternalCountry)
	}
	c.Gateway.InternalCountry = o.InternalCountry
	switch o.KMS {
	case "", "local":
		id, err := kms.GenerateLocal(filepath.Join(dataDir, c.KMS.KeyDir))
		if err != nil {
			return c, fmt.Errorf("init: %w", err)
		}
		c.KMS.Current = id
	case "pkcs11":
		if o.PKCS11.PINEnv == "" {
			o.PKCS11.PINEnv = c.KMS.PKCS11.PINEnv
		}
		c.KMS.PKCS11 = o.PKCS11
		k, err := kms.OpenPKCS11(pkcs11Config(c.KMS.PKCS11, o.PKCS11KeyLbl), true)
		if err != nil {
			return c, fmt.Errorf("init: %w", err)
		}
		c.KMS.Current = k.ID()
		k.Close()
	default:
		return c, fmt.Errorf("init: unknown kms provider %q (want local or pkcs11)", o.KMS)
	}
	if err := writeSigningKey(filepath.Join(dataDir, c.SigningKey)); err != nil {
		return c, fmt.Errorf("init: %w", err)
	}
	if err := config.Write(cfgPath, c); err != nil {
		return c, fmt.Errorf("init: %w", err)
	}
	// The store is created here, once; later opens refuse a missing one.
	resolved, err := config.Load(dataDir, "")
	if err != nil {
		return c, fmt.Errorf("init: %w", err)
	}
	st, err := store.Open(ctx, resolved.Store)
	if err != nil {
		return c, fmt.Errorf("init: %w", err)
	}
	st.Close()
	// The first entry of the log: the deployment and its keys came into being.
	a, err := Open(ctx, dataDir, "", nil)
	if err != nil {
		return c, fmt.Errorf("init: %w", err)
	}
	vkey, _ := os.ReadFile(LogVKeyPath(a.Config.Audit.LogKey))
	err = a.Audit(ctx, audit.Event{Kind: audit.KindDeploymentInit, Decision: audit.Allow, Subject: map[string]string{"data_dir": dataDir}, Fields: map[string]string{"kek": c.KMS.Current, "log_vkey": strings.TrimSpace(string(vkey))}})
	return c, errors.Join(err, a.Close())
}

func pkcs11Config(p config.PKCS11, keyLabel string) kms.PKCS11Config {
	return kms.PKCS11Config{Module: p.Module, TokenLabel: p.TokenLabel, PIN: os.Getenv(p.PINEnv), KeyLabel: keyLabel}
}

func writeSigningKey(path string) error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	defer clear(der)
	if err := fsutil.WriteFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(PublicKeyPath(path), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// PublicKeyPath is where the signing key's public half is kept, for outside verifiers.
func PublicKeyPath(signingKey string) string {
	return strings.TrimSuffix(signingKey, ".pem") + ".pub.pem"
}

func readSigningKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := fsutil.ReadPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	defer clear(b)
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("signing key %s: no PEM block", path)
	}
	defer clear(blk.Bytes)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || (ec.Curve != elliptic.P256() && ec.Curve != elliptic.P384()) {
		return nil, fmt.Errorf("signing key %s: want an ECDSA P-256 or P-384 key", path)
	}
	return ec, nil
}

// LoadConfig reads the config without opening anything.
func LoadConfig(dataDir, configPath string) (config.Config, error) {
	c, err := config.Load(dataDir, configPath)
	if err == nil {
		_, err = detect.ParseConfig(c.Detect) // the section config leaves to detect
	}
	return c, err
}

// Open loads the config and opens the store, KEK, keyring and inventory.
func Open(ctx context.Context, dataDir, configPath string, log *slog.Logger) (*App, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := config.Load(dataDir, configPath)
	if err != nil {
		return nil, err
	}
	dc, err := detect.ParseConfig(c.Detect)
	if err != nil {
		return nil, err
	}
	a := &App{DataDir: dataDir, ConfigPath: configPath, Config: c, Detect: dc, Log: log, Metrics: prometheus.NewRegistry()}
	a.bg, a.bgStop = context.WithCancel(context.Background())
	fail := func(err error) (*App, error) {
		a.Close()
		return nil, err
	}
	signer, err := readSigningKey(c.SigningKey)
	if err != nil {
		return fail(err)
	}
	if a.KEK, err = a.ResolveKEK(ctx, c.KMS.Current); err != nil {
		return fail(err)
	}
	if p := sqlitePath(c.Store); p != "" {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			return fail(fmt.Errorf("%w: %s does not exist but %s was initialised; restore it from a backup (an empty store would forget every key and revocation)", ErrStoreMissing, p, dataDir))
		}
	}
	if a.Store, err = store.Open(ctx, c.Store); err != nil {
		return fail(err)
	}
	if storeUnverifiedRemote(c.Store) {
		a.Log.Warn("store: the PostgreSQL DSN reaches another host without TLS that checks its certificate: wrapped keys, principals and leases cross the network open to the path; use sslmode=verify-full with sslrootcert",
			"store", redact.DSN(c.Store))
	}
	if p := sqlitePath(c.Store); p != "" {
		if a.storeWatch, err = watchStore(p); err != nil {
			return fail(err)
		}
	}
	a.revocationsRejected = prometheus.NewCounter(prometheus.CounterOpts{Name: "strongroom_gateway_revocation_announcements_rejected_total",
		Help: "Key-revocation announcements on Redis dropped because they did not open under the revocation key or were stale (forged, or from a replica of an older version)."})
	if err := a.Metrics.Register(a.revocationsRejected); err != nil {
		return fail(err)
	}
	if err := a.registerStoreMetrics(); err != nil {
		return fail(err)
	}
	if a.Blobs, err = store.NewFSBlobs(c.Blobs); err != nil {
		return fail(err)
	}
	if err := a.openAudit(ctx); err != nil {
		return fail(err)
	}
	a.Keys = kms.NewKeyring(a.Store, a.KEK, a.ResolveKEK, nil)
	if a.Inventory, err = inventory.New(inventory.Config{Store: a.Store, Blobs: a.Blobs, Keys: a.Keys, Signer: signer, Auditor: a, Logger: log}); err != nil {
		return fail(err)
	}
	return a, nil
}

// ResolveKEK opens a KEK by id: "local-…" from the key directory, "pkcs11:TOKEN/LABEL"
// from the configured module with the PIN from the configured environment variable.
func (a *App) ResolveKEK(_ context.Context, id string) (kms.KEK, error) {
	switch {
	case strings.HasPrefix(id, "local-") && !strings.ContainsAny(id, `/\`):
		k, err := kms.OpenLocal(kms.LocalPath(a.Config.KMS.KeyDir, id))
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		if k.ID() != id {
			return nil, fmt.Errorf("kms: key file %s holds KEK %s, not %s", kms.LocalPath(a.Config.KMS.KeyDir, id), k.ID(), id)
		}
		return k, nil
	case strings.HasPrefix(id, "pkcs11:"):
		token, label, ok := strings.Cut(strings.TrimPrefix(id, "pkcs11:"), "/")
		if !ok {
			return nil, fmt.Errorf("kms: bad KEK id %q", id)
		}
		p := a.Config.KMS.PKCS11
		p.TokenLabel = token
		k, err := kms.OpenPKCS11(pkcs11Config(p, label), false)
		if err != nil {
			return nil, err
		}
		return k, nil
	}
	return nil, fmt.Errorf("kms: unknown KEK id %q", id)
}

// Close releases everything Open acquired.
func (a *App) Close() error {
	var errs []error
	if a.bgStop != nil {
		a.bgStop()
		a.bgWG.Wait()
	}
	for _, r := range a.responders {
		r.Wait() // incidents and webhooks in flight, while the log and store are open
	}
	for _, g := range a.gateways {
		g.FlushRefusals(context.Background()) // the last window's summaries, before the log closes
	}
	if a.batcher != nil {
		a.batcher.Close() // the last batch of request records, while the log is open
	}
	errs = append(errs, a.closeTracing())
	if a.AuditLog != nil {
		// Waits until a published checkpoint covers what this process recorded.
		errs = append(errs, a.AuditLog.Close(context.Background()))
	}
	if a.Keys != nil {
		errs = append(errs, a.Keys.Close())
	}
	if a.KEK != nil {
		errs = append(errs, a.KEK.Close())
	}
	if a.Store != nil {
		errs = append(errs, a.Store.Close())
	}
	if a.redis != nil {
		errs = append(errs, a.redis.Close())
	}
	return errors.Join(errs...)
}
