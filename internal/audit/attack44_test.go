package audit

// Outside round 44: request records kept in the journal segment's own buffer (ownBuf),
// SubmitEncoded keeping none of the caller's bytes, and own buffers recycled once folded
// and indexed (journal_mapped.go, batch.go fold/commitRecords, log.go rememberRecords /
// indexWithRecords).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// a44Deadline polls cond until it holds or d passes.
func a44Deadline(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// a44Loop runs fn again and again, pause apart, on a goroutine counted in bg, until stop.
func a44Loop(bg *sync.WaitGroup, stop *atomic.Bool, pause time.Duration, fn func()) {
	bg.Go(func() {
		for !stop.Load() {
			fn()
			time.Sleep(pause)
		}
	})
}

// a44Raw is writer w's i-th record, of a size chosen by kind: 0 tiny, 1 small, 2 a few
// KiB, 3 within 64 bytes of MaxEventSize.
func a44Raw(t testing.TB, w, i, kind int) (store.AuditEvent, []byte) {
	ev := Event{V: 1, TS: ts0.Add(time.Duration(w)*time.Hour + time.Duration(i)*time.Microsecond), Kind: "gateway.request",
		Actor:   map[string]string{"principal": fmt.Sprintf("w%d", w), "tenant": fmt.Sprintf("t%d", w%3)},
		Subject: map[string]string{"model": "m"}, Decision: Allow,
		Fields: map[string]string{"seq": strconv.Itoa(i), "pad": ""}}
	base, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	pad := 0
	switch kind {
	case 1:
		pad = 100 + (i*37)%300
	case 2:
		pad = 2000 + (i*131)%5000
	case 3:
		pad = MaxEventSize - len(base) - (i % 64)
	}
	ev.Fields["pad"] = strings.Repeat(string(rune('a'+(w+i)%26)), pad)
	raw, err := ev.Marshal()
	if err != nil || len(raw) > MaxEventSize {
		t.Fatalf("record %d/%d: %d bytes, %v", w, i, len(raw), err)
	}
	return store.AuditEvent{TS: ev.TS, Kind: string(ev.Kind), Principal: ev.Actor["principal"], Decision: ev.Decision}, raw
}

// a44Acked collects the records whose futures resolved without error (and those refused).
type a44Acked struct {
	mu      sync.Mutex
	acked   map[string]int // raw -> times acknowledged
	byW     map[int][]string
	refused int
}

func newA44Acked() *a44Acked { return &a44Acked{acked: map[string]int{}, byW: map[int][]string{}} }

func (a *a44Acked) add(w int, raw []byte, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.refused++
		return
	}
	a.acked[string(raw)]++
	a.byW[w] = append(a.byW[w], string(raw))
}

// a44Writer submits n records from writer w, each written into one reused buffer that is
// scribbled over as soon as SubmitEncoded returns (what the gateway's pooled buffer does).
func a44Writer(t testing.TB, b *Batcher, a *a44Acked, w, n int, kinds []int, stop *atomic.Bool) {
	a44WriterP(t, b, a, w, n, kinds, stop, false)
}

func a44WriterP(t testing.TB, b *Batcher, a *a44Acked, w, n int, kinds []int, stop *atomic.Bool, patient bool) {
	ctx := context.Background()
	var buf []byte
	for i := range n {
		if stop != nil && stop.Load() {
			return
		}
		var err error
		buf, err = a44Submit(ctx, t, b, a, w, i, kinds[(w+i)%len(kinds)], buf)
		if err != nil && patient {
			// a refused record: wait (bounded) for the log to take records again
			end := time.Now().Add(5 * time.Second)
			for b.Healthy() != nil && time.Now().Before(end) {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// a44Submit submits writer w's record i through buf (returned, grown), overwrites buf (the
// caller's next record) before the future resolves, and notes the outcome.
func a44Submit(ctx context.Context, t testing.TB, b *Batcher, a *a44Acked, w, i, kind int, buf []byte) ([]byte, error) {
	rec, raw := a44Raw(t, w, i, kind)
	buf = append(buf[:0], raw...)
	rec.Raw = buf
	f := b.SubmitEncoded(ctx, rec)
	for k := range buf {
		buf[k] = '#'
	}
	_, err := f()
	a.add(w, raw, err)
	return buf, err
}

// a44CheckLog: the verified log holds exactly the acknowledged records (each as often as
// acknowledged, none other), each writer's in the order it wrote them.
func a44CheckLog(t *testing.T, tl *testLog, a *a44Acked, allowUnacked bool) {
	t.Helper()
	logged := loggedRecords(t, tl.dir, tl.vkey)
	count := map[string]int{}
	byW := map[string][]string{}
	for k, r := range logged {
		count[string(r)]++
		ev, err := ParseEvent(r)
		if err != nil {
			t.Fatalf("logged record %d does not parse: %v (%.80q)", k, err, r)
		}
		p := ev.Actor["principal"]
		byW[p] = append(byW[p], string(r))
	}
	for r, n := range a.acked {
		if count[r] != n {
			ev, _ := ParseEvent([]byte(r))
			t.Errorf("acknowledged record %v seq %v (%d bytes) is in the log %d times, acknowledged %d", ev.Actor["principal"], ev.Fields["seq"], len(r), count[r], n)
		}
	}
	if !allowUnacked {
		for r, n := range count {
			if a.acked[r] == 0 {
				t.Errorf("record in the log %d times never acknowledged (%d bytes): %.120q", n, len(r), r)
			}
		}
	}
	for w, want := range a.byW {
		got := byW[fmt.Sprintf("w%d", w)]
		var gotAcked []string
		for _, r := range got {
			if a.acked[r] > 0 {
				gotAcked = append(gotAcked, r)
			}
		}
		if len(gotAcked) != len(want) {
			continue // reported above
		}
		for i := range want {
			if gotAcked[i] != want[i] {
				t.Errorf("writer %d: its records are out of order in the log at %d", w, i)
				break
			}
		}
	}
	t.Logf("log: %d records (%d acknowledged, %d refused)", len(logged), len(a.acked), a.refused)
}

// a44CheckSearch: every writer's records found by the index are byte for byte the
// acknowledged ones, the row's fields are its record's, and none is missing.
func a44CheckSearch(t *testing.T, st store.Store, a *a44Acked) {
	t.Helper()
	ctx := context.Background()
	for w, want := range a.byW {
		p := fmt.Sprintf("w%d", w)
		got, err := st.SearchAudit(ctx, store.AuditQuery{Principal: p, Kind: "gateway.request"})
		if err != nil {
			t.Fatal(err)
		}
		wantSet := map[string]int{}
		for _, r := range want {
			wantSet[r]++
		}
		for _, r := range got {
			if wantSet[string(r.Raw)] == 0 {
				t.Errorf("search for %s: index row %d holds bytes not acknowledged for %s (%d bytes): %.120q", p, r.Index, p, len(r.Raw), r.Raw)
				continue
			}
			wantSet[string(r.Raw)]--
			if ir := indexRecord(r.Index, r.Raw); ir.Principal != p || !ir.TS.Equal(r.TS) || r.Principal != p {
				t.Errorf("search for %s: row %d's fields %q %v are not its record's %q %v", p, r.Index, r.Principal, r.TS, ir.Principal, ir.TS)
			}
		}
		for r, n := range wantSet {
			if n > 0 {
				ev, _ := ParseEvent([]byte(r))
				t.Errorf("search for %s: record seq %v not found (%d missing)", p, ev.Fields["seq"], n)
			}
		}
	}
}

// a44BundleRecsLeft is how many batches' records the log still keeps for its index, and
// how many of them hold a journal buffer.
func a44BundleRecsLeft(l *Log) (n, owned int) {
	l.bundleMu.Lock()
	defer l.bundleMu.Unlock()
	for _, k := range l.bundleRecs {
		n++
		if k.own != nil {
			owned++
		}
	}
	return n, owned
}

// a44WrittenLog opens a test log with segments of segSize bytes (small: near-MaxEventSize
// records fill one in a few, and buffers recycle often) and a written batcher on it
// (its journal's shadows removed at the end) closing segments at maxRecords or foldEvery.
func a44WrittenLog(t *testing.T, segSize int64, maxRecords int, foldEvery time.Duration) (*testLog, *Batcher) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { removeShadows(jdir) })
	return tl, NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: maxRecords, FoldEvery: foldEvery,
		Journal: jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond, segmentBytes: segSize})
}

// TestAttack44ConcurrentMixedSizes: 8 writers, records tiny to within bytes of
// MaxEventSize (ones that do not fit the room left in a 256 KiB segment), each writer's
// buffer scribbled after every SubmitEncoded; segments closed by size, by count, by age
// (FoldEvery 15 ms) and by Barrier; the index catching up continuously. Every record in the
// log and in search must be byte for byte what was acknowledged, once, in order.

func TestAttack44ConcurrentMixedSizes(t *testing.T) {
	t.Parallel()
	tl, b := a44WrittenLog(t, 256<<10, 37, 15*time.Millisecond)
	a := newA44Acked()
	var stop atomic.Bool
	var bg sync.WaitGroup
	a44Loop(&bg, &stop, 3*time.Millisecond, func() { b.Barrier(context.Background()) }) // barriers
	a44Loop(&bg, &stop, 0, func() { tl.log.catchUp(context.Background()) })             // the index, as eager as it can be
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			a44Writer(t, b, a, w, 80, []int{0, 3, 1, 3, 2, 0, 0, 3}, nil)
		})
	}
	wg.Wait()
	stop.Store(true)
	bg.Wait()
	b.Close()
	made := b.j.owns.made
	tl.close(t)
	if a.refused > 0 {
		t.Errorf("%d records refused with nothing failing", a.refused)
	}
	a44CheckLog(t, tl, a, false)
	a44CheckSearch(t, tl.st, a)
	if n, owned := a44BundleRecsLeft(tl.log); n != 0 {
		// the same as TestAttack44RememberedAfterIndexed (reported there)
		t.Logf("after the log's close, %d batches' records (%d holding a journal buffer) are still kept for an index that has them", n, owned)
	}
	t.Logf("own buffers made: %d", made)
}

// a44Index is a search index that refuses writes while fail is set. It counts the writes
// handed to it, and keeps the most entries one was handed and how many the last refused
// one was.
type a44Index struct {
	store.Store
	fail  atomic.Bool
	calls atomic.Int64
	most  atomic.Int64
	last  atomic.Int64
}

func (x *a44Index) IndexAudit(ctx context.Context, evs []store.AuditEvent) error {
	x.calls.Add(1)
	if n := int64(len(evs)); n > x.most.Load() {
		x.most.Store(n)
	}
	if x.fail.Load() {
		x.last.Store(int64(len(evs)))
		return errors.New("a44: index store away")
	}
	return x.Store.IndexAudit(ctx, evs)
}

// a44OpenWithIndex is openTestLog with idx (wrapping its sqlite store) as the index.
func a44OpenWithIndex(t *testing.T, wrap func(store.Store) Index) *testLog {
	tl := openTestLog(t)
	tl.close(t)
	l, err := Open(context.Background(), Config{Dir: tl.dir, Signer: tl.signer, Index: wrap(tl.st), CheckpointInterval: 100 * time.Millisecond, EntryKey: testEntryKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	tl.log = l
	return tl
}

// TestAttack44IndexAwayManyBatches: the index fails while 120 segments (more than the 64
// batches the log keeps for it) are written, folded and their buffers recycled, with
// writers of mixed sizes; then it comes back. Records kept in memory for it must still be
// the ones written (their buffers not given back and rewritten), records past the bound
// read from the bundles, and the search must find every record byte for byte.
func TestAttack44IndexAwayManyBatches(t *testing.T) {
	t.Parallel()
	var idx *a44Index
	tl := a44OpenWithIndex(t, func(s store.Store) Index { idx = &a44Index{Store: s}; return idx })
	idx.fail.Store(true)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { removeShadows(jdir) })
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 9, FoldEvery: time.Hour,
		Journal: jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond, segmentBytes: 128 << 10})
	a := newA44Acked()
	ctx := context.Background()
	var bg sync.WaitGroup
	var stop atomic.Bool
	a44Loop(&bg, &stop, time.Millisecond, func() { tl.log.catchUp(ctx) }) // fails: the index is away
	for round := range 30 {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				// each writer's records continue across rounds
				for i := round * 10; i < round*10+10; i++ {
					a44Submit(ctx, t, b, a, w, i, []int{0, 1, 3, 2}[(w+i)%4], nil)
				}
			})
		}
		wg.Wait()
		if _, _, err := b.Barrier(ctx); err != nil {
			t.Fatal(err)
		}
	}
	kept, owned := a44BundleRecsLeft(tl.log)
	t.Logf("batches kept for the index while it is away: %d (%d holding journal buffers); buffers made: %d", kept, owned, b.j.owns.made)
	idx.fail.Store(false)
	stop.Store(true)
	bg.Wait()
	if err := tl.log.catchUp(ctx); err != nil {
		t.Fatal(err)
	}
	a44CheckSearch(t, tl.st, a) // before the close: records indexed from memory as they are now
	b.Close()
	tl.close(t)
	a44CheckLog(t, tl, a, false)
	if n, owned := a44BundleRecsLeft(tl.log); n != 0 {
		t.Errorf("%d batches' records (%d holding journal buffers) still kept after the index caught up", n, owned)
	}
}

// a44FlakyBundles fails a fraction of bundle writes and links (a store erroring now and
// then), optionally cannot link at all.
type a44FlakyBundles struct {
	d      DirBundles // not embedded: its LinkBundle would be promoted
	mu     sync.Mutex
	rng    *rand.Rand
	p      float64
	fails  atomic.Int64
	noLink bool
}

func (f *a44FlakyBundles) fail() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rng.Float64() < f.p {
		f.fails.Add(1)
		return true
	}
	return false
}

func (f *a44FlakyBundles) PutBundle(ctx context.Context, name string, b []byte) error {
	if f.fail() {
		return errors.New("a44: bundle store away")
	}
	return f.d.PutBundle(ctx, name, b)
}

func (f *a44FlakyBundles) Bundle(ctx context.Context, name string) ([]byte, error) {
	return f.d.Bundle(ctx, name)
}

type a44LinkingFlaky struct{ *a44FlakyBundles }

func (f a44LinkingFlaky) LinkBundle(ctx context.Context, name, src string) error {
	if f.fail() {
		return errors.New("a44: bundle store away (link)")
	}
	return f.d.LinkBundle(ctx, name, src)
}

// TestAttack44FoldFailing: the bundle store fails 30 % of its writes (and links), so folds
// fail and retry (the log unhealthy: records refused meanwhile) while writers of mixed
// sizes go on and segments close and recycle their buffers; the index catches up all the
// while. Exactly the acknowledged records must be in the log, once, in order, and in
// search, byte for byte.
func TestAttack44FoldFailing(t *testing.T) {
	t.Parallel()
	for _, linked := range []bool{true, false} {
		t.Run(fmt.Sprintf("linked=%v", linked), func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			t.Cleanup(func() { removeShadows(jdir) })
			flaky := &a44FlakyBundles{d: DirBundles{Dir: tl.dir}, rng: rand.New(rand.NewPCG(44, uint64(len(jdir)))), p: 0.3}
			var bs BundleStore = flaky
			if linked {
				bs = a44LinkingFlaky{flaky}
			}
			b := NewBatcher(tl.log, bs, BatcherConfig{MaxRecords: 23, FoldEvery: 10 * time.Millisecond,
				Journal: jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond, segmentBytes: 256 << 10})
			a := newA44Acked()
			var stop atomic.Bool
			var bg sync.WaitGroup
			a44Loop(&bg, &stop, time.Millisecond, func() { tl.log.catchUp(context.Background()) })
			var wg sync.WaitGroup
			for w := range 6 {
				wg.Go(func() {
					a44WriterP(t, b, a, w, 100, []int{0, 3, 1, 2}, nil, true)
				})
			}
			wg.Wait()
			flaky.mu.Lock()
			flaky.p = 0 // the store comes back: what waits is folded
			flaky.mu.Unlock()
			a44Deadline(t, 10*time.Second, "the log to be healthy", func() bool { return b.Healthy() == nil })
			stop.Store(true)
			bg.Wait()
			b.Close()
			tl.close(t)
			t.Logf("bundle store failures: %d", flaky.fails.Load())
			a44CheckLog(t, tl, a, false)
			a44CheckSearch(t, tl.st, a)
		})
	}
}

// TestAttack44RememberedAfterIndexed: the log's index catching up as fast as it can while
// folds commit batches. A batch whose entry the index reads from the log (and its records
// from the bundle) before the fold's commitRecords has called rememberRecords — Record's
// future resolves after the entry is integrated, and catchUp reads IntegratedSize — is
// then kept in bundleRecs, with a hold on its journal buffer, for good: only indexing that
// batch removes it, and it was indexed already. Rounds of writes, each ended by a Barrier
// and a full catch-up, after which nothing may be kept; up to ~4 s of rounds (before the
// fix it showed in round 3 of one run, 13 of another).
func TestAttack44RememberedAfterIndexed(t *testing.T) {
	t.Parallel()
	tl, b := a44WrittenLog(t, 64<<10, 5, 2*time.Millisecond)
	a := newA44Acked()
	ctx := context.Background()
	end := time.Now().Add(4 * time.Second)
	stale, round := 0, 0
	for ; time.Now().Before(end) && stale == 0; round++ {
		var stop atomic.Bool
		var bg sync.WaitGroup
		for range 2 {
			a44Loop(&bg, &stop, 0, func() { tl.log.catchUp(ctx) })
		}
		var wg sync.WaitGroup
		for w := range 3 {
			wg.Go(func() {
				// writer w's records of this round: numbered on from the last round's
				var buf []byte
				for i := round * 60; i < round*60+60; i++ {
					buf, _ = a44Submit(ctx, t, b, a, w, i, i%2, buf)
				}
			})
		}
		wg.Wait()
		if _, _, err := b.Barrier(ctx); err != nil {
			t.Fatal(err)
		}
		stop.Store(true)
		bg.Wait()
		if err := tl.log.catchUp(ctx); err != nil {
			t.Fatal(err)
		}
		stale, _ = a44BundleRecsLeft(tl.log)
	}
	n, owned := a44BundleRecsLeft(tl.log)
	made := b.j.owns.made
	b.Close()
	tl.close(t)
	a44CheckLog(t, tl, a, false)
	a44CheckSearch(t, tl.st, a)
	if n != 0 {
		t.Errorf("round %d: with every batch folded and indexed, %d batches' records are still kept for the index (%d holding a journal buffer that never goes back to its pool); own buffers made: %d", round, n, owned, made)
	}
	t.Logf("rounds: %d, own buffers made: %d", round, made)
}

// TestAttack44IndexAwayPinsBuffers: with the index away (a database restarting, say) and
// light traffic — one small record a segment, each closed when due — every segment's
// journal buffer (mappedSize, 4 MiB) is held for the index until the 64 batches' bound,
// where before only the records' own bytes were. Measures what 70 one-record segments
// hold: the own buffers made and the live heap.
func TestAttack44IndexAwayPinsBuffers(t *testing.T) {
	var idx *a44Index
	tl := a44OpenWithIndex(t, func(s store.Store) Index { idx = &a44Index{Store: s}; return idx })
	idx.fail.Store(true)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { removeShadows(jdir) })
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{FoldEvery: time.Hour,
		Journal: jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond})
	ctx := context.Background()
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	a := newA44Acked()
	for i := range 70 {
		rec, raw := a44Raw(t, 0, i, 0)
		rec.Raw = raw
		_, err := b.SubmitEncoded(ctx, rec)()
		a.add(0, raw, err)
		if _, _, err := b.Barrier(ctx); err != nil { // the segment closed (as when due) and folded
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	kept, owned := a44BundleRecsLeft(tl.log)
	made := b.j.owns.made
	grown := int64(ms1.HeapAlloc) - int64(ms0.HeapAlloc)
	t.Logf("70 one-record segments, index away: %d batches kept (%d holding journal buffers), %d own buffers made, live heap grew %d MiB (records: %d bytes in all)",
		kept, owned, made, grown>>20, 70*len(a.byW[0][0]))
	idx.fail.Store(false)
	if err := tl.log.catchUp(ctx); err != nil {
		t.Fatal(err)
	}
	a44CheckSearch(t, tl.st, a)
	b.Close()
	tl.close(t)
	a44CheckLog(t, tl, a, false)
	if grown > 32<<20 {
		t.Errorf("70 records of ~%d bytes, one a segment, with the index away hold %d MiB of live heap (%d journal buffers of %d MiB pinned for the index)", len(a.byW[0][0]), grown>>20, owned, b.j.room()>>20)
	}
}

// TestAttack44CutUnderLoad: while 6 writers write records of mixed sizes, the open
// segment's shadow is truncated (its stores fault), and the open segment on disk is
// removed or truncated, again and again; segments are closed, folded from memory and
// their buffers recycled. Exactly the acknowledged records must be in the log, in order,
// and in search.
func TestAttack44CutUnderLoad(t *testing.T) {
	t.Parallel()
	tl, b := a44WrittenLog(t, 256<<10, 41, 20*time.Millisecond)
	a := newA44Acked()
	var stop atomic.Bool
	var cuts atomic.Int64
	var bg sync.WaitGroup
	a44Loop(&bg, &stop, time.Millisecond, func() { tl.log.catchUp(context.Background()) })
	bg.Go(func() {
		for k := 0; !stop.Load(); k++ {
			// Under wmu, so the file cut is the open segment (or its shadow): no close can
			// come between choosing it and cutting it. (Cutting a segment already closed and
			// waiting for its fold is the residual DESIGN.md states: it is linked as it
			// stands, and verify names the bundle altered.)
			b.j.wmu.Lock()
			var p string
			switch {
			case k%3 == 0 && b.j.shadow != nil:
				p = b.j.shadow.Name()
			case b.j.f != nil:
				p = b.j.f.Name()
			}
			if p != "" {
				switch k % 3 {
				case 0, 2:
					if os.Truncate(p, 0) == nil {
						cuts.Add(1)
					}
				case 1:
					if os.Remove(p) == nil {
						cuts.Add(1)
					}
				}
			}
			b.j.wmu.Unlock()
			// wait for the journal to take records again (the probe starts a new segment)
			end := time.Now().Add(2 * time.Second)
			for b.Healthy() != nil && time.Now().Before(end) && !stop.Load() {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(15 * time.Millisecond)
		}
	})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			a44WriterP(t, b, a, w, 250, []int{0, 3, 1, 2, 0}, nil, true)
		})
	}
	wg.Wait()
	stop.Store(true)
	bg.Wait()
	a44Deadline(t, 10*time.Second, "the journal to take records again", func() bool { return b.Healthy() == nil })
	b.Close()
	tl.close(t)
	t.Logf("cuts: %d", cuts.Load())
	a44CheckLog(t, tl, a, false)
	a44CheckSearch(t, tl.st, a)
}

// TestAttack44BarrierCloseRace: writers race Barrier and Close; every acknowledged record
// must be in the log once (a record acknowledged after Close began must still be there),
// nothing refused may be, and no call may hang.
func TestAttack44BarrierCloseRace(t *testing.T) {
	t.Parallel()
	for round := range 2 {
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			t.Cleanup(func() { removeShadows(jdir) })
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 17, FoldEvery: 5 * time.Millisecond,
				Journal: jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond})
			a := newA44Acked()
			var stop atomic.Bool
			var wg sync.WaitGroup
			for w := range 6 {
				wg.Go(func() {
					a44Writer(t, b, a, w, 100000, []int{0, 1, 3}, &stop)
				})
			}
			wg.Go(func() {
				for !stop.Load() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					b.Barrier(ctx)
					cancel()
				}
			})
			a44Deadline(t, 10*time.Second, "records", func() bool {
				a.mu.Lock()
				defer a.mu.Unlock()
				return len(a.acked) > 200+round*150
			})
			closed := make(chan struct{})
			go func() { b.Close(); close(closed) }()
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("Close hung with writers and barriers running")
			}
			stop.Store(true)
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("a writer or Barrier hung after Close")
			}
			tl.close(t)
			a44CheckLog(t, tl, a, false)
			a44CheckSearch(t, tl.st, a)
		})
	}
}

// TestAttack44ManyBatchers: three batchers (three journals on one log, as replicas on one
// data directory would have) with writers each, their own buffers in separate pools; the
// log must hold each batcher's acknowledged records once, none mixed with another's.
func TestAttack44ManyBatchers(t *testing.T) {
	t.Parallel()
	tl := openTestLog(t)
	a := newA44Acked()
	var bs []*Batcher
	for k := range 3 {
		jdir := filepath.Join(tl.dir, "journal"+strconv.Itoa(k))
		t.Cleanup(func() { removeShadows(jdir) })
		bs = append(bs, NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 13 + k, FoldEvery: 7 * time.Millisecond,
			Journal: jdir, JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond, segmentBytes: 128 << 10}))
	}
	var stop atomic.Bool
	var bg sync.WaitGroup
	a44Loop(&bg, &stop, 0, func() { tl.log.catchUp(context.Background()) })
	var wg sync.WaitGroup
	for w := range 9 {
		wg.Go(func() {
			a44Writer(t, bs[w%3], a, w, 70, []int{3, 0, 2, 1}, nil)
		})
	}
	wg.Wait()
	stop.Store(true)
	bg.Wait()
	for _, b := range bs {
		b.Close()
	}
	tl.close(t)
	a44CheckLog(t, tl, a, false)
	a44CheckSearch(t, tl.st, a)
	// each batch holds records of one batcher's writers only
	ctx := context.Background()
	_ = ctx
}

// a44SortedKeys is for stable messages.
func a44SortedKeys(m map[string]int) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

var _ = bytes.Equal
var _ = a44SortedKeys
