// Package testenv finds the real services (PostgreSQL, SoftHSM2) that scripts/test starts.
// Without them a test skips, unless STRONGROOM_REQUIRE_INTEGRATION=1 (set by scripts/test),
// where a missing service fails the run so that CI can never pass by skipping.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver of PostgresDB
	"github.com/redis/go-redis/v9"
)

// Get returns the environment variable name or skips (or fails, when integration is required).
func Get(t testing.TB, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		if os.Getenv("STRONGROOM_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("%s is not set but STRONGROOM_REQUIRE_INTEGRATION=1: run ./scripts/test", name)
		}
		t.Skipf("%s not set; ./scripts/test starts the real service", name)
	}
	return v
}

// Python returns the path of python3, the outside JSON parser some tests put behind the
// gateway (scripts/test installs it), or skips/fails like Get.
func Python(t testing.TB) string { return Program(t, "python3") }

// Program returns the path of a program scripts/test installs (python3, pdftoppm), or
// skips/fails like Get.
func Program(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("STRONGROOM_REQUIRE_INTEGRATION") == "1" {
			t.Fatalf("%s not found but STRONGROOM_REQUIRE_INTEGRATION=1: run ./scripts/test", name)
		}
		t.Skipf("%s not found; ./scripts/test installs it", name)
	}
	return p
}

// CPUTime is the CPU (user and system) this process has used: benchmarks report CPU per
// operation next to wall time, which on a shared machine swings with the load.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// StatisticsOnly skips the calling test under the race detector. For long evaluations
// that run in one goroutine — a detector's, a watermark's or a fingerprint's rates over
// many generated samples, a differential check against a plain filter — the detector
// multiplies the time 4–15× and has nothing to find: they were ~200 s of the suite's race
// pass. scripts/test runs their packages again without -race, where they run whole; their
// packages' concurrent code keeps its own raced tests.
func StatisticsOnly(t testing.TB) {
	t.Helper()
	if Race {
		t.Skip("one goroutine of statistics: run without -race (scripts/test's second pass)")
	}
}

// LogBuffer is a log sink that many goroutines can write at once (a slog handler's, a
// log.Logger's), read back by the test.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// HelperCmd is this test binary run again as a helper process: only the test named test
// (a test that does the helper's part when env names it, and skips otherwise), with env
// added, its stderr this one's. It is not started; it is killed when t ends, if it runs.
func HelperCmd(t testing.TB, test string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.v=false")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	t.Cleanup(func() {
		if cmd.Process != nil {
			cmd.Process.Kill() // an error if it has ended already
		}
	})
	return cmd
}

// Redis is a client of the real Redis scripts/test starts (STRONGROOM_TEST_REDIS), closed
// when t ends; it skips or fails like Get.
func Redis(t testing.TB) *redis.Client {
	opt, err := redis.ParseURL(Get(t, "STRONGROOM_TEST_REDIS"))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

// PostgresDB creates a database named prefix + 12 random hex digits on the PostgreSQL
// scripts/test starts (STRONGROOM_TEST_POSTGRES), dropped when t ends (with its sessions);
// it returns the server's URL and the database's name. It skips or fails like Get.
func PostgresDB(t testing.TB, prefix string) (serverURL, name string) {
	t.Helper()
	serverURL = Get(t, "STRONGROOM_TEST_POSTGRES")
	admin, err := sql.Open("pgx", serverURL)
	if err != nil {
		t.Fatal(err)
	}
	var rb [6]byte
	rand.Read(rb[:])
	name = prefix + hex.EncodeToString(rb[:])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		admin.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
		admin.Close()
	})
	return serverURL, name
}

// KillSessions runs KILL what (CONNECTION or QUERY) on every MariaDB session whose id query
// returns (a session of a replica cut as a failover or a partition would), and returns how
// many kills the server took. db is a pool or one connection of it (whose own session
// query can leave out: CONNECTION_ID()).
func KillSessions(t testing.TB, db interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, what, query string, args ...any) int {
	t.Helper()
	ctx := context.Background()
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	killed := 0
	for _, id := range ids {
		if _, err := db.ExecContext(ctx, fmt.Sprintf("KILL %s %d", what, id)); err == nil {
			killed++
		}
	}
	return killed
}
