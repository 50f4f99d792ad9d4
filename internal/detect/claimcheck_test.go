package detect

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// indexedAudit records events into a store's audit index at once (the shared index every
// replica searches), and counts detector alerts.
type indexedAudit struct {
	st     store.Store
	next   *atomic.Uint64
	mu     sync.Mutex
	alerts int
}

func (a *indexedAudit) Submit(ctx context.Context, ev audit.Event) audit.Future {
	raw, _ := json.Marshal(ev)
	idx := a.next.Add(1)
	a.st.IndexAudit(ctx, []store.AuditEvent{{Index: idx, TS: ev.TS, Kind: string(ev.Kind), Principal: ev.Actor["principal"], Decision: ev.Decision, Raw: raw}})
	if ev.Kind == audit.KindDetectAlert {
		a.mu.Lock()
		a.alerts++
		a.mu.Unlock()
	}
	return func() (uint64, error) { return idx, nil }
}

func (a *indexedAudit) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.alerts
}

// lyingBus answers every claim "taken".
type lyingBus struct{ *memBus }

func (lyingBus) Claim(context.Context, string, time.Duration) (bool, error) { return false, nil }

// TestLostClaimFollowed: a replica that lost an alert's claim looks for the winner's record
// in the shared index; it records the alert itself (with an ALERT line) only when none
// comes within ClaimCheck — so a Redis that answers every claim "taken" cannot leave an
// alert unrecorded, and an honest one still gets it recorded once.
func TestLostClaimFollowed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lying bool
	}{{"honest claims", false}, {"every claim answered taken", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			var next atomic.Uint64
			var bus Bus = newMemBus()
			if tc.lying {
				bus = lyingBus{bus.(*memBus)}
			}
			var rs []*Responder
			var auds []*indexedAudit
			var logs []*testenv.LogBuffer
			for range 2 {
				a := &indexedAudit{st: st, next: &next}
				var lb testenv.LogBuffer
				r := NewResponder(New(Config{HarvestTokens: 20}), ResponderConfig{Audit: a, Incidents: st, Duration: time.Hour, Bus: bus,
					ClaimCheck: 2 * time.Second, EvidenceWait: time.Millisecond, Log: slog.New(slog.NewTextHandler(&lb, nil))})
				runResponder(t, ctx, r)
				rs, auds, logs = append(rs, r), append(auds, a), append(logs, &lb)
			}
			for i := range 4 {
				rs[i%2].Observe(sweep(i))
			}
			for i, r := range rs {
				waitFor(t, "replica "+string(rune('0'+i))+" to strip logprobs", func() bool { a, _ := r.Sanction("mallory"); return a == "strip_logprobs" })
			}
			// Both replicas' checks over (each looks for up to ClaimCheck).
			waitFor(t, "the lost claims' checks", func() bool { return rs[0].checks.Load() == 0 && rs[1].checks.Load() == 0 })
			rs[0].Wait()
			rs[1].Wait()
			n := auds[0].count() + auds[1].count()
			alerted := 0
			for _, lb := range logs {
				if strings.Contains(lb.String(), "an alert another replica claimed is not on the record") {
					alerted++
				}
			}
			switch {
			case !tc.lying && (n != 1 || alerted != 0):
				t.Fatalf("honest claims: the alert recorded %d times (want once), %d unrecorded-claim ALERT lines (want none)", n, alerted)
			case tc.lying && (n < 1 || alerted < 1):
				t.Fatalf("every claim answered taken: the alert recorded %d times (want at least once), %d unrecorded-claim ALERT lines (want one or more)", n, alerted)
			}
		})
	}
}
