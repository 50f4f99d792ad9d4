package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	steps     atomic.Int64 // steps taken (tests read it)
	alerted   string
	failures  prometheus.Counter
	every     time.Duration // one step
	stall     time.Duration // scrubStallSteps steps
	since     time.Time     // when the walk last advanced (or first failed to)
	stalled   bool          // the stall ALERT was raised
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
	if sc.next >= size {
		sc.next = 0
	}
	from := sc.next
	to := min(size, (from/layout.EntryBundleWidth+1)*layout.EntryBundleWidth)
	err := deleted(l.proveRange(ctx, from, to, size, root, nil))
	if err == nil || errors.Is(err, ErrSecurity) { // past a bad bundle too: the walk goes on
		sc.next = to
		sc.steps.Add(1)
	}
	if err == nil && sc.steps.Load()%scrubBundleEvery == 0 {
		err = deleted(l.scrubBatch(ctx, size, root))
	}
	now := time.Now()
	if err == nil || errors.Is(err, ErrSecurity) {
		sc.since, sc.stalled = now, false
	} else if sc.since.IsZero() {
		sc.since = now
	} else if !sc.stalled && now.Sub(sc.since) >= sc.stall {
		// A read that keeps failing (a table locked or renamed, a tile row made unreadable)
		// would otherwise stop the walk without a word.
		sc.stalled = true
		l.log.Error("ALERT audit log: the walk over the shared log's history has not advanced", "for", now.Sub(sc.since).Round(time.Second), "at_entry", sc.next, "err", err)
	}
	switch {
	case err == nil:
	case errors.Is(err, ErrSecurity):
		sc.failures.Inc()
		if why := alertCause(err); why != sc.alerted {
			sc.alerted = why
			l.log.Error("ALERT audit log: the shared log's history was altered after it was signed (someone with write access to the log's database); /log/ and audit search serve the altered bytes, verifiers will reject the log",
				"err", err, "trusted_size", size)
		}
	default:
		l.log.Debug("audit scrub: will retry", "err", err)
	}
}

// proveRange checks entries [from, to) against the tree of size and root: each one's bytes
// must be included at its index. fn, if not nil, sees each checked entry.
func (l *Log) proveRange(ctx context.Context, from, to, size uint64, root []byte, fn func(store.AuditEvent) (bool, error)) error {
	pb, err := client.NewProofBuilder(ctx, size, l.reader.ReadTile)
	if err != nil {
		return err
	}
	errStop := errors.New("stop")
	var fnErr error
	err = ReadEntries(ctx, l.reader.ReadEntryBundle, from, to, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			p, err := pb.InclusionProof(ctx, e.Index)
			if err != nil {
				return err
			}
			if err := VerifyInclusion(e.Raw, e.Index, size, p, root); err != nil {
				return securityf("entry %d no longer matches the signed tree of size %d: %v", e.Index, size, err)
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
	if err == errStop {
		return fnErr
	}
	return err
}

// scrubBatch checks the bundle of the next batch entry at or after sc.nextBatch (wrapping
// to the start), its entry proved first.
func (l *Log) scrubBatch(ctx context.Context, size uint64, root []byte) error {
	sc := l.scrub
	if sc.nextBatch >= size {
		sc.nextBatch = 0
	}
	from := sc.nextBatch
	to := min(size, (from/layout.EntryBundleWidth+1)*layout.EntryBundleWidth)
	return l.proveRange(ctx, from, to, size, root, func(e store.AuditEvent) (bool, error) {
		var ev *Event
		if e.Kind == string(KindBatch) {
			ev, _ = ParseEvent(e.Raw)
		}
		if ev == nil || ev.Kind != KindBatch {
			sc.nextBatch = e.Index + 1
			return false, nil
		}
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
}
