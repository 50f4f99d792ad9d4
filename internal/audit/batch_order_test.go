package audit

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// TestBatchOrderWhenTimerRaces: records reach the log in the order submitted, with and
// without a journal, when the group timer fires while full batches still wait for the
// committer (small batches, a short delay, one fast submitter: the committer's select
// then often has both the kick and the timer ready). Found by CI: record 100 logged first.
func TestBatchOrderWhenTimerRaces(t *testing.T) {
	for _, journal := range []bool{false, true} {
		name := map[bool]string{false: "direct", true: "journal"}[journal]
		t.Run(name, func(t *testing.T) {
			tl := openTestLog(t)
			cfg := BatcherConfig{MaxRecords: 5, MaxDelay: 20 * time.Microsecond, FoldEvery: time.Hour}
			if journal {
				cfg.Journal = filepath.Join(tl.dir, "journal")
			}
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
			ctx := context.Background()
			const n = 600
			var fs []Future
			for i := range n {
				fs = append(fs, b.Submit(ctx, requestEvent(i)))
				// Paced, so full batches keep arriving while the committer commits
				// (its kick and its timer then both ready), not all before its first.
				time.Sleep(20 * time.Microsecond)
			}
			for _, f := range fs {
				if _, err := f(); err != nil {
					t.Fatal(err)
				}
			}
			b.Close()
			tl.close(t)
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), n)
		})
	}
}

// TestSubmitEncodedTime: a record whose time no batch entry can carry (none, or past year
// 9999) is refused at once, with or without a journal — journaled, it was acknowledged and
// then held every later fold (and Barrier) behind it — and the batcher goes on.
func TestSubmitEncodedTime(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "journal"}[journal], func(t *testing.T) {
			tl := openTestLog(t)
			cfg := BatcherConfig{MaxRecords: 10, MaxDelay: time.Millisecond}
			if journal {
				cfg.Journal = filepath.Join(tl.dir, "journal")
			}
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
			ctx := context.Background()
			ev := requestEvent(0)
			raw, _ := ev.Marshal()
			for _, ts := range []time.Time{{}, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)} {
				_, err := b.SubmitEncoded(ctx, store.AuditEvent{TS: ts, Kind: string(ev.Kind), Principal: "p0", Decision: Allow, Raw: raw})()
				if !errors.Is(err, ErrEvent) {
					t.Fatalf("a record at %v: %v, want ErrEvent", ts, err)
				}
			}
			if _, err := b.Submit(ctx, ev)(); err != nil {
				t.Fatal(err)
			}
			if _, ok, err := b.Barrier(ctx); !ok || err != nil {
				t.Fatalf("barrier after the refused records: %v %v", ok, err)
			}
			b.Close()
			tl.close(t)
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 1)
		})
	}
}
