package audit

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera"
)

func TestMayHideCommit(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{mysql.ErrInvalidConn, true},                            // the connection died: the COMMIT may have run
		{errors.New("read tcp: i/o timeout"), true},             // no answer in time
		{fmt.Errorf("wrapped: %w", mysql.ErrInvalidConn), true}, // as a driver may wrap it
		{tessera.ErrPushback, false},                            // refused before anything was sent
		{tessera.ErrPushbackIntegration, false},
		{&mysql.MySQLError{Number: 1213, Message: "Deadlock found"}, false}, // the server answered: rolled back
		{fmt.Errorf("commit: %w", &mysql.MySQLError{Number: 1205}), false},
	} {
		if got := mayHideCommit(c.err); got != c.want {
			t.Errorf("mayHideCommit(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestLostCommitDeliveredLate — the replica's connection is cut after it sent the COMMIT
// of a batch, and the COMMIT reaches the server only later (a packet held up in the
// network): when the replica gets its error, nothing is committed yet. Reading the tree
// then would say "not in the log", and the commit would land after. The replica must wait
// until the failed transaction has ended (it holds the tree's row until then) and find the
// entries: each append acknowledged, at the index the log holds it.
func TestLostCommitDeliveredLate(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	a, b, p, v := a36SignerAndProxied(t)
	if _, err := a.Record(ctx, a36Event(1)); err != nil {
		t.Fatal(err)
	}
	p.late.Store(1)
	outs := a37Submit(a, "a", 10, 11, 12, 13)
	if !a36WaitFor(2*lateFallback, func() bool { return p.lated.Load() == 1 }) {
		t.Fatalf("late commits delivered: %d, want 1", p.lated.Load())
	}
	if p.lateOnAsk.Load() != 1 {
		t.Errorf("the late COMMIT went on after %v without the replica asking for the tree's lock (the failed append was answered without settling the tree)", lateFallback)
	}
	size, err := b.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a2WaitVerify(t, b, v, size, nil)
	ents := a2Entries(t, b.Reader())
	for i, o := range outs {
		err := o.err
		want := a36Sealed(t, v.Name(), a36Event(10+i))
		in := -1
		for k, e := range ents {
			if string(e) == string(want) {
				in = int(k)
			}
		}
		switch {
		case err != nil && in >= 0:
			t.Errorf("append %d reported failed (%v) is in the log at %d", 10+i, err, in)
		case err == nil && in != int(o.idx):
			t.Errorf("append %d acknowledged at %d is in the log at %d", 10+i, o.idx, in)
		case err != nil:
			t.Errorf("append %d failed (%v) and is not in the log: the late COMMIT did not commit? (the test's premise)", 10+i, err)
		}
	}
	// The four may have gone in more than one batch (BatchMaxAge is 2 ms): the batch after
	// the late one waits for the tree's row and commits as usual. At least the late batch's
	// appends were found.
	if got := testutil.ToFloat64(a.lost.outcomes.WithLabelValues("found")); got < 1 || got > 4 {
		t.Errorf("found after a lost commit: %v, want 1 to 4", got)
	}
}

// TestLostCommitUnreachableThenRefused — the COMMIT's answer is lost and the engine is
// then unreachable from the replica (every connection cut, new ones refused): the failed
// appends cannot be looked for, so they are reported failed and their callers refuse. The
// log holds them all the same. When the engine answers again, the replica must find them
// and record, for each, an audit.refused_entry naming its index and leaf hash — so that the
// audit trail does not say operations happened that were refused.
func TestLostCommitUnreachableThenRefused(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	a, b, p, v := a36SignerAndProxied(t)
	if _, err := a.Record(ctx, a36Event(1)); err != nil {
		t.Fatal(err)
	}
	p.refuseOnSwallow.Store(true)
	p.swallow.Store(1)
	outs := a37Submit(a, "a", 20, 21, 22, 23)
	if p.swallowed.Load() != 1 {
		t.Fatalf("commit answers swallowed: %d, want 1", p.swallowed.Load())
	}
	for _, o := range outs {
		if o.err == nil {
			t.Fatalf("append %d acknowledged while the engine was unreachable", o.id)
		}
	}
	if got := testutil.ToFloat64(a.lost.outcomes.WithLabelValues("unresolved")); got != 4 {
		t.Errorf("unresolved: %v, want 4", got)
	}
	p.refusing.Store(false) // the engine answers again

	// Which of the four the log holds: those of the batch whose COMMIT answer was lost.
	// The four may have gone in more than one batch (tessera closes a batch after
	// BatchMaxAge, 2 ms, and the suite's load spreads the submissions out); the batches
	// after the swallowed one met a refusing engine and were never committed.
	var in map[string]uint64       // leaf hash → where the log holds it
	refused := map[string]string{} // leaf hash → index named
	if !a36WaitFor(watchFor, func() bool {
		ents := a2Entries(t, b.Reader())
		in = map[string]uint64{}
		for i := range 4 {
			want := a36Sealed(t, v.Name(), a36Event(20+i))
			for k, e := range ents {
				if string(e) == string(want) {
					in[hex.EncodeToString(rfc6962.DefaultHasher.HashLeaf(want))] = k
				}
			}
		}
		clear(refused)
		for _, e := range ents {
			if ev, err := ParseEvent(e); err == nil && ev.Kind == KindRefusedEntry {
				refused[ev.Subject["leaf_hash"]] = ev.Subject["entry"]
			}
		}
		if len(in) == 0 {
			return false // the swallowed batch is not under a signed checkpoint yet
		}
		for leaf := range in {
			if _, ok := refused[leaf]; !ok {
				return false
			}
		}
		return testutil.ToFloat64(a.lost.outcomes.WithLabelValues("refused_later")) >= float64(len(in))
	}) {
		t.Fatalf("of the four appends reported failed, %d are in the log; refused-entry records: %d in the log, %v counted", len(in), len(refused), testutil.ToFloat64(a.lost.outcomes.WithLabelValues("refused_later")))
	}
	for leaf, at := range in {
		if got := refused[leaf]; got != strconv.FormatUint(at, 10) {
			t.Errorf("leaf %s, in the log at %d and reported failed: refused-entry record names entry %q", leaf, at, got)
		}
	}
	if got := testutil.ToFloat64(a.lost.outcomes.WithLabelValues("refused_later")); got != float64(len(in)) {
		t.Errorf("refused later: %v, want %d (the appends the log holds)", got, len(in))
	}
	size, err := b.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a2WaitVerify(t, b, v, size, nil)
}
