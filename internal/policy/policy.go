// Package policy decides every request with Cedar: a schema of principals, tenants, models
// and request context, baseline policies plus the operator's policy files, default deny,
// and the name of the policy behind every decision (for the operator, never the client).
package policy

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/cedar-policy/cedar-go"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

//go:embed schema.cedarschema
var schemaText []byte

//go:embed baseline.cedar
var baselineText []byte

// Actions.
const (
	ActionInfer = "infer"
	ActionList  = "list"
	ActionLease = "lease"
	// ActionWatermark: whether a principal's outputs from a model carry its tenant's watermark.
	ActionWatermark = "watermark"
	// ActionWatermarkDetect: whether a principal may ask whose watermark a text carries.
	ActionWatermarkDetect = "watermark_detect"
	// ActionConsoleView and ActionConsoleAct: whether a console user may see, or perform,
	// an operation (ConsoleRequest).
	ActionConsoleView = "console_view"
	ActionConsoleAct  = "console_act"
)

// Principal, Model and Context are the inputs of a decision.
type Principal struct {
	ID, Tenant, Org, Country, Screening string
	Roles                               []string
}

type Model struct {
	Name             string
	Classification   string
	AllowedCountries []string
	DeniedCountries  []string
}

type Context struct {
	Endpoint      string
	ClientCountry string // "" when unknown
	IP            string
	HourUTC       int
	MFAAgeS       int64 // -1 when no MFA
	Stream        bool
	Logprobs      bool
	TopLogprobs   int
	LogitBias     bool
	N             int
	MaxTokens     int
	// TemperatureMilli is the sampling temperature × 1000, -1 when the request leaves it to
	// the engine (often greedy). A policy can require sampling where outputs must carry a
	// detectable watermark (greedy decoding carries none).
	TemperatureMilli int64
}

// Request is one question to the policy.
type Request struct {
	Principal Principal
	Action    string
	Model     Model
	Context   Context
}

// Decision is the answer; Policies names what decided it, for the operator.
type Decision struct {
	Allow    bool
	Policies []string
	Errors   []string
	reason   string // reasonText, made once by authorize (a cached decision is read per request)
}

// Reason is a one-line reason for logs and audit.
func (d Decision) Reason() string {
	if d.reason != "" {
		return d.reason
	}
	return d.reasonText()
}

func (d Decision) reasonText() string {
	switch {
	case len(d.Errors) > 0:
		return "policy evaluation error: " + strings.Join(d.Errors, "; ")
	case d.Allow:
		return "permitted by " + strings.Join(d.Policies, ",")
	case len(d.Policies) > 0:
		return "forbidden by " + strings.Join(d.Policies, ",")
	}
	return "no policy permits (default deny)"
}

// Set is a compiled, validated policy set.
type Set struct {
	ps      *cedar.PolicySet
	files   []string
	digests map[string]string // file base name → hex SHA-256 of its bytes, baseline included
	cache   decisionCache     // Decide's answers (cache.go)
}

// Load compiles the baseline and every *.cedar file in dir (dir may be ""), validating
// each policy against the schema. Any error rejects the whole set.
func Load(dir string) (*Set, error) {
	var sch schema.Schema
	sch.SetFilename("schema.cedarschema")
	if err := sch.UnmarshalCedar(schemaText); err != nil {
		return nil, fmt.Errorf("policy schema: %w", err)
	}
	res, err := sch.Resolve()
	if err != nil {
		return nil, fmt.Errorf("policy schema: %w", err)
	}
	v := validate.New(res)
	docs := map[string][]byte{"baseline.cedar": baselineText}
	var files []string
	if dir != "" {
		matches, err := filepath.Glob(filepath.Join(dir, "*.cedar"))
		if err != nil {
			return nil, err
		}
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err != nil {
				return nil, err
			}
			docs[m] = b
			files = append(files, m)
		}
	}
	names := make([]string, 0, len(docs))
	for n := range docs {
		names = append(names, n)
	}
	sort.Strings(names)
	ps := cedar.NewPolicySet()
	var errs []error
	for _, name := range names {
		list, err := cedar.NewPolicyListFromBytes(name, docs[name])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		for i, p := range list {
			id := cedar.PolicyID(fmt.Sprintf("%s#%d", filepath.Base(name), i))
			if a, ok := p.Annotations()["id"]; ok {
				id = cedar.PolicyID(a)
			}
			if err := v.Policy(string(id), (*xast.Policy)(p.AST())); err != nil {
				errs = append(errs, fmt.Errorf("%s: policy %s: %w", name, id, err))
				continue
			}
			if !ps.Add(id, p) {
				errs = append(errs, fmt.Errorf("%s: policy id %s used twice", name, id))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	digests := make(map[string]string, len(docs))
	for name, b := range docs {
		sum := sha256.Sum256(b)
		digests[filepath.Base(name)] = hex.EncodeToString(sum[:])
	}
	return &Set{ps: ps, files: files, digests: digests}, nil
}

// Digests names each file of the set (baseline.cedar included) with the hex SHA-256 of
// its bytes.
func (s *Set) Digests() map[string]string { return maps.Clone(s.digests) }

// Digest is the set's one digest: SHA-256 over its files' names and digests, in order.
func (s *Set) Digest() string {
	names := slices.Sorted(maps.Keys(s.digests))
	h := sha256.New()
	for _, n := range names {
		fmt.Fprintf(h, "%s %s\n", s.digests[n], n)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Files lists the operator policy files in the set.
func (s *Set) Files() []string { return s.files }

func strSet(xs []string) cedar.Set {
	vals := make([]cedar.Value, len(xs))
	for i, x := range xs {
		vals[i] = cedar.String(x)
	}
	return cedar.NewSet(vals...)
}

// Decide evaluates a request. Evaluation errors deny. The answer may be shared with other
// callers: do not modify its slices.
func (s *Set) Decide(r Request) Decision {
	var buf [256]byte // most keys fit: a cached decision costs no allocation
	k := r.appendKey(buf[:0])
	if d, ok := s.cache.get(k); ok {
		return d
	}
	d := s.decide(r)
	s.cache.put(string(k), d)
	return d
}

// decide evaluates a request with Cedar.
func (s *Set) decide(r Request) Decision {
	tenant := cedar.NewEntityUID("Tenant", cedar.String(r.Principal.Tenant))
	pUID := cedar.NewEntityUID("Principal", cedar.String(r.Principal.ID))
	m := modelEntity(r.Model)
	mUID := m.UID
	entities := cedar.EntityMap{
		tenant: {UID: tenant},
		pUID: {UID: pUID, Parents: cedar.NewEntityUIDSet(tenant), Attributes: cedar.NewRecord(cedar.RecordMap{
			"roles": strSet(r.Principal.Roles), "org": cedar.String(r.Principal.Org),
			"country": cedar.String(r.Principal.Country), "screening": cedar.String(r.Principal.Screening),
		})},
		mUID: m,
	}
	c := r.Context
	req := cedar.Request{
		Principal: pUID,
		Action:    cedar.NewEntityUID("Action", cedar.String(r.Action)),
		Resource:  mUID,
		Context: cedar.NewRecord(cedar.RecordMap{
			"endpoint": cedar.String(c.Endpoint), "client_country": cedar.String(c.ClientCountry), "ip": cedar.String(c.IP),
			"hour_utc": cedar.Long(c.HourUTC), "mfa_age_s": cedar.Long(c.MFAAgeS), "stream": cedar.Boolean(c.Stream),
			"logprobs": cedar.Boolean(c.Logprobs), "top_logprobs": cedar.Long(c.TopLogprobs), "logit_bias": cedar.Boolean(c.LogitBias),
			"n": cedar.Long(c.N), "max_tokens": cedar.Long(c.MaxTokens), "temperature_milli": cedar.Long(c.TemperatureMilli),
		}),
	}
	return s.authorize(entities, req)
}

func modelEntity(m Model) cedar.Entity {
	return cedar.Entity{UID: cedar.NewEntityUID("Model", cedar.String(m.Name)), Attributes: cedar.NewRecord(cedar.RecordMap{
		"classification":        cedar.String(m.Classification),
		"allowed_countries":     strSet(m.AllowedCountries),
		"has_allowed_countries": cedar.Boolean(len(m.AllowedCountries) > 0),
		"denied_countries":      strSet(m.DeniedCountries),
	})}
}

// Runtime is a custody runtime as policy sees it.
type Runtime struct {
	ID, Env, Region, Jurisdiction, Host, Owner string
}

// LeaseRequest asks whether a runtime may hold a lease on (receive the key of) a model.
type LeaseRequest struct {
	Runtime            Runtime
	Model              Model
	Attestation        string
	TEE                bool
	MeasurementAllowed bool
	Debug              bool
	Renewal            bool
}

// DecideLease evaluates a lease request (action "lease"). Evaluation errors deny.
func (s *Set) DecideLease(r LeaseRequest) Decision {
	rUID := cedar.NewEntityUID("Runtime", cedar.String(r.Runtime.ID))
	m := modelEntity(r.Model)
	entities := cedar.EntityMap{
		rUID: {UID: rUID, Attributes: cedar.NewRecord(cedar.RecordMap{
			"env": cedar.String(r.Runtime.Env), "region": cedar.String(r.Runtime.Region), "jurisdiction": cedar.String(r.Runtime.Jurisdiction),
			"host": cedar.String(r.Runtime.Host), "owner": cedar.String(r.Runtime.Owner),
		})},
		m.UID: m,
	}
	return s.authorize(entities, cedar.Request{
		Principal: rUID,
		Action:    cedar.NewEntityUID("Action", cedar.String(ActionLease)),
		Resource:  m.UID,
		Context: cedar.NewRecord(cedar.RecordMap{
			"attestation": cedar.String(r.Attestation), "tee": cedar.Boolean(r.TEE), "measurement_allowed": cedar.Boolean(r.MeasurementAllowed),
			"debug": cedar.Boolean(r.Debug), "renewal": cedar.Boolean(r.Renewal),
		}),
	})
}

// ConsoleRequest asks whether a console user may view or perform an operation.
type ConsoleRequest struct {
	Principal   Principal
	Action      string // ActionConsoleView or ActionConsoleAct
	Operation   string // e.g. "lease.revoke"
	Destructive bool
	MFAAgeS     int64 // seconds since the user's last TOTP step-up, -1 when none
	Login       string
}

// DecideConsole evaluates a console request. Evaluation errors deny.
func (s *Set) DecideConsole(r ConsoleRequest) Decision {
	tenant := cedar.NewEntityUID("Tenant", cedar.String(r.Principal.Tenant))
	pUID := cedar.NewEntityUID("Principal", cedar.String(r.Principal.ID))
	oUID := cedar.NewEntityUID("Operation", cedar.String(r.Operation))
	entities := cedar.EntityMap{
		tenant: {UID: tenant},
		pUID: {UID: pUID, Parents: cedar.NewEntityUIDSet(tenant), Attributes: cedar.NewRecord(cedar.RecordMap{
			"roles": strSet(r.Principal.Roles), "org": cedar.String(r.Principal.Org),
			"country": cedar.String(r.Principal.Country), "screening": cedar.String(r.Principal.Screening),
		})},
		oUID: {UID: oUID, Attributes: cedar.NewRecord(cedar.RecordMap{"destructive": cedar.Boolean(r.Destructive)})},
	}
	return s.authorize(entities, cedar.Request{
		Principal: pUID,
		Action:    cedar.NewEntityUID("Action", cedar.String(r.Action)),
		Resource:  oUID,
		Context:   cedar.NewRecord(cedar.RecordMap{"mfa_age_s": cedar.Long(r.MFAAgeS), "login": cedar.String(r.Login)}),
	})
}

func (s *Set) authorize(entities cedar.EntityMap, req cedar.Request) Decision {
	ok, diag := cedar.Authorize(s.ps, entities, req)
	d := Decision{Allow: ok == cedar.Allow}
	for _, rsn := range diag.Reasons {
		d.Policies = append(d.Policies, string(rsn.PolicyID))
	}
	for _, e := range diag.Errors {
		d.Errors = append(d.Errors, fmt.Sprintf("%s: %s", e.PolicyID, e.Message))
	}
	if len(d.Errors) > 0 {
		d.Allow = false
	}
	slices.Sort(d.Policies)
	d.reason = d.reasonText()
	return d
}
