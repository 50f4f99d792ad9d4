package report

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
)

// ComplianceFormat names version 1 of the compliance report.
const ComplianceFormat = "strongroom.compliance/v1"

// ErrPeriod is a period the log cannot answer for.
var ErrPeriod = errors.New("period not covered by the log")

// Period is the half-open interval [From, To).
type Period struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

func (p Period) has(t time.Time) bool { return !t.Before(p.From) && t.Before(p.To) }

// ComplianceReport is a compliance report (see the package doc).
type ComplianceReport struct {
	Format      string    `json:"format"`
	Period      Period    `json:"period"`
	GeneratedAt time.Time `json:"generated_at"`
	Tool        string    `json:"tool"`
	Log         LogRef    `json:"log"`
	Figures     Figures   `json:"figures"`
}

// Figures is everything a compliance report computes from the log.
type Figures struct {
	// Empty: the log covers the period and recorded nothing in it.
	Empty bool `json:"empty"`
	// LogStart is the time of the log's earliest event (entry or request record).
	LogStart        time.Time `json:"log_start"`
	Entries         int       `json:"entries"` // entries and request records in the period
	Traffic         []Traffic `json:"traffic"`
	Unauthenticated int       `json:"unauthenticated"` // requests refused before identification
	Screening       []Hit     `json:"screening"`
	Deployments     []Deploy  `json:"deployments"`
	Watermark       []Mark    `json:"watermark"`
	Policies        []Policy  `json:"policies"`
	ModelChanges    []Change  `json:"model_changes"`
}

// Traffic is the gateway's requests for one model, classification and country.
type Traffic struct {
	Model            string         `json:"model"`
	Classification   string         `json:"classification"`
	Country          string         `json:"country"`
	Requests         int            `json:"requests"`
	Allowed          int            `json:"allowed"`
	Denied           int            `json:"denied"`
	PromptTokens     int64          `json:"prompt_tokens"`
	CompletionTokens int64          `json:"completion_tokens"`
	Denials          map[string]int `json:"denials"` // by reason
}

// Hit is a denied-party screening hit and its review.
type Hit struct {
	At        time.Time `json:"at"`
	Principal string    `json:"principal"`
	Match     string    `json:"match"`
	Source    string    `json:"source"`
	Score     string    `json:"score"`
	LogIndex  uint64    `json:"log_index"`
	// Review is the principal's next recorded screening state (clear, denied), if any.
	Review      string    `json:"review"`
	ReviewedAt  time.Time `json:"reviewed_at,omitzero"`
	ReviewedBy  string    `json:"reviewed_by,omitempty"`
	ReviewIndex uint64    `json:"review_index,omitempty"`
}

// Deploy counts leases granted on a non-public model by jurisdiction and attestation.
type Deploy struct {
	Model          string    `json:"model"`
	Version        string    `json:"version"`
	Classification string    `json:"classification"`
	Jurisdiction   string    `json:"jurisdiction"`
	Attestation    string    `json:"attestation"`
	Leases         int       `json:"leases"`
	First          time.Time `json:"first"`
	Last           time.Time `json:"last"`
}

// Mark is a model's watermark coverage: of the answers that asked for a watermark, how
// many the engine watermarked.
type Mark struct {
	Model       string  `json:"model"`
	Answers     int     `json:"answers"`     // allowed requests
	Requested   int     `json:"requested"`   // of which the record asked for a watermark
	Watermarked int     `json:"watermarked"` // of which the engine watermarked
	Coverage    float64 `json:"coverage"`    // watermarked / requested (1 when none requested)
}

// Policy is a Cedar policy set in force during the period: the one in force at its start
// (At before the period) and each one loaded during it.
type Policy struct {
	At       time.Time         `json:"at"`
	LogIndex uint64            `json:"log_index"`
	Set      string            `json:"set"`   // digest of the whole set
	Files    map[string]string `json:"files"` // file → sha256
}

// Change is a model record created or changed during the period.
type Change struct {
	At       time.Time  `json:"at"`
	LogIndex uint64     `json:"log_index"`
	Kind     audit.Kind `json:"kind"`
	Model    string     `json:"model"`
	By       string     `json:"by"`
}

// Compliance computes the report for period p at the log's current checkpoint. now is the
// time the report is made; tool names the program. A zero p.From means the log's first
// entry, a zero p.To now.
func Compliance(ctx context.Context, src Source, p Period, now time.Time, tool string) (*ComplianceReport, error) {
	ref, _, err := src.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	if p.To.IsZero() {
		p.To = now
	}
	fromStart := p.From.IsZero() // from the log's first event
	if !fromStart && !p.To.After(p.From) {
		return nil, fmt.Errorf("%w: the period is empty (from %s, to %s)", ErrPeriod, stamp(p.From), stamp(p.To))
	}
	if p.To.After(now) {
		return nil, fmt.Errorf("%w: the period ends at %s, after now (%s): the log cannot cover it yet", ErrPeriod, stamp(p.To), stamp(now))
	}
	f, err := figures(ctx, src, ref, ref.Size, p)
	if err != nil {
		return nil, err
	}
	if fromStart {
		p.From = f.LogStart
		if ref.Size == 0 || !p.To.After(p.From) {
			return nil, fmt.Errorf("%w: the log has no events before %s", ErrPeriod, stamp(p.To))
		}
	}
	if ref.Size == 0 || p.From.Before(f.LogStart) {
		return nil, fmt.Errorf("%w: the log begins at %s, after the period's start (%s)", ErrPeriod, stamp(f.LogStart), stamp(p.From))
	}
	return &ComplianceReport{Format: ComplianceFormat, Period: Period{p.From.UTC(), p.To.UTC()}, GeneratedAt: now.UTC(), Tool: tool, Log: ref, Figures: *f}, nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// figures walks the log at ref and computes the period's figures.
func figures(ctx context.Context, src Source, ref LogRef, geometry uint64, p Period) (*Figures, error) {
	p = Period{p.From.UTC(), p.To.UTC()}
	c := newCounter(p)
	if err := src.Walk(ctx, ref, geometry, c.add); err != nil {
		return nil, err
	}
	return c.finish(), nil
}

type trafficKey struct{ model, class, country string }
type deployKey struct{ model, version, class, jurisdiction, attestation string }

// counter folds log events into figures.
type counter struct {
	p       Period
	f       Figures
	started bool
	class   map[string]string // "model:version" and "model" → last recorded classification
	traffic map[trafficKey]*Traffic
	deploy  map[deployKey]*Deploy
	marks   map[string]*Mark
	pending map[string][]int // principal → indexes into f.Screening awaiting review
	policy  *Policy          // last policy set loaded before the period
}

func newCounter(p Period) *counter {
	return &counter{p: p, class: map[string]string{}, traffic: map[trafficKey]*Traffic{},
		deploy: map[deployKey]*Deploy{}, marks: map[string]*Mark{}, pending: map[string][]int{}}
}

func (c *counter) add(e Entry) error {
	ev := e.Event
	if !c.started || ev.TS.Before(c.f.LogStart) {
		c.started, c.f.LogStart = true, ev.TS.UTC()
	}
	c.learn(ev)
	if ev.Kind == audit.KindPolicyLoad && ev.TS.Before(c.p.From) {
		c.policy = policyOf(e)
	}
	if !c.p.has(ev.TS) || ev.Kind == audit.KindBatch {
		return nil
	}
	c.f.Entries++
	switch ev.Kind {
	case audit.KindRequest:
		c.request(ev)
	case audit.KindUnauthenticated:
		n, _ := strconv.Atoi(ev.Fields["count"])
		c.f.Unauthenticated += n
	case audit.KindScreeningHit:
		who := ev.Subject["principal"]
		c.pending[who] = append(c.pending[who], len(c.f.Screening))
		c.f.Screening = append(c.f.Screening, Hit{At: ev.TS.UTC(), Principal: who, Match: ev.Fields["match"],
			Source: ev.Fields["source"], Score: ev.Fields["score"], LogIndex: e.Index, Review: "pending"})
	case audit.KindPrincipalPut:
		who := ev.Subject["principal"]
		if st := ev.Fields["screening"]; st != "" && st != "pending" {
			for _, i := range c.pending[who] {
				h := &c.f.Screening[i]
				h.Review, h.ReviewedAt, h.ReviewedBy, h.ReviewIndex = st, ev.TS.UTC(), ev.Actor["principal"], e.Index
			}
			delete(c.pending, who)
		}
	case audit.KindLeaseGrant:
		c.lease(ev)
	case audit.KindPolicyLoad:
		c.f.Policies = append(c.f.Policies, *policyOf(e))
	case audit.KindModelImport, audit.KindModelRegister, audit.KindModelSet:
		by := ev.Fields["by"]
		if by == "" {
			by = ev.Actor["principal"]
		}
		c.f.ModelChanges = append(c.f.ModelChanges, Change{At: ev.TS.UTC(), LogIndex: e.Index, Kind: ev.Kind,
			Model: ev.Subject["model"] + ":" + ev.Subject["version"], By: by})
	}
	return nil
}

// learn keeps each model version's last recorded classification.
func (c *counter) learn(ev *audit.Event) {
	var class string
	switch ev.Kind {
	case audit.KindModelImport:
		class = ev.Fields["classification"]
	case audit.KindModelRegister, audit.KindModelSet:
		raw := ev.Fields["attrs"]
		if ev.Kind == audit.KindModelSet {
			raw = ev.Fields["after"]
		}
		var a struct {
			Classification string `json:"classification"`
		}
		json.Unmarshal([]byte(raw), &a)
		class = a.Classification
	default:
		return
	}
	if class != "" {
		c.class[ev.Subject["model"]+":"+ev.Subject["version"]] = class
		c.class[ev.Subject["model"]] = class
	}
}

func (c *counter) classOf(model, version, recorded string) string {
	switch {
	case recorded != "":
		return recorded
	case version != "" && c.class[model+":"+version] != "":
		return c.class[model+":"+version]
	case c.class[model] != "":
		return c.class[model]
	}
	return "unknown"
}

func (c *counter) request(ev *audit.Event) {
	model := ev.Subject["model"]
	if model == "" {
		model = "(none)"
	}
	country := ev.Fields["country"]
	if country == "" {
		country = "unknown"
	}
	k := trafficKey{model, c.classOf(ev.Subject["model"], ev.Subject["version"], ev.Fields["classification"]), country}
	t := c.traffic[k]
	if t == nil {
		t = &Traffic{Model: k.model, Classification: k.class, Country: k.country, Denials: map[string]int{}}
		c.traffic[k] = t
	}
	t.Requests++
	if ev.Decision == audit.Deny {
		t.Denied++
		t.Denials[ev.Reason]++
		return
	}
	t.Allowed++
	pt, _ := strconv.ParseInt(ev.Fields["prompt_tokens"], 10, 64)
	ct, _ := strconv.ParseInt(ev.Fields["completion_tokens"], 10, 64)
	t.PromptTokens += pt
	t.CompletionTokens += ct
	m := c.marks[model]
	if m == nil {
		m = &Mark{Model: model}
		c.marks[model] = m
	}
	m.Answers++
	if ev.Fields["watermark_requested"] == "true" {
		m.Requested++
		if ev.Fields["watermarked"] == "true" {
			m.Watermarked++
		}
	}
}

func (c *counter) lease(ev *audit.Event) {
	if ev.Decision != audit.Allow {
		return
	}
	class := c.classOf(ev.Subject["model"], ev.Subject["version"], ev.Fields["classification"])
	if class == "public" {
		return
	}
	k := deployKey{ev.Subject["model"], ev.Subject["version"], class, ev.Fields["jurisdiction"], ev.Fields["attestation"]}
	d := c.deploy[k]
	if d == nil {
		d = &Deploy{Model: k.model, Version: k.version, Classification: k.class, Jurisdiction: k.jurisdiction, Attestation: k.attestation, First: ev.TS.UTC()}
		c.deploy[k] = d
	}
	d.Leases++
	d.Last = ev.TS.UTC()
}

func policyOf(e Entry) *Policy {
	files := map[string]string{}
	for k, v := range e.Event.Fields {
		if name, ok := strings.CutPrefix(k, "sha256:"); ok {
			files[name] = v
		}
	}
	return &Policy{At: e.Event.TS.UTC(), LogIndex: e.Index, Set: e.Event.Subject["policy_set"], Files: files}
}

func (c *counter) finish() *Figures {
	f := c.f
	f.Empty = f.Entries == 0
	if c.policy != nil {
		f.Policies = append([]Policy{*c.policy}, f.Policies...)
	}
	for _, t := range c.traffic {
		f.Traffic = append(f.Traffic, *t)
	}
	sort.Slice(f.Traffic, func(i, j int) bool {
		a, b := f.Traffic[i], f.Traffic[j]
		if a.Classification != b.Classification {
			return a.Classification < b.Classification
		}
		if a.Model != b.Model {
			return a.Model < b.Model
		}
		return a.Country < b.Country
	})
	for _, d := range c.deploy {
		f.Deployments = append(f.Deployments, *d)
	}
	sort.Slice(f.Deployments, func(i, j int) bool {
		a, b := f.Deployments[i], f.Deployments[j]
		return fmt.Sprint(a.Model, "\x00", a.Version, "\x00", a.Jurisdiction, "\x00", a.Attestation) <
			fmt.Sprint(b.Model, "\x00", b.Version, "\x00", b.Jurisdiction, "\x00", b.Attestation)
	})
	for _, m := range c.marks {
		m.Coverage = 1
		if m.Requested > 0 {
			m.Coverage = float64(m.Watermarked) / float64(m.Requested)
		}
		f.Watermark = append(f.Watermark, *m)
	}
	sort.Slice(f.Watermark, func(i, j int) bool { return f.Watermark[i].Model < f.Watermark[j].Model })
	return &f
}
