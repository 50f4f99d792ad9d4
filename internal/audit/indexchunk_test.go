package audit

import (
	"context"
	"testing"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/api/layout"
)

// TestIndexAwayCostsAChunkARound: a search index that answers reads but refuses writes (a
// PostgreSQL failed over to a read-only standby, a full disk) costs the catch-up's first
// round one bundle's width of entries, and each round after it one entry — gathered, its
// batch's records read back and checked — not the whole backlog's, every second for as long
// as it refuses (the backlog held in memory is up to 2^18 entries). Once it takes writes
// again, every entry is indexed in that round.
func TestIndexAwayCostsAChunkARound(t *testing.T) {
	t.Parallel()
	var idx *a44Index
	tl := a44OpenWithIndex(t, func(s store.Store) Index { idx = &a44Index{Store: s}; return idx })
	idx.fail.Store(true)
	ctx := context.Background()
	const n = 3*layout.EntryBundleWidth + 10
	fs := make([]Future, n)
	for i := range n {
		fs[i] = tl.log.Submit(ctx, event(i))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if err := tl.log.catchUp(ctx); err == nil {
			t.Fatal("the catch-up succeeded while the index refused writes")
		}
	}
	if most := idx.most.Load(); most > layout.EntryBundleWidth {
		t.Errorf("a refused index write was handed %d entries (the backlog), want at most a bundle's width (%d)", most, layout.EntryBundleWidth)
	}
	if last := idx.last.Load(); last != 1 {
		t.Errorf("after a refusal, the index was handed %d entries a round, want 1", last)
	}
	idx.fail.Store(false)
	if err := tl.log.catchUp(ctx); err != nil {
		t.Fatal(err)
	}
	size, err := tl.log.reader.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if done, err := tl.st.AuditIndexed(ctx); err != nil || done != size {
		t.Fatalf("indexed %d of %d entries once the index took writes: %v", done, size, err)
	}
}
