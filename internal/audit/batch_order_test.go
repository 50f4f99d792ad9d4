package audit

import (
	"context"
	"path/filepath"
	"testing"
	"time"
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
