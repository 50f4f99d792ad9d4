package app

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/detect"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/tick"
)

// configFile is the config this App was opened from.
func (a *App) configFile() string {
	if a.ConfigPath != "" {
		return a.ConfigPath
	}
	return filepath.Join(a.DataDir, config.FileName)
}

// SetDetectorMode promotes (enforce) or demotes (shadow) a detector, or every detector
// ("all"), in the config file, and records the change. Running gateways of this data
// directory pick it up within a few seconds (watchDetectModes).
func (a *App) SetDetectorMode(ctx context.Context, det, mode string) error {
	if mode != "enforce" && mode != "shadow" {
		return fmt.Errorf("detector mode %q: want enforce or shadow", mode)
	}
	if det != "all" && !slices.Contains(detect.Detectors, det) {
		return fmt.Errorf("unknown detector %q (want all or one of %s)", det, strings.Join(detect.Detectors, ", "))
	}
	path := a.configFile()
	c, err := config.ReadRaw(path)
	if err != nil {
		return err
	}
	dc, err := detect.ParseConfig(c.Detect)
	if err != nil {
		return err
	}
	modes := map[string]string{"*": dc.Mode("*")} // a config without modes enforces everything
	for k, v := range dc.Modes {
		modes[k] = v
	}
	if det == "all" {
		modes = map[string]string{"*": mode}
	} else {
		modes[det] = mode
	}
	dc.Modes = modes
	c.Detect = dc.JSON()
	if err := a.Audit(ctx, audit.Event{Kind: audit.KindDetectMode, Decision: audit.Allow, Subject: map[string]string{"detector": det}, Fields: map[string]string{"mode": mode}}); err != nil {
		return err
	}
	return config.Write(path, c)
}

// watchDetectModes re-reads the config's detector modes every interval and applies them to
// r, so that `detect promote` reaches a running gateway without a restart.
func (a *App) watchDetectModes(ctx context.Context, r *detect.Responder, every time.Duration) {
	path := a.configFile()
	tick.Every(ctx, every, func() {
		c, err := config.ReadRaw(path) // a few hundred bytes every few seconds: no need for mtimes
		if err != nil {
			a.Log.Error("detect: config not re-read; detector modes unchanged", "err", err)
			return
		}
		dc, err := detect.ParseConfig(c.Detect)
		if err != nil {
			a.Log.Error("detect: config not re-read; detector modes unchanged", "err", err)
			return
		}
		modes := dc.Modes
		if modes == nil {
			modes = map[string]string{"*": "enforce"}
		}
		r.SetModes(modes)
	})
}

// DetectorDay is one detector's alerts on one UTC day.
type DetectorDay struct {
	Day        string  `json:"day"`
	Detector   string  `json:"detector"`
	Mode       string  `json:"mode"` // now
	Alerted    int     `json:"alerted_principals"`
	Active     int     `json:"active_principals"` // principals with a gateway request that day
	Rate       float64 `json:"alert_rate"`        // alerted / active: alerts per principal-day
	Sanctioned int     `json:"sanctioned_principals"`
}

// DetectReport is, per detector and UTC day of the last days, the share of active
// principals it alerted on (and how many of those an enforced sanction hit): what an
// operator reads to judge a detector's precision before promoting it.
func (a *App) DetectReport(ctx context.Context, days int, now time.Time) ([]DetectorDay, error) {
	since := now.UTC().Truncate(24*time.Hour).AddDate(0, 0, -(days - 1))
	active, err := a.Store.AuditPrincipalsPerDay(ctx, string(audit.KindRequest), since)
	if err != nil {
		return nil, err
	}
	evs, err := a.Store.SearchAudit(ctx, store.AuditQuery{Kind: string(audit.KindDetectAlert), Since: since})
	if err != nil {
		return nil, err
	}
	type key struct{ day, det string }
	alerted, sanctioned := map[key]map[string]bool{}, map[key]map[string]bool{}
	for _, e := range evs {
		ev, err := audit.ParseEvent(e.Raw)
		if err != nil {
			continue
		}
		k := key{e.TS.UTC().Format("2006-01-02"), ev.Fields["detector"]}
		if alerted[k] == nil {
			alerted[k], sanctioned[k] = map[string]bool{}, map[string]bool{}
		}
		alerted[k][ev.Subject["principal"]] = true
		if ev.Fields["action"] != "alert" {
			sanctioned[k][ev.Subject["principal"]] = true
		}
	}
	modes := detect.Config{Modes: a.Detect.Modes}
	if c, err := config.ReadRaw(a.configFile()); err == nil {
		if dc, err := detect.ParseConfig(c.Detect); err == nil {
			modes.Modes = dc.Modes
		}
	}
	var out []DetectorDay
	for d := since; !d.After(now); d = d.AddDate(0, 0, 1) {
		day := d.Format("2006-01-02")
		for _, det := range detect.Detectors {
			k := key{day, det}
			row := DetectorDay{Day: day, Detector: det, Mode: modes.Mode(det), Alerted: len(alerted[k]), Active: active[day], Sanctioned: len(sanctioned[k])}
			if row.Active > 0 {
				row.Rate = float64(row.Alerted) / float64(row.Active)
			}
			out = append(out, row)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Detector < out[j].Detector })
	return out, nil
}
