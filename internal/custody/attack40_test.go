package custody

// Outside round 40: revocation delivery to watch streams when the revocation is written by
// ANOTHER process (the CLI: `strongroom lease revoke`, `runtime revoke`, `model disable`
// open the store and call Service.Revoke there) at awkward moments, with two control-plane
// replicas sharing one PostgreSQL store. DESIGN ("Revocation (`lease revoke`…"): another
// process's revocation reaches the runtime's watch stream within 100 ms; a watch reads its
// lease after registering, "so a revocation before it is in that read and one after is
// found by the next poll".

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// a40PG opens n handles on a fresh PostgreSQL schema (one per process: replicas, the CLI)
// and an admin pool on the same schema.
func a40PG(t *testing.T, n int) ([]store.Store, *sql.DB) {
	t.Helper()
	dsn := testenv.Get(t, "STRONGROOM_TEST_POSTGRES")
	root, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	var b [6]byte
	rand.Read(b[:])
	schema := "a40_" + hex.EncodeToString(b[:])
	if _, err := root.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Exec(`DROP SCHEMA ` + schema + ` CASCADE`) })
	u, _ := url.Parse(dsn)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	var out []store.Store
	for range n {
		s, err := store.Open(context.Background(), u.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out = append(out, s)
	}
	admin, err := sql.Open("pgx", u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	return out, admin
}

// a40Fleet is two replicas (A and B, each with its own store handle, clock and HTTP
// server) on one PostgreSQL store, and a third handle for the CLI.
type a40Fleet struct {
	e     *env // replica B (e.svc, e.srv)
	a     *Service
	cli   store.Store
	admin *sql.DB
	rt    *Identity // joined at B
}

// a40NewFleet builds the fleet; aNow is replica A's clock (nil: time.Now).
func a40NewFleet(t *testing.T, aNow func() time.Time, mods ...func(*Config)) *a40Fleet {
	t.Helper()
	ctx := context.Background()
	sts, admin := a40PG(t, 3)
	f := &a40Fleet{cli: sts[2], admin: admin}
	var cfgB Config
	f.e = newEnv(t, func(c *Config) {
		c.Store = sts[1]
		c.Now = func() time.Time { return time.Now().UTC() }
		c.PollInterval = 0 // the default (100 ms), as deployed
		for _, m := range mods {
			m(c)
		}
		cfgB = *c
	})
	// The versions live in the shared store (newEnv wrote them to its SQLite file).
	for _, mv := range [][2]string{{"small", "1"}, {"frontier", "1"}} {
		v, err := f.e.st.GetVersion(ctx, mv[0], mv[1])
		if err != nil {
			t.Fatal(err)
		}
		if k, err := f.e.st.GetKey(ctx, v.KeyID); err != nil {
			t.Fatal(err)
		} else if _, err := sts[1].GetKey(ctx, v.KeyID); err != nil {
			if err := sts[1].PutKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if err := sts[1].CreateVersion(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	for _, who := range []string{"alice", "bob", "carol", "eve"} {
		p, err := f.e.st.GetPrincipal(ctx, who)
		if err != nil {
			t.Fatal(err)
		}
		if err := sts[1].PutPrincipal(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	cfgA := cfgB
	cfgA.Store = sts[0]
	if aNow != nil {
		cfgA.Now = aNow
	}
	var err error
	if f.a, err = New(cfgA); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	go f.a.Run(runCtx)
	f.rt = f.e.join(t, "prod")
	return f
}

// put stores a live lease of the fleet's runtime (as a grant at a replica does).
func (f *a40Fleet) put(t *testing.T, id string) {
	t.Helper()
	now := time.Now().UTC()
	if err := f.cli.PutLease(context.Background(), store.Lease{ID: id, Runtime: f.rt.RuntimeID(), Model: "small", Version: "1",
		GrantedAt: now, ExpiresAt: now.Add(10 * time.Minute), SeenAt: now}); err != nil {
		t.Fatal(err)
	}
}

// a40Watch opens the watch stream of lease id at replica B and returns its lines.
func a40Watch(t *testing.T, c *Client, id string) (<-chan string, io.Closer) {
	t.Helper()
	body, err := c.Watch(context.Background(), id)
	if err != nil {
		t.Fatalf("watch %s: %v", id, err)
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return lines, body
}

// a40Revoked waits up to d for a "revoked …" line; it returns the line and how long it took.
func a40Revoked(lines <-chan string, d time.Duration) (string, time.Duration, bool) {
	t0 := time.Now()
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return "(stream closed)", time.Since(t0), false
			}
			if strings.HasPrefix(l, "revoked ") {
				return l, time.Since(t0), true
			}
		case <-deadline:
			return "", time.Since(t0), false
		}
	}
}

// a40CLIRevoke revokes lease id as `strongroom lease revoke` does: its own Service on its
// own store handle, clock time.Now.
func (f *a40Fleet) cliRevoke(t *testing.T, id, reason string) {
	t.Helper()
	ls, err := f.cli.RevokeLeases(context.Background(), store.LeaseQuery{Lease: id}, time.Now(), reason)
	if err != nil || len(ls) != 1 {
		t.Fatalf("CLI revoke %s: %v %v", id, ls, err)
	}
}

func (f *a40Fleet) clientB() *Client { return f.rt.Client() }

// TestAttack40ReplicaBWatchAfterCLIRevocation — claim: a revocation another process wrote
// while replica B held no watch at all is reported at once when the runtime's watch opens
// (reconnects) at B, and the lease can no longer be renewed or its files fetched there.
// Failure: the watch on B says only "ok", or renewal/file succeed.
func TestAttack40ReplicaBWatchAfterCLIRevocation(t *testing.T) {
	f := a40NewFleet(t, nil)
	ctx := context.Background()
	c := f.clientB()
	f.put(t, "ls-a40-b")
	// The runtime's watch is at A's side in this story: B holds nothing. The CLI revokes.
	f.cliRevoke(t, "ls-a40-b", "incident 40")
	time.Sleep(300 * time.Millisecond) // several of B's (idle) polls pass
	lines, body := a40Watch(t, c, "ls-a40-b")
	defer body.Close()
	if l, took, ok := a40Revoked(lines, 3*time.Second); !ok {
		t.Fatalf("CLAIM BROKEN: the watch opened at replica B after a CLI revocation said no \"revoked\" in %v (last %q)", took, l)
	} else if l != "revoked incident 40" {
		t.Fatalf("revoked line %q", l)
	}
	if _, err := c.Renew(ctx, "ls-a40-b"); !errors.Is(err, ErrRevoked) {
		t.Fatalf("CLAIM BROKEN: renewal of a revoked lease at B: %v", err)
	}
	if _, _, err := c.File(ctx, "ls-a40-b", "model.safetensors"); !errors.Is(err, ErrRevoked) {
		t.Fatalf("CLAIM BROKEN: file of a revoked lease at B: %v", err)
	}
}

// TestAttack40RevocationRacesWatchOpen — claim: "a watch reads its lease after registering,
// so a revocation before it is in that read and one after is found by the next poll". For
// 24 leases, several watchers each (two streams per lease, as a runtime reconnecting while
// its old stream lingers), the CLI's revocation is written at a jittered moment around the
// streams' opening at replica B. Failure: a stream not told within 3 s.
func TestAttack40RevocationRacesWatchOpen(t *testing.T) {
	f := a40NewFleet(t, nil)
	c := f.clientB()
	const n = 24
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	var worst time.Duration
	for i := range n {
		id := fmt.Sprintf("ls-a40-race-%02d", i)
		f.put(t, id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			jitter := time.Duration(i%8) * 3 * time.Millisecond
			done := make(chan struct{})
			go func() {
				defer close(done)
				time.Sleep(jitter)
				f.cliRevoke(t, id, "race "+id)
			}()
			var streams []<-chan string
			for range 2 {
				lines, body := a40Watch(t, c, id)
				defer body.Close()
				streams = append(streams, lines)
			}
			<-done
			for k, lines := range streams {
				l, took, ok := a40Revoked(lines, 3*time.Second)
				mu.Lock()
				worst = max(worst, took)
				if !ok {
					bad = append(bad, fmt.Sprintf("%s stream %d: no revoked line after %v (last %q)", id, k, took, l))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("slowest revoked line after the revocation: %v", worst)
	for _, b := range bad {
		t.Errorf("CLAIM BROKEN: %s", b)
	}
}

// TestAttack40QueuedRevocationsThenWatchers — claim: many revocations committed while
// replica B watched nothing (300 by the CLI) do not delay or hide the next ones: once
// three runtimes watch at B, the CLI's revocation of each reaches its stream within a
// few seconds (design: 100 ms). Failure: a stream not told within 3 s.
func TestAttack40QueuedRevocationsThenWatchers(t *testing.T) {
	f := a40NewFleet(t, nil)
	ctx := context.Background()
	c := f.clientB()
	for i := range 300 {
		f.put(t, fmt.Sprintf("ls-a40-q-%03d", i))
	}
	if ls, err := f.cli.RevokeLeases(ctx, store.LeaseQuery{Model: "small"}, time.Now(), "model disabled: queued"); err != nil || len(ls) != 300 {
		t.Fatalf("bulk revoke: %d %v", len(ls), err)
	}
	var streams []<-chan string
	for i := range 3 {
		id := fmt.Sprintf("ls-a40-w-%d", i)
		f.put(t, id)
		lines, body := a40Watch(t, c, id)
		defer body.Close()
		if l := <-lines; l != "ok" {
			t.Fatalf("first line %q", l)
		}
		streams = append(streams, lines)
	}
	for i, lines := range streams {
		f.cliRevoke(t, fmt.Sprintf("ls-a40-w-%d", i), "later")
		l, took, ok := a40Revoked(lines, 3*time.Second)
		if !ok {
			t.Errorf("CLAIM BROKEN: watcher %d not told of the CLI's revocation within %v (last %q)", i, took, l)
		} else {
			t.Logf("watcher %d told after %v", i, took)
		}
	}
}

// TestAttack40ClockAheadReplicaHidesCLIRevocation — claim: another process's revocation
// reaches the runtime's watch stream within 100 ms, whichever replica holds the stream.
// Replica A's clock runs 30 s ahead (NTP trouble on one host: the design treats "a
// replica's clock ahead" as a real case for the log). A revokes some other lease (a
// runtime's release, a sweep, an operator's console action at A): its revoked_at is A's
// clock. Replica B's poll cursor (`since`, the newest revoked_at it has seen) jumps 30 s
// ahead; the CLI, on a correct clock, then revokes the lease whose stream B holds.
// Failure: B's stream is not told within 3 s (the poll asks only revoked_at > since-5s,
// so this revocation is never pushed; the runtime learns at its next renewal, minutes
// later).
func TestAttack40ClockAheadReplicaHidesCLIRevocation(t *testing.T) {
	f := a40NewFleet(t, func() time.Time { return time.Now().Add(30 * time.Second).UTC() })
	ctx := context.Background()
	c := f.clientB()
	f.put(t, "ls-a40-watched")
	f.put(t, "ls-a40-other")
	lines, body := a40Watch(t, c, "ls-a40-watched")
	defer body.Close()
	if l := <-lines; l != "ok" {
		t.Fatalf("first line %q", l)
	}
	if ls, err := f.a.Revoke(ctx, store.LeaseQuery{Lease: "ls-a40-other"}, "released by its runtime"); err != nil || len(ls) != 1 {
		t.Fatalf("revoke at A: %v %v", ls, err)
	}
	time.Sleep(400 * time.Millisecond) // B's poll (100 ms) sees A's revocation
	f.cliRevoke(t, "ls-a40-watched", "incident 40 (CLI)")
	l, took, ok := a40Revoked(lines, 3*time.Second)
	if !ok {
		got, _ := f.cli.GetLease(ctx, "ls-a40-watched")
		t.Fatalf("CLAIM BROKEN: the runtime watching at replica B was not told of the CLI's revocation within %v (last line %q); the store says revoked_at=%s reason=%q; replica A's revocation of another lease is stamped 30 s ahead and B's poll cursor skips everything stamped before it minus 5 s",
			took, l, got.RevokedAt.Format(time.RFC3339Nano), got.Reason)
	}
	t.Logf("told after %v: %q", took, l)
}

// TestAttack40SlowCommitRevocationLost — claim as above, with every clock correct. The
// CLI's revocation is stamped (Service.Revoke: s.now()) before its transaction runs; here
// `model disable small` (one transaction over the model's leases, in grant order) waits 6 s
// on the row of the model's OLDER lease, which another transaction holds (an operator's
// transaction, another CLI run, a lock wait on a loaded database); the watched lease, next
// in grant order, is not locked meanwhile (B's heartbeat touches of it go through). So
// the revocation commits 6 s after its stamp. Meanwhile replica A revokes a lease of
// another model, which B's poll sees. Failure: B's stream of the watched lease is not told
// within 3 s of the commit (B's cursor is past the stamp by more than its 5 s look-back).
func TestAttack40SlowCommitRevocationLost(t *testing.T) {
	f := a40NewFleet(t, nil)
	ctx := context.Background()
	c := f.clientB()
	f.put(t, "ls-a40-held") // granted first: updated first by the CLI's transaction
	time.Sleep(5 * time.Millisecond)
	f.put(t, "ls-a40-slow")
	now := time.Now().UTC()
	if err := f.cli.PutLease(ctx, store.Lease{ID: "ls-a40-other", Runtime: f.rt.RuntimeID(), Model: "frontier", Version: "1",
		GrantedAt: now, ExpiresAt: now.Add(10 * time.Minute), SeenAt: now}); err != nil {
		t.Fatal(err)
	}
	lines, body := a40Watch(t, c, "ls-a40-slow")
	defer body.Close()
	if l := <-lines; l != "ok" {
		t.Fatalf("first line %q", l)
	}
	tx, err := f.admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT id FROM leases WHERE id = 'ls-a40-held' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	stamp := time.Now()
	go func() {
		ls, err := f.cli.RevokeLeases(ctx, store.LeaseQuery{Model: "small", Version: "1"}, stamp, "model disabled: incident 40")
		if err == nil && len(ls) != 2 {
			err = fmt.Errorf("revoked %d leases, want 2", len(ls))
		}
		committed <- err
	}()
	time.Sleep(6 * time.Second) // the CLI's transaction waits on the held row
	select {
	case err := <-committed:
		t.Fatalf("premise: the CLI's revocation did not wait on the held row: %v", err)
	default:
	}
	if ls, err := f.a.Revoke(ctx, store.LeaseQuery{Lease: "ls-a40-other"}, "released by its runtime"); err != nil || len(ls) != 1 {
		t.Fatalf("revoke at A: %v %v", ls, err)
	}
	time.Sleep(400 * time.Millisecond) // B's poll sees A's revocation
	tx.Rollback()
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	l, took, ok := a40Revoked(lines, 3*time.Second)
	if !ok {
		got, _ := f.cli.GetLease(ctx, "ls-a40-slow")
		t.Fatalf("CLAIM BROKEN: the CLI's revocation (stamped %s, committed ~6.4 s later) never reached the stream at replica B: no \"revoked\" within %v of its commit (last %q); store: revoked_at=%s reason=%q",
			stamp.UTC().Format(time.RFC3339Nano), took, l, got.RevokedAt.Format(time.RFC3339Nano), got.Reason)
	}
	t.Logf("told after %v: %q", took, l)
}

// TestAttack40WatchMovesReplicaThenGoes — claim: "leases end when their runtime goes away…
// its watch stream drops and no stream for the lease reconnects, at this or any replica,
// within WatchGrace". The runtime's stream is at B, drops, reconnects at A within the
// grace (the lease must live), then that stream drops too and nothing reconnects (the
// lease must end within WatchGrace + a margin). Failure: the lease ended while watched at
// A, or still live 4 s after the grace.
func TestAttack40WatchMovesReplicaThenGoes(t *testing.T) {
	f := a40NewFleet(t, nil, func(c *Config) { c.WatchGrace = 500 * time.Millisecond })
	ctx := context.Background()
	srvA := newA40Server(t, f)
	idA := &Identity{Dir: f.rt.Dir, Server: srvA, Key: f.rt.Key, Cert: f.rt.Cert, CA: f.rt.CA}
	f.put(t, "ls-a40-move")
	lines, body := a40Watch(t, f.clientB(), "ls-a40-move")
	<-lines
	body.Close() // dropped at B
	time.Sleep(100 * time.Millisecond)
	linesA, bodyA := a40Watch(t, idA.Client(), "ls-a40-move")
	<-linesA
	time.Sleep(1500 * time.Millisecond) // B's grace passes while A holds the stream
	if l, _ := f.cli.GetLease(ctx, "ls-a40-move"); !l.RevokedAt.IsZero() {
		t.Fatalf("CLAIM BROKEN: the lease ended while its runtime watched at replica A: %q", l.Reason)
	}
	bodyA.Close()
	t0 := time.Now()
	for {
		l, _ := f.cli.GetLease(ctx, "ls-a40-move")
		if !l.RevokedAt.IsZero() {
			t.Logf("ended %v after the last stream dropped: %q", time.Since(t0).Round(time.Millisecond), l.Reason)
			return
		}
		if time.Since(t0) > 4500*time.Millisecond {
			t.Fatalf("CLAIM BROKEN: lease still live %v after its last stream dropped (grace 500 ms)", time.Since(t0))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newA40Server serves replica A's custody API over TLS from the fleet's CA.
func newA40Server(t *testing.T, f *a40Fleet) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(f.a.Handler())
	var err error
	if srv.TLS, err = f.a.cfg.CA.ServerTLS([]string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}
