package audit

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkSQLLogTwoReplicas: two replicas of one log on MariaDB (STRONGROOM_TEST_MARIADB)
// take request records together for 5 s (batches of 1024, 100 ms, 8 submitters each),
// while one security event a 50 ms is recorded alone; it reports durable records/s from
// both and the p99 time from a security event's submission to a signed checkpoint
// covering it.
//
//	go test -run '^$' -bench SQLLogTwoReplicas -benchtime 1x ./internal/audit/
func BenchmarkSQLLogTwoReplicas(b *testing.B) {
	dsn := sqlTestDB(b)
	s, _, _ := newKeys(b, "strongroom.test/shared")
	ctx := context.Background()
	reps := []*Log{openSQLTestLog(b, dsn, s), openSQLTestLog(b, dsn, s)}
	const run = 5 * time.Second
	for b.Loop() {
		var durable atomic.Int64
		var wg sync.WaitGroup
		stop := time.Now().Add(run)
		for _, l := range reps {
			bt := NewBatcher(l, l.Bundles(), BatcherConfig{MaxRecords: 1024, MaxDelay: 100 * time.Millisecond})
			for range 8 {
				wg.Go(func() {
					// Submit in windows of 512 and resolve them together, as many requests in
					// flight would.
					for time.Now().Before(stop) {
						fs := make([]Future, 0, 512)
						for i := range 512 {
							fs = append(fs, bt.Submit(ctx, requestEvent(i)))
						}
						for _, f := range fs {
							if _, err := f(); err == nil {
								durable.Add(1)
							}
						}
					}
				})
			}
			defer bt.Close()
		}
		var lat []time.Duration
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				l := reps[i%2]
				t0 := time.Now()
				idx, err := l.Record(ctx, event(i))
				if err != nil {
					b.Error(err)
					return
				}
				for {
					if cp, err := l.Checkpoint(ctx); err == nil && cpSize(cp) > idx {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				lat = append(lat, time.Since(t0))
				time.Sleep(50 * time.Millisecond)
			}
		})
		wg.Wait()
		slices.Sort(lat)
		b.ReportMetric(float64(durable.Load())/run.Seconds(), "records/s")
		if len(lat) > 0 {
			b.ReportMetric(lat[len(lat)*99/100].Seconds(), "p99-event-to-checkpoint-s")
			b.ReportMetric(lat[len(lat)/2].Seconds(), "p50-event-to-checkpoint-s")
		}
	}
	for _, l := range reps {
		l.Close(ctx)
	}
}

func cpSize(cp []byte) uint64 {
	var n uint64
	lines := 0
	for _, c := range cp {
		if c == '\n' {
			lines++
			if lines == 2 {
				return n
			}
			continue
		}
		if lines == 1 {
			n = n*10 + uint64(c-'0')
		}
	}
	return 0
}

// BenchmarkSQLLogIdleQueries: the statements a second an idle replica of a log on MariaDB
// sends the engine (the server's Questions counter over 3 s), with tessera's own size
// polls answered from a cache (quiet) and without (tessera): run it alone — the counter
// is the server's.
//
//	./scripts/test go test -run '^$' -bench SQLLogIdleQueries -benchtime 1x ./internal/audit/
func BenchmarkSQLLogIdleQueries(b *testing.B) {
	for _, quiet := range []bool{true, false} {
		name := "tessera"
		if quiet {
			name = "quiet"
		}
		b.Run(name, func(b *testing.B) {
			quietTesseraStats = quiet
			defer func() { quietTesseraStats = true }()
			dsn := sqlTestDB(b)
			s, _, _ := newKeys(b, "strongroom.test/idle")
			l := openSQLTestLog(b, dsn, s)
			defer l.Close(context.Background())
			admin := testAdmin(b, dsn)
			questions := func() float64 {
				var name string
				var n float64
				if err := admin.QueryRow("SHOW GLOBAL STATUS LIKE 'Questions'").Scan(&name, &n); err != nil {
					b.Fatal(err)
				}
				return n
			}
			for b.Loop() {
				q0, t0 := questions(), time.Now()
				time.Sleep(3 * time.Second)
				b.ReportMetric((questions()-q0-1)/time.Since(t0).Seconds(), "statements/s")
			}
		})
	}
}
