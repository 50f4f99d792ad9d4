package custody

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sevabi "github.com/google/go-sev-guest/abi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	sevtest "github.com/google/go-sev-guest/testing"
	sevtrust "github.com/google/go-sev-guest/verify/trust"
	"github.com/pquerna/otp/totp"
	"github.com/strongroom/strongroom/internal/attest"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/kms"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/store"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type recorder struct {
	mu     sync.Mutex
	events []string
	raw    []map[string]string // each event's fields
	fail   bool
}

func (r *recorder) audit(_ context.Context, ev audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("log down")
	}
	r.events = append(r.events, string(ev.Kind)+" "+ev.Decision)
	r.raw = append(r.raw, maps.Clone(ev.Fields))
	return nil
}

func (r *recorder) has(kind string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e == kind {
			return true
		}
	}
	return false
}

type env struct {
	svc   *Service
	st    store.Store
	keys  *kms.Keyring
	clk   *clock
	rec   *recorder
	srv   *httptest.Server
	allow bool
	dir   string
}

func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	kekID, err := kms.GenerateLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	kek, err := kms.OpenLocal(kms.LocalPath(dir, kekID))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{st: st, clk: &clock{t: time.Now().UTC()}, rec: &recorder{}, allow: true, dir: dir}
	e.keys = kms.NewKeyring(st, kek, nil, e.clk.now)
	id, dek, err := e.keys.NewKey(ctx, store.PurposeModel)
	if err != nil {
		t.Fatal(err)
	}
	clear(dek)
	for _, p := range []store.Principal{
		{ID: "alice", Tenant: "lab", Roles: []string{"researcher"}, Screening: "clear"},
		{ID: "bob", Tenant: "lab", Roles: []string{"custodian"}, Screening: "clear"},
		{ID: "carol", Tenant: "lab", Roles: []string{"admin"}, Screening: "clear"},
		{ID: "eve", Tenant: "lab", Roles: []string{"researcher"}, Screening: "clear"},
	} {
		st.PutPrincipal(ctx, p)
	}
	for _, v := range []store.Version{
		{Model: "frontier", Version: "1", Classification: "restricted", KeyID: hex.EncodeToString(id[:]), Signature: []byte("{}"),
			Files: []store.File{{Path: "model.safetensors", Size: 1000, SHA256: "00", Blob: "b1"}}},
		{Model: "small", Version: "1", Classification: "public", KeyID: hex.EncodeToString(id[:]), Signature: []byte("{}"),
			Files: []store.File{{Path: "model.safetensors", Size: 400, SHA256: "00", Blob: "b2"}}},
	} {
		if err := st.CreateVersion(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := LoadOrCreateCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Store: st, Keys: e.keys, Audit: e.rec.audit, CA: ca, Now: e.clk.now,
		Attest:    attest.Set{Verifiers: map[string]attest.Verifier{attest.TypeDev: attest.Dev{}}},
		Approvals: map[string]int{"restricted": 2},
		Decide: func(_ context.Context, d Decision) (bool, string) {
			if !e.allow || d.Runtime.Env == "dev" {
				return false, "policy says no"
			}
			return true, "ok"
		},
		PollInterval: 10 * time.Millisecond,
		StaleAfter:   24 * time.Hour, // tests move the clock by hours; the ones about staleness set it
	}
	if mod != nil {
		mod(&cfg)
	}
	if e.svc, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	go e.svc.Run(runCtx)
	e.srv = httptest.NewUnstartedServer(e.svc.Handler())
	if e.srv.TLS, err = ca.ServerTLS([]string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) join(t *testing.T, envName string) *Identity {
	t.Helper()
	tok, err := e.svc.CreateJoinToken(context.Background(), Attributes{Env: envName, Region: "eu-west", Jurisdiction: "DE", Host: "gpu-1", Owner: "alice"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, err := Join(context.Background(), e.srv.URL, tok.String(), filepath.Join(t.TempDir(), "rt"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// lease asks for a lease with fresh dev attestation and returns the runtime's HPKE key; the
// runtime says it contains its engine with a subreaper.
func lease(t *testing.T, id *Identity, model string) (*LeaseResponse, *ecdh.PrivateKey, error) {
	t.Helper()
	return leaseWith(t, id, LeaseRequestWire{Model: model, Containment: "subreaper"})
}

// leaseWith asks for a lease as req says, with fresh dev attestation.
func leaseWith(t *testing.T, id *Identity, req LeaseRequestWire) (*LeaseResponse, *ecdh.PrivateKey, error) {
	t.Helper()
	ctx := context.Background()
	c := id.Client()
	priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	n, err := c.Nonce(ctx)
	if err != nil {
		return nil, nil, err
	}
	ev, err := attest.DevEvidence(id.Key, attest.Binding(priv.PublicKey().Bytes(), n))
	if err != nil {
		t.Fatal(err)
	}
	req.Version, req.PublicKey, req.Nonce, req.Evidence = "1", priv.PublicKey().Bytes(), n, ev
	r, err := c.Lease(ctx, req)
	return r, priv, err
}

func (e *env) code(t *testing.T, who string) string {
	t.Helper()
	url, err := e.svc.EnrollTOTP(context.Background(), who)
	if err != nil {
		t.Fatal(err)
	}
	secret := url[strings.Index(url, "secret=")+7:]
	secret = secret[:strings.IndexAny(secret+"&", "&")]
	code, err := totp.GenerateCode(secret, e.clk.now())
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func TestJoinLeaseRenewRevokeOverHTTP(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	id := e.join(t, "prod")
	// The identity survives a reload from its directory.
	id, err := LoadIdentity(id.Dir)
	if err != nil {
		t.Fatal(err)
	}
	r, priv, err := lease(t, id, "small")
	if err != nil {
		t.Fatal(err)
	}
	dek, err := OpenKey(priv, r.Lease, r.SealedKey)
	if err != nil || len(dek) != 32 {
		t.Fatalf("open key: %v", err)
	}
	want, _ := e.keys.Key(ctx, r.Lease.KeyID)
	if !bytes.Equal(dek, want) {
		t.Fatal("released key is not the version's key")
	}
	other := r.Lease
	other.ID = "ls-other"
	if _, err := OpenKey(priv, other, r.SealedKey); err == nil {
		t.Fatal("sealed key opened under another lease")
	}
	if deps, _ := e.svc.Live(ctx, store.LeaseQuery{Model: "small"}); len(deps) != 1 || deps[0].Runtime.Host != "gpu-1" {
		t.Fatalf("deployments: %+v", deps)
	}
	c := id.Client()
	// Certificate renewal: a new certificate, saved, recorded, and the runtime keeps working.
	before := id.Cert.SerialNumber
	if err := c.RenewCert(ctx); err != nil {
		t.Fatal(err)
	}
	if id.Cert.SerialNumber.Cmp(before) == 0 {
		t.Fatal("renewed certificate has the old serial")
	}
	if again, _ := LoadIdentity(id.Dir); again.Cert.SerialNumber.Cmp(id.Cert.SerialNumber) != 0 {
		t.Fatal("renewed certificate not saved")
	}
	e.clk.add(3 * time.Minute)
	l, err := c.Renew(ctx, r.Lease.ID)
	if err != nil || !l.ExpiresAt.Equal(e.clk.now().Add(10*time.Minute)) {
		t.Fatalf("renew: %+v %v", l, err)
	}
	e.allow = false
	if _, err := c.Renew(ctx, r.Lease.ID); !errors.Is(err, ErrDenied) {
		t.Fatalf("renewal after a policy change: %v", err)
	}
	e.allow = true

	w, err := c.Watch(ctx, r.Lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	sc := bufio.NewScanner(w)
	if !sc.Scan() || sc.Text() != "ok" {
		t.Fatalf("watch first line %q", sc.Text())
	}
	// Revoked through another store handle, as the CLI does: the poller must push it.
	other2, err := store.OpenSQLite(ctx, filepath.Join(e.dir, "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	defer other2.Close()
	if ls, err := other2.RevokeLeases(ctx, store.LeaseQuery{Lease: r.Lease.ID}, time.Now(), "incident 7"); err != nil || len(ls) != 1 {
		t.Fatalf("revoke: %v %v", ls, err)
	}
	if !sc.Scan() || sc.Text() != "revoked incident 7" {
		t.Fatalf("watch after revoke: %q %v", sc.Text(), sc.Err())
	}
	if _, err := c.Renew(ctx, r.Lease.ID); !errors.Is(err, ErrRevoked) {
		t.Fatalf("renewal after revoke: %v", err)
	}
	if _, _, err := c.File(ctx, r.Lease.ID, "model.safetensors"); !errors.Is(err, ErrRevoked) {
		t.Fatalf("file after revoke: %v", err)
	}
	// Runtime revocation: its certificate no longer opens anything.
	if _, err := e.svc.RevokeRuntime(ctx, id.RuntimeID(), "host compromised"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lease(t, id, "small"); !errors.Is(err, ErrRuntimeRevoked) {
		t.Fatalf("revoked runtime: %v", err)
	}
	for _, k := range []string{"runtime.join allow", "runtime.cert allow", "lease.grant allow", "lease.renew allow", "lease.renew deny", "runtime.revoke allow", "runtime.auth deny"} {
		if !e.rec.has(k) {
			t.Errorf("no %q in the audit trail %v", k, e.rec.events)
		}
	}
}

func TestJoinRefusals(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	tok, _ := e.svc.CreateJoinToken(ctx, Attributes{Env: "prod", Owner: "alice"}, time.Minute)
	if _, err := Join(ctx, e.srv.URL, tok.String(), t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if _, err := Join(ctx, e.srv.URL, tok.String(), t.TempDir()); !errors.Is(err, ErrJoinToken) {
		t.Fatalf("token reused: %v", err)
	}
	tok2, _ := e.svc.CreateJoinToken(ctx, Attributes{Env: "prod", Owner: "alice"}, time.Minute)
	e.clk.add(2 * time.Minute)
	if _, err := Join(ctx, e.srv.URL, tok2.String(), t.TempDir()); !errors.Is(err, ErrJoinToken) {
		t.Fatalf("expired token: %v", err)
	}
	tok3, _ := e.svc.CreateJoinToken(ctx, Attributes{Env: "prod", Owner: "alice"}, time.Hour)
	bad := tok3
	bad.Secret = strings.Repeat("A", 43)
	if _, err := Join(ctx, e.srv.URL, bad.String(), t.TempDir()); !errors.Is(err, ErrJoinToken) {
		t.Fatalf("wrong secret: %v", err)
	}
	// A wrong guess does not burn the token for its owner (the id is public in the log).
	if _, err := Join(ctx, e.srv.URL, tok3.String(), t.TempDir()); err != nil {
		t.Fatalf("token unusable after someone guessed its secret wrong: %v", err)
	}
	tok4, _ := e.svc.CreateJoinToken(ctx, Attributes{Env: "prod", Owner: "alice"}, time.Hour)
	tok4.Pin = strings.Repeat("0", 64)
	if _, err := Join(ctx, e.srv.URL, tok4.String(), t.TempDir()); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("control plane with another CA: %v", err)
	}
	if _, err := e.svc.CreateJoinToken(ctx, Attributes{Env: "moon", Owner: "alice"}, time.Hour); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("bad env: %v", err)
	}
	// Without a client certificate nothing but join answers.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Post(e.srv.URL+"/custody/v1/nonce", "application/json", strings.NewReader("{}"))
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("nonce without a certificate: %v %v", resp, err)
	}
}

func TestAttestationRefusals(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	id := e.join(t, "prod")
	c := id.Client()
	priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	n, _ := c.Nonce(ctx)
	ev, _ := attest.DevEvidence(id.Key, attest.Binding(other.PublicKey().Bytes(), n))
	if _, err := c.Lease(ctx, LeaseRequestWire{Model: "small", Version: "1", PublicKey: priv.PublicKey().Bytes(), Nonce: n, Evidence: ev}); !errors.Is(err, ErrAttestation) {
		t.Fatalf("evidence bound to another key: %v", err)
	}
	// The nonce was spent by that attempt: replaying good evidence fails.
	ev, _ = attest.DevEvidence(id.Key, attest.Binding(priv.PublicKey().Bytes(), n))
	if _, err := c.Lease(ctx, LeaseRequestWire{Model: "small", Version: "1", PublicKey: priv.PublicKey().Bytes(), Nonce: n, Evidence: ev}); !errors.Is(err, ErrReplay) {
		t.Fatalf("replayed nonce: %v", err)
	}
	n2, _ := c.Nonce(ctx)
	if _, err := c.Lease(ctx, LeaseRequestWire{Model: "small", Version: "1", PublicKey: priv.PublicKey().Bytes(), Nonce: n2, Evidence: attest.Evidence{Type: "sev-snp", Blob: []byte{1}}}); !errors.Is(err, ErrAttestation) {
		t.Fatalf("unsupported evidence type: %v", err)
	}
	dev := e.join(t, "dev")
	if _, _, err := lease(t, dev, "small"); !errors.Is(err, ErrDenied) {
		t.Fatalf("policy refusal: %v", err)
	}
	if _, _, err := lease(t, id, "nope"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown model: %v", err)
	}
	if !e.rec.has("lease.grant deny") {
		t.Fatal("refusals not recorded")
	}
}

func TestTwoPersonRule(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	id := e.join(t, "prod")
	_, _, err := lease(t, id, "frontier")
	if !errors.Is(err, ErrPendingApproval) {
		t.Fatalf("restricted lease without approvals: %v", err)
	}
	_, _, err = lease(t, id, "frontier") // asking again finds the same request
	e.rec.mu.Lock()
	pendingDenies := 0
	for _, ev := range e.rec.events {
		if ev == "lease.grant deny" {
			pendingDenies++
		}
	}
	e.rec.mu.Unlock()
	if pendingDenies != 1 {
		t.Fatalf("%d pending denials recorded for one request and two polls, want 1", pendingDenies)
	}
	rs, _ := e.svc.Approvals(ctx, store.StatePending)
	if len(rs) != 1 || rs[0].Requester != "alice" || rs[0].Needed != 2 {
		t.Fatalf("pending requests: %+v (%v)", rs, err)
	}
	req := rs[0].ID
	// The requester (the runtime's owner) cannot approve; nor can a non-custodian.
	if _, err := e.svc.Decide(ctx, req, "alice", e.code(t, "alice"), true); !errors.Is(err, ErrApproval) {
		t.Fatalf("self-approval: %v", err)
	}
	if _, err := e.svc.Decide(ctx, req, "eve", e.code(t, "eve"), true); !errors.Is(err, ErrApproval) {
		t.Fatalf("approval without the role: %v", err)
	}
	if _, err := e.svc.Decide(ctx, req, "bob", "000000", true); !errors.Is(err, ErrApproval) {
		t.Fatalf("wrong TOTP: %v", err)
	}
	code := e.code(t, "bob")
	if r, err := e.svc.Decide(ctx, req, "bob", code, true); err != nil || r.State != store.StatePending {
		t.Fatalf("first approval: %+v %v", r, err)
	}
	if _, err := e.svc.Decide(ctx, req, "bob", code, true); !errors.Is(err, ErrApproval) {
		t.Fatalf("second approval by the same person: %v", err)
	}
	if _, _, err := lease(t, id, "frontier"); !errors.Is(err, ErrPendingApproval) {
		t.Fatalf("released with one of two approvals: %v", err)
	}
	if r, err := e.svc.Decide(ctx, req, "carol", e.code(t, "carol"), true); err != nil || r.State != store.StateApproved {
		t.Fatalf("second approval: %+v %v", r, err)
	}
	r, priv, err := lease(t, id, "frontier")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKey(priv, r.Lease, r.SealedKey); err != nil {
		t.Fatal(err)
	}
	// The approval was for one release: the next launch asks again.
	if _, _, err := lease(t, id, "frontier"); !errors.Is(err, ErrPendingApproval) {
		t.Fatalf("approval reused: %v", err)
	}
	// Expired requests cannot be approved.
	rs, _ = e.svc.Approvals(ctx, store.StatePending)
	e.clk.add(2 * time.Hour)
	if _, err := e.svc.Decide(ctx, rs[0].ID, "carol", e.code(t, "carol"), true); !errors.Is(err, ErrApproval) {
		t.Fatalf("approval of an expired request: %v", err)
	}
	for _, k := range []string{"approval.request allow", "approval.approve allow", "approval.approve deny", "lease.grant allow"} {
		if !e.rec.has(k) {
			t.Errorf("no %q in the audit trail", k)
		}
	}
}

// Restricted weights go only to runtimes that contain the engine's process tree; the
// containment is on the record.
func TestContainmentRequired(t *testing.T) {
	e := newEnv(t, nil)
	id := e.join(t, "prod")
	for _, mode := range []string{"", "none", "bogus"} {
		if _, _, err := leaseWith(t, id, LeaseRequestWire{Model: "frontier", Containment: mode}); !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "contains the engine") {
			t.Fatalf("restricted lease with containment %q: %v", mode, err)
		}
	}
	if rs, _ := e.svc.Approvals(context.Background(), ""); len(rs) != 0 {
		t.Fatalf("an uncontained runtime filed approval requests: %+v", rs)
	}
	if _, _, err := leaseWith(t, id, LeaseRequestWire{Model: "small", Containment: "none"}); err != nil {
		t.Fatalf("unrestricted lease without containment: %v", err)
	}
	if _, _, err := leaseWith(t, id, LeaseRequestWire{Model: "frontier", Containment: "cgroup"}); !errors.Is(err, ErrPendingApproval) {
		t.Fatalf("contained restricted lease: %v", err)
	}
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	if !slices.ContainsFunc(e.rec.raw, func(f map[string]string) bool { return f["containment"] == "cgroup" }) {
		t.Fatal("containment not recorded with the grant decision")
	}
}

// A runtime waiting on a request that is denied ends its wait: the denial is its answer,
// and no new request is filed.
func TestDenialEndsWait(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	id := e.join(t, "prod")
	r, _, err := lease(t, id, "frontier")
	if !errors.Is(err, ErrPendingApproval) {
		t.Fatalf("restricted lease: %v", err)
	}
	req := r.Approval.ID
	if _, _, err := leaseWith(t, id, LeaseRequestWire{Model: "frontier", Containment: "cgroup", Approval: req}); !errors.Is(err, ErrPendingApproval) {
		t.Fatalf("poll on a pending request: %v", err)
	}
	if d, err := e.svc.Decide(ctx, req, "bob", e.code(t, "bob"), false); err != nil || d.State != store.StateDenied {
		t.Fatalf("deny: %+v %v", d, err)
	}
	_, _, err = leaseWith(t, id, LeaseRequestWire{Model: "frontier", Containment: "cgroup", Approval: req})
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "denied by bob") {
		t.Fatalf("poll after the denial: %v", err)
	}
	if st, _ := Status(err); st != http.StatusForbidden {
		t.Fatalf("status %d", st)
	}
	if rs, _ := e.svc.Approvals(ctx, store.StatePending); len(rs) != 0 {
		t.Fatalf("a new request was filed after the denial: %+v", rs)
	}
	// Someone else's request cannot be named.
	other := e.join(t, "prod")
	if _, _, err := leaseWith(t, other, LeaseRequestWire{Model: "frontier", Containment: "cgroup", Approval: req}); !errors.Is(err, ErrApproval) {
		t.Fatalf("another runtime's request: %v", err)
	}
}

func TestEgressBudgetDisableAndFailClosed(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.EgressPerRuntime = 1000 })
	ctx := context.Background()
	id := e.join(t, "prod")
	for range 2 {
		if _, _, err := lease(t, id, "small"); err != nil { // 400 bytes each
			t.Fatal(err)
		}
	}
	if _, _, err := lease(t, id, "small"); !errors.Is(err, ErrEgress) {
		t.Fatalf("third 400-byte release within a 1000-byte budget: %v", err)
	}
	if !e.rec.has("alert.egress deny") {
		t.Fatal("no egress alert")
	}
	e.clk.add(24 * time.Hour) // a new day
	r, _, err := lease(t, id, "small")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := e.svc.DisableVersion(ctx, "small", "1", "weights leaked")
	if err != nil || len(ls) == 0 {
		t.Fatalf("disable: %v %v", ls, err)
	}
	if _, err := id.Client().Renew(ctx, r.Lease.ID); !errors.Is(err, ErrRevoked) {
		t.Fatalf("renewal on a disabled version: %v", err)
	}
	if _, _, err := lease(t, id, "small"); !errors.Is(err, ErrDisabled) {
		t.Fatalf("lease on a disabled version: %v", err)
	}
	e.rec.mu.Lock()
	e.rec.fail = true
	e.rec.mu.Unlock()
	if _, _, err := lease(t, id, "small"); err == nil || !strings.Contains(err.Error(), "unavailable") {
		t.Fatalf("audit down: %v", err)
	}
}

func FuzzParseJoinToken(f *testing.F) {
	f.Add("srj_0123456789abcdef." + strings.Repeat("A", 43) + "." + strings.Repeat("a", 64))
	f.Add("srj_..")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseJoinToken(s)
		if err != nil {
			return
		}
		again, err := ParseJoinToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("round trip: %q -> %+v -> %v", s, tok, err)
		}
	})
}

// FuzzJoinBody: the one unauthenticated endpoint never panics and answers 4xx to garbage.
func FuzzJoinBody(f *testing.F) {
	e := newEnv(f, nil)
	f.Add([]byte(`{"token":"srj_x","csr":"AAAA"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"token":1}`))
	h := e.svc.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/custody/v1/join", bytes.NewReader(body)))
		if rec.Code < 400 || rec.Code >= 500 {
			t.Fatalf("status %d for %q", rec.Code, body)
		}
	})
}

// Concurrent first starts agree on one CA.
func TestCAConcurrentCreate(t *testing.T) {
	dir := t.TempDir()
	pins := make(chan string, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			ca, err := LoadOrCreateCA(dir)
			if err != nil {
				t.Error(err)
				pins <- ""
				return
			}
			pins <- ca.Pin()
		})
	}
	wg.Wait()
	close(pins)
	first := ""
	for p := range pins {
		if first == "" {
			first = p
		}
		if p != first || p == "" {
			t.Fatalf("processes loaded different CAs: %q vs %q", p, first)
		}
	}
	again, err := LoadOrCreateCA(dir)
	if err != nil || again.Pin() != first {
		t.Fatalf("reload: %v", err)
	}
}

// A runtime asking for many nonces keeps at most maxNonces; the oldest stop working. Nonces
// live in the store: a second control-plane replica on the same store takes what the first
// issued (once), and without the store neither issuing nor taking succeeds, and a grant is
// refused (and audited) rather than waved through.
func TestNonces(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	nonce := func() []byte {
		n, err := e.svc.Nonce(ctx, "rt-x")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	first := nonce()
	var last []byte
	for range maxNonces + 10 {
		last = nonce()
	}
	if ok, _ := e.svc.takeNonce(ctx, "rt-x", first); ok {
		t.Fatal("evicted nonce accepted")
	}
	if ok, _ := e.svc.takeNonce(ctx, "rt-x", last); !ok {
		t.Fatal("latest nonce refused")
	}
	if ok, _ := e.svc.takeNonce(ctx, "rt-x", last); ok {
		t.Fatal("nonce accepted twice")
	}
	other, err := New(e.svc.cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := nonce()
	if ok, err := other.takeNonce(ctx, "rt-x", n); !ok || err != nil {
		t.Fatalf("another replica could not take the nonce: %v, %v", ok, err)
	}
	if ok, _ := e.svc.takeNonce(ctx, "rt-x", n); ok {
		t.Fatal("nonce taken on both replicas")
	}
	e.st.Close()
	if _, err := e.svc.Nonce(ctx, "rt-x"); err == nil {
		t.Fatal("nonce issued without a store")
	}
	if ok, err := e.svc.takeNonce(ctx, "rt-x", last); ok || err == nil {
		t.Fatalf("take without a store: %v, %v", ok, err)
	}
	priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	_, err = e.svc.Grant(ctx, store.Runtime{ID: "rt-x", Env: "prod"}, nil, LeaseRequest{Model: "small", Version: "1", PublicKey: priv.PublicKey().Bytes(), Nonce: last})
	if err == nil || errors.Is(err, ErrReplay) {
		t.Fatalf("grant without the nonce store: %v", err)
	}
	e.rec.mu.Lock()
	defer e.rec.mu.Unlock()
	if got := e.rec.events[len(e.rec.events)-1]; got != "lease.grant deny" {
		t.Fatalf("last audit event %q, want the refused grant", got)
	}
}

// sevGuest is a mock SEV-SNP guest: go-sev-guest's test device signs, with its test-only
// AMD chain, a non-debug report with our measurement over whatever report data it is asked.
type sevGuest struct {
	qp          *sevtest.QuoteProvider
	measurement [48]byte
}

func (g *sevGuest) GetRawQuote(data [64]byte) ([]uint8, error) {
	r := sevtest.TestRawReport(data)
	binary.LittleEndian.PutUint64(r[0x08:0x10], sevabi.SnpPolicyToBytes(sevabi.SnpPolicy{Debug: false}))
	copy(r[0x90:0x90+48], g.measurement[:])
	g.qp.Device.ReportDataRsp[hex.EncodeToString(data[:])] = &sevtest.GetReportResponse{Resp: labi.SnpReportRespABI{Data: r}}
	return g.qp.GetRawQuote(data)
}

// TestRestrictedLeaseOnSEVSNP: with the baseline Cedar policy, a restricted model's key goes
// to a prod runtime whose SEV-SNP report (bound to its HPKE key and the nonce) verifies, is
// not debuggable and carries an allowlisted measurement — after two approvals — and never
// to the same runtime attesting in software.
func TestRestrictedLeaseOnSEVSNP(t *testing.T) {
	qp, err := sevtest.TcQuoteProvider(nil, &sevtest.DeviceOptions{Now: time.Now(), Product: sevabi.DefaultSevProduct()})
	if err != nil {
		t.Fatal(err)
	}
	guest := &sevGuest{qp: qp}
	rand.Read(guest.measurement[:])
	line := sevtest.GetProductLine()
	roots := map[string][]*sevtrust.AMDRootCerts{line: {{Product: line, ProductCerts: &sevtrust.ProductCerts{Ark: qp.Device.Signer.Ark, Ask: qp.Device.Signer.Ask}}}}
	set, err := policy.Load("")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) {
		c.Attest.Verifiers[attest.TypeSEV] = &attest.SEV{Roots: roots}
		c.Attest.Allow = map[string][]string{attest.TypeSEV: {hex.EncodeToString(guest.measurement[:])}}
		c.Decide = func(_ context.Context, d Decision) (bool, string) {
			rt := d.Runtime
			dec := set.DecideLease(policy.LeaseRequest{Runtime: policy.Runtime{ID: rt.ID, Env: rt.Env, Jurisdiction: rt.Jurisdiction},
				Model: policy.Model{Name: d.Model, Classification: d.Attrs.Classification}, Attestation: d.Attestation.Type,
				TEE: d.Attestation.TEE, MeasurementAllowed: d.Attestation.Allowed, Debug: d.Attestation.Debug, Renewal: d.Renewal})
			return dec.Allow, dec.Reason()
		}
	})
	ctx := context.Background()
	id := e.join(t, "prod")
	if _, _, err := lease(t, id, "frontier"); !errors.Is(err, ErrDenied) {
		t.Fatalf("restricted model with software attestation: %v", err)
	}
	sevLease := func() (*LeaseResponse, *ecdh.PrivateKey, error) {
		c := id.Client()
		priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
		n, err := c.Nonce(ctx)
		if err != nil {
			return nil, nil, err
		}
		ev, err := attest.Hardware{Type: attest.TypeSEV, Source: guest}.Evidence(attest.Binding(priv.PublicKey().Bytes(), n))
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.Lease(ctx, LeaseRequestWire{Model: "frontier", Version: "1", PublicKey: priv.PublicKey().Bytes(), Nonce: n, Evidence: ev, Containment: "cgroup"})
		return r, priv, err
	}
	if _, _, err := sevLease(); !errors.Is(err, ErrPendingApproval) {
		t.Fatalf("attested restricted lease should wait for approvals: %v", err)
	}
	rs, _ := e.svc.Approvals(ctx, store.StatePending)
	for _, who := range []string{"bob", "carol"} {
		if _, err := e.svc.Decide(ctx, rs[0].ID, who, e.code(t, who), true); err != nil {
			t.Fatal(err)
		}
	}
	r, priv, err := sevLease()
	if err != nil {
		t.Fatal(err)
	}
	if r.Lease.Attestation != "sev-snp:"+hex.EncodeToString(guest.measurement[:]) {
		t.Fatalf("lease attestation %q", r.Lease.Attestation)
	}
	if _, err := OpenKey(priv, r.Lease, r.SealedKey); err != nil {
		t.Fatal(err)
	}
	// Renewal re-decides with the allowlist as it stands: removing the measurement ends it.
	e.svc.cfg.Attest.Allow = nil
	if _, err := id.Client().Renew(ctx, r.Lease.ID); !errors.Is(err, ErrDenied) {
		t.Fatalf("renewal after the measurement left the allowlist: %v", err)
	}
}

// waitEnded waits for lease id to be ended by the control plane and returns it.
func waitEnded(t *testing.T, st store.Store, id string) store.Lease {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if l, err := st.GetLease(context.Background(), id); err == nil && !l.RevokedAt.IsZero() {
			return l
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("lease %s never ended", id)
	return store.Lease{}
}

// A runtime whose watch stream drops and does not come back loses its lease, on the
// record; one that stops renewing loses it at expiry; one nobody hears from, after
// StaleAfter.
func TestLeaseEndsWhenRuntimeGone(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.WatchGrace = 50 * time.Millisecond; c.StaleAfter = time.Hour })
	ctx := context.Background()
	id := e.join(t, "prod")
	r, _, err := lease(t, id, "small")
	if err != nil {
		t.Fatal(err)
	}
	body, err := id.Client().Watch(ctx, r.Lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(body).ReadString('\n')
	if line != "ok\n" {
		t.Fatalf("watch said %q", line)
	}
	body.Close() // the launcher is gone
	l := waitEnded(t, e.st, r.Lease.ID)
	if !strings.Contains(l.Reason, "watch stream dropped") {
		t.Fatalf("reason %q", l.Reason)
	}
	if ds, _ := e.svc.Live(ctx, store.LeaseQuery{Model: "small"}); len(ds) != 0 {
		t.Fatalf("live after its runtime left: %+v", ds)
	}
	// The end is recorded just after the store update that ends the lease: wait for it.
	for deadline := time.Now().Add(time.Minute); !e.rec.has("lease.end allow"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the end is not on the record")
		}
	}
	if _, err := id.Client().Renew(ctx, r.Lease.ID); !errors.Is(err, ErrRevoked) {
		t.Fatalf("renewing an ended lease: %v", err)
	}

	// Not renewed: ended at expiry.
	r, _, err = lease(t, id, "small")
	if err != nil {
		t.Fatal(err)
	}
	e.clk.add(e.svc.LeaseTTL() + time.Second)
	if l := waitEnded(t, e.st, r.Lease.ID); !strings.Contains(l.Reason, "expired without renewal") {
		t.Fatalf("reason %q", l.Reason)
	}
}

func TestStaleLeaseEnds(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.StaleAfter = 10 * time.Second })
	id := e.join(t, "prod")
	r, _, err := lease(t, id, "small")
	if err != nil {
		t.Fatal(err)
	}
	e.clk.add(11 * time.Second) // never watched, never renewed: nobody has heard from it
	if l := waitEnded(t, e.st, r.Lease.ID); !strings.Contains(l.Reason, "not heard from") {
		t.Fatalf("reason %q", l.Reason)
	}
}

// TestWireNames: the protocol's JSON names are the spec's (doc.go), not Go field names.
func TestWireNames(t *testing.T) {
	b, err := json.Marshal(LeaseResponse{Lease: store.Lease{ID: "ls-1", ExpiresAt: time.Unix(1, 0)}, SealedKey: []byte{1},
		Files:    []store.File{{Path: "w", Size: 1, SHA256: "ab", Blob: "b"}},
		Approval: &store.ApprovalRequest{ID: "ap-1", Approvals: []store.Approval{{Approver: "a", Decision: "approve"}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"lease":{"id":"ls-1"`, `"expires_at":"1970-01-01T00:00:01Z"`, `"sealed_key":"AQ=="`,
		`"files":[{"path":"w","size":1,"sha256":"ab","blob":"b"}]`, `"approvals":[{"approver":"a","decision":"approve"`, `"key_id":`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	jr, _ := json.Marshal(JoinResponse{Runtime: store.Runtime{ID: "rt-1", Jurisdiction: "DE"}})
	if !strings.Contains(string(jr), `"runtime":{"id":"rt-1","env":"","region":"","jurisdiction":"DE"`) {
		t.Errorf("join response %s", jr)
	}
}

// listCounter counts the revocation polls' store queries.
type listCounter struct {
	Store
	lists atomic.Int64
}

func (c *listCounter) ListLeases(ctx context.Context, q store.LeaseQuery) ([]store.Lease, error) {
	c.lists.Add(1)
	return c.Store.ListLeases(ctx, q)
}

// TestRevocationPollOnlyWhileWatched: with no watch stream held, the revocation poll asks
// the store nothing (it was ~3 % of a gateway's CPU at 2,000 requests a second); once a
// runtime watches a lease, a revocation another process commits is pushed to it, and one
// committed before the watch began is in what Watch reads.
func TestRevocationPollOnlyWhileWatched(t *testing.T) {
	ctx := context.Background()
	var lc *listCounter
	e := newEnv(t, func(c *Config) { lc = &listCounter{Store: c.Store}; c.Store = lc })
	for range 3 {
		if asked, err := e.svc.pollRevocations(ctx); asked || err != nil {
			t.Fatalf("no watcher: asked %v, err %v", asked, err)
		}
	}
	if n := lc.lists.Load(); n != 0 {
		t.Fatalf("%d ListLeases calls with no watch stream held (the poller's included)", n)
	}
	now := e.clk.now()
	for _, id := range []string{"l-before", "l-after"} {
		if err := e.st.PutLease(ctx, store.Lease{ID: id, Runtime: "rt", Model: "small", Version: "1", GrantedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	// Revoked while nobody watched: Watch reads it.
	if _, err := e.st.RevokeLeases(ctx, store.LeaseQuery{Lease: "l-before"}, now, "before"); err != nil {
		t.Fatal(err)
	}
	ch, stop, err := e.svc.Watch(ctx, "l-before")
	if err != nil {
		t.Fatal(err)
	}
	if r := <-ch; r != "before" {
		t.Fatalf("watch of a lease revoked before it: %q", r)
	}
	stop()
	// Revoked by another process while watched: the poll asks and pushes it.
	ch, stop, err = e.svc.Watch(ctx, "l-after")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := e.st.RevokeLeases(ctx, store.LeaseQuery{Lease: "l-after"}, now.Add(time.Second), "after"); err != nil {
		t.Fatal(err)
	}
	if asked, err := e.svc.pollRevocations(ctx); !asked || err != nil {
		t.Fatalf("watched: asked %v, err %v", asked, err)
	}
	select {
	case r := <-ch:
		if r != "after" {
			t.Fatalf("pushed %q", r)
		}
	default:
		t.Fatal("a revocation of a watched lease was not pushed by the poll")
	}
}
