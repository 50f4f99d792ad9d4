package custody

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/strongroom/strongroom/internal/attest"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// Errors callers act on (the HTTP API maps each to a status and code, see status.go).
var (
	ErrDenied          = errors.New("lease denied by policy")
	ErrAttestation     = errors.New("attestation refused")
	ErrReplay          = errors.New("nonce unknown, expired or already used")
	ErrPendingApproval = errors.New("waiting for approvals")
	ErrApproval        = errors.New("approval refused")
	ErrRejected        = errors.New("release denied by an approver")
	ErrEgress          = errors.New("egress budget exhausted")
	ErrRevoked         = errors.New("lease revoked")
	ErrExpired         = errors.New("lease expired")
	ErrUnknown         = errors.New("not found")
	ErrDisabled        = errors.New("model version disabled")
	ErrJoinToken       = errors.New("join token invalid, expired or used")
	ErrRuntimeRevoked  = errors.New("runtime revoked")
	ErrBadRequest      = errors.New("bad request")
)

// Store is the persistence custody needs.
type Store interface {
	store.Custody
	GetVersion(ctx context.Context, model, version string) (store.Version, error)
	GetPrincipal(ctx context.Context, id string) (store.Principal, error)
}

// Keys unwraps and creates data keys (the keyring).
type Keys interface {
	Key(ctx context.Context, id string) ([]byte, error)
	NewKey(ctx context.Context, purpose string) ([16]byte, []byte, error)
}

// Decision is what policy decides a lease on.
type Decision struct {
	Runtime        store.Runtime
	Model, Version string
	Attrs          modelrec.Attrs // the version's inventory record
	Attestation    attest.Result
	Renewal        bool
}

// Decider evaluates the lease policy (Cedar in production); reason is for the operator.
type Decider func(ctx context.Context, d Decision) (allow bool, reason string)

// Auditor records an event; an error means it was not recorded, and the release must not
// happen.
type Auditor func(ctx context.Context, ev audit.Event) error

// Config wires a Service. Zero durations take the defaults in New.
type Config struct {
	Store  Store
	Keys   Keys
	Decide Decider
	Audit  Auditor
	Attest attest.Set
	CA     *CA
	Blobs  interface {
		Open(ctx context.Context, name string) (store.Blob, error)
	}

	LeaseTTL    time.Duration // default 10m
	CertTTL     time.Duration // default 24h
	ApprovalTTL time.Duration // default 1h: a pending or granted approval lapses after this
	// Approvals maps a classification to the number k of distinct approvers its releases
	// need (e.g. "restricted": 2); absent or 0: none.
	Approvals map[string]int
	// Daily egress budgets in sealed bytes released (0: unlimited).
	EgressPerRuntime, EgressTotal int64
	PollInterval                  time.Duration // how often revocations by other processes are picked up; default 100ms
	// WatchGrace is how long a lease outlives its runtime's watch stream: when the stream
	// drops and no replica sees it come back within this, the lease ends; default 5s.
	WatchGrace time.Duration
	// StaleAfter ends a lease whose runtime no replica has heard from for this long
	// (replicas holding a watch stream note it every Heartbeat); default 30s.
	StaleAfter time.Duration

	Now func() time.Time
	Log *slog.Logger
}

// Service is the custody control plane.
type Service struct {
	cfg Config

	mu       sync.Mutex
	watchers map[string][]chan string // lease id → subscribers
	notified map[string]time.Time     // revocations already pushed
	life     context.Context          // Run's: lease ending runs only while the service runs
	started  time.Time                // when Run started (staleness counts from then at the earliest)
	closing  chan struct{}            // closed by Shutdown: watch streams end
	shutOnce sync.Once
}

// Shutdown ends the open watch streams (the server is stopping; runtimes reconnect to
// another replica or when it is back), so that an HTTP server's graceful shutdown need not
// wait for them. Register it with http.Server.RegisterOnShutdown.
func (s *Service) Shutdown() { s.shutOnce.Do(func() { close(s.closing) }) }

// New checks cfg and returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Keys == nil || cfg.Decide == nil || cfg.Audit == nil || cfg.CA == nil {
		return nil, errors.New("custody: store, keys, decider, auditor and CA are required")
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 10 * time.Minute
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = 24 * time.Hour
	}
	if cfg.ApprovalTTL <= 0 {
		cfg.ApprovalTTL = time.Hour
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if cfg.WatchGrace <= 0 {
		cfg.WatchGrace = 5 * time.Second
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, watchers: map[string][]chan string{}, notified: map[string]time.Time{}, closing: make(chan struct{})}, nil
}

// LeaseTTL is the lease lifetime (runtimes renew at a third of it).
func (s *Service) LeaseTTL() time.Duration { return s.cfg.LeaseTTL }

func (s *Service) now() time.Time { return s.cfg.Now().UTC() }

func newID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// audit records and logs a failure to record (the caller refuses then).
func (s *Service) audit(ctx context.Context, ev audit.Event) error {
	if err := s.cfg.Audit(ctx, ev); err != nil {
		s.cfg.Log.Error("custody: audit failed; refusing", "kind", ev.Kind, "err", err)
		return fmt.Errorf("custody: audit unavailable: %w", err)
	}
	return nil
}

// maxNonces is how many unused nonces one runtime may hold; asking for more retires its
// oldest, so a runtime cannot grow the store.
const maxNonces = 32

// nonceTTL is how long a nonce waits for the attestation that uses it.
const nonceTTL = 2 * time.Minute

// Nonce issues a single-use challenge for a runtime's next attestation. Nonces live in the
// store, so that any control-plane replica can take one another issued.
func (s *Service) Nonce(ctx context.Context, runtime string) ([]byte, error) {
	b := make([]byte, 32)
	rand.Read(b)
	now := s.now()
	if err := s.cfg.Store.IssueNonce(ctx, runtime, b, now, now.Add(nonceTTL), maxNonces); err != nil {
		return nil, fmt.Errorf("custody: %w", err)
	}
	return b, nil
}

func (s *Service) takeNonce(ctx context.Context, runtime string, b []byte) (bool, error) {
	return s.cfg.Store.TakeNonce(ctx, runtime, b, s.now())
}
