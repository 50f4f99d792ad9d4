package audit

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// TestSubmitEncodedKeepsNoCallerBytes: SubmitEncoded keeps none of the caller's bytes —
// the gateway writes its next record into the same buffer as soon as the call returns
// (RecordSink). Each record is written into one buffer, submitted, and the buffer
// overwritten; the log must hold every record as submitted, in order, and the index find
// them, whether records are written into the journal's segment (the default; also with a
// bundle store that cannot link the segment, where the bundle is written from the records'
// bytes), committed in groups through the journal, or in groups without one. Written, with segments of 10
// records, the segments' own buffers go back to their pool and are written again while
// earlier segments' records wait for the index: a buffer given back too soon shows here as
// records that are not the ones submitted.
func TestSubmitEncodedKeepsNoCallerBytes(t *testing.T) {
	written := func(jdir string) BatcherConfig {
		return BatcherConfig{MaxRecords: 10, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond}
	}
	cases := []struct {
		name     string
		cfg      func(jdir string) BatcherConfig
		unlinked bool // a bundle store that cannot link segments: bundles written from the records' bytes
	}{
		{"written", written, false},
		{"written-unlinked", written, true},
		{"journal-groups", func(jdir string) BatcherConfig {
			return BatcherConfig{MaxRecords: 10, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key}
		}, false},
		{"groups", func(string) BatcherConfig {
			return BatcherConfig{MaxRecords: 10, MaxDelay: time.Millisecond}
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			t.Cleanup(func() { removeShadows(jdir) })
			var bundles BundleStore = DirBundles{Dir: tl.dir}
			if c.unlinked {
				bundles = struct{ BundleStore }{bundles} // DirBundles' LinkBundle hidden
			}
			b := NewBatcher(tl.log, bundles, c.cfg(jdir))
			ctx := context.Background()
			const n = 240
			var buf []byte
			var fs []Future
			for i := range n {
				ev := requestEvent(i)
				raw, err := ev.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				buf = append(buf[:0], raw...)
				fs = append(fs, b.SubmitEncoded(ctx, store.AuditEvent{TS: ev.TS, Kind: string(ev.Kind), Principal: ev.Actor["principal"], Decision: ev.Decision, Raw: buf}))
				copy(buf, bytes.Repeat([]byte{'x'}, len(buf))) // the caller's next record
				if i%20 == 19 {                                // segments folded and indexed while others are written
					if _, _, err := b.Barrier(ctx); err != nil {
						t.Fatal(err)
					}
					if err := tl.log.catchUp(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			for _, f := range fs {
				if _, err := f(); err != nil {
					t.Fatal(err)
				}
			}
			b.Close()
			if c.name == "written" || c.unlinked {
				// 24 segments of 10 records: the buffers came back for later ones (an open
				// segment, one folding, those waiting for the index: a few made in all).
				if made := b.j.owns.made; made > 2*ownPoolSize {
					t.Errorf("%d segment buffers made for 24 segments: none went back to the pool", made)
				}
			}
			tl.close(t)
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), n)
			got, err := tl.st.SearchAudit(ctx, store.AuditQuery{Principal: "p1", Kind: "gateway.request"})
			if err != nil || len(got) != n/4 {
				t.Fatalf("search: %d records, %v", len(got), err)
			}
			for _, r := range got {
				if want := indexRecord(r.Index, r.Raw); r.Principal != "p1" || !r.TS.Equal(want.TS) || want.Principal != "p1" {
					t.Fatalf("index row %+v, its record says %+v", r, want)
				}
			}
		})
	}
}

// TestOwnPoolKeepsWhatWasOut: buffers given back together (the index's catch-up releases a
// second's segments at once) are all kept for the next ones, up to ownPoolMax: five out at
// a time make five in all, not one more each round.
func TestOwnPoolKeepsWhatWasOut(t *testing.T) {
	var p ownPool
	for round := 0; round < 10; round++ {
		var out []*ownBuf
		for range 5 {
			out = append(out, p.get(64))
		}
		for _, o := range out {
			o.release()
		}
	}
	if p.made != 5 {
		t.Fatalf("%d buffers made for 10 rounds of 5 out at once, want 5", p.made)
	}
	var out []*ownBuf
	for range 3 * ownPoolMax {
		out = append(out, p.get(64))
	}
	for _, o := range out {
		o.release()
	}
	if len(p.free) != ownPoolMax {
		t.Fatalf("the pool kept %d buffers, want at most %d", len(p.free), ownPoolMax)
	}
}
