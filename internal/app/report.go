package app

import (
	"bytes"
	"context"
	"fmt"
	"runtime/debug"
	"slices"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/report"
	"github.com/strongroom/strongroom/internal/store"
)

// ReportSource is this deployment's log as report.Source reads it, trusting the log's key.
func (a *App) ReportSource() (report.Source, error) {
	v, _, err := a.LogVerifier()
	if err != nil {
		return report.Source{}, err
	}
	return report.Source{Fetch: a.AuditLog.Reader(), Opts: audit.VerifyOptions{LogKey: v, Bundles: a.AuditLog.Bundles().Bundle}}, nil
}

// Tool names this program in reports.
func Tool() string {
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	return "strongroom " + v
}

// IncidentReportData builds incident id's report: its evidence and the entries that acted
// on it afterwards (sanctions lifted on its principal, its closing), each proven in the
// log's current signed checkpoint.
func (a *App) IncidentReportData(ctx context.Context, id string) (*report.IncidentReport, error) {
	in, err := a.Store.GetIncident(ctx, id)
	if err != nil {
		return nil, err
	}
	var related []uint64
	for _, q := range []struct {
		kind     audit.Kind
		key, val string
	}{{audit.KindIncidentClose, "incident", in.ID}, {audit.KindDetectLift, "principal", in.Principal}} {
		evs, err := a.Store.SearchAudit(ctx, store.AuditQuery{Kind: string(q.kind), Since: in.OpenedAt})
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			ev, err := audit.ParseEvent(e.Raw)
			if err == nil && ev.Subject[q.key] == q.val && !slices.Contains(in.Evidence, e.Index) {
				related = append(related, e.Index)
			}
		}
	}
	src, err := a.ReportSource()
	if err != nil {
		return nil, err
	}
	return report.Incident(ctx, src, report.IncidentInput{Incident: in, Related: related, Now: time.Now(), Tool: Tool()})
}

// IncidentReport renders incident id's report as "json" or "pdf".
func (a *App) IncidentReport(ctx context.Context, id, format string) (body []byte, contentType string, err error) {
	if format != "json" && format != "pdf" {
		return nil, "", fmt.Errorf("incident report format %q: json or pdf", format)
	}
	r, err := a.IncidentReportData(ctx, id)
	if err != nil {
		return nil, "", err
	}
	var b bytes.Buffer
	if err := r.Write(&b, format); err != nil {
		return nil, "", err
	}
	return b.Bytes(), report.Formats[format], nil
}

// ComplianceReport renders the compliance report over [from, to) (zero from: the log's
// start; zero to: now) in format (json, csv, html or pdf), at the log's current checkpoint.
func (a *App) ComplianceReport(ctx context.Context, from, to time.Time, format string) (body []byte, contentType string, err error) {
	ct, ok := report.Formats[format]
	if !ok {
		return nil, "", fmt.Errorf("report format %q: json, csv, html or pdf", format)
	}
	src, err := a.ReportSource()
	if err != nil {
		return nil, "", err
	}
	r, err := report.Compliance(ctx, src, report.Period{From: from, To: to}, time.Now(), Tool())
	if err != nil {
		return nil, "", err
	}
	var b bytes.Buffer
	if err := r.Write(&b, format); err != nil {
		return nil, "", err
	}
	return b.Bytes(), ct, nil
}
