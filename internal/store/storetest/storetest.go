// Package storetest is the conformance suite every store.Store backend passes.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/strongroom/strongroom/internal/store"
)

// Run runs the suite; open returns a new, empty store for each subtest.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"Keys", testKeys},
		{"Rewrap", testRewrap},
		{"RewrapAllOrNothing", testRewrapAllOrNothing},
		{"Versions", testVersions},
		{"VersionNeedsKey", testVersionNeedsKey},
		{"DeleteKey", testDeleteKey},
		{"AuditIndex", testAuditIndex},
		{"AuditDigests", testAuditDigests},
		{"AuditRecordGroups", func(t *testing.T, s store.Store) { testAuditRecordGroups(t, s, false) }},
		{"AuditRecordGroupsFromBundles", func(t *testing.T, s store.Store) { testAuditRecordGroups(t, s, true) }},
		{"PrincipalsAndKeys", testPrincipalsAndKeys},
		{"RuntimesAndTokens", testRuntimesAndTokens},
		{"Leases", testLeases},
		{"Approvals", testApprovals},
		{"TOTP", testTOTP},
		{"Egress", testEgress},
		{"DisableVersion", testDisableVersion},
		{"Incidents", testIncidents},
		{"Sanctions", testSanctions},
		{"Nonces", testNonces},
		{"Exports", testExports},
		{"ExternalVersions", testExternalVersions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			defer s.Close()
			tc.fn(t, s)
		})
	}
}

var ts = time.Date(2026, 11, 27, 10, 0, 0, 123456789, time.UTC)

func key(id string) store.Key {
	return store.Key{ID: id, KEKID: "local-1", Wrapped: []byte{1, 2, 3, 0, 255}, Purpose: store.PurposeModel, CreatedAt: ts}
}

func testKeys(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.GetKey(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetKey(missing) = %v, want ErrNotFound", err)
	}
	for _, id := range []string{"b", "a"} {
		if err := s.PutKey(ctx, key(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutKey(ctx, key("a")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("PutKey(dup) = %v, want ErrExists", err)
	}
	got, err := s.GetKey(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(key("a"), got); diff != "" {
		t.Fatalf("GetKey (-want +got):\n%s", diff)
	}
	all, err := s.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.Key{key("a"), key("b")}, all); diff != "" {
		t.Fatalf("ListKeys (-want +got):\n%s", diff)
	}
}

func testRewrap(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		s.PutKey(ctx, key(id))
	}
	n, err := s.RewrapKeys(ctx, func(k store.Key) (store.Key, error) {
		k.KEKID, k.Wrapped = "local-2", append([]byte("new-"), k.ID...)
		return k, nil
	})
	if err != nil || n != 2 {
		t.Fatalf("RewrapKeys = %d, %v", n, err)
	}
	got, _ := s.GetKey(ctx, "b")
	if got.KEKID != "local-2" || string(got.Wrapped) != "new-b" {
		t.Fatalf("after rewrap: %+v", got)
	}
}

func testRewrapAllOrNothing(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		s.PutKey(ctx, key(id))
	}
	_, err := s.RewrapKeys(ctx, func(k store.Key) (store.Key, error) {
		if k.ID == "b" {
			return k, errors.New("token unavailable")
		}
		k.KEKID = "local-2"
		return k, nil
	})
	if err == nil {
		t.Fatal("RewrapKeys ignored a failure")
	}
	all, _ := s.ListKeys(ctx)
	for _, k := range all {
		if k.KEKID != "local-1" {
			t.Fatalf("key %s changed although the rewrap failed", k.ID)
		}
	}
}

func version(model, v string, files ...string) store.Version {
	out := store.Version{Model: model, Version: v, Classification: "restricted", Owner: "team-a", Env: "prod",
		KeyID: "k", Signature: []byte(`{"sig":1}`), CreatedAt: ts}
	for i, f := range files {
		out.Files = append(out.Files, store.File{Path: f, Size: int64(i * 1000), SHA256: fmt.Sprintf("%064x", i), Blob: "blob-" + f})
	}
	return out
}

func testVersions(t *testing.T, s store.Store) {
	ctx := context.Background()
	s.PutKey(ctx, key("k"))
	if _, err := s.GetVersion(ctx, "m", "1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetVersion(missing) = %v", err)
	}
	v1 := version("m", "1", "config.json", "model.safetensors")
	v2 := version("m", "2", "a/b.gguf")
	v2.CreatedAt = ts.Add(time.Hour)
	other := version("n", "1")
	for _, v := range []store.Version{v2, v1, other} {
		if err := s.CreateVersion(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateVersion(ctx, v1); !errors.Is(err, store.ErrExists) {
		t.Fatalf("CreateVersion(dup) = %v, want ErrExists", err)
	}
	got, err := s.GetVersion(ctx, "m", "1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v1, got); diff != "" {
		t.Fatalf("GetVersion (-want +got):\n%s", diff)
	}
	list, err := s.ListVersions(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.Version{v1, v2}, list); diff != "" {
		t.Fatalf("ListVersions(m) (-want +got):\n%s", diff)
	}
	all, _ := s.ListVersions(ctx, "")
	if len(all) != 3 {
		t.Fatalf("ListVersions(\"\") = %d versions, want 3", len(all))
	}
}

// testVersionNeedsKey: a version cannot point at a key that does not exist, and a failed
// create leaves nothing behind.
func testVersionNeedsKey(t *testing.T, s store.Store) {
	ctx := context.Background()
	v := version("m", "1", "x")
	v.KeyID = "missing"
	if err := s.CreateVersion(ctx, v); err == nil {
		t.Fatal("version with unknown key accepted")
	}
	if all, _ := s.ListVersions(ctx, ""); len(all) != 0 {
		t.Fatal("failed create left a version behind")
	}
}

func testDeleteKey(t *testing.T, s store.Store) {
	ctx := context.Background()
	s.PutKey(ctx, key("k"))
	s.PutKey(ctx, key("free"))
	fileKey := key("f")
	fileKey.Purpose = store.PurposeFile
	s.PutKey(ctx, fileKey)
	if got, _ := s.GetKey(ctx, "f"); got.Purpose != store.PurposeFile {
		t.Fatalf("purpose = %q", got.Purpose)
	}
	bad := key("x")
	bad.Purpose = "other"
	if err := s.PutKey(ctx, bad); err == nil {
		t.Fatal("unknown purpose accepted")
	}
	if err := s.CreateVersion(ctx, version("m", "1", "a")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, "k"); err == nil {
		t.Fatal("deleted a key that a version names")
	}
	if err := s.DeleteKey(ctx, "free"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKey(ctx, "free"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted key still there: %v", err)
	}
	if err := s.DeleteKey(ctx, "free"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

// testAuditDigests: the index keeps the digests it is given and answers, for each digest,
// the lowest index holding it; events without one (request records) keep none.
func testAuditDigests(t *testing.T, s store.Store) {
	ctx := context.Background()
	d := func(raw string) [32]byte { return store.EntryDigest([]byte(raw)) }
	ev := func(i uint64, raw string) store.AuditEvent {
		dg := d(raw)
		return store.AuditEvent{Index: i, TS: ts, Kind: "model.unseal", Principal: "alice", Decision: "allow", Raw: []byte(raw), Digest: dg[:]}
	}
	rec := store.AuditEvent{Index: 1<<62 | 0<<16 | 0, TS: ts, Kind: "gateway.request", Principal: "bob", Decision: "allow", Raw: []byte(`{"r":0}`)}
	if err := s.IndexAudit(ctx, []store.AuditEvent{ev(0, `{"a":1}`), ev(1, `{"b":2}`), rec}); err != nil {
		t.Fatal(err)
	}
	if err := s.IndexAudit(ctx, []store.AuditEvent{ev(2, `{"a":1}`), ev(1, `{"b":2}`)}); err != nil { // a copy; a re-index
		t.Fatal(err)
	}
	// A record before an entry (the log hands entries first; anything else is split).
	rec2 := store.AuditEvent{Index: 1<<62 | 4<<16 | 0, TS: ts, Kind: "gateway.request", Principal: "bob", Decision: "allow", Raw: []byte(`{"r":1}`)}
	if err := s.IndexAudit(ctx, []store.AuditEvent{rec2, ev(3, `{"c":3}`)}); err != nil {
		t.Fatal(err)
	}
	got, err := s.AuditDigests(ctx, [][32]byte{d(`{"a":1}`), d(`{"b":2}`), d(`{"c":3}`), d(`{"r":0}`), d(`{"r":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	want := map[[32]byte]uint64{d(`{"a":1}`): 0, d(`{"b":2}`): 1, d(`{"c":3}`): 3}
	if len(got) != len(want) || got[d(`{"a":1}`)] != 0 || got[d(`{"b":2}`)] != 1 || got[d(`{"c":3}`)] != 3 {
		t.Fatalf("AuditDigests = %v, want %v", got, want)
	}
	many := make([][32]byte, 600) // more than one statement's worth
	for i := range many {
		many[i] = d(fmt.Sprintf(`{"n":%d}`, i))
	}
	many[599] = d(`{"b":2}`)
	if got, err := s.AuditDigests(ctx, many); err != nil || len(got) != 1 || got[d(`{"b":2}`)] != 1 {
		t.Fatalf("AuditDigests of 600 = %v, %v", got, err)
	}
}

func testAuditIndex(t *testing.T, s store.Store) {
	ctx := context.Background()
	if n, err := s.AuditIndexed(ctx); err != nil || n != 0 {
		t.Fatalf("empty AuditIndexed = %d, %v", n, err)
	}
	ev := func(i uint64, kind, who string, at time.Duration) store.AuditEvent {
		return store.AuditEvent{Index: i, TS: ts.Add(at), Kind: kind, Principal: who, Decision: "allow", Raw: []byte(fmt.Sprintf(`{"i":%d}`, i))}
	}
	evs := []store.AuditEvent{ev(0, "model.import", "alice", 0), ev(1, "model.unseal", "bob", time.Minute), ev(2, "model.unseal", "alice", 2*time.Minute)}
	if err := s.IndexAudit(ctx, evs[:2]); err != nil {
		t.Fatal(err)
	}
	// Re-indexing overlapping events is idempotent.
	if err := s.IndexAudit(ctx, evs); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.AuditIndexed(ctx); n != 3 {
		t.Fatalf("AuditIndexed = %d, want 3", n)
	}
	got, err := s.SearchAudit(ctx, store.AuditQuery{Principal: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.AuditEvent{evs[0], evs[2]}, got); diff != "" {
		t.Fatalf("by principal (-want +got):\n%s", diff)
	}
	got, _ = s.SearchAudit(ctx, store.AuditQuery{Kind: "model.unseal", Since: ts.Add(90 * time.Second)})
	if diff := cmp.Diff([]store.AuditEvent{evs[2]}, got); diff != "" {
		t.Fatalf("by kind and time (-want +got):\n%s", diff)
	}
	if got, _ := s.SearchAudit(ctx, store.AuditQuery{Limit: 1}); len(got) != 1 {
		t.Fatalf("limit: %d events", len(got))
	}
	got, _ = s.SearchAudit(ctx, store.AuditQuery{Indexes: []uint64{evs[2].Index, evs[0].Index, 999}})
	if diff := cmp.Diff([]store.AuditEvent{evs[0], evs[2]}, got); diff != "" {
		t.Fatalf("by indexes (-want +got):\n%s", diff)
	}
	// A batch larger than one INSERT carries (several statements, a short last one),
	// overlapping what is indexed already.
	var many []store.AuditEvent
	for i := range uint64(300) {
		many = append(many, ev(2+i, "gateway.request", fmt.Sprintf("p%d", i%7), time.Hour+time.Duration(i)*time.Millisecond))
	}
	if err := s.IndexAudit(ctx, many); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.AuditIndexed(ctx); n != 302 {
		t.Fatalf("AuditIndexed = %d after a large batch, want 302", n)
	}
	// Distinct principals per UTC day: the 299 new gateway.request events (p0…p6) fall an
	// hour after ts; a day later, one more principal.
	s.IndexAudit(ctx, []store.AuditEvent{ev(400, "gateway.request", "late", 25*time.Hour)})
	days, err := s.AuditPrincipalsPerDay(ctx, "gateway.request", ts.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	d0, d1 := ts.Add(time.Hour).UTC().Format("2006-01-02"), ts.Add(25*time.Hour).UTC().Format("2006-01-02")
	if d0 == d1 || days[d0] != 7 || days[d1] != 1 || len(days) != 2 {
		t.Fatalf("AuditPrincipalsPerDay = %v (days %s, %s)", days, d0, d1)
	}
	got, _ = s.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.request", Principal: "p3", Limit: 1000})
	var want []store.AuditEvent
	for _, e := range many[1:] { // many[0] has index 2, indexed before as model.unseal
		if e.Principal == "p3" {
			want = append(want, e)
		}
	}
	slices.SortFunc(got, func(a, b store.AuditEvent) int { return int(a.Index) - int(b.Index) })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("large batch (-want +got):\n%s", diff)
	}

	// Pages, newest first: keyset on the index, bounded in time.
	got, _ = s.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.request", Desc: true, Limit: 3})
	if idx := indexes(got); !slices.Equal(idx, []uint64{400, 301, 300}) {
		t.Fatalf("newest first: %v", idx)
	}
	got, _ = s.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.request", Desc: true, Limit: 2, Before: 300})
	if idx := indexes(got); !slices.Equal(idx, []uint64{299, 298}) {
		t.Fatalf("next page: %v", idx)
	}
	got, _ = s.SearchAudit(ctx, store.AuditQuery{Until: ts.Add(90 * time.Second)})
	if idx := indexes(got); !slices.Equal(idx, []uint64{0, 1}) {
		t.Fatalf("until: %v", idx)
	}
	// Requests per hour and decision: 299 in the hour after ts, one a day later.
	s.IndexAudit(ctx, []store.AuditEvent{{Index: 401, TS: ts.Add(time.Hour + time.Minute), Kind: "gateway.request", Principal: "p1", Decision: "deny", Raw: []byte(`{}`)}})
	hist, err := s.AuditHistogram(ctx, "gateway.request", ts, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h0 := ts.Add(time.Hour).Truncate(time.Hour)
	wantHist := []store.AuditBucket{{Start: h0, Decision: "allow", Count: 299}, {Start: h0, Decision: "deny", Count: 1}, {Start: h0.Add(24 * time.Hour), Decision: "allow", Count: 1}}
	if diff := cmp.Diff(wantHist, hist); diff != "" {
		t.Fatalf("histogram (-want +got):\n%s", diff)
	}
}

// testAuditRecordGroups checks the index of batched request records (RecordIndex numbers,
// kept in groups by the SQL stores) against a plain filter of the same events, over random
// queries: every field of AuditQuery, both orders, limits that cut inside a batch. With
// fromBundles, the store is given a RecordSource (as audit.Open does) before indexing, so
// the records' bytes come from their "bundles" (here, a map the source reads by the batch
// entry's bytes); a source that fails, or gives records that differ from what was indexed,
// fails the search.
func testAuditRecordGroups(t *testing.T, s store.Store, fromBundles bool) {
	ctx := context.Background()
	bundles := map[string][][]byte{}
	var srcErr error
	if fromBundles {
		rs, ok := s.(interface{ SetRecordSource(store.RecordSource) })
		if !ok {
			t.Fatalf("%T has no SetRecordSource", s)
		}
		rs.SetRecordSource(func(_ context.Context, entry []byte) ([][]byte, error) {
			if srcErr != nil {
				return nil, srcErr
			}
			recs, ok := bundles[string(entry)]
			if !ok {
				return nil, fmt.Errorf("no bundle for %s", entry)
			}
			return recs, nil
		})
	}
	rng := rand.New(rand.NewPCG(7, 9))
	t0 := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC) // the records straddle midnight
	kinds := []string{"gateway.request", "gateway.stream_start"}
	var all []store.AuditEvent
	rec := func(entry uint64, pos int) store.AuditEvent {
		return store.AuditEvent{Index: 1<<62 | entry<<16 | uint64(pos),
			TS:   t0.Add(time.Duration(entry)*5*time.Minute + time.Duration(rng.IntN(int(10*time.Minute)))),
			Kind: kinds[rng.IntN(2)], Principal: fmt.Sprintf("p%d", rng.IntN(5)),
			Decision: []string{"allow", "deny", ""}[rng.IntN(3)], Raw: []byte(fmt.Sprintf(`{"e":%d,"p":%d}`, entry, pos))}
	}
	var calls [][]store.AuditEvent
	for entry := uint64(0); entry < 30; entry++ {
		// An entry of the log (a request indexed on its own, as per-request mode writes), then
		// a batch entry and its records.
		call := []store.AuditEvent{{Index: 2 * entry, TS: t0.Add(time.Duration(entry) * 5 * time.Minute), Kind: kinds[entry%2],
			Principal: fmt.Sprintf("p%d", entry%5), Decision: "allow", Raw: []byte(fmt.Sprintf(`{"entry":%d}`, entry))}}
		batch := fmt.Sprintf(`{"batch":%d}`, 2*entry+1)
		call = append(call, store.AuditEvent{Index: 2*entry + 1, TS: call[0].TS, Kind: "audit.batch", Raw: []byte(batch)})
		for pos := range rng.IntN(80) {
			r := rec(2*entry+1, pos)
			call = append(call, r)
			bundles[batch] = append(bundles[batch], r.Raw)
		}
		all = append(all, call...)
		calls = append(calls, call)
	}
	for i := 0; i < len(calls); i += 4 {
		if err := s.IndexAudit(ctx, slices.Concat(calls[i:min(i+4, len(calls))]...)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.IndexAudit(ctx, slices.Concat(calls[3:9]...)); err != nil { // again: nothing doubles
		t.Fatal(err)
	}
	if n, _ := s.AuditIndexed(ctx); n != 60 {
		t.Fatalf("AuditIndexed = %d, want 60 (records do not count)", n)
	}
	slices.SortFunc(all, func(a, b store.AuditEvent) int {
		if a.Index < b.Index {
			return -1
		}
		return 1
	})
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	someTime := func() time.Time {
		if rng.IntN(2) == 0 {
			return time.Time{}
		}
		return t0.Add(time.Duration(rng.Int64N(int64(160 * time.Minute))))
	}
	for i := range 400 {
		q := store.AuditQuery{Principal: pick([]string{"", "", "p0", "p3"}), Kind: pick([]string{"", "gateway.request", "gateway.stream_start", "audit.batch"}),
			Since: someTime(), Until: someTime(), Desc: rng.IntN(2) == 0, Limit: []int{0, 1, 3, 17, 100}[rng.IntN(5)]}
		if rng.IntN(3) == 0 {
			q.Before = all[rng.IntN(len(all))].Index
		}
		if rng.IntN(4) == 0 {
			for range 1 + rng.IntN(6) {
				q.Indexes = append(q.Indexes, all[rng.IntN(len(all))].Index)
			}
			q.Indexes = append(q.Indexes, 1<<62|7<<16|999, 1<<62|999<<16) // absent
		}
		var want []store.AuditEvent
		for _, e := range all {
			if (q.Principal == "" || e.Principal == q.Principal) && (q.Kind == "" || e.Kind == q.Kind) &&
				(q.Since.IsZero() || !e.TS.Before(q.Since)) && (q.Until.IsZero() || e.TS.Before(q.Until)) &&
				(q.Before == 0 || e.Index < q.Before) && (len(q.Indexes) == 0 || slices.Contains(q.Indexes, e.Index)) {
				want = append(want, e)
			}
		}
		if q.Desc {
			slices.Reverse(want)
		}
		if q.Limit > 0 && len(want) > q.Limit {
			want = want[:q.Limit]
		}
		got, err := s.SearchAudit(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("query %d %+v (-want +got):\n%s", i, q, diff)
		}
	}
	if fromBundles {
		q := store.AuditQuery{Kind: "gateway.request"}
		srcErr = errors.New("bundle store down")
		if _, err := s.SearchAudit(ctx, q); err == nil || !strings.Contains(err.Error(), "bundle store down") {
			t.Fatalf("search with the bundles unreadable: %v, want their error", err)
		}
		srcErr = nil
		for b, recs := range bundles {
			if len(recs) > 0 {
				recs[0] = append(recs[0], ' ') // a record that differs from what was indexed
				bundles[b] = recs[1:]          // and one dropped
				break
			}
		}
		if _, err := s.SearchAudit(ctx, store.AuditQuery{}); err == nil {
			t.Fatal("search over a bundle that lost a record succeeded")
		}
	}
	since := t0.Add(17 * time.Minute)
	for _, kind := range kinds {
		counts, days := map[store.AuditBucket]int{}, map[string]map[string]bool{}
		for _, e := range all {
			if e.Kind == kind && !e.TS.Before(since) {
				counts[store.AuditBucket{Start: e.TS.Truncate(30 * time.Minute), Decision: e.Decision}]++
				d := e.TS.Format("2006-01-02")
				if days[d] == nil {
					days[d] = map[string]bool{}
				}
				days[d][e.Principal] = true
			}
		}
		var wantHist []store.AuditBucket
		for b, n := range counts {
			b.Count = n
			wantHist = append(wantHist, b)
		}
		slices.SortFunc(wantHist, func(x, y store.AuditBucket) int {
			if c := x.Start.Compare(y.Start); c != 0 {
				return c
			}
			return strings.Compare(x.Decision, y.Decision)
		})
		hist, err := s.AuditHistogram(ctx, kind, since, 30*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantHist, hist); diff != "" {
			t.Fatalf("histogram of %s (-want +got):\n%s", kind, diff)
		}
		wantDays := map[string]int{}
		for d, ps := range days {
			wantDays[d] = len(ps)
		}
		got, err := s.AuditPrincipalsPerDay(ctx, kind, since)
		if err != nil {
			t.Fatal(err)
		}
		if len(wantDays) != 2 {
			t.Fatalf("the test's records span %d days, want 2", len(wantDays))
		}
		if diff := cmp.Diff(wantDays, got); diff != "" {
			t.Fatalf("principals per day of %s (-want +got):\n%s", kind, diff)
		}
	}
}

func indexes(evs []store.AuditEvent) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.Index)
	}
	return out
}

func testPrincipalsAndKeys(t *testing.T, s store.Store) {
	ctx := context.Background()
	p := store.Principal{ID: "alice", Tenant: "acme", Roles: []string{"researcher", "admin"}, Org: "Acme", Country: "DE", Screening: "clear", CreatedAt: ts}
	if err := s.PutPrincipal(ctx, p); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetPrincipal(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(p, got); diff != "" {
		t.Fatalf("principal (-want +got):\n%s", diff)
	}
	p.Screening = "pending"
	s.PutPrincipal(ctx, p)
	if got, _ := s.GetPrincipal(ctx, "alice"); got.Screening != "pending" {
		t.Fatal("PutPrincipal did not update")
	}
	if _, err := s.GetPrincipal(ctx, "bob"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing principal: %v", err)
	}
	for _, id := range []string{"carol", "bob", "dave"} {
		s.PutPrincipal(ctx, store.Principal{ID: id, Tenant: "acme", Screening: "clear", CreatedAt: ts})
	}
	var pages [][]string
	for after := ""; ; {
		ps, err := s.PrincipalsPage(ctx, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) == 0 {
			break
		}
		var ids []string
		for _, p := range ps {
			ids = append(ids, p.ID)
		}
		pages, after = append(pages, ids), ps[len(ps)-1].ID
	}
	if diff := cmp.Diff([][]string{{"alice", "bob", "carol"}, {"dave"}}, pages); diff != "" {
		t.Fatalf("principal pages (-want +got):\n%s", diff)
	}
	k := store.APIKey{ID: "k1", Principal: "alice", Hash: []byte{1, 2}, Models: []string{"m1", "m2"}, ExpiresAt: ts.Add(time.Hour), CreatedAt: ts}
	if err := s.PutAPIKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := s.PutAPIKey(ctx, k); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate key id: %v", err)
	}
	if err := s.PutAPIKey(ctx, store.APIKey{ID: "k2", Principal: "nobody", Hash: []byte{1}, CreatedAt: ts}); err == nil {
		t.Fatal("key for an unknown principal accepted")
	}
	gk, err := s.GetAPIKey(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(k, gk); diff != "" {
		t.Fatalf("api key (-want +got):\n%s", diff)
	}
	if err := s.UpdateAPIKey(ctx, "k1", ts.Add(time.Minute), ts.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	gk, _ = s.GetAPIKey(ctx, "k1")
	if !gk.RevokedAt.Equal(ts.Add(2*time.Minute)) || !gk.ExpiresAt.Equal(ts.Add(time.Minute)) {
		t.Fatalf("update: %+v", gk)
	}
	if ks, _ := s.ListAPIKeys(ctx, "alice"); len(ks) != 1 {
		t.Fatalf("ListAPIKeys = %d", len(ks))
	}
	for since, want := range map[time.Duration][]string{time.Minute: {"k1"}, 2 * time.Minute: nil} {
		if ids, err := s.RevokedAPIKeys(ctx, ts.Add(since)); err != nil || !slices.Equal(ids, want) {
			t.Fatalf("RevokedAPIKeys(ts+%v) = %v %v, want %v", since, ids, err, want)
		}
	}
	if err := s.UpdateAPIKey(ctx, "nope", ts, ts); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}
}

func testNonces(t *testing.T, s store.Store) {
	ctx := context.Background()
	n := func(i int) []byte { return []byte(fmt.Sprintf("nonce-%02d-%s", i, strings.Repeat("x", 20))) }
	exp := ts.Add(2 * time.Minute)
	if err := s.IssueNonce(ctx, "rt-a", n(1), ts, exp, 4); err != nil {
		t.Fatal(err)
	}
	// Another runtime's take burns it: nobody can use it after.
	if ok, err := s.TakeNonce(ctx, "rt-b", n(1), ts); ok || err != nil {
		t.Fatalf("another runtime took the nonce: %v, %v", ok, err)
	}
	if ok, _ := s.TakeNonce(ctx, "rt-a", n(1), ts); ok {
		t.Fatal("nonce usable after another runtime presented it")
	}
	// Single use; unknown nonces refused.
	s.IssueNonce(ctx, "rt-a", n(2), ts, exp, 4)
	if ok, err := s.TakeNonce(ctx, "rt-a", n(2), ts.Add(time.Minute)); !ok || err != nil {
		t.Fatalf("first take: %v, %v", ok, err)
	}
	if ok, _ := s.TakeNonce(ctx, "rt-a", n(2), ts.Add(time.Minute)); ok {
		t.Fatal("nonce taken twice")
	}
	if ok, _ := s.TakeNonce(ctx, "rt-a", []byte("never issued"), ts); ok {
		t.Fatal("unknown nonce accepted")
	}
	// Expired.
	s.IssueNonce(ctx, "rt-a", n(3), ts, exp, 4)
	if ok, _ := s.TakeNonce(ctx, "rt-a", n(3), exp); ok {
		t.Fatal("expired nonce accepted")
	}
	// At most max per runtime: issuing more retires the oldest (issued in one clock tick).
	for i := 10; i < 16; i++ {
		if err := s.IssueNonce(ctx, "rt-c", n(16-i+20), ts, exp.Add(time.Hour), 4); err != nil {
			t.Fatal(err)
		}
	}
	for i := 10; i < 16; i++ {
		ok, err := s.TakeNonce(ctx, "rt-c", n(16-i+20), ts.Add(time.Minute))
		if err != nil || ok != (i >= 12) {
			t.Fatalf("nonce %d of 6 with a cap of 4: take = %v, %v", i-9, ok, err)
		}
	}
}

func testExports(t *testing.T, s store.Store) {
	ctx := context.Background()
	a := store.Export{ID: "e1", Model: "m", Version: "1", Licensee: "acme", By: "os:alice@h", SHA256: "ab", LogIndex: 7, CreatedAt: ts}
	b := store.Export{ID: "e2", Model: "m", Version: "2", Licensee: "initech", By: "os:bob@h", SHA256: "cd", LogIndex: 9, CreatedAt: ts.Add(time.Second)}
	for _, e := range []store.Export{a, b} {
		if err := s.CreateExport(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateExport(ctx, a); !errors.Is(err, store.ErrExists) {
		t.Fatalf("CreateExport(dup) = %v, want ErrExists", err)
	}
	got, err := s.ListExports(ctx, "m", "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.Export{a, b}, got); diff != "" {
		t.Errorf("ListExports (-want +got):\n%s", diff)
	}
	if got, _ := s.ListExports(ctx, "m", "2"); len(got) != 1 || got[0].ID != "e2" {
		t.Errorf("ListExports(m, 2) = %+v", got)
	}
	if got, _ := s.ListExports(ctx, "other", ""); len(got) != 0 {
		t.Errorf("ListExports(other) = %+v", got)
	}
}

// testExternalVersions: an external version (a record without weights) is found, listed and
// updated like an imported one, marked External, without files; names stay unique.
func testExternalVersions(t *testing.T, s store.Store) {
	ctx := context.Background()
	ts := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	v := store.Version{Model: "vendor", Version: "1", Classification: "public", Owner: "o", CreatedAt: ts, DeniedCountries: []string{"IR"}}
	if err := s.CreateExternalVersion(ctx, v); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateExternalVersion(ctx, v); !errors.Is(err, store.ErrExists) {
		t.Fatalf("twice: %v", err)
	}
	got, err := s.GetVersion(ctx, "vendor", "1")
	if err != nil || !got.External || len(got.Files) != 0 || got.Classification != "public" || len(got.DeniedCountries) != 1 {
		t.Fatalf("get: %+v %v", got, err)
	}
	a := got.Attrs()
	a.Classification = "restricted"
	if err := s.SetVersionAttrs(ctx, "vendor", "1", a, ts.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetVersionDisabled(ctx, "vendor", "1", ts.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	recs, err := s.ModelRecords(ctx)
	if err != nil || len(recs) != 1 || recs[0].Attrs.Classification != "restricted" || !recs[0].Disabled {
		t.Fatalf("records: %+v %v", recs, err)
	}
	if vs, err := s.ListVersions(ctx, "vendor"); err != nil || len(vs) != 1 || !vs[0].External {
		t.Fatalf("list: %+v %v", vs, err)
	}
}
