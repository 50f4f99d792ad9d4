package inventory

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
)

// GCReport says what GC removed.
type GCReport struct {
	Keys  int `json:"keys"`
	Blobs int `json:"blobs"`
}

// GC removes what failed or killed imports left behind: model keys that no version names
// and that are older than grace (so that an import still running is not disturbed), and
// their blobs. Keys of single sealed files and everything a version names are never touched.
func (inv *Inventory) GC(ctx context.Context, grace time.Duration) (GCReport, error) {
	var rep GCReport
	vs, err := inv.st.ListVersions(ctx, "")
	if err != nil {
		return rep, err
	}
	used := map[string]bool{}
	for _, v := range vs {
		used[v.KeyID] = true
	}
	keys, err := inv.st.ListKeys(ctx)
	if err != nil {
		return rep, err
	}
	cutoff := inv.now().Add(-grace)
	orphan := map[string]bool{}
	for _, k := range keys {
		if k.Purpose == store.PurposeModel && !used[k.ID] && k.CreatedAt.Before(cutoff) {
			orphan[k.ID] = true
		}
	}
	names, err := inv.blobs.List(ctx)
	if err != nil {
		return rep, err
	}
	for _, n := range names {
		keyID, _, _ := strings.Cut(n, "/")
		if orphan[keyID] {
			if err := inv.blobs.Delete(ctx, n); err != nil {
				return rep, err
			}
			rep.Blobs++
		}
	}
	for id := range orphan {
		if err := inv.st.DeleteKey(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
			return rep, err
		}
		rep.Keys++
	}
	if rep.Keys > 0 {
		inv.log.Info("gc", "keys", rep.Keys, "blobs", rep.Blobs)
	}
	return rep, inv.audit.Audit(ctx, audit.Event{Kind: audit.KindModelGC, Decision: audit.Allow, Fields: map[string]string{"keys": fmt.Sprint(rep.Keys), "blobs": fmt.Sprint(rep.Blobs)}})
}

// discard removes the blobs and key of an import that failed, best effort; GC catches
// whatever a crash leaves.
func (inv *Inventory) discard(ctx context.Context, keyID string) {
	ctx = context.WithoutCancel(ctx)
	if names, err := inv.blobs.List(ctx); err == nil {
		for _, n := range names {
			if strings.HasPrefix(n, keyID+"/") {
				inv.blobs.Delete(ctx, n)
			}
		}
	}
	inv.st.DeleteKey(ctx, keyID)
}
