package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func baseline(t *testing.T) *Set {
	s, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func req(roles []string, class, country string) Request {
	return Request{
		Principal: Principal{ID: "p", Tenant: "t", Roles: roles, Screening: "clear"},
		Action:    ActionInfer,
		Model:     Model{Name: "m", Classification: class},
		Context:   Context{Endpoint: "chat", ClientCountry: country, MFAAgeS: -1, N: 1},
	}
}

// TestMatrix: roles × classification × country × feature flags, case by case.
func TestMatrix(t *testing.T) {
	s := baseline(t)
	type flags struct{ logitBias, wideLogprobs bool }
	for _, roles := range [][]string{nil, {"researcher"}, {"licensee"}, {"intern"}} {
		for _, class := range []string{"public", "restricted", "export-controlled:4E091"} {
			for _, country := range []string{"US", "DE", "", "IR", "KP", "UA-43"} {
				for _, f := range []flags{{}, {logitBias: true}, {wideLogprobs: true}} {
					r := req(roles, class, country)
					r.Context.LogitBias = f.logitBias
					if f.wideLogprobs {
						r.Context.Logprobs, r.Context.TopLogprobs = true, 20
					}
					cleared := strings.Contains(fmt.Sprint(roles), "researcher") || strings.Contains(fmt.Sprint(roles), "licensee")
					embargoed := country == "IR" || country == "KP" || country == "UA-43"
					want := !embargoed
					if class != "public" {
						want = want && cleared && country != "" && !f.logitBias && !f.wideLogprobs
					}
					d := s.Decide(r)
					if d.Allow != want {
						t.Errorf("roles=%v class=%s country=%q flags=%+v: allow=%v, want %v (%s)", roles, class, country, f, d.Allow, want, d.Reason())
					}
					if !d.Allow && d.Reason() == "" {
						t.Errorf("deny without a reason")
					}
				}
			}
		}
	}
}

func TestReasonsAndModelCountryLists(t *testing.T) {
	s := baseline(t)
	r := req([]string{"researcher"}, "restricted", "IR")
	if d := s.Decide(r); d.Allow || d.Reason() != "forbidden by forbid-embargoed-countries" {
		t.Fatalf("embargo: %+v %s", d, d.Reason())
	}
	r = req(nil, "restricted", "US")
	if d := s.Decide(r); d.Allow || d.Reason() != "no policy permits (default deny)" {
		t.Fatalf("default deny: %s", d.Reason())
	}
	r = req([]string{"researcher"}, "restricted", "FR")
	r.Model.AllowedCountries = []string{"US", "DE"}
	if d := s.Decide(r); d.Allow || !strings.Contains(d.Reason(), "forbid-outside-model-allowed-countries") {
		t.Fatalf("allow list: %s", d.Reason())
	}
	r.Context.ClientCountry = "DE"
	if d := s.Decide(r); !d.Allow {
		t.Fatalf("allowed country denied: %s", d.Reason())
	}
	r.Model.DeniedCountries = []string{"DE"}
	if d := s.Decide(r); d.Allow {
		t.Fatal("denied country allowed")
	}
	r = req([]string{"researcher"}, "public", "US")
	r.Principal.Screening = "pending"
	if d := s.Decide(r); d.Allow || !strings.Contains(d.Reason(), "forbid-unscreened-principals") {
		t.Fatalf("screening: %s", d.Reason())
	}
}

func TestLoadRejectsInvalidPolicies(t *testing.T) {
	for name, text := range map[string]string{
		"syntax":    `permit (principal, action, resource) when { `,
		"bad attr":  `permit (principal, action, resource) when { principal.salary > 3 };`,
		"bad type":  `permit (principal, action, resource) when { resource.classification > 3 };`,
		"bad scope": `permit (principal == Tenant::"x", action, resource);`,
		"dup id":    `@id("forbid-embargoed-countries") forbid (principal, action, resource);`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "p.cedar"), []byte(text), 0o644)
			if _, err := Load(dir); err == nil {
				t.Fatal("invalid policy accepted")
			}
		})
	}
}

func TestEngineReload(t *testing.T) {
	dir := t.TempDir()
	e, err := NewEngine(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := req(nil, "public", "US")
	if !e.Decide(r).Allow {
		t.Fatal("baseline denies public")
	}
	// An operator forbids a tenant: reloaded, in force.
	os.WriteFile(filepath.Join(dir, "tenant.cedar"), []byte(`@id("block-tenant-t") forbid (principal in Tenant::"t", action, resource);`), 0o644)
	if changed, err := e.Reload(); !changed || err != nil {
		t.Fatalf("reload: %v %v", changed, err)
	}
	if d := e.Decide(r); d.Allow || d.Reason() != "forbidden by block-tenant-t" {
		t.Fatalf("after reload: %s", d.Reason())
	}
	// A broken edit is refused; the previous set stays in force.
	os.WriteFile(filepath.Join(dir, "tenant.cedar"), []byte(`forbid (principal in Tenant::"t", action, resource`), 0o644)
	if _, err := e.Reload(); err == nil {
		t.Fatal("broken policy accepted")
	}
	if e.Decide(r).Allow || e.ReloadErrors() != 1 {
		t.Fatal("previous policies not kept after a refused reload")
	}
}

func TestRunFile(t *testing.T) {
	s := baseline(t)
	res, err := RunFile(s, "testdata/cases.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(res) < 5 {
		t.Fatalf("%d cases", len(res))
	}
	for _, r := range res {
		if !r.Passed {
			t.Errorf("%s: want %s, got %s", r.Case, r.Want, r.Got.Reason())
		}
	}
	os.WriteFile(filepath.Join(t.TempDir(), "x"), nil, 0o644)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("cases:\n  - name: x\n    expect: maybe\n"), 0o644)
	if _, err := RunFile(s, bad); err == nil {
		t.Fatal("bad expect accepted")
	}
}

// TestLeaseMatrix: runtime env × classification × attestation × jurisdiction.
func TestLeaseMatrix(t *testing.T) {
	s := baseline(t)
	type att struct {
		name                string
		tee, allowed, debug bool
	}
	atts := []att{{"dev", false, false, false}, {"sev-snp", true, false, false}, {"sev-snp", true, true, false}, {"tdx", true, true, true}}
	for _, env := range []string{"prod", "staging", "dev"} {
		for _, class := range []string{"public", "internal", "restricted"} {
			for _, a := range atts {
				for _, j := range []string{"DE", "IR", ""} {
					d := s.DecideLease(LeaseRequest{Runtime: Runtime{ID: "rt", Env: env, Jurisdiction: j}, Model: Model{Name: "m", Classification: class},
						Attestation: a.name, TEE: a.tee, MeasurementAllowed: a.allowed, Debug: a.debug})
					want := j != "IR"
					switch class {
					case "internal":
						want = want && env != "dev"
					case "restricted":
						want = want && env == "prod" && a.tee && a.allowed && !a.debug
					}
					if d.Allow != want {
						t.Errorf("env=%s class=%s att=%+v jurisdiction=%q: allow=%v want %v (%s)", env, class, a, j, d.Allow, want, d.Reason())
					}
				}
			}
		}
	}
	// A model's own jurisdiction list binds leases too.
	d := s.DecideLease(LeaseRequest{Runtime: Runtime{ID: "rt", Env: "prod", Jurisdiction: "FR"}, Model: Model{Name: "m", Classification: "public", AllowedCountries: []string{"US"}}})
	if d.Allow {
		t.Fatal("lease outside the model's allowed jurisdictions")
	}
	// An operator may permit dev attestation for restricted models in a lab, by policy file.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "lab.cedar"), []byte(`permit (principal, action == Action::"lease", resource) when { principal.env == "staging" && context.attestation == "dev" };`), 0o644)
	lab, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d := lab.DecideLease(LeaseRequest{Runtime: Runtime{ID: "rt", Env: "staging", Jurisdiction: "DE"}, Model: Model{Name: "m", Classification: "restricted"}, Attestation: "dev"}); !d.Allow {
		t.Fatalf("lab permit: %s", d.Reason())
	}
}

// TestPrincipalCountry: where a principal is registered binds like where it connects from
// (issue 12, finding 8): an embargoed registration is refused from an allowed address,
// and a model's country lists apply to it too.
func TestPrincipalCountry(t *testing.T) {
	s := baseline(t)
	for _, tc := range []struct {
		registered, from string
		allowed, denied  []string
		want             bool
		reason           string
	}{
		{"IR", "US", nil, nil, false, "forbid-embargoed-principal-countries"},
		{"KP", "DE", nil, nil, false, "forbid-embargoed-principal-countries"},
		{"US", "US", nil, nil, true, ""},
		{"", "US", nil, nil, true, ""},
		{"CN", "US", nil, []string{"CN"}, false, "forbid-model-denied-principal-countries"},
		{"FR", "US", []string{"US"}, nil, false, "forbid-outside-model-allowed-principal-countries"},
		{"US", "US", []string{"US"}, nil, true, ""},
	} {
		for _, class := range []string{"public", "restricted"} {
			r := req([]string{"researcher"}, class, tc.from)
			r.Principal.Country = tc.registered
			r.Model.AllowedCountries, r.Model.DeniedCountries = tc.allowed, tc.denied
			d := s.Decide(r)
			if d.Allow != tc.want || (!tc.want && !strings.Contains(d.Reason(), tc.reason)) {
				t.Errorf("registered %q from %q (%s, allowed %v, denied %v): allow=%v %s", tc.registered, tc.from, class, tc.allowed, tc.denied, d.Allow, d.Reason())
			}
		}
	}
}

// TestWatermarkDetect: who may ask whose watermark a text carries is the policy's to say,
// screening included (issue 12, finding 12).
func TestWatermarkDetect(t *testing.T) {
	s := baseline(t)
	for _, tc := range []struct {
		roles     []string
		screening string
		want      bool
	}{
		{[]string{"security"}, "clear", true},
		{[]string{"admin"}, "clear", true},
		{[]string{"custodian"}, "clear", true},
		{[]string{"researcher"}, "clear", false},
		{[]string{"security"}, "pending", false},
		{[]string{"security"}, "blocked", false},
	} {
		r := Request{Principal: Principal{ID: "p", Tenant: "t", Roles: tc.roles, Screening: tc.screening}, Action: ActionWatermarkDetect,
			Model: Model{Name: "*"}, Context: Context{Endpoint: "watermark_detect", MFAAgeS: -1, TemperatureMilli: -1}}
		if d := s.Decide(r); d.Allow != tc.want {
			t.Errorf("%v %s: allow=%v (%s)", tc.roles, tc.screening, d.Allow, d.Reason())
		}
	}
}

func TestConsole(t *testing.T) {
	s := baseline(t)
	for _, tc := range []struct {
		name      string
		roles     []string
		screening string
		action    string
		op        string
		destr     bool
		mfa       int64
		want      bool
	}{
		{"security sees", []string{"security"}, "clear", ActionConsoleView, "inventory", false, -1, true},
		{"researcher does not", []string{"researcher"}, "clear", ActionConsoleView, "inventory", false, -1, false},
		{"unscreened admin does not", []string{"admin"}, "pending", ActionConsoleView, "inventory", false, -1, false},
		{"admin acts", []string{"admin"}, "clear", ActionConsoleAct, "key.create", false, -1, true},
		{"admin revokes after step-up", []string{"admin"}, "clear", ActionConsoleAct, "lease.revoke", true, 10, true},
		{"admin revokes without step-up", []string{"admin"}, "clear", ActionConsoleAct, "lease.revoke", true, -1, false},
		{"admin revokes with a stale step-up", []string{"admin"}, "clear", ActionConsoleAct, "lease.revoke", true, 301, false},
		{"custodian decides", []string{"custodian"}, "clear", ActionConsoleAct, "approval.decide", true, 5, true},
		{"custodian does not revoke keys", []string{"custodian"}, "clear", ActionConsoleAct, "key.revoke", true, 5, false},
		{"security does not act", []string{"security"}, "clear", ActionConsoleAct, "lease.revoke", true, 5, false},
	} {
		d := s.DecideConsole(ConsoleRequest{Principal: Principal{ID: "p", Tenant: "t", Roles: tc.roles, Screening: tc.screening},
			Action: tc.action, Operation: tc.op, Destructive: tc.destr, MFAAgeS: tc.mfa, Login: "api_key_totp"})
		if d.Allow != tc.want {
			t.Errorf("%s: allow=%v (%s)", tc.name, d.Allow, d.Reason())
		}
	}
}
