package store

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/testenv"
)

// TestAttackSearchAuditIsAPlainFilter: over a SQLite index holding log entries and many
// batches of request records (records out of time order within a batch, batches
// overlapping in time, several principals and kinds per batch, empty principals and
// decisions, odd strings), every SearchAudit answer is what a plain filter over all the
// events gives, in order, with the same fields and bytes; newest-first and oldest-first
// paging with Before visits every matching record exactly once; AuditHistogram and
// AuditPrincipalsPerDay count as a plain pass does. Indexing the same batches again
// (a restarted process catching up) changes nothing.
func TestAttackSearchAuditIsAPlainFilter(t *testing.T) {
	testenv.StatisticsOnly(t) // one goroutine: under -race, SQLite's transpiled C took 65 s of it, 4 s without
	ctx := context.Background()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(10, 62))
	t0 := time.Date(2026, 3, 1, 23, 0, 0, 0, time.UTC)
	principals := []string{"alice", "bob", "", "b\u2028d", "\ufffd\ufffd", "x'; DROP TABLE audit_events; --", "ALICE"}
	kinds := []string{"gateway.request", "gateway.stream_start"}
	decisions := []string{"allow", "deny", ""}
	var all []AuditEvent
	var calls [][]AuditEvent
	entry := uint64(0)
	for range 60 {
		// Some plain log entries, then a batch entry whose records follow it in the same call.
		var call []AuditEvent
		for range rng.IntN(3) {
			e := AuditEvent{Index: entry, TS: t0.Add(time.Duration(rng.Int64N(int64(72 * time.Hour)))), Kind: "key.create",
				Principal: principals[rng.IntN(len(principals))], Decision: decisions[rng.IntN(3)]}
			e.Raw = []byte(fmt.Sprintf(`{"entry":%d}`, entry))
			call, entry = append(call, e), entry+1
		}
		batch := entry
		call = append(call, AuditEvent{Index: batch, TS: t0, Kind: "audit.batch", Principal: "strongroom/gateway", Decision: "allow", Raw: []byte(`{"batch":1}`)})
		entry++
		n := 1 + rng.IntN(40)
		if rng.IntN(10) == 0 {
			n = 1 + rng.IntN(1500)
		}
		base := t0.Add(time.Duration(rng.Int64N(int64(72 * time.Hour))))
		for pos := range n {
			e := AuditEvent{Index: recordBit | batch<<recordShift | uint64(pos), TS: base.Add(time.Duration(rng.Int64N(int64(10*time.Second))) - 5*time.Second),
				Kind: kinds[rng.IntN(2)], Principal: principals[rng.IntN(len(principals))], Decision: decisions[rng.IntN(3)]}
			e.Raw = []byte(fmt.Sprintf(`{"rec":%d,"pos":%d}`, batch, pos))
			if pos%7 == 3 {
				e.Raw = []byte{} // an empty record: still one record
			}
			call = append(call, e)
		}
		all = append(all, call...)
		calls = append(calls, call)
	}
	for i := 0; i < len(calls); {
		j := min(len(calls), i+1+rng.IntN(4)) // several batches per IndexAudit call, as catchUp does
		if err := s.IndexAudit(ctx, slices.Concat(calls[i:j]...)); err != nil {
			t.Fatal(err)
		}
		i = j
	}
	// A restarted process reads some batches back and indexes them again.
	for _, c := range calls[:10] {
		if err := s.IndexAudit(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	slices.SortFunc(all, func(a, b AuditEvent) int { return cmp.Compare(a.Index, b.Index) })

	ref := func(q AuditQuery) []AuditEvent {
		var out []AuditEvent
		want := map[uint64]bool{}
		for _, x := range q.Indexes {
			want[x] = true
		}
		for _, e := range all {
			if (q.Principal != "" && e.Principal != q.Principal) || (q.Kind != "" && e.Kind != q.Kind) ||
				(!q.Since.IsZero() && e.TS.Before(q.Since)) || (!q.Until.IsZero() && !e.TS.Before(q.Until)) ||
				(q.Before > 0 && e.Index >= q.Before) || (len(q.Indexes) > 0 && !want[e.Index]) {
				continue
			}
			out = append(out, e)
		}
		if q.Desc {
			slices.Reverse(out)
		}
		if q.Limit > 0 && len(out) > q.Limit {
			out = out[:q.Limit]
		}
		return out
	}
	same := func(what string, got, want []AuditEvent) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d events, want %d", what, len(got), len(want))
		}
		for i := range got {
			g, w := got[i], want[i]
			if g.Index != w.Index || !g.TS.Equal(w.TS) || g.Kind != w.Kind || g.Principal != w.Principal || g.Decision != w.Decision || string(g.Raw) != string(w.Raw) {
				t.Fatalf("%s: event %d:\n got %+v\nwant %+v", what, i, g, w)
			}
		}
	}
	pick := func() uint64 { return all[rng.IntN(len(all))].Index }
	randTime := func() time.Time {
		if rng.IntN(3) == 0 {
			return all[rng.IntN(len(all))].TS // exactly a record's time: the bounds' edges
		}
		return t0.Add(time.Duration(rng.Int64N(int64(80*time.Hour))) - 4*time.Hour)
	}
	for i := range 400 {
		var q AuditQuery
		if rng.IntN(2) == 0 {
			q.Principal = principals[rng.IntN(len(principals))]
		}
		if rng.IntN(2) == 0 {
			q.Kind = []string{"gateway.request", "gateway.stream_start", "key.create", "audit.batch"}[rng.IntN(4)]
		}
		if rng.IntN(3) == 0 {
			q.Since = randTime()
		}
		if rng.IntN(3) == 0 {
			q.Until = randTime()
		}
		if rng.IntN(3) == 0 {
			q.Before = pick() + uint64(rng.IntN(2))
		}
		if rng.IntN(5) == 0 {
			for range 1 + rng.IntN(20) {
				q.Indexes = append(q.Indexes, pick())
			}
			q.Indexes = append(q.Indexes, recordBit|9999<<recordShift, 1<<40) // absent ones
		}
		q.Desc = rng.IntN(2) == 0
		if rng.IntN(2) == 0 {
			q.Limit = 1 + rng.IntN(200)
		}
		got, err := s.SearchAudit(ctx, q)
		if err != nil {
			t.Fatalf("query %d %+v: %v", i, q, err)
		}
		same(fmt.Sprintf("query %d %+v", i, q), got, ref(q))
	}

	// Keyset paging, both directions of the page order, page sizes that cut batches.
	for _, pq := range []AuditQuery{{}, {Principal: "alice"}, {Kind: "gateway.request"}, {Principal: "", Kind: "gateway.stream_start", Since: t0.Add(10 * time.Hour)}} {
		for _, limit := range []int{3, 64, 500} {
			q := pq
			q.Desc, q.Limit = true, limit
			var got []AuditEvent
			for pages := 0; ; pages++ {
				page, err := s.SearchAudit(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) == 0 {
					break
				}
				if pages > len(all)+1 || (pages > 0 && page[0].Index >= q.Before) {
					t.Fatalf("paging %+v does not end: page %d starts at %d (%+v)", q, pages, page[0].Index, page[0])
				}
				got = append(got, page...)
				if len(page) < limit {
					break // as the console's export stops (Before 0 would mean "no bound")
				}
				q.Before = page[len(page)-1].Index
			}
			want := pq
			want.Desc = true
			same(fmt.Sprintf("newest-first pages of %d over %+v", limit, pq), got, ref(want))
		}
	}

	// Histogram and principals per day against a plain count.
	for _, kind := range []string{"gateway.request", "gateway.stream_start", "key.create"} {
		for _, since := range []time.Time{{}, t0.Add(30 * time.Hour), randTime()} {
			for _, bucket := range []time.Duration{time.Minute, time.Hour, 24 * time.Hour} {
				counts := map[string]int{}
				for _, e := range all {
					if e.Kind == kind && !e.TS.Before(since) {
						counts[fmt.Sprintf("%d|%s", e.TS.UnixNano()/int64(bucket), e.Decision)]++
					}
				}
				hs, err := s.AuditHistogram(ctx, kind, since, bucket)
				if err != nil {
					t.Fatal(err)
				}
				gotCounts := map[string]int{}
				for _, h := range hs {
					gotCounts[fmt.Sprintf("%d|%s", h.Start.UnixNano()/int64(bucket), h.Decision)] += h.Count
				}
				if fmt.Sprint(gotCounts) != fmt.Sprint(counts) {
					t.Fatalf("histogram %s since %v by %v:\n got %v\nwant %v", kind, since, bucket, gotCounts, counts)
				}
			}
			per := map[string]map[string]bool{}
			for _, e := range all {
				if e.Kind == kind && !e.TS.Before(since) {
					d := e.TS.UTC().Format("2006-01-02")
					if per[d] == nil {
						per[d] = map[string]bool{}
					}
					per[d][e.Principal] = true
				}
			}
			want := map[string]int{}
			for d, ps := range per {
				want[d] = len(ps)
			}
			got, err := s.AuditPrincipalsPerDay(ctx, kind, since)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("principals per day %s since %v:\n got %v\nwant %v", kind, since, got, want)
			}
		}
	}
}

// TestAttackPagingPastEntryZero: keyset paging as the console's export does it (pages
// of Limit, newest first, AuditQuery.NextPage)
// over exactly Limit matching events, the oldest being the log's first entry (index 0):
// every event is read once and the paging ends (Before 0 means "no bound": a pager that
// set it after a page ending at entry 0 started over, forever).
func TestAttackPagingPastEntryZero(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	const n = 10
	var evs []AuditEvent
	for i := range uint64(n) {
		evs = append(evs, AuditEvent{Index: i, TS: t0.Add(time.Duration(i) * time.Second), Kind: "key.create", Principal: "alice", Decision: "allow", Raw: []byte(fmt.Sprint(i))})
	}
	if err := s.IndexAudit(ctx, evs); err != nil {
		t.Fatal(err)
	}
	q := AuditQuery{Desc: true, Limit: n / 2}
	seen := map[uint64]int{}
	for pages := 0; ; pages++ {
		if pages > n {
			t.Fatalf("paging did not end: %d pages of %d over %d events, counts %v", pages, q.Limit, n, seen)
		}
		page, err := s.SearchAudit(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			seen[e.Index]++
		}
		var more bool
		if q, more = q.NextPage(page); !more { // how the console's export pages
			break
		}
	}
	for i := range uint64(n) {
		if seen[i] != 1 {
			t.Fatalf("entry %d read %d times (all: %v)", i, seen[i], seen)
		}
	}
}
