package app

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// TestStoreDeletedUnderRunningProcess: a store file deleted or replaced under a running
// process is noticed and reported (the gateway and /healthz then refuse), and a command
// started afterwards refuses to create an empty one (issue 12, finding 9).
func TestStoreDeletedUnderRunningProcess(t *testing.T) {
	ctx := context.Background()
	a, dir := initApp(t, ctx, nil)
	if err := a.StoreHealthy(); err != nil {
		t.Fatalf("fresh store unhealthy: %v", err)
	}
	db := sqlitePath(a.Config.Store)
	if err := os.Rename(db, db+".moved"); err != nil {
		t.Fatal(err)
	}
	a.storeWatch.checked = a.storeWatch.checked.Add(-time.Second) // skip the rate limit
	if err := a.StoreHealthy(); !errors.Is(err, ErrStoreMissing) {
		t.Fatalf("deleted store: %v", err)
	}
	if _, err := Open(ctx, dir, "", nil); !errors.Is(err, ErrStoreMissing) {
		t.Fatalf("open without a store: %v", err)
	}
	if _, err := os.Stat(db); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("an empty store was created")
	}
	// A replaced file (same path, new inode) is noticed too.
	os.WriteFile(db, nil, 0o600)
	w, _ := watchStore(db + ".moved")
	os.Rename(db, db+".moved")
	if err := w.check(); !errors.Is(err, ErrStoreMissing) {
		t.Fatalf("replaced store: %v", err)
	}
}
