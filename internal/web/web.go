// Package web is the security console: server-rendered pages over the deployment's state,
// served by the control plane at /console/, whose every action goes through the same
// operations (and Cedar policy) as the CLI and is recorded in the transparency log.
package web

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Ops is what the console asks of the deployment: the operations the CLI runs (App
// implements it), each recorded in the log with the console user as actor.
type Ops interface {
	AuthenticateKey(ctx context.Context, token string) (store.Principal, error)
	VerifyTOTP(ctx context.Context, principal, code string) error
	DecideConsole(ctx context.Context, r policy.ConsoleRequest) (policy.Decision, error)
	// Audit records ev (fail closed: an error means it was not recorded); with no actor in
	// ev, the actor is the one audit.WithActor put in ctx.
	Audit(ctx context.Context, ev audit.Event) error

	RevokeLease(ctx context.Context, id, reason string) (int, error)
	RevokeRuntime(ctx context.Context, id, reason string) (int, error)
	DisableModel(ctx context.Context, name, version, reason string) (int, error)
	DecideApproval(ctx context.Context, id, approver, code, justification string, approve bool) (store.ApprovalRequest, error)
	LiftSanction(ctx context.Context, principal, reason string) error
	CloseIncident(ctx context.Context, id, note string) error
	AddPrincipal(ctx context.Context, p store.Principal) error
	CreateKey(ctx context.Context, principal string, ttl time.Duration, models []string) (string, store.APIKey, error)
	RotateKey(ctx context.Context, id string, overlap time.Duration) (string, store.APIKey, error)
	RevokeKey(ctx context.Context, id string) error

	CheckSignature(v store.Version) error
	Prove(ctx context.Context, index uint64) (audit.ProvenEntry, []byte, error)
}

// incidentReporter is the report operation (internal/report through the App); until the
// App has it the console says the report is not available.
type incidentReporter interface {
	IncidentReport(ctx context.Context, id, format string) (body []byte, contentType string, err error)
}

// complianceReporter is the compliance report (internal/report through the App).
type complianceReporter interface {
	ComplianceReport(ctx context.Context, from, to time.Time, format string) (body []byte, contentType string, err error)
}

// Store is what the console reads directly: lists and pages of state.
type Store interface {
	ListVersions(ctx context.Context, model string) ([]store.Version, error)
	ListLeases(ctx context.Context, q store.LeaseQuery) ([]store.Lease, error)
	ListRuntimes(ctx context.Context) ([]store.Runtime, error)
	ListApprovals(ctx context.Context, state string) ([]store.ApprovalRequest, error)
	PrincipalsPage(ctx context.Context, after string, limit int) ([]store.Principal, error)
	GetPrincipal(ctx context.Context, id string) (store.Principal, error)
	ListAPIKeys(ctx context.Context, principal string) ([]store.APIKey, error)
	SearchAudit(ctx context.Context, q store.AuditQuery) ([]store.AuditEvent, error)
	AuditHistogram(ctx context.Context, kind string, since time.Time, bucket time.Duration) ([]store.AuditBucket, error)
	AuditIndexed(ctx context.Context) (uint64, error)
	ListIncidents(ctx context.Context, state string) ([]store.Incident, error)
	GetIncident(ctx context.Context, id string) (store.Incident, error)
	ListSanctions(ctx context.Context, now time.Time) ([]store.Sanction, error)
}

// Config builds a Console. Ops, Store and LogVKey are required.
type Config struct {
	Ops       Ops
	Store     Store
	LogVKey   string // the log's note verifier key: the browser checks checkpoints with it
	PolicyDir string // operator policies (and *.yaml test cases) shown on the policies page
	OIDC      *OIDC  // nil: API key + TOTP sign-in only
	// Digest keys client addresses before they are recorded (the audit log's HMAC).
	Digest func(string) string
	Log    *slog.Logger
	Now    func() time.Time
	// IdleTimeout and MaxAge bound a session (defaults 15 min and 8 h); StepUpFor is how
	// long a TOTP step-up allows destructive actions (5 min).
	IdleTimeout, MaxAge, StepUpFor time.Duration
	// Events is how often the live-update stream looks for changes (1 s).
	Events time.Duration
}

// Console serves /console/.
type Console struct {
	cfg      Config
	sessions *sessions
	limiter  *limiter
	pages    map[string]*template.Template
	mux      *http.ServeMux
	static   http.Handler
	stop     chan struct{} // closed by Shutdown: live streams end
	stopOnce sync.Once
	hub      hub
}

// Shutdown ends the live-update streams (http.Server.RegisterOnShutdown), which would
// otherwise hold a graceful shutdown for its whole grace.
func (c *Console) Shutdown() { c.stopOnce.Do(func() { close(c.stop) }) }

// New checks cfg, sets defaults and parses the templates.
func New(cfg Config) (*Console, error) {
	if cfg.Ops == nil || cfg.Store == nil || cfg.LogVKey == "" {
		return nil, errors.New("web: Ops, Store and LogVKey are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Digest == nil {
		cfg.Digest = func(string) string { return "" }
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.IdleTimeout, 15*time.Minute)
	def(&cfg.MaxAge, 8*time.Hour)
	def(&cfg.StepUpFor, 5*time.Minute)
	def(&cfg.Events, time.Second)
	c := &Console{stop: make(chan struct{}), cfg: cfg, sessions: newSessions(cfg.IdleTimeout, cfg.MaxAge, cfg.Now), limiter: newLimiter(cfg.Now)}
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, err
	}
	sub, _ := fs.Sub(staticFS, "static")
	c.static = http.StripPrefix("/console/static/", http.FileServerFS(sub))
	c.routes()
	return c, nil
}

// Handler serves the console under /console/ with its security headers on every answer.
func (c *Console) Handler() http.Handler { return headers(c.mux) }

// csp allows the console's own script and style files and nothing else: no inline script
// or style, no framing, forms only to itself.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cross-Origin-Resource-Policy", "same-origin")
		if r.TLS != nil {
			hd.Set("Strict-Transport-Security", "max-age=31536000")
		}
		if len(r.URL.Path) < len("/console/static/") || r.URL.Path[:len("/console/static/")] != "/console/static/" {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, r)
	})
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// httpError is an error with the status the console answers.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

// status maps an error to the answer's status: the one place that decides it.
func status(err error) int {
	var he *httpError
	switch {
	case errors.As(err, &he):
		return he.status
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrExists):
		return http.StatusConflict
	case errors.Is(err, audit.ErrSecurity):
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}
