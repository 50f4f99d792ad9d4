package audit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/google/go-cmp/cmp"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

type testLog struct {
	dir    string
	signer note.Signer
	vkey   note.Verifier
	st     store.Store
	log    *Log
}

func newKeys(t testing.TB, name string) (note.Signer, note.Verifier, string) {
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	return s, v, vkey
}

func openTestLog(t testing.TB) *testLog {
	t.Helper()
	dir := t.TempDir()
	s, v, _ := newKeys(t, "strongroom.test/log")
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	tl := &testLog{dir: filepath.Join(dir, "log"), signer: s, vkey: v, st: st}
	tl.reopen(t)
	return tl
}

// openTestLogAt is openTestLog with the log in dir (the index stays in a temp directory).
func openTestLogAt(t testing.TB, dir string) *testLog {
	t.Helper()
	tl := openTestLog(t)
	tl.close(t)
	tl.dir = dir
	tl.reopen(t)
	return tl
}

func (tl *testLog) reopen(t testing.TB) {
	l, err := Open(context.Background(), Config{Dir: tl.dir, Signer: tl.signer, Index: tl.st, CheckpointInterval: 100 * time.Millisecond, EntryKey: testEntryKey})
	if err != nil {
		t.Fatal(err)
	}
	// A log a test leaves open would go on reading package variables (CheckpointStall)
	// that later tests set: closed at the test's end, if the test did not (Close is once).
	t.Cleanup(func() { l.Close(context.Background()) })
	tl.log = l
}

func event(i int) Event {
	return Event{V: 1, TS: ts0.Add(time.Duration(i) * time.Second), Kind: "model.unseal",
		Actor: map[string]string{"principal": fmt.Sprintf("user%d", i%3)}, Subject: map[string]string{"model": "m"}, Decision: Allow}
}

func (tl *testLog) record(t testing.TB, n int) []uint64 {
	t.Helper()
	// Submit all, then wait: one batch instead of n fsync rounds.
	var fs []Future
	for i := range n {
		fs = append(fs, tl.log.Submit(context.Background(), event(i)))
	}
	var idx []uint64
	for _, f := range fs {
		j, err := f()
		if err != nil {
			t.Fatal(err)
		}
		idx = append(idx, j)
	}
	return idx
}

func (tl *testLog) close(t testing.TB) {
	t.Helper()
	if err := tl.log.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (tl *testLog) verify(prior *State) (State, error) {
	return Verify(context.Background(), client.FileFetcher{Root: tl.dir}, VerifyOptions{LogKey: tl.vkey, Prior: prior})
}

func TestRecordVerifyIndex(t *testing.T) {
	tl := openTestLog(t)
	idx := tl.record(t, 300) // more than one entry bundle
	for i, j := range idx {
		if j != uint64(i) {
			t.Fatalf("event %d got index %d", i, j)
		}
	}
	tl.close(t)
	st, err := tl.verify(nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != 300 {
		t.Fatalf("verified size %d", st.Size)
	}
	// The search index holds every event.
	got, err := tl.st.SearchAudit(context.Background(), store.AuditQuery{Principal: "user1", Kind: "model.unseal"})
	if err != nil || len(got) != 100 {
		t.Fatalf("search: %d events, %v", len(got), err)
	}
	// The index built from memory matches what reading the log back from disk gives.
	all, _ := tl.st.SearchAudit(context.Background(), store.AuditQuery{})
	var fromDisk []store.AuditEvent
	err = ReadEntries(context.Background(), client.FileFetcher{Root: tl.dir}.ReadEntryBundle, 0, 300, func(b []store.AuditEvent) error {
		fromDisk = append(fromDisk, b...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fromDisk, all); diff != "" {
		t.Fatalf("index from memory differs from the log (-disk +index):\n%s", diff)
	}
	// Reopen, append more: consistent with the state accepted before.
	tl.reopen(t)
	tl.record(t, 10)
	tl.close(t)
	st2, err := tl.verify(&st)
	if err != nil || st2.Size != 310 {
		t.Fatalf("second verify: %+v, %v", st2.Size, err)
	}
	// Inclusion proofs.
	f := client.FileFetcher{Root: tl.dir}
	cp, _ := OpenCheckpoint(st2.Checkpoint, VerifyOptions{LogKey: tl.vkey})
	for _, i := range []uint64{0, 255, 256, 309} {
		p, err := InclusionProof(context.Background(), f, i, cp.Size)
		if err != nil {
			t.Fatal(err)
		}
		ev := event(int(i % 300))
		b, _ := ev.Marshal()
		if err := VerifyInclusion(sealEntry(testEntryKey, tl.signer.Name(), b), i, cp.Size, p, cp.Hash); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if err := VerifyInclusion([]byte("forged"), i, cp.Size, p, cp.Hash); !errors.Is(err, ErrSecurity) {
			t.Fatal("forged entry verified")
		}
	}
}

// TestVerifyTamper: each change to the log on disk is caught and named.
func TestVerifyTamper(t *testing.T) {
	base := openTestLog(t)
	base.record(t, 300)
	base.close(t)
	good, err := base.verify(nil)
	if err != nil {
		t.Fatal(err)
	}
	bundle0 := filepath.Join(base.dir, layout.EntriesPath(0, 0))
	bundle1 := filepath.Join(base.dir, layout.EntriesPath(1, 44))
	tile0 := filepath.Join(base.dir, layout.TilePath(0, 0, 0))
	cases := []struct {
		name   string
		mutate func(t *testing.T, dir string)
		want   string
	}{
		{"edit entry", func(t *testing.T, dir string) {
			replaceIn(t, filepath.Join(dir, rel(base.dir, bundle0)), `"principal":"user1"`, `"principal":"userX"`, 1)
		}, "entry 1 does not match"},
		{"delete entry", func(t *testing.T, dir string) {
			rewriteBundle(t, filepath.Join(dir, rel(base.dir, bundle1)), func(es [][]byte) [][]byte { return es[:len(es)-1] })
		}, "entries deleted or inserted"},
		{"reorder entries", func(t *testing.T, dir string) {
			rewriteBundle(t, filepath.Join(dir, rel(base.dir, bundle0)), func(es [][]byte) [][]byte { es[5], es[6] = es[6], es[5]; return es })
		}, "entry 5 does not match"},
		{"edit tile", func(t *testing.T, dir string) {
			flip(t, filepath.Join(dir, rel(base.dir, tile0)), 32*7+3)
		}, "entry 7 does not match"},
		{"delete tile", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, rel(base.dir, tile0)))
		}, "tile 0/0 unreadable"},
		{"edit checkpoint", func(t *testing.T, dir string) {
			replaceIn(t, filepath.Join(dir, "checkpoint"), "300\n", "299\n", 1)
		}, "checkpoint signature"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, base.dir, dir)
			tc.mutate(t, dir)
			_, err := Verify(context.Background(), client.FileFetcher{Root: dir}, VerifyOptions{LogKey: base.vkey})
			if !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want security error containing %q", err, tc.want)
			}
		})
	}
	// A different log under the same key and origin, shorter: rollback; same size: fork.
	other := openTestLog(t)
	other.signer, other.vkey = base.signer, base.vkey
	other.log.Close(context.Background())
	other.reopen(t)
	other.record(t, 299)
	other.close(t)
	if _, err := other.verify(&good); !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("rollback: %v", err)
	}
	other.reopen(t)
	other.log.Record(context.Background(), Event{V: 1, TS: ts0, Kind: "forked.entry"})
	other.close(t)
	if _, err := other.verify(&good); !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "fork") {
		t.Fatalf("fork: %v", err)
	}
}

// TestHTTP serves the log and verifies it over HTTP, as an outsider would.
func TestHTTP(t *testing.T) {
	tl := openTestLog(t)
	tl.record(t, 20)
	tl.close(t)
	srv := httptest.NewServer(http.StripPrefix("/log", Handler(tl.dir)))
	defer srv.Close()
	u, _ := url.Parse(srv.URL + "/log/")
	f, err := client.NewHTTPFetcher(u, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(context.Background(), f, VerifyOptions{LogKey: tl.vkey}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"/log/checkpoint": 200, "/log/.state/treeState": 404, "/log/tile/": 404, "/log/../db": 404, "/log/tile/0/000.p/20": 200,
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
	}
	resp, _ := http.Post(srv.URL+"/log/checkpoint", "text/plain", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST = %d", resp.StatusCode)
	}
}

// TestConcurrentRecord: many goroutines share batches; every index is distinct.
func TestConcurrentRecord(t *testing.T) {
	tl := openTestLog(t)
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				j, err := tl.log.Record(context.Background(), event(g*50+i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[j] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	tl.close(t)
	if len(seen) != 400 {
		t.Fatalf("%d distinct indexes, want 400", len(seen))
	}
	if st, err := tl.verify(nil); err != nil || st.Size != 400 {
		t.Fatalf("verify: %v", err)
	}
}

// TestFailureVisible: when the log cannot record, Record fails with ErrUnavailable, Healthy
// reports it and the metrics count it.
func TestFailureVisible(t *testing.T) {
	tl := openTestLog(t)
	reg := prometheus.NewRegistry()
	tl.log.Close(context.Background())
	l, err := Open(context.Background(), Config{Dir: tl.dir, Signer: tl.signer, Metrics: reg, ShutdownTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(context.Background())
	if _, err := l.Record(context.Background(), event(0)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tl.dir, ".state", "treeState"), []byte("not json"), 0o644)
	if _, err := l.Record(context.Background(), event(1)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Record on a broken log: %v", err)
	}
	if l.Healthy() == nil {
		t.Fatal("Healthy() is nil after a failure")
	}
	if got := testutil.ToFloat64(l.records.WithLabelValues("failed")); got != 1 {
		t.Fatalf("failed records metric = %v", got)
	}
	if got := testutil.ToFloat64(l.healthy); got != 0 {
		t.Fatalf("healthy gauge = %v", got)
	}
}

// TestVerifyNoCheckpointYet: a log that has published no checkpoint (new, or a shared log
// whose signer has not signed yet) is reported as such over HTTP, not as a missing file.
func TestVerifyNoCheckpointYet(t *testing.T) {
	_, v, _ := newKeys(t, "strongroom.test/empty")
	srv := httptest.NewServer(http.StripPrefix("/log", Handler(t.TempDir())))
	defer srv.Close()
	u, _ := url.Parse(srv.URL + "/log/")
	f, err := client.NewHTTPFetcher(u, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Verify(context.Background(), f, VerifyOptions{LogKey: v})
	if err == nil || !strings.Contains(err.Error(), "no signed checkpoint yet") {
		t.Fatalf("verify of a log without a checkpoint: %v", err)
	}
}
