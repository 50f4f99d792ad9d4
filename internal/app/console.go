package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/redact"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/web"
)

// The operations below are the console's (internal/web) and the CLI's alike: each records
// its event (with the console user as actor, audit.WithActor) before or as it takes effect.

// AuthenticateKey is the principal behind an API key (the console's first factor).
func (a *App) AuthenticateKey(ctx context.Context, token string) (store.Principal, error) {
	p, err := a.APIKeys().Authenticate(ctx, token)
	if err != nil {
		return store.Principal{}, err
	}
	return p.Principal, nil
}

// VerifyTOTP checks principal's TOTP code, once per 30-second step (custody's enrolment).
func (a *App) VerifyTOTP(ctx context.Context, principal, code string) error {
	svc, err := a.Custody(ctx)
	if err != nil {
		return err
	}
	return svc.VerifyTOTP(ctx, principal, code)
}

// DecideConsole asks the policy whether a console user may view or perform an operation.
func (a *App) DecideConsole(ctx context.Context, r policy.ConsoleRequest) (policy.Decision, error) {
	eng, err := a.Policy(ctx)
	if err != nil {
		return policy.Decision{}, err
	}
	return eng.DecideConsole(r), nil
}

// RevokeLease revokes one lease (its engine is killed).
func (a *App) RevokeLease(ctx context.Context, id, reason string) (int, error) {
	return a.revokeLeases(ctx, store.LeaseQuery{Lease: id}, reason)
}

func (a *App) revokeLeases(ctx context.Context, q store.LeaseQuery, reason string) (int, error) {
	svc, err := a.Custody(ctx)
	if err != nil {
		return 0, err
	}
	ls, err := svc.Revoke(ctx, q, reason)
	return len(ls), err
}

// RevokeRuntime ends a runtime's identity and every lease it holds.
func (a *App) RevokeRuntime(ctx context.Context, id, reason string) (int, error) {
	svc, err := a.Custody(ctx)
	if err != nil {
		return 0, err
	}
	ls, err := svc.RevokeRuntime(ctx, id, reason)
	return len(ls), err
}

// DisableModel refuses new leases on a version and revokes the live ones.
func (a *App) DisableModel(ctx context.Context, name, version, reason string) (int, error) {
	svc, err := a.Custody(ctx)
	if err != nil {
		return 0, err
	}
	ls, err := svc.DisableVersion(ctx, name, version, reason)
	return len(ls), err
}

// DecideApproval records an approver's decision (a fresh TOTP code is checked by custody).
func (a *App) DecideApproval(ctx context.Context, id, approver, code, justification string, approve bool) (store.ApprovalRequest, error) {
	svc, err := a.Custody(ctx)
	if err != nil {
		return store.ApprovalRequest{}, err
	}
	return svc.DecideWith(ctx, custody.ApprovalDecision{ID: id, Approver: approver, Code: code, Justification: justification, Approve: approve})
}

// LiftSanction ends a principal's sanction everywhere (gateways reload within 2 s).
func (a *App) LiftSanction(ctx context.Context, principal, reason string) error {
	if reason == "" {
		return errors.New("a reason is required")
	}
	if err := a.Audit(ctx, audit.Event{Kind: audit.KindDetectLift, Decision: audit.Allow, Reason: reason, Subject: map[string]string{"principal": principal}}); err != nil {
		return err
	}
	return a.Store.LiftSanction(ctx, principal)
}

// CloseIncident closes an open incident with a note saying why.
func (a *App) CloseIncident(ctx context.Context, id, note string) error {
	if note == "" {
		return errors.New("a note is required: say why it is closed")
	}
	if err := a.Audit(ctx, audit.Event{Kind: audit.KindIncidentClose, Decision: audit.Allow, Reason: note, Subject: map[string]string{"incident": id}}); err != nil {
		return err
	}
	return a.Store.CloseIncident(ctx, id, time.Now(), note)
}

// CheckSignature verifies a version's OMS signature against its recorded digests.
func (a *App) CheckSignature(v store.Version) error { return a.Inventory.CheckSignature(v) }

// Prove proves entry (or request record) index in the log's current signed checkpoint and
// returns the proof with the checkpoint, whose signature the caller (a browser) checks.
func (a *App) Prove(ctx context.Context, index uint64) (audit.ProvenEntry, []byte, error) {
	src, err := a.ReportSource()
	if err != nil {
		return audit.ProvenEntry{}, nil, err
	}
	ref, cp, err := src.Checkpoint(ctx)
	if err != nil {
		return audit.ProvenEntry{}, nil, err
	}
	p, err := audit.Prove(ctx, src.Fetch, src.Opts, cp.Size, cp.Hash, index)
	if err != nil {
		return audit.ProvenEntry{}, nil, fmt.Errorf("entry %d: %w", index, err)
	}
	return p, []byte(ref.Checkpoint), nil
}

// LogVKey is the log's note verifier key (keys/log.pub): what the browser checks
// checkpoints with.
func (a *App) LogVKey() (string, error) {
	_, vkey, err := a.LogVerifier()
	return vkey, err
}

var _ web.Ops = (*App)(nil)

// Console builds the security console served at /console/ on the control plane.
func (a *App) Console(ctx context.Context) (*web.Console, error) {
	vkey, err := a.LogVKey()
	if err != nil {
		return nil, err
	}
	if _, err := a.Policy(ctx); err != nil {
		return nil, err
	}
	return web.New(web.Config{Ops: a, Store: a.Store, LogVKey: vkey, PolicyDir: a.Config.Gateway.PolicyDir,
		Digest: a.Redactor.Digest, Log: a.Log, OIDC: a.consoleOIDC(ctx)})
}

// consoleOIDC is the console's identity-provider sign-in, if configured. A provider that
// cannot be discovered at start leaves the console with API key + TOTP only (and says so):
// the control plane still serves the log and health.
func (a *App) consoleOIDC(ctx context.Context) *web.OIDC {
	c := a.Config.Console.OIDC
	if c == nil {
		return nil
	}
	fail := func(err error) *web.OIDC {
		a.Log.Error("ALERT: console sign-in with the identity provider is off", "issuer", redact.URL(c.Issuer), "err", redact.Error(err, redact.URL, c.Issuer, c.RedirectURL))
		return nil
	}
	if c.RedirectURL == "" {
		return fail(errors.New("console.oidc.redirect_url is required"))
	}
	l, err := authn.DiscoverLogin(ctx, c.Issuer, c.ClientID, c.PrincipalClaim, nil)
	if err != nil {
		return fail(err)
	}
	secret := ""
	if c.ClientSecretEnv != "" {
		if secret = os.Getenv(c.ClientSecretEnv); secret == "" {
			return fail(fmt.Errorf("$%s (console.oidc.client_secret_env) is empty", c.ClientSecretEnv))
		}
	}
	return &web.OIDC{AuthURL: l.AuthURL, TokenURL: l.TokenURL, ClientID: c.ClientID, ClientSecret: secret,
		RedirectURL: c.RedirectURL, Scopes: c.Scopes, Verify: l.Verify}
}
