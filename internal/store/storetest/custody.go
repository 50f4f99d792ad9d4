package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/strongroom/strongroom/internal/store"
)

func testRuntimesAndTokens(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := store.Runtime{ID: "rt1", Env: "prod", Region: "eu-west", Jurisdiction: "DE", Host: "gpu-1", Owner: "alice",
		CertSerial: "abc", CertExpires: ts.Add(time.Hour), CreatedAt: ts}
	if err := s.PutRuntime(ctx, r); err != nil {
		t.Fatal(err)
	}
	r.RevokedAt = ts.Add(time.Minute)
	if err := s.PutRuntime(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetRuntime(ctx, "rt1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, got); diff != "" {
		t.Fatalf("runtime (-want +got):\n%s", diff)
	}
	if _, err := s.GetRuntime(ctx, "rt2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing runtime: %v", err)
	}
	if rs, _ := s.ListRuntimes(ctx); len(rs) != 1 {
		t.Fatalf("ListRuntimes = %v", rs)
	}

	tok := store.JoinToken{ID: "t1", Hash: []byte{9}, Env: "prod", Owner: "alice", ExpiresAt: ts.Add(time.Hour), CreatedAt: ts}
	if err := s.PutJoinToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// Many concurrent uses: exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 8 {
		wg.Go(func() {
			if _, err := s.UseJoinToken(ctx, "t1", ts.Add(time.Second), func(store.JoinToken) error { return nil }); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, store.ErrConflict) {
				t.Errorf("use: %v", err)
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("join token used %d times", wins)
	}
	if _, err := s.UseJoinToken(ctx, "nope", ts, func(store.JoinToken) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown token: %v", err)
	}
	// A refused check leaves the token unused.
	s.PutJoinToken(ctx, store.JoinToken{ID: "t2", Hash: []byte{1}, Env: "prod", Owner: "alice", ExpiresAt: ts.Add(time.Hour), CreatedAt: ts})
	refuse := errors.New("wrong secret")
	if _, err := s.UseJoinToken(ctx, "t2", ts, func(store.JoinToken) error { return refuse }); !errors.Is(err, refuse) {
		t.Fatalf("refused check: %v", err)
	}
	if _, err := s.UseJoinToken(ctx, "t2", ts, func(store.JoinToken) error { return nil }); err != nil {
		t.Fatalf("token unusable after a refused check: %v", err)
	}
}

func testLeases(t *testing.T, s store.Store) {
	ctx := context.Background()
	mk := func(id, rt, model string) store.Lease {
		return store.Lease{ID: id, Runtime: rt, Model: model, Version: "1", KeyID: "k", Attestation: "dev", Bytes: 10,
			GrantedAt: ts, ExpiresAt: ts.Add(10 * time.Minute)}
	}
	for _, l := range []store.Lease{mk("l1", "rt1", "m"), mk("l2", "rt2", "m"), mk("l3", "rt1", "other")} {
		if err := s.PutLease(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutLease(ctx, mk("l1", "rt1", "m")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate lease: %v", err)
	}
	if ls, _ := s.ListLeases(ctx, store.LeaseQuery{Runtime: "rt1"}); len(ls) != 2 {
		t.Fatalf("by runtime: %d", len(ls))
	}
	if ls, _ := s.ListLeases(ctx, store.LeaseQuery{LiveAt: ts.Add(11 * time.Minute)}); len(ls) != 0 {
		t.Fatalf("expired leases listed live: %d", len(ls))
	}
	if err := s.ExtendLease(ctx, "l1", ts.Add(20*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if ls, _ := s.ListLeases(ctx, store.LeaseQuery{LiveAt: ts.Add(11 * time.Minute)}); len(ls) != 1 || ls[0].ID != "l1" {
		t.Fatalf("extended lease not live: %v", ls)
	}
	rev, err := s.RevokeLeases(ctx, store.LeaseQuery{Model: "m"}, ts.Add(time.Minute), "test")
	if err != nil || len(rev) != 2 {
		t.Fatalf("revoke by model: %v %v", rev, err)
	}
	if rev, _ := s.RevokeLeases(ctx, store.LeaseQuery{Model: "m"}, ts.Add(2*time.Minute), "again"); len(rev) != 0 {
		t.Fatalf("revoked twice: %v", rev)
	}
	if err := s.ExtendLease(ctx, "l1", ts.Add(30*time.Minute)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("renewing a revoked lease: %v", err)
	}
	if err := s.ExtendLease(ctx, "nope", ts); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("renewing a missing lease: %v", err)
	}
	l, err := s.GetLease(ctx, "l2")
	if err != nil || l.Reason != "test" || !l.RevokedAt.Equal(ts.Add(time.Minute)) {
		t.Fatalf("revoked lease: %+v %v", l, err)
	}
	if ls, _ := s.ListLeases(ctx, store.LeaseQuery{RevokedAfter: ts}); len(ls) != 2 {
		t.Fatalf("revoked after: %d", len(ls))
	}
	testLeaseLiveness(t, s)
	testLeasesByID(t, s)
}

// testLeasesByID: LeaseQuery.Leases selects exactly the named leases (ids repeated, absent
// or past one query's 64 included), with the other conditions, in grant order; an empty
// query is Empty and a query naming leases is not.
func testLeasesByID(t *testing.T, s store.Store) {
	ctx := context.Background()
	ts := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var ids, want []string
	for i := range 70 {
		id := fmt.Sprintf("byid-%02d", i)
		if err := s.PutLease(ctx, store.Lease{ID: id, Runtime: "rt-byid", Model: "byid", Version: "1",
			GrantedAt: ts.Add(time.Duration(70-i) * time.Second), ExpiresAt: ts.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		if i%3 == 0 {
			if _, err := s.RevokeLeases(ctx, store.LeaseQuery{Lease: id}, ts.Add(time.Minute), "byid"); err != nil {
				t.Fatal(err)
			}
			want = append([]string{id}, want...) // granted later for smaller i: grant order is the reverse
		}
	}
	for _, c := range []struct {
		name string
		ids  []string
	}{
		{"all 70 and more", append(append(slices.Clone(ids), "byid-absent", ids[3]), ids[0])},
		{"three", []string{ids[0], ids[1], ids[3]}},
		{"one", []string{ids[69]}},
	} {
		ls, err := s.ListLeases(ctx, store.LeaseQuery{Leases: c.ids, RevokedAfter: time.Unix(0, 0)})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var got, exp []string
		for _, l := range ls {
			got = append(got, l.ID)
		}
		for _, id := range want {
			if slices.Contains(c.ids, id) {
				exp = append(exp, id)
			}
		}
		if !slices.Equal(got, exp) {
			t.Fatalf("%s: revoked leases by id %v, want %v", c.name, got, exp)
		}
	}
	if !(store.LeaseQuery{}).Empty() || (store.LeaseQuery{Leases: ids[:1]}).Empty() || (store.LeaseQuery{SeenBefore: ts}).Empty() {
		t.Fatal("LeaseQuery.Empty")
	}
}

// testLeaseLiveness: when a lease's runtime was last heard from, watch-stream generations,
// and ending a lease whose stream dropped unless it came back.
func testLeaseLiveness(t *testing.T, s store.Store) {
	ctx := context.Background()
	l := store.Lease{ID: "w1", Runtime: "rt1", Model: "w", Version: "1", KeyID: "k", GrantedAt: ts, ExpiresAt: ts.Add(10 * time.Minute), SeenAt: ts}
	if err := s.PutLease(ctx, l); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WatchLease(ctx, "nope", ts); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("watching a missing lease: %v", err)
	}
	seq1, err := s.WatchLease(ctx, "w1", ts.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.TouchLeases(ctx, []string{"w1", "nope"}, ts.Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchLeases(ctx, []string{"w1"}, ts.Add(2*time.Second)); err != nil { // never back
		t.Fatal(err)
	}
	if got, _ := s.GetLease(ctx, "w1"); !got.SeenAt.Equal(ts.Add(5 * time.Second)) {
		t.Fatalf("seen at %v, want %v", got.SeenAt, ts.Add(5*time.Second))
	}
	if ls, _ := s.ListLeases(ctx, store.LeaseQuery{Model: "w", SeenBefore: ts.Add(5 * time.Second)}); len(ls) != 0 {
		t.Fatalf("seen before: %v", ls)
	}
	if ls, _ := s.ListLeases(ctx, store.LeaseQuery{Model: "w", SeenBefore: ts.Add(6 * time.Second)}); len(ls) != 1 {
		t.Fatalf("seen before: %v", ls)
	}
	if ls, _ := s.ListLeases(ctx, store.LeaseQuery{Model: "w", ExpiredBy: ts.Add(10 * time.Minute)}); len(ls) != 1 {
		t.Fatalf("expired by: %v", ls)
	}
	if ls, _ := s.ListLeases(ctx, store.LeaseQuery{Model: "w", ExpiredBy: ts.Add(9 * time.Minute)}); len(ls) != 0 {
		t.Fatalf("expired by: %v", ls)
	}
	// The stream came back (another replica): the dropped one does not end the lease.
	seq2, err := s.WatchLease(ctx, "w1", ts.Add(6*time.Second))
	if err != nil || seq2 <= seq1 {
		t.Fatalf("second watch: %d after %d (%v)", seq2, seq1, err)
	}
	if _, ok, err := s.EndUnwatchedLease(ctx, "w1", seq1, ts.Add(7*time.Second), "gone"); ok || err != nil {
		t.Fatalf("ended a lease whose stream came back: %v %v", ok, err)
	}
	got, ok, err := s.EndUnwatchedLease(ctx, "w1", seq2, ts.Add(8*time.Second), "gone")
	if !ok || err != nil || got.Reason != "gone" || !got.RevokedAt.Equal(ts.Add(8*time.Second)) {
		t.Fatalf("ending an unwatched lease: %+v %v %v", got, ok, err)
	}
	if _, ok, _ := s.EndUnwatchedLease(ctx, "w1", seq2, ts.Add(9*time.Second), "twice"); ok {
		t.Fatal("ended twice")
	}
}

func testApprovals(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := store.ApprovalRequest{ID: "a1", Kind: "lease", Requester: "alice", Runtime: "rt1", Model: "m", Version: "1", Needed: 2,
		State: store.StatePending, CreatedAt: ts, ExpiresAt: ts.Add(time.Hour)}
	if err := s.CreateApproval(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, err := s.FindApproval(ctx, "lease", "rt1", "m", "1", ts.Add(time.Minute)); err != nil || got.ID != "a1" {
		t.Fatalf("find: %v %v", got, err)
	}
	if _, err := s.FindApproval(ctx, "lease", "rt1", "m", "1", ts.Add(2*time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired request found: %v", err)
	}
	got, err := s.Decide(ctx, "a1", store.Approval{Approver: "bob", Decision: "approve", At: ts})
	if err != nil || got.State != store.StatePending {
		t.Fatalf("first approval: %+v %v", got, err)
	}
	if _, err := s.Decide(ctx, "a1", store.Approval{Approver: "bob", Decision: "approve", At: ts}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("same approver twice: %v", err)
	}
	if err := s.ConsumeApproval(ctx, "a1"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("consumed while pending: %v", err)
	}
	got, err = s.Decide(ctx, "a1", store.Approval{Approver: "carol", Decision: "approve", At: ts.Add(time.Second)})
	if err != nil || got.State != store.StateApproved || len(got.Approvals) != 2 {
		t.Fatalf("second approval: %+v %v", got, err)
	}
	if _, err := s.Decide(ctx, "a1", store.Approval{Approver: "dave", Decision: "approve", At: ts}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("decision on an approved request: %v", err)
	}
	if err := s.ConsumeApproval(ctx, "a1"); err != nil {
		t.Fatal(err)
	}
	if err := s.ConsumeApproval(ctx, "a1"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("consumed twice: %v", err)
	}
	r.ID, r.CreatedAt = "a2", ts.Add(time.Minute)
	s.CreateApproval(ctx, r)
	if got, err := s.Decide(ctx, "a2", store.Approval{Approver: "bob", Decision: "deny", At: ts}); err != nil || got.State != store.StateDenied {
		t.Fatalf("deny: %+v %v", got, err)
	}
	if rs, _ := s.ListApprovals(ctx, store.StateDenied); len(rs) != 1 || rs[0].ID != "a2" {
		t.Fatalf("list denied: %v", rs)
	}
	if _, err := s.GetApproval(ctx, "zz"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}

func testTOTP(t *testing.T, s store.Store) {
	ctx := context.Background()
	s.PutPrincipal(ctx, store.Principal{ID: "bob", Tenant: "acme", Screening: "clear", CreatedAt: ts})
	if err := s.PutTOTP(ctx, store.TOTP{Principal: "bob", KeyID: "k", Sealed: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	if err := s.UseTOTPStep(ctx, "bob", 100); err != nil {
		t.Fatal(err)
	}
	for _, step := range []int64{100, 99} {
		if err := s.UseTOTPStep(ctx, "bob", step); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("step %d reused: %v", step, err)
		}
	}
	if got, err := s.GetTOTP(ctx, "bob"); err != nil || got.LastStep != 100 {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := s.GetTOTP(ctx, "eve"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}

func testEgress(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.ChargeEgress(ctx, "2026-11-27", "rt1", 60, 100, 150); err != nil {
		t.Fatal(err)
	}
	if err := s.ChargeEgress(ctx, "2026-11-27", "rt1", 60, 100, 150); !errors.Is(err, store.ErrOverBudget) {
		t.Fatalf("per-runtime budget: %v", err)
	}
	if err := s.ChargeEgress(ctx, "2026-11-27", "rt2", 80, 100, 150); err != nil {
		t.Fatal(err) // 140 of 150 in total
	}
	if err := s.ChargeEgress(ctx, "2026-11-27", "rt2", 20, 100, 150); !errors.Is(err, store.ErrOverBudget) {
		t.Fatalf("total budget: %v", err)
	}
	if err := s.ChargeEgress(ctx, "2026-11-27", "rt1", 30, 100, 150); !errors.Is(err, store.ErrOverBudget) {
		t.Fatalf("refused charge counted: %v", err) // rt2's refused 20 must not count: 140+30 > 150 still
	}
	if err := s.ChargeEgress(ctx, "2026-11-27", "rt1", 10, 100, 150); err != nil {
		t.Fatalf("charge within both budgets: %v", err)
	}
	if err := s.ChargeEgress(ctx, "2026-11-28", "rt1", 100, 100, 0); err != nil {
		t.Fatalf("a new day: %v", err)
	}
}

func testDisableVersion(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.PutKey(ctx, key("k")); err != nil {
		t.Fatal(err)
	}
	v := version("m", "1", "a")
	if err := s.CreateVersion(ctx, v); err != nil {
		t.Fatal(err)
	}
	if err := s.SetVersionDisabled(ctx, "m", "1", ts); err != nil {
		t.Fatal(err)
	}
	got, _ := s.GetVersion(ctx, "m", "1")
	if !got.DisabledAt.Equal(ts) {
		t.Fatalf("disabled at %v", got.DisabledAt)
	}
	if err := s.SetVersionDisabled(ctx, "m", "2", ts); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing version: %v", err)
	}
}

func testIncidents(t *testing.T, s store.Store) {
	ctx := context.Background()
	in := store.Incident{ID: "inc-1", Principal: "mallory", Detector: "logit_harvest", Action: "strip_logprobs", Score: 0.25,
		Summary: "biased logprobs", Evidence: []uint64{7, 42, 1 << 40}, State: "open", OpenedAt: ts}
	if err := s.CreateIncident(ctx, in); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateIncident(ctx, in); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	got, err := s.GetIncident(ctx, "inc-1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(in, got); diff != "" {
		t.Fatalf("incident (-want +got):\n%s", diff)
	}
	in2 := in
	in2.ID, in2.OpenedAt = "inc-2", ts.Add(time.Minute)
	s.CreateIncident(ctx, in2)
	if l, _ := s.ListIncidents(ctx, "open"); len(l) != 2 || l[0].ID != "inc-2" {
		t.Fatalf("open incidents newest first: %+v", l)
	}
	if err := s.CloseIncident(ctx, "inc-1", ts.Add(time.Hour), "false positive: eval harness"); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseIncident(ctx, "inc-1", ts.Add(time.Hour), "again"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("closed twice: %v", err)
	}
	if err := s.CloseIncident(ctx, "nope", ts, ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if l, _ := s.ListIncidents(ctx, "closed"); len(l) != 1 || l[0].Note != "false positive: eval harness" {
		t.Fatalf("closed: %+v", l)
	}
}

func testSanctions(t *testing.T, s store.Store) {
	ctx := context.Background()
	a := store.Sanction{Principal: "mallory", Action: "throttle", Detector: "probing", Since: ts, Until: ts.Add(time.Hour)}
	if err := s.PutSanction(ctx, a); err != nil {
		t.Fatal(err)
	}
	a.Action = "suspend"
	s.PutSanction(ctx, a)
	s.PutSanction(ctx, store.Sanction{Principal: "old", Action: "suspend", Since: ts.Add(-2 * time.Hour), Until: ts.Add(-time.Hour)})
	got, err := s.ListSanctions(ctx, ts.Add(time.Minute))
	if err != nil || len(got) != 1 || got[0].Action != "suspend" || !got[0].Until.Equal(ts.Add(time.Hour)) {
		t.Fatalf("sanctions in force: %+v %v", got, err)
	}
	if err := s.LiftSanction(ctx, "mallory"); err != nil {
		t.Fatal(err)
	}
	if err := s.LiftSanction(ctx, "mallory"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lift twice: %v", err)
	}
	if got, _ := s.ListSanctions(ctx, ts); len(got) != 0 {
		t.Fatalf("lifted sanction listed: %+v", got)
	}
}
