package store

import (
	"slices"
	"testing"
	"time"
)

// FuzzEachRecord: a damaged group row (the index's own bytes, but a disk or a hand can
// change them) is an error, never a panic or a read past the row.
func FuzzEachRecord(f *testing.F) {
	t0 := time.Unix(1, 0)
	gs := groupRecords([]AuditEvent{
		{Index: recordBit | 5<<recordShift | 3, TS: t0, Kind: "k", Principal: "p", Decision: "allow", Raw: []byte(`{"a":1}`)},
		{Index: recordBit | 5<<recordShift | 9, TS: t0.Add(time.Second), Kind: "k", Principal: "p", Decision: "", Raw: []byte(`{}`)},
	}, true)
	f.Add(gs[0].meta, gs[0].raws)
	f.Add([]byte{0x80}, []byte{})
	f.Fuzz(func(t *testing.T, meta, raws []byte) {
		n := 0
		err := eachRecord(5, "p", "k", 0, meta, raws, func(e AuditEvent, _ int) {
			n++
			if e.Index>>recordShift != recordBit>>recordShift|5 {
				t.Fatalf("index %x outside entry 5", e.Index)
			}
		})
		if err == nil && n > len(meta) {
			t.Fatalf("%d records from %d bytes of meta", n, len(meta))
		}
	})
}

func TestGroupRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	in := []AuditEvent{
		{Index: recordBit | 5<<recordShift | 0, TS: t0.Add(time.Second), Kind: "k", Principal: "p", Decision: "allow", Raw: []byte(`{"a":1}`)},
		{Index: recordBit | 5<<recordShift | 1, TS: t0, Kind: "k", Principal: "q", Decision: "deny", Raw: []byte(`{"b":2}`)},
		{Index: recordBit | 5<<recordShift | 2, TS: t0.Add(2 * time.Second), Kind: "k", Principal: "p", Decision: "", Raw: []byte(`{}`)},
	}
	for _, keep := range []bool{true, false} {
		testGroupRoundTrip(t, in, keep)
	}
}

func testGroupRoundTrip(t *testing.T, in []AuditEvent, keep bool) {
	gs := groupRecords(in, keep)
	if len(gs) != 2 || gs[0].n != 2 || gs[1].n != 1 || gs[0].tsMax-gs[0].tsMin != int64(time.Second) {
		t.Fatalf("groups %+v", gs)
	}
	var out []AuditEvent
	var sizes []int
	for _, g := range gs {
		if !keep && len(g.raws) != 0 {
			t.Fatalf("group kept %d bytes of records", len(g.raws))
		}
		raws := g.raws
		if !keep {
			raws = nil
		}
		if err := eachRecord(g.entry, g.principal, g.kind, g.tsMin, g.meta, raws, func(e AuditEvent, n int) {
			out, sizes = append(out, e), append(sizes, n)
		}); err != nil {
			t.Fatal(err)
		}
	}
	want := []AuditEvent{in[0], in[2], in[1]}
	for i := range want {
		wantRaw := string(want[i].Raw)
		if !keep {
			wantRaw = ""
		}
		if out[i].Index != want[i].Index || !out[i].TS.Equal(want[i].TS) || out[i].Decision != want[i].Decision ||
			out[i].Principal != want[i].Principal || string(out[i].Raw) != wantRaw || sizes[i] != len(want[i].Raw) {
			t.Fatalf("record %d: %+v (size %d), want %+v", i, out[i], sizes[i], want[i])
		}
	}
	if err := eachRecord(5, "p", "k", 0, gs[0].meta[:len(gs[0].meta)-1], gs[0].raws, func(AuditEvent, int) {}); err == nil {
		t.Fatal("a cut group expanded without error")
	}
}

func TestMergeByIndex(t *testing.T) {
	ev := func(i uint64) AuditEvent { return AuditEvent{Index: i} }
	idx := func(evs []AuditEvent) (out []uint64) {
		for _, e := range evs {
			out = append(out, e.Index)
		}
		return out
	}
	a, b := []AuditEvent{ev(1), ev(4), ev(6)}, []AuditEvent{ev(2), ev(4), ev(7)}
	if got := idx(mergeByIndex(a, b, false, 0)); !slices.Equal(got, []uint64{1, 2, 4, 6, 7}) {
		t.Fatalf("ascending: %v", got)
	}
	if got := idx(mergeByIndex(a, b, false, 3)); !slices.Equal(got, []uint64{1, 2, 4}) {
		t.Fatalf("limit: %v", got)
	}
	slices.Reverse(a)
	slices.Reverse(b)
	if got := idx(mergeByIndex(a, b, true, 0)); !slices.Equal(got, []uint64{7, 6, 4, 2, 1}) {
		t.Fatalf("descending: %v", got)
	}
}

// TestNextPage: paging newest first with NextPage ends, reading every event once, also
// when a page ends exactly at log entry 0 (Before 0 means "no bound").
func TestNextPage(t *testing.T) {
	evs := make([]AuditEvent, 10)
	for i := range evs {
		evs[i] = AuditEvent{Index: uint64(9 - i)}
	}
	page := func(q AuditQuery) []AuditEvent { // a store's answer over evs
		var out []AuditEvent
		for _, e := range evs {
			if (q.Before == 0 || e.Index < q.Before) && len(out) < q.Limit {
				out = append(out, e)
			}
		}
		return out
	}
	q, seen := AuditQuery{Desc: true, Limit: 5}, map[uint64]int{}
	for pages := 0; ; pages++ {
		if pages > len(evs) {
			t.Fatal("paging did not end")
		}
		p := page(q)
		for _, e := range p {
			seen[e.Index]++
		}
		var more bool
		if q, more = q.NextPage(p); !more {
			break
		}
	}
	for i := range uint64(10) {
		if seen[i] != 1 {
			t.Fatalf("event %d read %d times", i, seen[i])
		}
	}
}
