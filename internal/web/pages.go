package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/report"
	"github.com/strongroom/strongroom/internal/store"
)

// pageSize is how many rows a list shows; lists page by key, never loading all rows.
const pageSize = 50

func (c *Console) routes() {
	m := http.NewServeMux()
	m.Handle("/console/static/", c.static)
	m.HandleFunc("/console/login", c.login)
	m.HandleFunc("/console/logout", c.logout)
	if c.cfg.OIDC != nil {
		m.HandleFunc("/console/oidc/start", c.oidcStart)
		m.HandleFunc("/console/oidc/callback", c.oidcCallback)
	}
	m.HandleFunc("/console/stepup", c.act("stepup", false, c.stepUp))
	m.HandleFunc("/console/{$}", c.view("overview", c.overview))
	m.HandleFunc("/console/inventory", c.view("inventory", c.inventory))
	m.HandleFunc("/console/leases", c.view("leases", c.leases))
	m.HandleFunc("/console/approvals", c.view("approvals", c.approvals))
	m.HandleFunc("/console/principals", c.view("principals", c.principals))
	m.HandleFunc("/console/principals/{id}", c.view("principals", c.principal))
	m.HandleFunc("/console/incidents", c.view("incidents", c.incidents))
	m.HandleFunc("/console/incidents/{id}", c.view("incidents", c.incident))
	m.HandleFunc("/console/incidents/{id}/report.pdf", c.view("incident.report", c.incidentReport))
	m.HandleFunc("/console/proof", c.view("audit", c.proof))
	m.HandleFunc("/console/audit", c.view("audit", c.auditPage))
	m.HandleFunc("/console/audit/export", c.view("audit.export", c.auditExport))
	m.HandleFunc("/console/reports/compliance", c.view("report.compliance", c.complianceReport))
	m.HandleFunc("/console/policies", c.view("policies", c.policies))
	m.HandleFunc("/console/events", c.view("events", c.events))

	m.HandleFunc("/console/leases/revoke", c.act("lease.revoke", true, c.revokeLease))
	m.HandleFunc("/console/runtimes/revoke", c.act("runtime.revoke", true, c.revokeRuntime))
	m.HandleFunc("/console/models/disable", c.act("model.disable", true, c.disableModel))
	m.HandleFunc("/console/approvals/decide", c.act("approval.decide", true, c.decideApproval))
	m.HandleFunc("/console/principals/create", c.act("principal.create", false, c.createPrincipal))
	m.HandleFunc("/console/keys/create", c.act("key.create", false, c.createKey))
	m.HandleFunc("/console/keys/rotate", c.act("key.rotate", false, c.rotateKey))
	m.HandleFunc("/console/keys/revoke", c.act("key.revoke", true, c.revokeKey))
	m.HandleFunc("/console/sanctions/lift", c.act("sanction.lift", true, c.liftSanction))
	m.HandleFunc("/console/incidents/close", c.act("incident.close", false, c.closeIncident))
	m.HandleFunc("/console/", func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, c.signedIn(r), errorf(http.StatusNotFound, "no such page"))
	})
	c.mux = m
}

// deployment is where a model version is live: a lease and the runtime holding it.
type deployment struct {
	Lease   store.Lease
	Runtime store.Runtime
}

func (c *Console) live(q *req) ([]deployment, error) {
	ls, err := c.cfg.Store.ListLeases(q.ctx, store.LeaseQuery{LiveAt: c.cfg.Now()})
	if err != nil {
		return nil, err
	}
	rts, err := c.cfg.Store.ListRuntimes(q.ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]store.Runtime{}
	for _, rt := range rts {
		byID[rt.ID] = rt
	}
	out := make([]deployment, len(ls))
	for i, l := range ls {
		out[i] = deployment{Lease: l, Runtime: byID[l.Runtime]}
	}
	return out, nil
}

// bar is one bar of a chart, already scaled (SVG attributes, no inline style).
type bar struct {
	X, Y, W, H int
	Label      string
	Class      string
}

type countryRow struct {
	Country string
	Count   int
	Width   int
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, q *req) error {
	now := c.cfg.Now()
	since := now.Add(-24 * time.Hour).Truncate(time.Hour)
	hist, err := c.cfg.Store.AuditHistogram(q.ctx, string(audit.KindRequest), since, time.Hour)
	if err != nil {
		return err
	}
	// 24 hourly slots, allowed and denied side by side.
	var allow, deny [25]int
	total := map[string]int{}
	maxN := 1
	for _, b := range hist {
		i := int(b.Start.Sub(since) / time.Hour)
		if i < 0 || i >= len(allow) {
			continue
		}
		if b.Decision == audit.Deny {
			deny[i] += b.Count
		} else {
			allow[i] += b.Count
		}
		total[b.Decision] += b.Count
		maxN = max(maxN, allow[i], deny[i])
	}
	var bars, ticks []bar
	for i := range allow {
		if i%4 == 0 {
			ticks = append(ticks, bar{X: i * 24, Label: since.Add(time.Duration(i) * time.Hour).UTC().Format("15:04")})
		}
		h := since.Add(time.Duration(i) * time.Hour).UTC().Format("15:00")
		ha, hd := allow[i]*100/maxN, deny[i]*100/maxN
		bars = append(bars, bar{X: i * 24, Y: 100 - ha, W: 10, H: ha, Label: fmt.Sprintf("%s: %d allowed", h, allow[i]), Class: "allow"},
			bar{X: i*24 + 11, Y: 100 - hd, W: 10, H: hd, Label: fmt.Sprintf("%s: %d denied", h, deny[i]), Class: "deny"})
	}
	// Traffic by country: the latest 2,000 requests of the day (a bounded read, newest
	// first by index; older ones are skipped here rather than by the query, which would
	// then have to sort the whole day).
	evs, err := c.cfg.Store.SearchAudit(q.ctx, store.AuditQuery{Kind: string(audit.KindRequest), Desc: true, Limit: 2000})
	if err != nil {
		return err
	}
	byCountry := map[string]int{}
	sampled := 0
	for _, e := range evs {
		if e.TS.Before(since) {
			continue
		}
		sampled++
		var ev struct {
			Fields map[string]string `json:"fields"`
		}
		json.Unmarshal(e.Raw, &ev)
		cc := ev.Fields["country"]
		if cc == "" {
			cc = "unknown"
		}
		byCountry[cc]++
	}
	var countries []countryRow
	for cc, n := range byCountry {
		countries = append(countries, countryRow{Country: cc, Count: n})
	}
	sort.Slice(countries, func(i, j int) bool {
		return countries[i].Count > countries[j].Count || (countries[i].Count == countries[j].Count && countries[i].Country < countries[j].Country)
	})
	for i := range countries {
		countries[i].Width = countries[i].Count * 200 / max(1, countries[0].Count)
	}
	incidents, err := c.cfg.Store.ListIncidents(q.ctx, "open")
	if err != nil {
		return err
	}
	deps, err := c.live(q)
	if err != nil {
		return err
	}
	c.render(w, r, q, http.StatusOK, "overview", "Overview", map[string]any{
		"Bars": bars, "Ticks": ticks, "Allowed": total[audit.Allow], "Denied": total[audit.Deny], "Since": since,
		"Countries": countries, "Sampled": sampled, "Incidents": head(incidents, 20), "OpenIncidents": len(incidents), "Deployments": deps,
	})
	return nil
}

func head[T any](xs []T, n int) []T {
	if len(xs) > n {
		return xs[:n]
	}
	return xs
}

type versionRow struct {
	V         store.Version
	Signature string // "verified" or why not
	Deployed  []deployment
}

func (c *Console) inventory(w http.ResponseWriter, r *http.Request, q *req) error {
	vs, err := c.cfg.Store.ListVersions(q.ctx, "")
	if err != nil {
		return err
	}
	deps, err := c.live(q)
	if err != nil {
		return err
	}
	rows := make([]versionRow, len(vs))
	for i, v := range vs {
		rows[i].V = v
		switch {
		case v.External:
			rows[i].Signature = "external (no weights held)"
		default:
			if err := c.cfg.Ops.CheckSignature(v); err != nil {
				rows[i].Signature = "FAILED: " + err.Error()
			} else {
				rows[i].Signature = "verified (OMS v1.0)"
			}
		}
		for _, d := range deps {
			if d.Lease.Model == v.Model && d.Lease.Version == v.Version {
				rows[i].Deployed = append(rows[i].Deployed, d)
			}
		}
	}
	c.render(w, r, q, http.StatusOK, "inventory", "Inventory", rows)
	return nil
}

func (c *Console) leases(w http.ResponseWriter, r *http.Request, q *req) error {
	deps, err := c.live(q)
	if err != nil {
		return err
	}
	rts, err := c.cfg.Store.ListRuntimes(q.ctx)
	if err != nil {
		return err
	}
	c.render(w, r, q, http.StatusOK, "leases", "Leases and runtimes", map[string]any{"Deployments": deps, "Runtimes": rts})
	return nil
}

func (c *Console) approvals(w http.ResponseWriter, r *http.Request, q *req) error {
	pending, err := c.cfg.Store.ListApprovals(q.ctx, store.StatePending)
	if err != nil {
		return err
	}
	all, err := c.cfg.Store.ListApprovals(q.ctx, "")
	if err != nil {
		return err
	}
	var done []store.ApprovalRequest
	for _, a := range all {
		if a.State != store.StatePending {
			done = append(done, a)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i].CreatedAt.After(done[j].CreatedAt) })
	c.render(w, r, q, http.StatusOK, "approvals", "Approvals", map[string]any{"Pending": pending, "Done": head(done, pageSize)})
	return nil
}

func (c *Console) principals(w http.ResponseWriter, r *http.Request, q *req) error {
	after := r.URL.Query().Get("after")
	ps, err := c.cfg.Store.PrincipalsPage(q.ctx, after, pageSize+1)
	if err != nil {
		return err
	}
	next := ""
	if len(ps) > pageSize {
		ps = ps[:pageSize]
		next = ps[pageSize-1].ID
	}
	c.render(w, r, q, http.StatusOK, "principals", "Principals and keys", map[string]any{"Principals": ps, "Next": next, "After": after})
	return nil
}

func (c *Console) principal(w http.ResponseWriter, r *http.Request, q *req) error {
	p, err := c.cfg.Store.GetPrincipal(q.ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	keys, err := c.cfg.Store.ListAPIKeys(q.ctx, p.ID)
	if err != nil {
		return err
	}
	c.render(w, r, q, http.StatusOK, "principal", "Principal "+p.ID, map[string]any{"P": p, "Keys": keys, "Now": c.cfg.Now()})
	return nil
}

func (c *Console) incidents(w http.ResponseWriter, r *http.Request, q *req) error {
	state := r.URL.Query().Get("state")
	if state != "open" && state != "closed" {
		state = ""
	}
	ins, err := c.cfg.Store.ListIncidents(q.ctx, state)
	if err != nil {
		return err
	}
	ss, err := c.cfg.Store.ListSanctions(q.ctx, c.cfg.Now())
	if err != nil {
		return err
	}
	c.render(w, r, q, http.StatusOK, "incidents", "Alerts, sanctions and incidents", map[string]any{"Incidents": head(ins, 100), "More": len(ins) > 100, "Sanctions": ss, "State": state})
	return nil
}

// entry is a log entry as the incident and audit pages show it.
type entry struct {
	Index    uint64
	TS       time.Time
	Kind     string
	Actor    string
	Decision string
	Reason   string
	Subject  map[string]string
	Fields   map[string]string
	Raw      string
	Opened   bool // the incident's own opening or closing, not a log entry
}

func toEntry(e store.AuditEvent) entry {
	var ev struct {
		Reason  string            `json:"reason"`
		Subject map[string]string `json:"subject"`
		Fields  map[string]string `json:"fields"`
	}
	json.Unmarshal(e.Raw, &ev)
	return entry{Index: e.Index, TS: e.TS, Kind: e.Kind, Actor: e.Principal, Decision: e.Decision, Reason: ev.Reason, Subject: ev.Subject, Fields: ev.Fields, Raw: string(e.Raw)}
}

func (c *Console) incident(w http.ResponseWriter, r *http.Request, q *req) error {
	in, err := c.cfg.Store.GetIncident(q.ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	evs, err := c.cfg.Store.SearchAudit(q.ctx, store.AuditQuery{Indexes: head(in.Evidence, 500)})
	if err != nil {
		return err
	}
	timeline := []entry{{TS: in.OpenedAt, Kind: "incident opened", Opened: true}}
	if !in.ClosedAt.IsZero() {
		timeline = append(timeline, entry{TS: in.ClosedAt, Kind: "incident closed", Reason: in.Note, Opened: true})
	}
	for _, e := range evs {
		timeline = append(timeline, toEntry(e))
	}
	sort.SliceStable(timeline, func(i, j int) bool { return timeline[i].TS.Before(timeline[j].TS) })
	_, report := c.cfg.Ops.(incidentReporter)
	c.render(w, r, q, http.StatusOK, "incident", "Incident "+in.ID, map[string]any{"In": in, "Timeline": timeline, "Missing": len(in.Evidence) - len(evs), "Report": report})
	return nil
}

func (c *Console) incidentReport(w http.ResponseWriter, r *http.Request, q *req) error {
	rep, ok := c.cfg.Ops.(incidentReporter)
	if !ok {
		return errorf(http.StatusNotImplemented, "%v", errNoReport)
	}
	id := r.PathValue("id")
	body, ct, err := rep.IncidentReport(q.ctx, id, "pdf")
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Disposition", `attachment; filename="incident-`+safeName(id)+`.pdf"`)
	w.Write(body)
	return nil
}

// complianceReport downloads the compliance report over ?from=&to= (RFC 3339 times or
// dates; empty: the log's start, now) as ?format= (pdf, html, csv, json).
func (c *Console) complianceReport(w http.ResponseWriter, r *http.Request, q *req) error {
	rep, ok := c.cfg.Ops.(complianceReporter)
	if !ok {
		return errorf(http.StatusNotImplemented, "%v", errNoReport)
	}
	var when [2]time.Time
	for i, name := range []string{"from", "to"} {
		v := strings.TrimSpace(r.URL.Query().Get(name))
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			if t, err = time.Parse("2006-01-02", v); err != nil {
				return errorf(http.StatusBadRequest, "%s: give an RFC 3339 time or a date (2006-01-02)", name)
			}
		}
		when[i] = t
	}
	format := r.URL.Query().Get("format")
	if format == "" {
		format = "pdf"
	}
	if _, ok := report.Formats[format]; !ok {
		return errorf(http.StatusBadRequest, "format: pdf, html, csv or json")
	}
	body, ct, err := rep.ComplianceReport(q.ctx, when[0], when[1], format)
	if errors.Is(err, report.ErrPeriod) {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Disposition", `attachment; filename="compliance-report.`+safeName(format)+`"`)
	w.Write(body)
	return nil
}

// safeName keeps letters, digits, '-' and '_' (a file name in a header).
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			return r
		}
		return '_'
	}, s)
}

// proofJSON is what the browser verifies: the signed checkpoint as served, the entry's
// exact bytes and its inclusion proof, and for a request record its bytes and proof in
// the batch root that the entry carries.
type proofJSON struct {
	Checkpoint string   `json:"checkpoint"`
	Index      uint64   `json:"index"`
	TreeSize   uint64   `json:"tree_size"`
	Entry      []byte   `json:"entry"`
	Proof      []string `json:"proof"`
	Record     []byte   `json:"record,omitempty"`
	Position   int      `json:"position,omitempty"`
	Records    int      `json:"records,omitempty"`
	RecProof   []string `json:"record_proof,omitempty"`
}

func (c *Console) proof(w http.ResponseWriter, r *http.Request, q *req) error {
	idx, err := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	if err != nil {
		return errorf(http.StatusBadRequest, "index: a log index")
	}
	p, cp, err := c.cfg.Ops.Prove(q.ctx, idx)
	if err != nil {
		return err
	}
	out := proofJSON{Checkpoint: string(cp), Index: p.Index, TreeSize: p.TreeSize, Entry: p.Event, Proof: p.Proof}
	if p.Record != nil {
		out.Record, out.Position, out.Records, out.RecProof = p.Record.Event, p.Record.Position, p.Record.Records, p.Record.Proof
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(out)
}
