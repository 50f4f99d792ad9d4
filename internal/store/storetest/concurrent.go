package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// Concurrent is the concurrent-writers part of the suite: several goroutines on two handles
// of one database (two processes: `serve` and the CLI) write at once — approvals decided
// in read-then-write transactions, leases granted and revoked, nonces issued and taken,
// egress charged — and no write may fail for contention (SQLite: "database is locked").
// open returns two handles on one new, empty database.
func Concurrent(t *testing.T, open func(t *testing.T) (store.Store, store.Store)) {
	a, b := open(t)
	defer a.Close()
	defer b.Close()
	ctx := context.Background()
	const writers, rounds = 8, 25
	for w := range writers {
		for i := range rounds {
			r := store.ApprovalRequest{ID: fmt.Sprintf("ap-%d-%d", w, i), Kind: "lease", Requester: "alice", Runtime: "rt-1", Model: "m", Version: "1",
				Needed: 2, State: store.StatePending, CreatedAt: ts, ExpiresAt: ts.Add(time.Hour)}
			if err := a.CreateApproval(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers*rounds*8)
	for w := range writers {
		s := a
		if w%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				id := fmt.Sprintf("ap-%d-%d", w, i)
				for _, who := range []string{"bob", "carol"} {
					if _, err := s.Decide(ctx, id, store.Approval{Approver: who, Decision: "approve", At: ts}); err != nil {
						errs <- fmt.Errorf("Decide %s by %s: %w", id, who, err)
					}
				}
				if err := s.ConsumeApproval(ctx, id); err != nil {
					errs <- fmt.Errorf("ConsumeApproval %s: %w", id, err)
				}
				l := store.Lease{ID: fmt.Sprintf("ls-%d-%d", w, i), Runtime: "rt-1", Model: "m", Version: "1", GrantedAt: ts, ExpiresAt: ts.Add(time.Hour)}
				if err := s.PutLease(ctx, l); err != nil {
					errs <- fmt.Errorf("PutLease: %w", err)
				}
				if _, err := s.RevokeLeases(ctx, store.LeaseQuery{Lease: l.ID}, ts, "test"); err != nil {
					errs <- fmt.Errorf("RevokeLeases: %w", err)
				}
				n := []byte(fmt.Sprintf("nonce-%d-%d", w, i))
				if err := s.IssueNonce(ctx, "rt-1", n, ts, ts.Add(time.Minute), 1000); err != nil {
					errs <- fmt.Errorf("IssueNonce: %w", err)
				} else if ok, err := s.TakeNonce(ctx, "rt-1", n, ts); err != nil || !ok {
					errs <- fmt.Errorf("TakeNonce: %v %v", ok, err)
				}
				if err := s.ChargeEgress(ctx, "2026-11-27", "rt-1", 1, 0, 0); err != nil {
					errs <- fmt.Errorf("ChargeEgress: %w", err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n < 5 {
			t.Error(err)
		}
		n++
	}
	if n > 0 {
		t.Fatalf("%d concurrent writes failed", n)
	}
	rs, err := b.ListApprovals(ctx, store.StateConsumed)
	if err != nil || len(rs) != writers*rounds {
		t.Fatalf("consumed approvals: %d (%v), want %d", len(rs), err, writers*rounds)
	}
}
