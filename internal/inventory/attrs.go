package inventory

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// SetAttrs replaces the model record attributes of name:version (package modelrec): the
// change is recorded in the log ("model.set", with the attributes before and after and who
// made it) before it is stored, so an unrecorded change never takes effect. Gateways and
// custody read the new record within their poll interval.
func (inv *Inventory) SetAttrs(ctx context.Context, name, version string, a modelrec.Attrs, by string) (store.Version, error) {
	if err := checkRef(name, version); err != nil {
		return store.Version{}, err
	}
	if err := a.Validate(); err != nil {
		return store.Version{}, fmt.Errorf("%w: %s:%s: %v", ErrBadInput, name, version, err)
	}
	v, err := inv.st.GetVersion(ctx, name, version)
	if err != nil {
		return store.Version{}, err
	}
	before := v.Attrs()
	if err := inv.audit.Audit(ctx, audit.Event{Kind: audit.KindModelSet, Decision: audit.Allow, Subject: subject(name, version), Fields: map[string]string{
		"by": by, "before": attrsJSON(before), "after": attrsJSON(a),
	}}); err != nil {
		return store.Version{}, err // not recorded, so not changed
	}
	now := inv.now().UTC()
	if err := inv.st.SetVersionAttrs(ctx, name, version, a, now); err != nil {
		return store.Version{}, err
	}
	v.SetAttrs(a)
	v.AttrsAt = now
	inv.log.Info("model attributes set", "model", name, "version", version, "classification", a.Classification)
	return v, nil
}

// Register records an external model version: one served from engines whose weights
// Strongroom does not hold (no files, no key, nothing to lease or unseal), so that the
// gateway has its record — classification, countries, hardening — like any other. The
// registration is logged ("model.register") before it is stored.
func (inv *Inventory) Register(ctx context.Context, name, version string, a modelrec.Attrs, by string) (store.Version, error) {
	if err := checkRef(name, version); err != nil {
		return store.Version{}, err
	}
	if err := a.Validate(); err != nil {
		return store.Version{}, fmt.Errorf("%w: %s:%s: %v", ErrBadInput, name, version, err)
	}
	if _, err := inv.st.GetVersion(ctx, name, version); err == nil {
		return store.Version{}, fmt.Errorf("model %s:%s: %w", name, version, ErrExists)
	}
	now := inv.now().UTC()
	v := store.Version{Model: name, Version: version, CreatedAt: now, AttrsAt: now, External: true}
	v.SetAttrs(a)
	if err := inv.audit.Audit(ctx, audit.Event{Kind: audit.KindModelRegister, Decision: audit.Allow, Subject: subject(name, version), Fields: map[string]string{
		"by": by, "attrs": attrsJSON(a), "external": "true",
	}}); err != nil {
		return store.Version{}, err
	}
	if err := inv.st.CreateExternalVersion(ctx, v); err != nil {
		return store.Version{}, err
	}
	return v, nil
}

// inherit returns the attributes of the newest version of name (zero if none).
func (inv *Inventory) inherit(ctx context.Context, name string) (modelrec.Attrs, error) {
	recs, err := inv.st.ModelRecords(ctx)
	if err != nil {
		return modelrec.Attrs{}, err
	}
	var newest *modelrec.Record
	for i := range recs {
		if r := &recs[i]; r.Name == name && (newest == nil || r.Created.After(newest.Created)) {
			newest = r
		}
	}
	if newest == nil {
		return modelrec.Attrs{}, nil
	}
	return newest.Attrs, nil
}

// attrsJSON is the attributes as the log records them.
func attrsJSON(a modelrec.Attrs) string {
	b, _ := json.Marshal(a) // plain data: cannot fail
	return string(b)
}
