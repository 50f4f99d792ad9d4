package store

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestIndexRecoversFromAFailedPrepare: the statement that indexes a full chunk of audit
// events is prepared at its first use. When that prepare fails (here the table is away for
// a moment, as when the database is restarting or being migrated), the next round must
// prepare it again: the first version kept the error for the process's life, and every
// later round of 128 events or more failed until a restart.
func TestIndexRecoversFromAFailedPrepare(t *testing.T) {
	ctx := context.Background()
	st, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := st.(*sqlStore)
	evs := make([]AuditEvent, indexRows+3)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range evs {
		evs[i] = AuditEvent{Index: uint64(i), TS: t0.Add(time.Duration(i) * time.Second), Kind: "model.unseal",
			Principal: "alice", Decision: "allow", Raw: fmt.Appendf(nil, `{"i":%d}`, i)}
	}
	if _, err := s.db.ExecContext(ctx, `ALTER TABLE audit_events RENAME TO audit_events_away`); err != nil {
		t.Fatal(err)
	}
	if err := s.IndexAudit(ctx, evs); err == nil {
		t.Fatal("indexing with the table away succeeded")
	}
	if _, err := s.db.ExecContext(ctx, `ALTER TABLE audit_events_away RENAME TO audit_events`); err != nil {
		t.Fatal(err)
	}
	if err := s.IndexAudit(ctx, evs); err != nil {
		t.Fatalf("indexing once the table is back: %v", err)
	}
	if n, err := s.AuditIndexed(ctx); err != nil || n != uint64(len(evs)) {
		t.Fatalf("AuditIndexed = %d, %v; want %d", n, err, len(evs))
	}
	got, err := s.SearchAudit(ctx, AuditQuery{Principal: "alice", Limit: 1000})
	if err != nil || len(got) != len(evs) {
		t.Fatalf("search found %d events (%v), want %d", len(got), err, len(evs))
	}
}
