package app

import (
	"context"
	"fmt"
	"net"

	"crypto/tls"

	"github.com/strongroom/strongroom/internal/attest"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/policy"
)

// Custody is the process's one custody service, built on first use: the runtime CA in
// custody.ca_dir, Cedar lease policy from the gateway's policy directory (the App's one
// engine, reloaded as it changes), the attestation verifiers with the configured
// measurement allowlist, approvals and egress budgets. Its Run (lease expiry, revocation
// polling) is started by whoever serves it.
func (a *App) Custody(ctx context.Context) (*custody.Service, error) {
	a.custodyMu.Lock()
	defer a.custodyMu.Unlock()
	if a.custody != nil {
		return a.custody, nil
	}
	svc, err := a.newCustody(ctx)
	if err == nil {
		a.custody = svc
	}
	return svc, err
}

// custodyCA is the runtime CA, loaded (or created) once.
func (a *App) custodyCA() (*custody.CA, error) {
	a.caOnce.Do(func() { a.ca, a.caErr = custody.LoadOrCreateCA(a.Config.Custody.CADir) })
	return a.ca, a.caErr
}

func (a *App) newCustody(ctx context.Context) (*custody.Service, error) {
	cc := a.Config.Custody
	ca, err := a.custodyCA()
	if err != nil {
		return nil, err
	}
	eng, err := a.Policy(ctx)
	if err != nil {
		return nil, err
	}
	decide := func(_ context.Context, d custody.Decision) (bool, string) {
		// The same record, and the same mapping to Cedar, as the gateway's.
		m := gateway.PolicyModel(modelrec.Record{Name: d.Model, Version: d.Version, Attrs: d.Attrs})
		rt := d.Runtime
		dec := eng.DecideLease(policy.LeaseRequest{
			Runtime:     policy.Runtime{ID: rt.ID, Env: rt.Env, Region: rt.Region, Jurisdiction: rt.Jurisdiction, Host: rt.Host, Owner: rt.Owner},
			Model:       m,
			Attestation: d.Attestation.Type, TEE: d.Attestation.TEE, MeasurementAllowed: d.Attestation.Allowed, Debug: d.Attestation.Debug,
			Renewal: d.Renewal,
		})
		return dec.Allow, dec.Reason()
	}
	return custody.New(custody.Config{
		Store: a.Store, Keys: a.Keys, Blobs: a.Blobs, Decide: decide, Audit: a.Audit, CA: ca,
		Attest: attest.Set{
			Verifiers: map[string]attest.Verifier{
				attest.TypeDev: attest.Dev{},
				attest.TypeSEV: &attest.SEV{AllowDebug: cc.AllowDebugGuests},
				attest.TypeTDX: &attest.TDX{Collateral: true},
			},
			Allow: cc.Measurements,
		},
		LeaseTTL: cc.LeaseTTL.Duration, ApprovalTTL: cc.ApprovalTTL.Duration, Approvals: cc.Approvals,
		EgressPerRuntime: cc.EgressPerRuntimeDaily, EgressTotal: cc.EgressTotalDaily,
		Log: a.Log,
	})
}

// CustodyTLS is the custody listener's TLS config: a server certificate from the CA for
// 127.0.0.1, localhost, the listen host and custody.server_names.
func (a *App) CustodyTLS(listen string) (*tls.Config, error) {
	ca, err := a.custodyCA()
	if err != nil {
		return nil, err
	}
	hosts := append([]string{"127.0.0.1", "localhost", "::1"}, a.Config.Custody.ServerNames...)
	if h, _, err := net.SplitHostPort(listen); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	return ca.ServerTLS(hosts)
}

// RequireUnsealApproval applies the k-person rule to an unseal to disk by requester.
func (a *App) RequireUnsealApproval(ctx context.Context, model, version, requester string) error {
	v, err := a.Inventory.Get(ctx, model, version)
	if err != nil {
		return err
	}
	if a.Config.Custody.Approvals[v.Classification] <= 0 {
		return nil
	}
	if requester == "" {
		return fmt.Errorf("%s:%s is %s: unsealing it needs %d approvals; name yourself with --as PRINCIPAL", model, version, v.Classification, a.Config.Custody.Approvals[v.Classification])
	}
	if _, err := a.Store.GetPrincipal(ctx, requester); err != nil {
		return err
	}
	s, err := a.Custody(ctx)
	if err != nil {
		return err
	}
	return s.RequireApproval(ctx, requester, v)
}
