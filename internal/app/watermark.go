package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/watermark"
)

// WatermarkQuery asks whose watermark a text carries.
type WatermarkQuery struct {
	Text       string  `json:"text"`
	Model      string  `json:"model,omitempty"`  // NAME:VERSION whose tokenizer to use; empty: bytes
	Scheme     string  `json:"scheme,omitempty"` // "greenlist" (default) or "synthid"
	Tenant     string  `json:"tenant,omitempty"`
	AllTenants bool    `json:"all_tenants,omitempty"`
	FPR        float64 `json:"fpr,omitempty"`    // default 1e-3
	Window     int     `json:"window,omitempty"` // >0: best span of this many tokens (one tenant)
}

// WatermarkResult is one tenant's score.
type WatermarkResult struct {
	Tenant      string  `json:"tenant"`
	Scheme      string  `json:"scheme"`
	Scored      int     `json:"tokens_scored"`
	Score       float64 `json:"score"` // green fraction (greenlist) or mean g-value (synthid)
	Z           float64 `json:"z"`
	P           float64 `json:"p_value"` // corrected for the number of tenants (and windows) tested
	Watermarked bool    `json:"watermarked"`
	WindowStart int     `json:"window_start,omitempty"`
}

// ErrBadQuery is a watermark query that cannot be answered as asked.
var ErrBadQuery = errors.New("bad watermark query")

// DetectWatermark scores a text under one or every tenant's key, tokenized as the named
// model's tokenizer does (decrypted in memory), and records the query.
func (a *App) DetectWatermark(ctx context.Context, q WatermarkQuery) ([]WatermarkResult, error) {
	if q.FPR == 0 {
		q.FPR = 1e-3
	}
	if q.Scheme == "" {
		q.Scheme = "greenlist"
	}
	if q.Scheme != "greenlist" && q.Scheme != "synthid" {
		return nil, fmt.Errorf("%w: scheme %q (want greenlist or synthid)", ErrBadQuery, q.Scheme)
	}
	if q.FPR <= 0 || q.FPR >= 1 {
		return nil, fmt.Errorf("%w: fpr %g", ErrBadQuery, q.FPR)
	}
	tenants := []string{q.Tenant}
	if q.AllTenants {
		ps, err := a.Store.ListPrincipals(ctx)
		if err != nil {
			return nil, err
		}
		tenants = nil
		for _, p := range ps {
			if !slices.Contains(tenants, p.Tenant) {
				tenants = append(tenants, p.Tenant)
			}
		}
	} else if q.Tenant == "" {
		return nil, fmt.Errorf("%w: give --tenant T or --all-tenants (tenant or all_tenants)", ErrBadQuery)
	}
	if q.Window > 0 && len(tenants) != 1 {
		return nil, fmt.Errorf("%w: a window search takes one tenant", ErrBadQuery)
	}
	toks := refmodel.Tokenize(q.Text)
	if q.Model != "" {
		tk, err := a.modelTokenizer(ctx, q.Model)
		if err != nil {
			return nil, err
		}
		if tk != nil {
			toks = tk.Encode(q.Text)
		}
	}
	secret, err := a.WatermarkSecret()
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	var out []WatermarkResult
	for _, t := range tenants {
		r := WatermarkResult{Tenant: t, Scheme: q.Scheme}
		switch q.Scheme {
		case "greenlist":
			k, err := watermark.DeriveKey(secret, t, watermark.DefaultParams())
			if err != nil {
				return nil, err
			}
			s := k.Detect(toks)
			if q.Window > 0 {
				r.WindowStart, s = k.Window(toks, q.Window)
			}
			r.Scored, r.Z, r.P = s.Scored, s.Z, s.P
			if s.Scored > 0 {
				r.Score = float64(s.Green) / float64(s.Scored)
			}
		case "synthid":
			k, err := watermark.DeriveTournament(secret, t)
			if err != nil {
				return nil, err
			}
			s := k.Detect(toks)
			if q.Window > 0 {
				r.WindowStart, s = k.Window(toks, q.Window)
			}
			r.Scored, r.Score, r.Z, r.P = s.Scored, s.Mean, s.Z, s.P
		}
		r.P = min(1, r.P*float64(len(tenants))) // Bonferroni over the tenants tested
		r.Watermarked = r.Scored > 0 && r.P <= q.FPR
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y WatermarkResult) int {
		if x.P < y.P {
			return -1
		}
		if x.P > y.P {
			return 1
		}
		return strings.Compare(x.Tenant, y.Tenant)
	})
	fields := map[string]string{"scheme": q.Scheme, "tenants_tested": strconv.Itoa(len(tenants)), "model": q.Model}
	if len(out) > 0 {
		fields["best_tenant"], fields["watermarked"] = out[0].Tenant, strconv.FormatBool(out[0].Watermarked)
	}
	if err := a.Audit(ctx, audit.Event{Kind: audit.KindWatermarkDetect, Decision: audit.Allow, Fields: fields}); err != nil {
		return nil, err
	}
	return out, nil
}

// modelTokenizer decrypts a version's tokenizer.json in memory; nil when it is not a BPE
// tokenizer (the bigram reference model tokenizes bytes).
func (a *App) modelTokenizer(ctx context.Context, ref string) (*refmodel.Tokenizer, error) {
	name, version, err := inventory.ParseRef(ref)
	if err != nil {
		return nil, err
	}
	v, err := a.Inventory.Get(ctx, name, version)
	if err != nil {
		return nil, err
	}
	for _, f := range v.Files {
		if f.Path != "tokenizer.json" {
			continue
		}
		if f.Size > 64<<20 {
			return nil, fmt.Errorf("%s: tokenizer.json of %d bytes is too large", ref, f.Size)
		}
		dek, err := a.Keys.Key(ctx, v.KeyID)
		if err != nil {
			return nil, err
		}
		r, closer, err := a.Inventory.OpenFile(ctx, v, f, dek)
		clear(dek)
		if err != nil {
			return nil, err
		}
		defer closer.Close()
		b, err := io.ReadAll(io.NewSectionReader(r, 0, r.Size()))
		if err != nil {
			return nil, err
		}
		tk, err := refmodel.ParseTokenizer(b)
		if err != nil {
			return nil, nil // not byte-level BPE: bytes it is
		}
		return tk, nil
	}
	return nil, nil
}

// WatermarkHandler serves POST /v1/watermark/detect on the control API: a JSON
// WatermarkQuery in, {"results": [...]} out. The policy decides who may ask
// (watermark_detect: by default screened principals with the admin, security or custodian
// role), and every question is recorded.
func (a *App) WatermarkHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fail := func(status int, msg string) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"message": msg}})
		}
		if r.Method != http.MethodPost {
			fail(http.StatusMethodNotAllowed, "POST a JSON query")
			return
		}
		auth, err := a.Authenticator()
		if err != nil {
			fail(http.StatusServiceUnavailable, "authentication unavailable")
			return
		}
		p, err := auth.Request(r) // the gateway's chain: API keys, and OIDC tokens when configured
		if errors.Is(err, authn.ErrStoreUnavailable) {
			fail(http.StatusServiceUnavailable, "credentials cannot be verified right now")
			return
		}
		if err != nil {
			fail(http.StatusUnauthorized, "a valid API key or token is required")
			return
		}
		var q WatermarkQuery
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&q); err != nil {
			fail(http.StatusBadRequest, "request body: "+err.Error())
			return
		}
		eng, err := a.Policy(r.Context())
		if err != nil {
			fail(http.StatusServiceUnavailable, "policy unavailable")
			return
		}
		model := q.Model
		if model == "" {
			model = "*"
		}
		d := eng.Decide(policy.Request{Action: policy.ActionWatermarkDetect, Model: policy.Model{Name: model},
			Principal: policy.Principal{ID: p.ID, Tenant: p.Tenant, Org: p.Org, Country: p.Country, Screening: string(p.Screening), Roles: p.Roles},
			Context:   policy.Context{Endpoint: "watermark_detect", MFAAgeS: -1, TemperatureMilli: -1}})
		decision := audit.Deny
		if d.Allow {
			decision = audit.Allow
		}
		if err := a.Audit(r.Context(), audit.Event{Kind: audit.KindWatermarkDetect, Decision: decision, Reason: d.Reason(),
			Actor:   map[string]string{"principal": p.ID, "tenant": p.Tenant, "key_id": p.KeyID},
			Subject: map[string]string{"model": q.Model, "tenant": q.Tenant},
			Fields:  map[string]string{"all_tenants": fmt.Sprint(q.AllTenants), "text_hmac": a.Redactor.Digest(q.Text)}}); err != nil {
			fail(http.StatusServiceUnavailable, "cannot record the query")
			return
		}
		if !d.Allow {
			fail(http.StatusForbidden, "watermark detection is not permitted for this principal")
			return
		}
		rs, err := a.DetectWatermark(r.Context(), q)
		switch {
		case errors.Is(err, ErrBadQuery) || errors.Is(err, inventory.ErrBadInput):
			fail(http.StatusBadRequest, err.Error())
		case errors.Is(err, inventory.ErrNotFound):
			fail(http.StatusNotFound, err.Error())
		case err != nil:
			a.Log.Error("watermark detect", "err", err)
			fail(http.StatusServiceUnavailable, "detection unavailable")
		default:
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"results": rs})
		}
	})
}
