package audit

import (
	"context"
	"encoding/hex"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// TestJournalRefoldHoldsLoggedBatchToItsBundle: a dead journal's refold skips the records
// of a place the log has a batch of. The batch entry alone is only the log's word: one
// written by a hand in the log's storage (thirtieth session's residual) — naming a bundle
// that is not there, naming another batch's bundle, or counting more records than its
// bundle holds — would have the refold skip acknowledged records silently. The segment's
// records must be the bundle's, byte for byte; else the directory is refused and named
// (left for the operator, as a broken link is). An honest entry still has its records
// skipped and the rest folded.
//
// The dead process left D/1: records 0..10 in two groups, batch size 10 (one place,
// D/1@0). Before the start, the log gets a batch entry of place D/1@0:
//   - missing bundle: 10 records, a bundle name no bundle has;
//   - other records: a real bundle of records 100..110 with its right count and root;
//   - count raised: the bundle of records 0..5 (what an older copy's fold logs), its root,
//     but "records": 10;
//   - honest: the bundle of records 0..5, 5, its root — records 5..10 are folded after it.
func TestJournalRefoldHoldsLoggedBatchToItsBundle(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		bundle []store.AuditEvent // the bundle the entry names (nil: none written)
		count  int
		honest bool
	}{
		{name: "missing bundle", count: 10},
		{name: "other records", bundle: rawRecs(100, 110), count: 10},
		{name: "count raised", bundle: rawRecs(0, 5), count: 10},
		{name: "honest", bundle: rawRecs(0, 5), count: 5, honest: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tl, jdir := a49Log(t)
			paths := a48Journal(t, jdir, 10, [][]store.AuditEvent{rawRecs(0, 5), rawRecs(5, 10)})
			name := strings.Repeat("ab", 32)
			root := BatchRoot(raws(rawRecs(0, 10)))
			if c.bundle != nil {
				var bundle []byte
				bundle, name = AppendBundle(nil, raws(c.bundle))
				if err := (DirBundles{Dir: tl.dir}).PutBundle(ctx, name, bundle); err != nil {
					t.Fatal(err)
				}
				root = BatchRoot(raws(c.bundle))
			}
			now := time.Now().UTC()
			ev := Event{V: 1, TS: now, Kind: KindBatch, Decision: Allow,
				Actor:   map[string]string{"principal": "strongroom/gateway"},
				Subject: map[string]string{"bundle": name},
				Fields: map[string]string{"records": strconv.Itoa(c.count), "root": hex.EncodeToString(root),
					"first_ts": now.Format(time.RFC3339Nano), "last_ts": now.Format(time.RFC3339Nano),
					"journal": journalSource(paths[0], 0)}}
			if _, err := tl.log.Record(ctx, ev); err != nil {
				t.Fatal(err)
			}
			healthy := a17NextStart(tl, jdir, a17Key)
			dir := filepath.Dir(paths[0])
			if !c.honest {
				if healthy == nil {
					t.Fatalf("the journal was taken on the entry's word: records 0..10 (acknowledged) skipped for a batch entry whose bundle does not hold them")
				}
				if !strings.Contains(healthy.Error(), filepath.Base(dir)) {
					t.Fatalf("refused without naming the directory %s: %v", filepath.Base(dir), healthy)
				}
				if !fileExists(paths[0]) {
					t.Fatalf("the refused directory's segment was removed (healthy: %v)", healthy)
				}
				return
			}
			if healthy != nil {
				t.Fatalf("an honest batch of the place refused: %v", healthy)
			}
			tl.close(t)
			wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 10)
		})
	}
}
