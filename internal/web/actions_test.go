package web_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/app/apptest"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/web"
)

func (h *harness) liveLeases(t *testing.T) int {
	t.Helper()
	ls, err := h.e.App.Store.ListLeases(context.Background(), store.LeaseQuery{LiveAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return len(ls)
}

// TestDestructiveNeedsStepUpAndConfirmation: a revoke needs a TOTP step-up of the last
// five minutes and the lease id typed; done, it is recorded with the console user as actor.
func TestDestructiveNeedsStepUpAndConfirmation(t *testing.T) {
	h := newHarness(t, nil)
	h.e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": make([]byte, 64)})
	l := h.e.Lease(t, h.e.Join(t, "prod"), "m", "1")
	b := h.browser(t)
	b.signIn(h.admin) // the sign-in's TOTP counts as a step-up for five minutes
	h.clock.add(6 * time.Minute)
	revoke := func(confirm string) (*http.Response, string) {
		return b.post("/console/leases/revoke", url.Values{"id": {l.ID}, "reason": {"test"}, "confirm": {confirm}})
	}
	if res, body := revoke(l.ID); res.StatusCode != http.StatusForbidden || !strings.Contains(body, "step-up") || h.liveLeases(t) != 1 {
		t.Fatalf("revoke without a fresh step-up: %s, %d live", res.Status, h.liveLeases(t))
	}
	if res, _ := b.post("/console/stepup", url.Values{"totp": {"000000"}, "next": {"/console/leases"}}); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("step-up with a wrong code: %s", res.Status)
	}
	if res, _ := b.post("/console/stepup", url.Values{"totp": {h.admin.Code(t)}, "next": {"/console/leases"}}); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("step-up: %s", res.Status)
	}
	if res, _ := revoke("not-the-id"); res.StatusCode != http.StatusBadRequest || h.liveLeases(t) != 1 {
		t.Fatalf("revoke with a wrong confirmation: %s", res.Status)
	}
	if res, body := revoke(l.ID); res.StatusCode != http.StatusSeeOther || h.liveLeases(t) != 0 {
		t.Fatalf("revoke: %s %s", res.Status, body)
	}
	if _, body := b.get("/console/leases"); !strings.Contains(body, "Lease "+l.ID+" revoked") || !strings.Contains(body, "No live leases") {
		t.Fatalf("leases page after revoke:\n%s", body)
	}
	evs := h.events(t, store.AuditQuery{Kind: "lease.revoke"})
	if len(evs) != 1 || evs[0].Principal != h.admin.ID {
		t.Fatalf("lease.revoke events: %+v", evs)
	}
	var ev audit.Event
	json.Unmarshal(evs[0].Raw, &ev)
	if ev.Actor["via"] != "console" || ev.Actor["process"] == "" {
		t.Fatalf("actor: %v", ev.Actor)
	}
	if evs := h.events(t, store.AuditQuery{Kind: "console.action", Principal: h.admin.ID}); len(evs) < 3 {
		t.Fatalf("console.action attempts recorded: %d", len(evs))
	}
}

// TestPolicyDecidesWhoActs: a security analyst sees but does not act; a custodian decides
// approvals but does not revoke keys.
func TestPolicyDecidesWhoActs(t *testing.T) {
	h := newHarness(t, nil)
	analyst := h.e.Person(t, "analyst", "security")
	researcher := h.e.Person(t, "someone", "researcher")
	b := h.browser(t)
	b.signIn(analyst)
	if res, _ := b.get("/console/inventory"); res.StatusCode != http.StatusOK {
		t.Fatalf("analyst sees inventory: %s", res.Status)
	}
	keys, _ := h.e.App.Store.ListAPIKeys(context.Background(), researcher.ID)
	if res, body := b.post("/console/keys/revoke", url.Values{"id": {keys[0].ID}, "confirm": {keys[0].ID}}); res.StatusCode != http.StatusForbidden || !strings.Contains(body, "policy") {
		t.Fatalf("analyst revokes a key: %s", res.Status)
	}
	r := h.browser(t)
	if res := r.login(researcher, researcher.Code(t)); res.StatusCode != http.StatusForbidden || sessionCookie(res) != nil {
		t.Fatalf("researcher sign-in: %s", res.Status)
	}
	if evs := h.events(t, store.AuditQuery{Kind: "console.action", Principal: analyst.ID}); len(evs) != 1 || evs[0].Decision != audit.Deny {
		t.Fatalf("refusal recorded: %+v", evs)
	}
}

// TestFailClosed: when the log cannot record, nobody signs in and nothing is done.
func TestFailClosed(t *testing.T) {
	h := newHarness(t, func(o web.Ops) web.Ops { return failingAudit{o} })
	b := h.browser(t)
	if res := b.login(h.admin, h.admin.Code(t)); res.StatusCode != http.StatusServiceUnavailable || sessionCookie(res) != nil {
		t.Fatalf("sign-in while the log cannot record: %s", res.Status)
	}
	// Signed in while the log worked; then it stops: a revocation is refused, undone.
	var down atomic.Bool
	h = newHarness(t, func(o web.Ops) web.Ops { return &switchedAudit{Ops: o, down: &down} })
	h.e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": make([]byte, 64)})
	l := h.e.Lease(t, h.e.Join(t, "prod"), "m", "1")
	b = h.browser(t)
	b.signIn(h.admin)
	down.Store(true)
	if res, body := b.post("/console/leases/revoke", url.Values{"id": {l.ID}, "reason": {"x"}, "confirm": {l.ID}}); res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "cannot record") {
		t.Fatalf("revoke while the log cannot record: %s", res.Status)
	}
	if h.liveLeases(t) != 1 {
		t.Fatal("lease revoked although the action could not be recorded")
	}
}

// switchedAudit is a log that stops recording when down is set.
type switchedAudit struct {
	web.Ops
	down *atomic.Bool
}

func (s *switchedAudit) Audit(ctx context.Context, ev audit.Event) error {
	if s.down.Load() {
		return errors.New("log unavailable")
	}
	return s.Ops.Audit(ctx, ev)
}

// TestBruteForce: wrong codes are limited per principal (and address), each recorded;
// past the limit even the right code is refused.
func TestBruteForce(t *testing.T) {
	h := newHarness(t, nil)
	b := h.browser(t)
	for i := range 5 {
		if res := b.login(h.admin, "000000"); res.StatusCode != http.StatusUnauthorized {
			t.Fatalf("wrong code %d: %s", i, res.Status)
		}
	}
	if res := b.login(h.admin, h.admin.Code(t)); res.StatusCode != http.StatusTooManyRequests || sessionCookie(res) != nil {
		t.Fatalf("right code after 5 failures: %s", res.Status)
	}
	// Wrong keys from one address: limited per address.
	for i := range 20 {
		b.do(http.MethodGet, "/console/login", nil, nil)
		if res := b.login(&apptest.Person{ID: "nobody", Key: "sr_00000000000000ff.bad"}, "000000"); res.StatusCode != http.StatusUnauthorized && res.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("wrong key %d: %s", i, res.Status)
		}
	}
	if res := b.login(&apptest.Person{ID: "nobody", Key: "sr_00000000000000ff.bad"}, "000000"); res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("after 25 failures from one address: %s", res.Status)
	}
	evs := h.events(t, store.AuditQuery{Kind: "console.login"})
	deny := 0
	for _, e := range evs {
		if e.Decision == audit.Deny {
			deny++
		}
	}
	if deny != 27 {
		t.Fatalf("%d refused sign-ins recorded, want 27", deny)
	}
}

// TestEvents: the live-update stream sends the state, then a new one when a lease ends,
// and says so when the session ends.
func TestEvents(t *testing.T) {
	h := newHarness(t, nil)
	h.e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": make([]byte, 64)})
	l := h.e.Lease(t, h.e.Join(t, "prod"), "m", "1")
	b := h.browser(t)
	b.signIn(h.admin)
	req, _ := http.NewRequest(http.MethodGet, h.srv.URL+"/console/events", nil)
	res, err := b.c.Do(req)
	if err != nil || res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %v %v", res, err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	next := func() string {
		t.Helper()
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				return d
			}
		}
		t.Fatalf("stream ended: %v", sc.Err())
		return ""
	}
	if first := next(); !strings.Contains(first, l.ID) {
		t.Fatalf("first state: %s", first)
	}
	if _, err := h.e.App.RevokeLease(context.Background(), l.ID, "test"); err != nil {
		t.Fatal(err)
	}
	for {
		if st := next(); !strings.Contains(st, l.ID) {
			break
		}
	}
}

// TestApprovalDecision: deciding a request takes the approver's own fresh TOTP code, a
// justification (recorded with the decision) and the request id typed; the requester
// cannot approve their own request.
func TestApprovalDecision(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	now := time.Now()
	if err := h.e.App.Store.CreateApproval(ctx, store.ApprovalRequest{ID: "ap-1", Kind: "lease", Requester: "owner", Runtime: "rt-1", Model: "m", Version: "1",
		Needed: 1, State: store.StatePending, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	b := h.browser(t)
	b.signIn(h.admin)
	decide := func(code, justification, confirm string) *http.Response {
		res, _ := b.post("/console/approvals/decide", url.Values{"id": {"ap-1"}, "decision": {"approve"}, "totp": {code}, "justification": {justification}, "confirm": {confirm}})
		return res
	}
	if res := decide(h.admin.Code(t), "", "ap-1"); res.StatusCode != http.StatusBadRequest {
		t.Fatalf("without a justification: %s", res.Status)
	}
	if res := decide("000000", "quarterly eval", "ap-1"); res.StatusCode != http.StatusForbidden {
		t.Fatalf("with a wrong code: %s", res.Status)
	}
	if res := decide(h.admin.Code(t), "quarterly eval", "ap-1"); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("approve: %s", res.Status)
	}
	if r, _ := h.e.App.Store.GetApproval(ctx, "ap-1"); r.State != store.StateApproved {
		t.Fatalf("request is %s", r.State)
	}
	evs := h.events(t, store.AuditQuery{Kind: "approval.approve"})
	var ev audit.Event
	for _, e := range evs {
		if e.Decision == audit.Allow {
			json.Unmarshal(e.Raw, &ev)
		}
	}
	if ev.Fields["justification"] != "quarterly eval" || ev.Actor["principal"] != h.admin.ID {
		t.Fatalf("approval recorded as %+v", ev)
	}
}
