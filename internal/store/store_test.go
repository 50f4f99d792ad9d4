package store_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/store/storetest"
	"github.com/strongroom/strongroom/internal/testenv"
)

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "db.sqlite"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestSQLiteConcurrentWriters: two handles on one file, as `serve` and the CLI have.
func TestSQLiteConcurrentWriters(t *testing.T) {
	storetest.Concurrent(t, func(t *testing.T) (store.Store, store.Store) {
		p := filepath.Join(t.TempDir(), "db.sqlite")
		a, err := store.OpenSQLite(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		b, err := store.OpenSQLite(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	})
}

// TestPostgresConcurrentWriters: two pools on one schema.
func TestPostgresConcurrentWriters(t *testing.T) {
	dsn := testenv.Get(t, "STRONGROOM_TEST_POSTGRES")
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	storetest.Concurrent(t, func(t *testing.T) (store.Store, store.Store) {
		var b [6]byte
		rand.Read(b[:])
		schema := "t_" + hex.EncodeToString(b[:])
		if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`) })
		u, _ := url.Parse(dsn)
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		var out [2]store.Store
		for i := range out {
			if out[i], err = store.Open(context.Background(), u.String()); err != nil {
				t.Fatal(err)
			}
		}
		return out[0], out[1]
	})
}

// TestPostgres runs the suite against the real server from scripts/test, one fresh schema
// per subtest.
func TestPostgres(t *testing.T) {
	dsn := testenv.Get(t, "STRONGROOM_TEST_POSTGRES")
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	storetest.Run(t, func(t *testing.T) store.Store {
		var b [6]byte
		rand.Read(b[:])
		schema := "t_" + hex.EncodeToString(b[:])
		if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`) })
		u, _ := url.Parse(dsn)
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		s, err := store.Open(context.Background(), u.String())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestMigrationsIdempotent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "db.sqlite")
	for range 2 {
		s, err := store.OpenSQLite(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
}

func TestPostgresUnreachable(t *testing.T) {
	_, err := store.Open(context.Background(), "postgres://nobody@127.0.0.1:1/x?sslmode=disable&connect_timeout=2")
	if err == nil {
		t.Fatal("unreachable postgres opened")
	}
}

// TestSQLiteDigestBackfill: a store indexed before migration 16 gets its entries' digests
// when it is opened by this version, and a copy among them is listed as one (its record
// groups dropped).
func TestSQLiteDigestBackfill(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db.sqlite")
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	batch := []byte(`{"kind":"audit.batch","n":1}`)
	evs := []store.AuditEvent{
		{Index: 0, Kind: "audit.batch", Principal: "strongroom/gateway", Decision: "allow", Raw: batch},
		{Index: 1, Kind: "model.unseal", Principal: "alice", Decision: "allow", Raw: []byte(`{"x":1}`)},
		{Index: 2, Kind: "audit.batch", Principal: "strongroom/gateway", Decision: "allow", Raw: batch},
		{Index: 1<<62 | 0<<16, Kind: "gateway.request", Principal: "bob", Decision: "allow", Raw: []byte(`{"r":0}`)},
		{Index: 1<<62 | 2<<16, Kind: "gateway.request", Principal: "bob", Decision: "allow", Raw: []byte(`{"r":0}`)},
	}
	// A record an earlier version indexed one row of its own (in audit_events), under the copy.
	oldRow := store.AuditEvent{Index: 1<<62 | 2<<16 | 1, Kind: "gateway.request", Principal: "bob", Decision: "allow", Raw: []byte(`{"r":1}`)}
	if err := s.IndexAudit(ctx, evs); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Back to the schema before migration 16, as an older version left it.
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO audit_events (idx, ts, kind, principal, decision, raw) VALUES (?, 0, ?, ?, ?, ?)`,
		int64(oldRow.Index), oldRow.Kind, oldRow.Principal, oldRow.Decision, oldRow.Raw); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP TABLE audit_entry_digests`, `DELETE FROM schema_migrations WHERE version >= 16`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s, err = store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.AuditDigests(ctx, [][32]byte{store.EntryDigest(batch), store.EntryDigest([]byte(`{"x":1}`))})
	if err != nil || len(got) != 2 || got[store.EntryDigest(batch)] != 0 || got[store.EntryDigest([]byte(`{"x":1}`))] != 1 {
		t.Fatalf("digests after the backfill: %v %v", got, err)
	}
	copies, err := s.SearchAudit(ctx, store.AuditQuery{Kind: store.KindCopiedEntry})
	if err != nil || len(copies) != 1 || copies[0].Index != 2 || copies[0].Principal != "" {
		t.Fatalf("copies after the backfill: %+v %v", copies, err)
	}
	recs, err := s.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.request"})
	if err != nil || len(recs) != 1 || recs[0].Index != 1<<62 {
		t.Fatalf("records after the backfill: %+v %v; want the original batch's only", recs, err)
	}
}
