package report

import (
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Formats a report can be written in.
var Formats = map[string]string{"json": "application/json", "csv": "text/csv; charset=utf-8",
	"html": "text/html; charset=utf-8", "pdf": "application/pdf"}

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Write renders the compliance report in format (json, csv, html or pdf).
func (r *ComplianceReport) Write(w io.Writer, format string) error {
	switch format {
	case "json":
		return WriteJSON(w, r)
	case "csv":
		return r.csv(w)
	case "html":
		return complianceHTML.Execute(w, r)
	case "pdf":
		return r.pdf(w)
	}
	return fmt.Errorf("unknown report format %q (json, csv, html or pdf)", format)
}

// Write renders the incident report in format (json or pdf).
func (r *IncidentReport) Write(w io.Writer, format string) error {
	switch format {
	case "json":
		return WriteJSON(w, r)
	case "pdf":
		return r.pdf(w)
	}
	return fmt.Errorf("unknown incident report format %q (json or pdf)", format)
}

func denials(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %d", k, m[k])
	}
	return b.String()
}

func ts(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func pct(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + "%" }

// csv writes one row per figure: section, then the section's own columns.
func (r *ComplianceReport) csv(w io.Writer) error {
	c := csv.NewWriter(w)
	f := r.Figures
	c.Write([]string{"section", "a", "b", "c", "d", "e", "f", "g", "h", "i"})
	c.Write([]string{"report", r.Format, ts(r.Period.From), ts(r.Period.To), r.Log.Origin, strconv.FormatUint(r.Log.Size, 10), hex.EncodeToString(r.Log.Root), strconv.FormatBool(f.Empty)})
	c.Write([]string{"traffic", "model", "classification", "country", "requests", "allowed", "denied", "prompt_tokens", "completion_tokens", "denials"})
	for _, t := range f.Traffic {
		c.Write([]string{"traffic", t.Model, t.Classification, t.Country, strconv.Itoa(t.Requests), strconv.Itoa(t.Allowed), strconv.Itoa(t.Denied),
			strconv.FormatInt(t.PromptTokens, 10), strconv.FormatInt(t.CompletionTokens, 10), denials(t.Denials)})
	}
	c.Write([]string{"unauthenticated", strconv.Itoa(f.Unauthenticated)})
	c.Write([]string{"screening", "at", "principal", "match", "source", "score", "review", "reviewed_at", "reviewed_by", "log_index"})
	for _, h := range f.Screening {
		c.Write([]string{"screening", ts(h.At), h.Principal, h.Match, h.Source, h.Score, h.Review, ts(h.ReviewedAt), h.ReviewedBy, strconv.FormatUint(h.LogIndex, 10)})
	}
	c.Write([]string{"deployment", "model", "version", "classification", "jurisdiction", "attestation", "leases", "first", "last"})
	for _, d := range f.Deployments {
		c.Write([]string{"deployment", d.Model, d.Version, d.Classification, d.Jurisdiction, d.Attestation, strconv.Itoa(d.Leases), ts(d.First), ts(d.Last)})
	}
	c.Write([]string{"watermark", "model", "answers", "requested", "watermarked", "coverage"})
	for _, m := range f.Watermark {
		c.Write([]string{"watermark", m.Model, strconv.Itoa(m.Answers), strconv.Itoa(m.Requested), strconv.Itoa(m.Watermarked), strconv.FormatFloat(m.Coverage, 'f', 4, 64)})
	}
	c.Write([]string{"policy", "at", "set", "file", "sha256", "log_index"})
	for _, p := range f.Policies {
		for _, name := range sortedNames(p.Files) {
			c.Write([]string{"policy", ts(p.At), p.Set, name, p.Files[name], strconv.FormatUint(p.LogIndex, 10)})
		}
	}
	c.Write([]string{"model_change", "at", "kind", "model", "by", "log_index"})
	for _, m := range f.ModelChanges {
		c.Write([]string{"model_change", ts(m.At), string(m.Kind), m.Model, m.By, strconv.FormatUint(m.LogIndex, 10)})
	}
	c.Flush()
	return c.Error()
}

func sortedNames(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

var complianceHTML = template.Must(template.New("c").Funcs(template.FuncMap{"ts": ts, "denials": denials, "pct": pct,
	"hex": hex.EncodeToString, "names": sortedNames}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Compliance report {{ts .Period.From}} – {{ts .Period.To}}</title>
<style>body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#111}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}th{background:#eee}pre{font-size:11px;background:#f6f6f6;padding:.5em}</style></head>
<body><h1>Compliance report</h1>
<p>Period {{ts .Period.From}} to {{ts .Period.To}} (end excluded). Generated {{ts .GeneratedAt}} by {{.Tool}}.
Computed from log <code>{{.Log.Origin}}</code> at size {{.Log.Size}}, root <code>{{hex .Log.Root}}</code>;
recompute with <code>strongroom report verify FILE.json</code>.</p>
{{with .Figures}}{{if .Empty}}<p><strong>No events were recorded in this period.</strong> The log covers it (it begins {{ts .LogStart}}).</p>{{end}}
<h2>Requests by classification, model and country</h2>
<table><tr><th>Classification</th><th>Model</th><th>Country</th><th>Requests</th><th>Allowed</th><th>Denied</th><th>Tokens in</th><th>Tokens out</th><th>Denials by reason</th></tr>
{{range .Traffic}}<tr><td>{{.Classification}}</td><td>{{.Model}}</td><td>{{.Country}}</td><td>{{.Requests}}</td><td>{{.Allowed}}</td><td>{{.Denied}}</td><td>{{.PromptTokens}}</td><td>{{.CompletionTokens}}</td><td>{{denials .Denials}}</td></tr>
{{else}}<tr><td colspan="9">none</td></tr>{{end}}</table>
<p>Requests refused before the caller was identified: {{.Unauthenticated}}.</p>
<h2>Denied-party screening</h2>
<table><tr><th>At</th><th>Principal</th><th>Match</th><th>Source</th><th>Score</th><th>Review</th><th>Reviewed</th><th>Entry</th></tr>
{{range .Screening}}<tr><td>{{ts .At}}</td><td>{{.Principal}}</td><td>{{.Match}}</td><td>{{.Source}}</td><td>{{.Score}}</td><td>{{.Review}}</td><td>{{ts .ReviewedAt}} {{.ReviewedBy}}</td><td>{{.LogIndex}}</td></tr>
{{else}}<tr><td colspan="8">no hits</td></tr>{{end}}</table>
<h2>Deployments of non-public models</h2>
<table><tr><th>Model</th><th>Classification</th><th>Jurisdiction</th><th>Attestation</th><th>Leases</th><th>First</th><th>Last</th></tr>
{{range .Deployments}}<tr><td>{{.Model}}:{{.Version}}</td><td>{{.Classification}}</td><td>{{.Jurisdiction}}</td><td>{{.Attestation}}</td><td>{{.Leases}}</td><td>{{ts .First}}</td><td>{{ts .Last}}</td></tr>
{{else}}<tr><td colspan="7">none</td></tr>{{end}}</table>
<h2>Watermark coverage</h2>
<table><tr><th>Model</th><th>Answers</th><th>Watermark asked</th><th>Watermarked</th><th>Coverage</th></tr>
{{range .Watermark}}<tr><td>{{.Model}}</td><td>{{.Answers}}</td><td>{{.Requested}}</td><td>{{.Watermarked}}</td><td>{{pct .Coverage}}</td></tr>
{{else}}<tr><td colspan="5">no answers</td></tr>{{end}}</table>
<h2>Configuration: policy sets in force</h2>
{{range .Policies}}<p>From {{ts .At}} (entry {{.LogIndex}}): set <code>{{.Set}}</code></p><table><tr><th>File</th><th>SHA-256</th></tr>
{{$f := .Files}}{{range names .Files}}<tr><td>{{.}}</td><td><code>{{index $f .}}</code></td></tr>{{end}}</table>
{{else}}<p>No policy set was recorded before or during the period.</p>{{end}}
<h2>Model record changes</h2>
<table><tr><th>At</th><th>Kind</th><th>Model</th><th>By</th><th>Entry</th></tr>
{{range .ModelChanges}}<tr><td>{{ts .At}}</td><td>{{.Kind}}</td><td>{{.Model}}</td><td>{{.By}}</td><td>{{.LogIndex}}</td></tr>
{{else}}<tr><td colspan="5">none</td></tr>{{end}}</table>{{end}}
<h2>Signed checkpoint</h2><pre>{{.Log.Checkpoint}}</pre>
</body></html>
`))

func (r *ComplianceReport) pdf(w io.Writer) error {
	d := newDoc("Strongroom compliance report", r.GeneratedAt)
	f := r.Figures
	d.fields("Period", ts(r.Period.From)+" to "+ts(r.Period.To)+" (end excluded)", "Generated", ts(r.GeneratedAt)+" by "+r.Tool,
		"Log", fmt.Sprintf("%s, size %d", r.Log.Origin, r.Log.Size), "Root", hex.EncodeToString(r.Log.Root),
		"Recompute", "strongroom report verify REPORT.json")
	if f.Empty {
		d.heading("No events in this period")
		d.para("The log covers the period (it begins " + ts(f.LogStart) + ") and recorded no events in it.")
	}
	d.heading("Requests by classification, model and country")
	var rows [][]string
	for _, t := range f.Traffic {
		rows = append(rows, []string{t.Classification, t.Model, t.Country, strconv.Itoa(t.Requests), strconv.Itoa(t.Allowed), strconv.Itoa(t.Denied),
			strconv.FormatInt(t.PromptTokens+t.CompletionTokens, 10), denials(t.Denials)})
	}
	d.table([]float64{25, 28, 15, 17, 15, 15, 20, 45}, []string{"Classification", "Model", "Country", "Requests", "Allowed", "Denied", "Tokens", "Denials by reason"}, rows)
	d.para(fmt.Sprintf("Requests refused before the caller was identified: %d.", f.Unauthenticated))
	d.heading("Denied-party screening")
	rows = nil
	for _, h := range f.Screening {
		rows = append(rows, []string{ts(h.At), h.Principal, h.Match + " (" + h.Source + ", " + h.Score + ")", h.Review, ts(h.ReviewedAt) + " " + h.ReviewedBy})
	}
	d.table([]float64{35, 30, 50, 20, 45}, []string{"At", "Principal", "Match", "Review", "Reviewed"}, rows)
	d.heading("Deployments of non-public models")
	rows = nil
	for _, x := range f.Deployments {
		rows = append(rows, []string{x.Model + ":" + x.Version, x.Classification, x.Jurisdiction, x.Attestation, strconv.Itoa(x.Leases), ts(x.First) + " – " + ts(x.Last)})
	}
	d.table([]float64{35, 28, 22, 25, 15, 55}, []string{"Model", "Classification", "Jurisdiction", "Attestation", "Leases", "First – last"}, rows)
	d.heading("Watermark coverage")
	rows = nil
	for _, m := range f.Watermark {
		rows = append(rows, []string{m.Model, strconv.Itoa(m.Answers), strconv.Itoa(m.Requested), strconv.Itoa(m.Watermarked), pct(m.Coverage)})
	}
	d.table([]float64{50, 30, 35, 35, 30}, []string{"Model", "Answers", "Watermark asked", "Watermarked", "Coverage"}, rows)
	d.heading("Configuration: policy sets in force")
	rows = nil
	for _, p := range f.Policies {
		for _, name := range sortedNames(p.Files) {
			rows = append(rows, []string{ts(p.At), name, p.Files[name]})
		}
	}
	d.table([]float64{35, 40, 105}, []string{"In force from", "File", "SHA-256"}, rows)
	d.heading("Model record changes")
	rows = nil
	for _, m := range f.ModelChanges {
		rows = append(rows, []string{ts(m.At), string(m.Kind), m.Model, m.By, strconv.FormatUint(m.LogIndex, 10)})
	}
	d.table([]float64{35, 30, 45, 50, 20}, []string{"At", "Kind", "Model", "By", "Entry"}, rows)
	d.heading("Signed checkpoint")
	d.mono(r.Log.Checkpoint)
	return d.write(w)
}

func (r *IncidentReport) pdf(w io.Writer) error {
	d := newDoc("Incident report "+r.Incident.ID, r.GeneratedAt)
	closed := "open"
	if r.Incident.ClosedAt != nil {
		closed = "closed " + ts(*r.Incident.ClosedAt) + ": " + r.Incident.ClosingNote
	}
	d.fields("Report", r.ReportID+" ("+r.Format+")", "Generated", ts(r.GeneratedAt)+" by "+r.Tool, "State", closed,
		"Opened", ts(r.Incident.OpenedAt), "Summary", r.Incident.Summary)
	d.heading("Detection")
	d.fields("Detector", r.Detection.Detector, "Score", strconv.FormatFloat(r.Detection.Score, 'f', 4, 64),
		"Detected", ts(r.Detection.DetectedAt), "Action", r.Detection.Action, "Evidence", r.Detection.Evidence)
	d.heading("Affected")
	var ms []string
	for _, m := range r.Affected.Models {
		s := m.Model
		if m.Version != "" {
			s += ":" + m.Version
		}
		if m.Classification != "" {
			s += " (" + m.Classification + ")"
		}
		ms = append(ms, s)
	}
	d.fields("Principals", strings.Join(r.Affected.Principals, ", "), "Models", strings.Join(ms, ", "), "Countries", strings.Join(r.Affected.Countries, ", "))
	d.heading("Actions and sanctions")
	var rows [][]string
	for _, a := range r.Actions {
		rows = append(rows, []string{ts(a.At), a.Action, a.By, a.Reason, strconv.FormatUint(a.LogIndex, 10)})
	}
	d.table([]float64{35, 30, 35, 55, 25}, []string{"At", "Action", "By", "Reason", "Entry"}, rows)
	d.heading("Timeline")
	rows = nil
	for _, m := range r.Timeline {
		rows = append(rows, []string{ts(m.At), string(m.Kind), m.What, strconv.FormatUint(m.LogIndex, 10)})
	}
	d.table([]float64{35, 28, 92, 25}, []string{"At", "Kind", "What", "Entry"}, rows)
	d.heading("EU AI Act Article 73 fields")
	var kv []string
	for _, k := range sortedNames(r.Mappings.EUAIAct73) {
		kv = append(kv, k, r.Mappings.EUAIAct73[k])
	}
	d.fields(kv...)
	d.para("Not answered by the log (to be filled in by the provider): " + strings.Join(r.Mappings.NotAnswered, ", ") + ".")
	d.heading("Log entries and inclusion proofs")
	d.para(fmt.Sprintf("Every entry below is proven in the signed checkpoint at the end (origin %s, size %d); the JSON form of this report carries the proofs for machine checking.", r.Log.Origin, r.Log.Size))
	for _, e := range r.Entries {
		s := fmt.Sprintf("entry %d: %s\nproof: %s", e.Index, e.Event, strings.Join(e.Proof, " "))
		if e.Record != nil {
			s += fmt.Sprintf("\nrecord %d of %d: %s\nbatch root %s, proof: %s", e.Record.Position, e.Record.Records, e.Record.Event, e.Record.BatchRoot, strings.Join(e.Record.Proof, " "))
		}
		d.mono(s)
		d.f.Ln(1)
	}
	d.heading("Signed checkpoint")
	d.mono(r.Log.Checkpoint)
	return d.write(w)
}
