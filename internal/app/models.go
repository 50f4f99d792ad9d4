package app

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/modelrec"
)

// Model records (package modelrec) are read by every gateway from one table per process,
// loaded from the store when first asked for and re-read every ModelWatchInterval (default
// 1 s) by a goroutine the App owns, so a `strongroom model set` on any host reaches every
// replica within about a second, with no restart. A failed re-read keeps the last table
// (the store's own health check refuses requests while the store is unusable) and alerts.

const defaultModelWatch = time.Second

// ModelRecords returns the process's table of model records, loading it on first use.
func (a *App) ModelRecords(ctx context.Context) (*modelrec.Table, error) {
	a.modelsMu.Lock()
	defer a.modelsMu.Unlock()
	if a.models != nil {
		return a.models, nil
	}
	recs, err := a.Store.ModelRecords(ctx)
	if err != nil {
		return nil, fmt.Errorf("model records: %w", err)
	}
	t := modelrec.NewTable(recs...)
	interval := a.ModelWatchInterval
	if interval <= 0 {
		interval = defaultModelWatch
	}
	a.goBackground(func(ctx context.Context) { a.watchModels(ctx, t, interval) })
	a.models = t
	return t, nil
}

func (a *App) watchModels(ctx context.Context, t *modelrec.Table, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		recs, err := a.Store.ModelRecords(ctx)
		if err != nil {
			if !failing && ctx.Err() == nil {
				a.Log.Error("ALERT model records not refreshed; serving the last ones read", "err", err)
			}
			failing = true
			continue
		}
		failing = false
		t.Set(recs)
	}
}

// gatewayRoutes turns the config's routes into the gateway's (where, not what).
func gatewayRoutes(rs []config.Route) []gateway.Route {
	out := make([]gateway.Route, len(rs))
	for i, r := range rs {
		out[i] = gateway.Route{Model: r.Model, Upstreams: r.Upstreams, UpstreamKey: r.UpstreamKey, Limits: limits.Limits(r.Limits)}
	}
	return out
}

// MigrateRoutes moves model attributes that routes carried before the inventory became
// their one record (classification, countries, hardening, watermark) into the inventory:
// a "NAME:VERSION" route's attributes go to that version, a "NAME" route's to every version
// of NAME (the route served whichever was newest). Each change is a logged `model.set`
// by "config-migration". The config file is then rewritten without them. A route whose
// model is not in the inventory is an error: its attributes would otherwise be lost.
// It returns the versions changed.
func (a *App) MigrateRoutes(ctx context.Context) ([]string, error) {
	if !slices.ContainsFunc(a.Config.Gateway.Routes, func(r config.Route) bool { return r.LegacyAttrs.Set() }) {
		return nil, nil
	}
	recs, err := a.Store.ModelRecords(ctx)
	if err != nil {
		return nil, err
	}
	var changed []string
	for _, r := range a.Config.Gateway.Routes {
		if !r.LegacyAttrs.Set() {
			continue
		}
		name, version := modelrec.SplitRef(r.Model)
		found := false
		for _, rec := range recs {
			if rec.Name != name || (version != "" && rec.Version != version) {
				continue
			}
			found = true
			next := rec.Attrs
			l := r.LegacyAttrs
			if l.Classification != "" {
				next.Classification = l.Classification
			}
			next.AllowedCountries, next.DeniedCountries, next.Hardening, next.Watermark = l.AllowedCountries, l.DeniedCountries, legacyHardening(l), l.Watermark
			if attrsEqual(next, rec.Attrs) {
				continue
			}
			if _, err := a.Inventory.SetAttrs(ctx, rec.Name, rec.Version, next, "config-migration"); err != nil {
				return changed, fmt.Errorf("route %s: %w", r.Model, err)
			}
			changed = append(changed, rec.Ref())
		}
		if !found {
			// A route to an engine whose weights Strongroom does not hold: its attributes
			// become an external model's record ("NAME" routes: version "external").
			if version == "" {
				version = "external"
			}
			l := r.LegacyAttrs
			attrs := modelrec.Attrs{Classification: l.Classification, AllowedCountries: l.AllowedCountries, DeniedCountries: l.DeniedCountries,
				Hardening: legacyHardening(l), Watermark: l.Watermark}
			if attrs.Classification == "" {
				return changed, fmt.Errorf("route %s carries model attributes but no classification, and %s is not in the inventory: import it or register it (strongroom model register)", r.Model, r.Model)
			}
			if _, err := a.Inventory.Register(ctx, name, version, attrs, "config-migration"); err != nil {
				return changed, fmt.Errorf("route %s: %w", r.Model, err)
			}
			changed = append(changed, name+":"+version)
		}
	}
	path := a.ConfigPath
	if path == "" {
		path = filepath.Join(a.DataDir, config.FileName)
	}
	raw, err := config.ReadRaw(path)
	if err != nil {
		return changed, err
	}
	for i := range raw.Gateway.Routes {
		raw.Gateway.Routes[i].LegacyAttrs = config.LegacyAttrs{}
	}
	for i := range a.Config.Gateway.Routes {
		a.Config.Gateway.Routes[i].LegacyAttrs = config.LegacyAttrs{}
	}
	if err := config.Write(path, raw); err != nil {
		return changed, err
	}
	a.Log.Info("moved model attributes from config routes into the inventory", "versions", changed, "config", path)
	return changed, nil
}

func attrsEqual(x, y modelrec.Attrs) bool {
	hx, hy := x.EffectiveHardening(), y.EffectiveHardening()
	return x.Classification == y.Classification && x.Owner == y.Owner && x.Watermark == y.Watermark &&
		slices.Equal(x.AllowedCountries, y.AllowedCountries) && slices.Equal(x.DeniedCountries, y.DeniedCountries) &&
		hx == hy && (x.Hardening == nil) == (y.Hardening == nil)
}

func legacyHardening(l config.LegacyAttrs) *modelrec.Hardening {
	if l.Hardening == nil {
		return nil
	}
	h := modelrec.Hardening(*l.Hardening)
	return &h
}
