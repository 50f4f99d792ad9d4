package report

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
)

// IncidentFormat names version 1 of the incident report.
const IncidentFormat = "strongroom.incident/v1"

// IncidentReport is a standard record of one incident (see the package doc and
// docs/incident-report.schema.json).
type IncidentReport struct {
	Format      string              `json:"format"`
	ReportID    string              `json:"report_id"`
	GeneratedAt time.Time           `json:"generated_at"`
	Tool        string              `json:"tool"`
	Incident    IncidentInfo        `json:"incident"`
	Detection   Detection           `json:"detection"`
	Affected    Affected            `json:"affected"`
	Actions     []Action            `json:"actions"`
	Timeline    []Moment            `json:"timeline"`
	Entries     []audit.ProvenEntry `json:"entries"`
	Log         LogRef              `json:"log"`
	Mappings    Mappings            `json:"mappings"`
}

// IncidentInfo is what the incident record says.
type IncidentInfo struct {
	ID          string     `json:"id"`
	State       string     `json:"state"`
	Summary     string     `json:"summary"`
	OpenedAt    time.Time  `json:"opened_at"`
	ClosedAt    *time.Time `json:"closed_at"`
	ClosingNote string     `json:"closing_note"`
}

// Detection is how the incident was found.
type Detection struct {
	Detector   string    `json:"detector"`
	Score      float64   `json:"score"`
	DetectedAt time.Time `json:"detected_at"`
	Action     string    `json:"action"`
	Evidence   string    `json:"evidence"` // the detector's words (the alert's reason)
	LogIndex   *uint64   `json:"log_index"`
}

// Affected lists who and what the incident touched.
type Affected struct {
	Principals []string   `json:"principals"`
	Models     []ModelRef `json:"models"`
	Countries  []string   `json:"countries"`
}

// ModelRef is a model version named by the evidence.
type ModelRef struct {
	Model          string `json:"model"`
	Version        string `json:"version"`
	Classification string `json:"classification"`
}

// Action is a response: a sanction, a lifted sanction, the incident's closing.
type Action struct {
	At       time.Time  `json:"at"`
	Kind     audit.Kind `json:"kind"`
	Action   string     `json:"action"`
	By       string     `json:"by"`
	Reason   string     `json:"reason"`
	LogIndex uint64     `json:"log_index"`
}

// Moment is one line of the timeline.
type Moment struct {
	At       time.Time  `json:"at"`
	Kind     audit.Kind `json:"kind"`
	Decision string     `json:"decision"`
	What     string     `json:"what"`
	LogIndex uint64     `json:"log_index"`
}

// Mappings fill public report formats from the incident.
type Mappings struct {
	// EUAIAct73 holds the fields of the EU AI Act Article 73 serious-incident report that
	// the log answers; NotAnswered names the template's fields it cannot (the provider
	// fills those in).
	EUAIAct73   map[string]string `json:"eu_ai_act_article_73"`
	NotAnswered []string          `json:"eu_ai_act_article_73_not_answered"`
}

// IncidentInput is what an incident report is made from besides the log.
type IncidentInput struct {
	Incident store.Incident
	Related  []uint64 // further entries: the incident's closing, sanctions lifted
	Now      time.Time
	Tool     string
}

// Incident builds the report at the log's current checkpoint; every cited entry is proven
// against it (an entry not yet in a signed checkpoint is an error: ask again shortly).
func Incident(ctx context.Context, src Source, in IncidentInput) (*IncidentReport, error) {
	ref, _, err := src.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	inc := in.Incident
	r := &IncidentReport{Format: IncidentFormat, ReportID: "IR-" + inc.ID, GeneratedAt: in.Now.UTC(), Tool: in.Tool, Log: ref,
		Incident:  IncidentInfo{ID: inc.ID, State: inc.State, Summary: inc.Summary, OpenedAt: inc.OpenedAt.UTC(), ClosingNote: inc.Note},
		Detection: Detection{Detector: inc.Detector, Score: inc.Score, DetectedAt: inc.OpenedAt.UTC(), Action: inc.Action},
		Actions:   []Action{}, Timeline: []Moment{}, Entries: []audit.ProvenEntry{}}
	if inc.State == "closed" {
		t := inc.ClosedAt.UTC()
		r.Incident.ClosedAt = &t
	}
	principals, countries := map[string]bool{}, map[string]bool{}
	models := map[ModelRef]bool{}
	if inc.Principal != "" {
		principals[inc.Principal] = true
	}
	idxs := append(slices.Clone(inc.Evidence), in.Related...)
	slices.Sort(idxs)
	for _, idx := range slices.Compact(idxs) {
		pe, err := audit.Prove(ctx, src.Fetch, src.Opts, ref.Size, ref.Root, idx)
		if err != nil {
			return nil, fmt.Errorf("evidence entry %d: %w", idx, err)
		}
		r.Entries = append(r.Entries, pe)
		raw := []byte(pe.Event)
		if pe.Record != nil {
			raw = pe.Record.Event
		}
		ev, err := audit.ParseEvent(raw)
		if err != nil {
			return nil, fmt.Errorf("evidence entry %d: %w", idx, err)
		}
		r.Timeline = append(r.Timeline, Moment{At: ev.TS.UTC(), Kind: ev.Kind, Decision: ev.Decision, What: describe(ev), LogIndex: idx})
		if p := ev.Subject["principal"]; p != "" {
			principals[p] = true
		}
		if p := ev.Actor["principal"]; p != "" && ev.Kind == audit.KindRequest {
			principals[p] = true
		}
		if m := ev.Subject["model"]; m != "" && ev.Kind == audit.KindRequest {
			models[ModelRef{Model: m, Version: ev.Subject["version"], Classification: ev.Fields["classification"]}] = true
		}
		if c := ev.Fields["country"]; c != "" {
			countries[c] = true
		}
		switch ev.Kind {
		case audit.KindDetectAlert:
			if r.Detection.LogIndex == nil {
				i := idx
				r.Detection.LogIndex, r.Detection.DetectedAt, r.Detection.Evidence = &i, ev.TS.UTC(), ev.Reason
			}
		case audit.KindDetectAction, audit.KindDetectLift, audit.KindIncidentClose:
			act := ev.Fields["action"]
			if act == "" {
				act = map[audit.Kind]string{audit.KindDetectLift: "lift sanction", audit.KindIncidentClose: "close incident"}[ev.Kind]
			}
			r.Actions = append(r.Actions, Action{At: ev.TS.UTC(), Kind: ev.Kind, Action: act, By: ev.Actor["principal"], Reason: ev.Reason, LogIndex: idx})
		}
	}
	sort.SliceStable(r.Timeline, func(i, j int) bool { return r.Timeline[i].At.Before(r.Timeline[j].At) })
	sort.SliceStable(r.Actions, func(i, j int) bool { return r.Actions[i].At.Before(r.Actions[j].At) })
	r.Affected = Affected{Principals: sortedKeys(principals), Countries: sortedKeys(countries), Models: []ModelRef{}}
	for m := range models {
		r.Affected.Models = append(r.Affected.Models, m)
	}
	sort.Slice(r.Affected.Models, func(i, j int) bool {
		return r.Affected.Models[i].Model+":"+r.Affected.Models[i].Version < r.Affected.Models[j].Model+":"+r.Affected.Models[j].Version
	})
	r.Mappings = euAIAct(r)
	return r, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// describe says in one line what an event is.
func describe(ev *audit.Event) string {
	switch ev.Kind {
	case audit.KindRequest:
		s := fmt.Sprintf("%s %s by %s: %s, status %s", ev.Subject["endpoint"], ev.Subject["model"], ev.Actor["principal"], ev.Decision, ev.Fields["status"])
		if ev.Reason != "" {
			s += " (" + ev.Reason + ")"
		}
		return s
	case audit.KindDetectAlert:
		return fmt.Sprintf("detector %s alerted on %s (score %s): %s", ev.Fields["detector"], ev.Subject["principal"], ev.Fields["score"], ev.Reason)
	case audit.KindDetectAction:
		return fmt.Sprintf("%s imposed on %s until %s", ev.Fields["action"], ev.Subject["principal"], ev.Fields["until"])
	}
	s := string(ev.Kind)
	if ev.Decision != "" {
		s += " " + ev.Decision
	}
	if ev.Reason != "" {
		s += ": " + ev.Reason
	}
	return s
}

// euAIAct fills the Article 73 serious-incident fields the log answers.
func euAIAct(r *IncidentReport) Mappings {
	var ms []string
	for _, m := range r.Affected.Models {
		ms = append(ms, m.Model+":"+m.Version)
	}
	var acts []string
	for _, a := range r.Actions {
		acts = append(acts, a.At.Format(time.RFC3339)+" "+a.Action)
	}
	occurred := r.Detection.DetectedAt
	if len(r.Timeline) > 0 {
		occurred = r.Timeline[0].At
	}
	return Mappings{
		EUAIAct73: map[string]string{
			"report_type":          map[bool]string{true: "final", false: "initial"}[r.Incident.State == "closed"],
			"ai_system":            strings.Join(ms, ", "),
			"date_of_occurrence":   occurred.Format(time.RFC3339),
			"date_of_awareness":    r.Detection.DetectedAt.Format(time.RFC3339),
			"incident_description": r.Incident.Summary,
			"affected_persons":     strings.Join(r.Affected.Principals, ", "),
			"member_states":        strings.Join(r.Affected.Countries, ", "),
			"corrective_measures":  strings.Join(acts, "; "),
			"evidence_reference":   fmt.Sprintf("%d log entries proven in checkpoint %s/%d", len(r.Entries), r.Log.Origin, r.Log.Size),
		},
		NotAnswered: []string{"provider_name_and_contact", "harm_category_and_severity", "root_cause_analysis", "authority_notified"},
	}
}
