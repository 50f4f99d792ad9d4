package report

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
)

// BenchmarkCompliance: a compliance report over a log of 100,000 request records (in
// batches, as the gateway writes them), next to the baseline of verifying the same log
// (audit.Verify reads every tile, entry and bundle once).
//
//	go test -run XXX -bench Compliance -benchtime 3x ./internal/report
func BenchmarkCompliance(b *testing.B) {
	const n = 100_000
	f := newFixture(b)
	ctx := context.Background()
	var futs []audit.Future
	for i := range n {
		futs = append(futs, f.b.Submit(ctx, request(time.Duration(i)*time.Millisecond, fmt.Sprintf("p%d", i%1000), "m1", "1", "restricted",
			[]string{"DE", "US", "FR", "CN"}[i%4], []string{audit.Allow, audit.Allow, audit.Allow, audit.Deny}[i%4], "", 10, 20, "")))
	}
	for _, fu := range futs {
		if _, err := fu(); err != nil {
			b.Fatal(err)
		}
	}
	f.b.Close()
	if err := f.log.Close(ctx); err != nil {
		b.Fatal(err)
	}
	src := f.src()
	p := Period{From: t0, To: t0.Add(time.Hour)}
	b.Run("verify-baseline", func(b *testing.B) {
		for b.Loop() {
			if _, err := audit.Verify(ctx, src.Fetch, src.Opts); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/record")
	})
	b.Run("compliance", func(b *testing.B) {
		for b.Loop() {
			r, err := Compliance(ctx, src, p, t0.Add(2*time.Hour), "bench")
			if err != nil {
				b.Fatal(err)
			}
			if r.Figures.Entries != n {
				b.Fatalf("%d records counted", r.Figures.Entries)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/record")
	})
}
