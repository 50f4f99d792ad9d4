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
