package audit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"

	"github.com/strongroom/strongroom/internal/store"
)

// The scrubber: history is checked again, slowly, by every replica of a shared log.
//
// The signer checks each entry once, before the first checkpoint that covers it. Someone
// with write access to the database can change an entry (or a request batch's bundle)
// after that: the tree's hashes still commit to the original, so nothing false is ever
// signed, but /log/ and `audit search` would serve the altered bytes until a verifier
// reading the whole log noticed. So each replica walks the log's history in a loop, one
// entry bundle (256 entries) per Config.ScrubEvery (DefaultScrubEvery): every entry gets
// an inclusion proof, built from the database's tiles, against the largest tree this
// replica itself trusts (the signer's floor: a checkpoint it saw signed by the log key,
// kept on its own disk, or a tree it checked before signing) — never against the
// database's own checkpoint or tree state. Every tenth step also re-reads the next request
// batch's bundle and checks it against its (proved) batch entry. A mismatch is an ALERT
// naming the entry, once per cause, and counts in strongroom_audit_scrub_failures_total; a
// read that fails (the database away) is retried at the same place. At 1 s a step a log of
// a million entries is walked in about an hour; batches' bundles at one per 10 s.

// DefaultScrubEvery is how often a replica of a shared log checks the next 256 entries of
// history (Config.ScrubEvery).
const DefaultScrubEvery = time.Second

// scrubBundleEvery is how many steps apart a batch's bundle is checked too.
const scrubBundleEvery = 10

// scrubStallSteps is how many steps the history walk may fail to advance (reads failing)
// before it alerts: 5 minutes at the default pace.
const scrubStallSteps = 300

// deleted turns "not found" from the log's storage — an entry bundle, a tile or a batch's
// bundle of a tree this replica trusts — into the security error it is: what a signed
// checkpoint covers was there.
func deleted(err error) error {
	if err != nil && !errors.Is(err, ErrSecurity) && errors.Is(err, os.ErrNotExist) {
		return securityf("deleted from the log's storage: %v", err)
	}
	return err
}

type scrubber struct {
	next      uint64       // the next entry to check
	nextBatch uint64       // where the search for the next batch entry to check resumes
	end       uint64       // the walk's end: the trusted size when it began (growth does not push it)
	batchEnd  uint64       // the batch walk's end, likewise
	steps     atomic.Int64 // steps taken (tests read it)
	alerted   string       // the last alteration ALERT's cause (cleared by a clean walk)
	failed    bool         // this walk found an alteration
	failures  prometheus.Counter
	every     time.Duration // one step
	stall     time.Duration // scrubStallSteps steps
	since     time.Time     // when the entry walk last advanced (or first failed to)
	bsince    time.Time     // the same for the batch walk
	stalled   bool          // the stall ALERT was raised
	began     time.Time     // when this walk began
	slow      bool          // the slow-walk ALERT was raised for this walk
	tries     int           // steps tried in this window of scrubStallSteps
	misses    int           // of which failed to read
}

func newScrubber(every time.Duration) *scrubber {
	return &scrubber{every: every, stall: scrubStallSteps * every, failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "strongroom_audit_scrub_failures_total",
		Help: "Times this replica found the shared log's history altered after it was signed (an entry or a batch's bundle that no longer matches the tree it trusts)."})}
}

// trusted is the tree this replica trusts (size 0: none yet).
func (s *leaderSigner) trusted() (uint64, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.checked, s.root
}

// scrubStep checks the next entry bundle of history (and, every scrubBundleEvery steps,
// the next batch's bundle).
func (l *Log) scrubStep(ctx context.Context) {
	sc := l.scrub
	size, root := l.signer.trusted()
	if size == 0 {
		return
	}
	now := time.Now()
	if sc.next >= sc.end {
		// A walk ends where the trusted tree ended when it began: a log growing faster
		// than the walk cannot keep it at the head (an outside test did).
		if !sc.failed {
			sc.alerted = "" // a clean walk: the next alteration is news, even of the same entry
		}
		sc.next, sc.end, sc.failed, sc.began, sc.slow = 0, size, false, now, false
	}
	from := sc.next
	to := min(sc.end, (from/layout.EntryBundleWidth+1)*layout.EntryBundleWidth)
	var proven []store.AuditEvent // entries proved against the trusted tree: the index must hold them
	err := deleted(l.proveRange(ctx, from, to, size, root, func(e store.AuditEvent) (bool, error) {
		proven = append(proven, e)
		return false, nil
	}))
	l.indexHolds(ctx, proven)
	if err == nil || errors.Is(err, ErrSecurity) { // past a bad bundle too: the walk goes on
		sc.next = to
		sc.steps.Add(1)
		sc.since = now
	}
	var berr error
	if sc.steps.Load()%scrubBundleEvery == 0 {
		berr = deleted(l.scrubBatch(ctx, size, root))
		if berr == nil || errors.Is(berr, ErrSecurity) {
			sc.bsince = now
		}
	}
	for _, e := range []error{err, berr} {
		if e == nil || !errors.Is(e, ErrSecurity) {
			continue
		}
		sc.failures.Inc()
		sc.failed = true
		if why := alertCause(e); why != sc.alerted {
			sc.alerted = why
			l.log.Error("ALERT audit log: the shared log's history was altered after it was signed (someone with write access to the log's database); /log/ and audit search serve the altered bytes, verifiers will reject the log",
				"err", e, "trusted_size", size)
		}
	}
	// A walk whose reads keep failing, or that a throttled storage lets advance only now
	// and then, would otherwise stop or crawl without a word.
	for _, w := range []struct {
		since time.Time
		err   error
	}{{sc.since, err}, {sc.bsince, berr}} {
		if w.err == nil || errors.Is(w.err, ErrSecurity) || w.since.IsZero() || now.Sub(w.since) < sc.stall || sc.stalled {
			continue
		}
		sc.stalled = true
		l.log.Error("ALERT audit log: the walk over the shared log's history has not advanced", "for", now.Sub(w.since).Round(time.Second), "at_entry", sc.next, "err", w.err)
	}
	if err == nil && berr == nil {
		sc.stalled = false
	}
	if sc.since.IsZero() {
		sc.since = now
	}
	if sc.bsince.IsZero() {
		sc.bsince = now
	}
	// A walk takes end/256 steps; one taking over four times that (plus the stall allowance)
	// is being slowed down.
	if budget := time.Duration(4*(sc.end/layout.EntryBundleWidth+1)+scrubStallSteps) * sc.every; !sc.slow && now.Sub(sc.began) > budget {
		sc.slow = true
		l.log.Error("ALERT audit log: the walk over the shared log's history is far behind its pace (reads failing or slowed)", "walk_began", sc.began.Format(time.RFC3339), "at_entry", sc.next, "walk_end", sc.end)
	}
	// Storage that fails most reads but lets one through now and then (throttling the walk
	// without ever stalling it for scrubStallSteps in a row).
	sc.tries++
	if (err != nil && !errors.Is(err, ErrSecurity)) || (berr != nil && !errors.Is(berr, ErrSecurity)) {
		sc.misses++
		l.log.Debug("audit scrub: will retry", "err", cmp.Or(err, berr))
	}
	if sc.tries == scrubStallSteps {
		if 2*sc.misses > sc.tries {
			l.log.Error("ALERT audit log: most reads of the walk over the shared log's history fail", "failed", sc.misses, "of", sc.tries, "at_entry", sc.next, "err", cmp.Or(err, berr))
		}
		sc.tries, sc.misses = 0, 0
	}
}

// indexHolds compares the search index with entries the walk proved against the trusted
// tree, and indexes them again from the first the index holds other bytes for: an entry
// altered after signing and put back (an outside test) was indexed altered, and the catch-up
// compares each signed entry once only (validateIndex).
func (l *Log) indexHolds(ctx context.Context, proven []store.AuditEvent) {
	if l.idx == nil || len(proven) == 0 {
		return
	}
	idxs := make([]uint64, len(proven))
	for i, e := range proven {
		idxs[i] = e.Index
	}
	got, err := l.idx.AuditDigestsAt(ctx, idxs)
	if err != nil {
		return
	}
	for _, e := range proven {
		if d, ok := got[e.Index]; ok && d != store.EntryDigest(e.Raw) {
			l.indexMu.Lock()
			defer l.indexMu.Unlock()
			l.log.Warn("audit index: the index held other bytes than the signed log's for an entry (altered after signing, then indexed); it is indexed again from there", "entry", e.Index)
			if err := l.idx.ForgetAudit(ctx, e.Index); err == nil {
				l.validated = min(l.validated, e.Index)
			}
			return
		}
	}
}

// proveRange checks entries [from, to) against the tree of size and root: each one's bytes
// must be included at its index. Every entry of the range is checked; the error names all
// that fail. Tiles are checked as they are read (checkedTile): tessera's proof builder
// reports its fetcher's errors as text, so a missing or malformed tile would otherwise read
// as a transient failure. fn, if not nil, sees each entry that proved.
func (l *Log) proveRange(ctx context.Context, from, to, size uint64, root []byte, fn func(store.AuditEvent) (bool, error)) error {
	var tileErr error
	readTile := func(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
		t, err := checkedTile(ctx, l.reader.ReadTile, level, index, p)
		if err != nil && tileErr == nil && errors.Is(err, ErrSecurity) {
			tileErr = err
		}
		return t, err
	}
	pb, err := client.NewProofBuilder(ctx, size, readTile)
	if err != nil {
		return cmp.Or(tileErr, err)
	}
	errStop := errors.New("stop")
	var fnErr error
	var bad []uint64
	err = ReadEntries(ctx, l.reader.ReadEntryBundle, from, to, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			p, err := pb.InclusionProof(ctx, e.Index)
			if err != nil {
				return cmp.Or(tileErr, err)
			}
			if VerifyInclusion(e.Raw, e.Index, size, p, root) != nil {
				bad = append(bad, e.Index)
				continue
			}
			if fn != nil {
				stop, err := fn(e)
				if err != nil || stop {
					fnErr = err
					return errStop
				}
			}
		}
		return nil
	})
	switch {
	case len(bad) > 0:
		why := make([]string, len(bad))
		for i, b := range bad {
			why[i] = fmt.Sprintf("entry %d no longer matches the signed tree of size %d", b, size)
		}
		return securityf("%s", strings.Join(why, "; "))
	case err == errStop:
		return fnErr
	}
	return err
}

// checkedTile reads a tile and checks its form: present, parsable, and exactly as many
// hashes as its place in the tree says (p, or 256 for a full tile). Anything else is an
// alteration of what a trusted checkpoint covers.
func checkedTile(ctx context.Context, read func(context.Context, uint64, uint64, uint8) ([]byte, error), level, index uint64, p uint8) ([]byte, error) {
	raw, err := read(ctx, level, index, p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, securityf("tile %d/%d deleted from the log's storage", level, index)
	}
	if err != nil {
		return nil, err
	}
	var t api.HashTile
	if err := t.UnmarshalText(raw); err != nil {
		return nil, securityf("tile %d/%d malformed: %v", level, index, err)
	}
	want := layout.TileWidth
	if p != 0 {
		want = int(p)
	}
	if len(t.Nodes) != want {
		return nil, securityf("tile %d/%d holds %d hashes, want %d", level, index, len(t.Nodes), want)
	}
	return raw, nil
}

// scrubBatch checks the bundle of the next batch entry at or after sc.nextBatch (wrapping
// to the start), its entry proved first.
func (l *Log) scrubBatch(ctx context.Context, size uint64, root []byte) error {
	sc := l.scrub
	if sc.nextBatch >= sc.batchEnd {
		sc.nextBatch, sc.batchEnd = 0, size
	}
	from := sc.nextBatch
	to := min(sc.batchEnd, (from/layout.EntryBundleWidth+1)*layout.EntryBundleWidth)
	checked := false // a batch's bundle was read (its error, if any, is that bundle's)
	err := l.proveRange(ctx, from, to, size, root, func(e store.AuditEvent) (bool, error) {
		var ev *Event
		if e.Kind == string(KindBatch) {
			ev, _ = ParseEvent(e.Raw)
		}
		if ev == nil || ev.Kind != KindBatch {
			sc.nextBatch = e.Index + 1
			return false, nil
		}
		checked = true
		b, err := l.bundles.Bundle(ctx, ev.Subject["bundle"])
		switch {
		case errors.Is(err, os.ErrNotExist):
			err = securityf("entry %d: batch bundle %s deleted", e.Index, ev.Subject["bundle"])
		case err != nil:
			return true, err // the database away: the same batch next time
		default:
			if _, err = CheckBatch(ev, b); err != nil {
				err = fmt.Errorf("entry %d: %w", e.Index, err)
			}
		}
		sc.nextBatch = e.Index + 1
		return true, err
	})
	if errors.Is(err, ErrSecurity) && !checked {
		sc.nextBatch = to // entries that no longer prove (the entry walk names them): past them
	}
	return err
}
