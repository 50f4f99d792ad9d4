package web_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

// BenchmarkConsolePages renders the console's heaviest pages over a store holding
// 100,000 indexed log entries (request records of the last 24 hours, 1,000 principals)
// and 1,000 principals, next to the raw store query each page is built on. Figures:
// ms/page (page served over HTTP, signed in) and ms/query (the store alone).
func BenchmarkConsolePages(b *testing.B) {
	h := newHarness(b, nil)
	ctx := context.Background()
	st := h.e.App.Store
	now := time.Now().UTC()
	const entries, principals = 100_000, 1_000
	for i := range principals {
		if err := st.PutPrincipal(ctx, store.Principal{ID: fmt.Sprintf("p%04d", i), Tenant: "bench", Roles: []string{"researcher"}, Country: "DE", Screening: "clear", CreatedAt: now}); err != nil {
			b.Fatal(err)
		}
	}
	base, _ := st.AuditIndexed(ctx)
	batch := make([]store.AuditEvent, 0, 5000)
	for i := range entries {
		who := fmt.Sprintf("p%04d", i%principals)
		dec := "allow"
		if i%17 == 0 {
			dec = "deny"
		}
		ts := now.Add(-24 * time.Hour).Add(time.Duration(i) * 24 * time.Hour / entries)
		raw := fmt.Sprintf(`{"v":1,"ts":%q,"kind":"gateway.request","actor":{"principal":%q},"subject":{"model":"m"},"decision":%q,"reason":"","fields":{"country":"DE","status":"200"}}`,
			ts.Format(time.RFC3339Nano), who, dec)
		batch = append(batch, store.AuditEvent{Index: base + 1000 + uint64(i), TS: ts, Kind: "gateway.request", Principal: who, Decision: dec, Raw: []byte(raw)})
		if len(batch) == cap(batch) {
			if err := st.IndexAudit(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	br := h.browser(b)
	br.signIn(h.admin)
	page := func(path string) func(b *testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				if res, body := br.get(path); res.StatusCode != http.StatusOK || len(body) < 1000 {
					b.Fatalf("%s: %s", path, res.Status)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/page")
		}
	}
	query := func(fn func() error) func(b *testing.B) {
		return func(b *testing.B) {
			for b.Loop() {
				if err := fn(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/query")
		}
	}
	b.Run("audit/page", page("/console/audit"))
	b.Run("audit/query", query(func() error {
		_, err := st.SearchAudit(ctx, store.AuditQuery{Desc: true, Limit: 51})
		return err
	}))
	b.Run("audit-by-principal/page", page("/console/audit?principal=p0500&kind=gateway.request"))
	b.Run("audit-by-principal/query", query(func() error {
		_, err := st.SearchAudit(ctx, store.AuditQuery{Principal: "p0500", Kind: "gateway.request", Desc: true, Limit: 51})
		return err
	}))
	b.Run("audit-deep-page/page", page(fmt.Sprintf("/console/audit?before=%d", base+1000+entries/2)))
	b.Run("principals/page", page("/console/principals?after=p0500"))
	b.Run("principals/query", query(func() error {
		_, err := st.PrincipalsPage(ctx, "p0500", 51)
		return err
	}))
	b.Run("overview/page", page("/console/"))
	b.Run("overview-histogram/query", query(func() error {
		_, err := st.AuditHistogram(ctx, "gateway.request", now.Add(-24*time.Hour).Truncate(time.Hour), time.Hour)
		return err
	}))
	b.Run("overview-countries/query", query(func() error {
		_, err := st.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.request", Desc: true, Limit: 2000})
		return err
	}))
}
