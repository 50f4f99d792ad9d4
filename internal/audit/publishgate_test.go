package audit

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeRow is the Checkpoint row as the test sets it.
type fakeRow struct {
	note []byte
	err  error
}

func (r *fakeRow) read(context.Context) ([]byte, error) { return r.note, r.err }

func TestPublishBackoff(t *testing.T) {
	for _, c := range []struct {
		took     time.Duration
		failures int
		want     time.Duration
	}{
		{3 * time.Second, 1, 9 * time.Second}, // a hanging witness, 3 s timeout
		{3 * time.Second, 2, 10 * time.Second},
		{3 * time.Second, 9, 10 * time.Second},
		{5 * time.Second, 1, 15 * time.Second}, // the limit is never below the first wait
		{5 * time.Second, 4, 15 * time.Second},
		{100 * time.Millisecond, 1, time.Second}, // a refusal: the floor
		{100 * time.Millisecond, 2, 2 * time.Second},
		{100 * time.Millisecond, 4, 8 * time.Second},
		{100 * time.Millisecond, 5, 10 * time.Second},
		{time.Hour, 1, 30 * time.Second}, // a signature long before (no publication since): bounded
		{time.Hour, 7, 30 * time.Second},
	} {
		if got := publishBackoff(c.took, c.failures); got != c.want {
			t.Errorf("publishBackoff(%v, %d) = %v, want %v", c.took, c.failures, got, c.want)
		}
	}
}

// TestPublishGate: after a signed checkpoint fails to reach the row, the signer refuses
// until the backoff has passed (tessera's immediate retries end at the signer), then
// signs once more; a publication that reaches the row ends the run of failures.
func TestPublishGate(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	r := &fakeRow{note: []byte("A\n\n\u2014 k sig\n")}
	failed := prometheus.NewCounter(prometheus.CounterOpts{Name: "f"})
	s := &leaderSigner{log: newTextLogger(io.Discard), now: func() time.Time { return now }, pubFailed: failed, row: r.read}
	ctx := context.Background()
	signed := func(msg string) { s.pub.msg, s.pub.at, s.pub.retryAt = []byte(msg), now, time.Time{} }

	if err := s.publishGate(ctx); err != nil {
		t.Fatalf("nothing signed yet: %v", err)
	}
	signed("A\n")
	now = now.Add(time.Second)
	if err := s.publishGate(ctx); err != nil || s.pub.failures != 0 || s.pub.msg != nil {
		t.Fatalf("A was published: err %v, failures %d", err, s.pub.failures)
	}

	signed("B\n") // its write fails after 3 s: the row keeps A
	now = now.Add(3 * time.Second)
	for _, step := range []time.Duration{0, 20 * time.Millisecond, 8900 * time.Millisecond} {
		now = now.Add(step)
		if err := s.publishGate(ctx); !errors.Is(err, errPublishBackoff) {
			t.Fatalf("%v after B's failure: %v, want the backoff", step, err)
		}
	}
	if s.pub.failures != 1 {
		t.Fatalf("failures %d after B, want 1 (counted once, not at every refused retry)", s.pub.failures)
	}
	now = now.Add(100 * time.Millisecond) // 9 s after the failure was seen
	if err := s.publishGate(ctx); err != nil {
		t.Fatalf("after the backoff: %v", err)
	}
	signed("C\n") // fails too: the next wait is longer
	now = now.Add(3 * time.Second)
	if err := s.publishGate(ctx); !errors.Is(err, errPublishBackoff) || s.pub.failures != 2 {
		t.Fatalf("after C's failure: %v, failures %d", err, s.pub.failures)
	}
	now = now.Add(9500 * time.Millisecond)
	if err := s.publishGate(ctx); !errors.Is(err, errPublishBackoff) {
		t.Fatalf("9.5 s into the second (10 s) wait: %v", err)
	}
	now = now.Add(time.Second)
	if err := s.publishGate(ctx); err != nil {
		t.Fatalf("after the second wait: %v", err)
	}
	signed("D\n")
	r.note = []byte("D\n\n\u2014 k sig\n") // published, however long it took: no wait (the witnesses are asked outside, cosign.go)
	now = now.Add(3 * time.Second)
	if err := s.publishGate(ctx); err != nil || s.pub.failures != 0 {
		t.Fatalf("D published: %v, failures %d", err, s.pub.failures)
	}
	if n := testutil.ToFloat64(failed); n != 2 {
		t.Fatalf("strongroom_audit_publications_failed_total %v, want 2 (B and C)", n)
	}

	// A row that cannot be read decides nothing; a row holding a longer text that merely
	// begins with the signed one is not it.
	signed("E\n")
	r.note, r.err = nil, errors.New("connection refused")
	if err := s.publishGate(ctx); err != nil || s.pub.failures != 0 {
		t.Fatalf("unreadable row: %v, failures %d", err, s.pub.failures)
	}
	r.note, r.err = []byte("E\nmore\n\n\u2014 k sig\n"), nil
	if err := s.publishGate(ctx); !errors.Is(err, errPublishBackoff) || s.pub.failures != 1 {
		t.Fatalf("another text in the row: %v, failures %d", err, s.pub.failures)
	}
}
