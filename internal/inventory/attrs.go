package inventory

import (
	"context"
	"encoding/json"
	"fmt"

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
	if err := inv.audit.Audit(ctx, "model.set", "allow", "", subject(name, version), map[string]string{
		"by": by, "before": attrsJSON(before), "after": attrsJSON(a),
	}); err != nil {
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
