package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// BenchmarkIndexAudit indexes what the audit log's catch-up hands the search index once a
// second under load: batch entries of request records from a few principals (RecordIndex
// numbers). serve: 5 entries of 1,024 records per call (~5k requests/s, folds every 200 ms);
// per-batch: one entry of 128 per call (the commit dominates). Reports CPU and wall time per
// record.
func BenchmarkIndexAudit(b *testing.B) {
	b.Run("serve", func(b *testing.B) { benchIndex(b, 5, 1024, true) })
	b.Run("serve-kept", func(b *testing.B) { benchIndex(b, 5, 1024, false) })
	b.Run("per-batch", func(b *testing.B) { benchIndex(b, 1, 128, true) })
}

// benchIndex: bundled, the store has a RecordSource (as under audit.Open) and keeps no
// record bytes; else it keeps them in the groups (a store used without the log).
func benchIndex(b *testing.B, batches, perBatch int, bundled bool) {
	ctx := context.Background()
	s, err := store.OpenSQLite(ctx, filepath.Join(b.TempDir(), "db.sqlite"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if bundled {
		s.(interface{ SetRecordSource(store.RecordSource) }).SetRecordSource(func(context.Context, []byte) ([][]byte, error) {
			return nil, errors.New("not read by the benchmark")
		})
	}
	raw := []byte(`{"v":1,"ts":"2026-12-01T07:00:00.000000001Z","kind":"gateway.request","actor":{"principal":"p1","key":"k_0123456789"},"subject":{"model":"m:1","route":"/v1/chat/completions"},"decision":"allow","detail":{"status":"200","latency_ms":"3","prompt_tokens":"12","completion_tokens":"40","output_hmac":"0123456789abcdef0123456789abcdef"}}`)
	t0 := time.Now()
	calls := make([][]store.AuditEvent, b.N)
	for i := range calls {
		evs := make([]store.AuditEvent, 0, batches*(perBatch+1))
		for j := range batches {
			entry := uint64(i*batches + j)
			evs = append(evs, store.AuditEvent{Index: entry, TS: t0, Kind: "audit.batch", Raw: raw})
			for pos := range perBatch {
				evs = append(evs, store.AuditEvent{Index: 1<<62 | entry<<16 | uint64(pos), TS: t0.Add(time.Duration(int(entry)*perBatch+pos) * time.Microsecond),
					Kind: "gateway.request", Principal: "p" + strconv.Itoa(pos%4), Decision: "allow", Raw: raw})
			}
		}
		calls[i] = evs
	}
	b.ResetTimer()
	cpu := testenv.CPUTime()
	for _, evs := range calls {
		if err := s.IndexAudit(ctx, evs); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N * batches * perBatch)
	b.ReportMetric(float64((testenv.CPUTime()-cpu).Nanoseconds())/1e3/n, "cpu-µs/record")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e3/n, "µs/record")
}
