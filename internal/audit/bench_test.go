package audit

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/client"
)

// event1K is a 1 KiB event, the size the issue names.
func event1K(i int) Event {
	e := Event{V: 1, TS: ts0, Kind: "gateway.request", Actor: map[string]string{"principal": "p"},
		Fields: map[string]string{"i": fmt.Sprint(i)}}
	b, _ := e.Marshal()
	e.Fields["pad"] = strings.Repeat("x", 1024-len(b)-len(`,"pad":""`))
	return e
}

// BenchmarkAppend: sustained durable appends with 1 KiB events from many concurrent
// callers (the gateway's shape), reported as events/s, with the p50/p99 time from Record to
// durable. callers=1 is the baseline: one event per batch, so every event pays a full
// sequence-and-fsync round; the other rows show what batching buys.
func BenchmarkAppend(b *testing.B) {
	for _, callers := range []int{1, 64, 512} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s, _, _ := newKeys(b, "strongroom.bench/log")
			l, err := Open(context.Background(), Config{Dir: filepath.Join(b.TempDir(), "log"), Signer: s})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close(context.Background())
			var mu sync.Mutex
			var lat []time.Duration
			next := make(chan int, callers)
			var wg sync.WaitGroup
			b.ResetTimer()
			for range callers {
				wg.Go(func() {
					var mine []time.Duration
					for i := range next {
						t0 := time.Now()
						if _, err := l.Record(context.Background(), event1K(i)); err != nil {
							b.Error(err)
							return
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				})
			}
			for i := range b.N {
				next <- i
			}
			close(next)
			wg.Wait()
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkInclusionProof: building an inclusion proof from the log's tiles on disk, in a
// log of 100,000 entries; the baseline is verifying it (pure hashing).
func BenchmarkInclusionProof(b *testing.B) {
	s, _, _ := newKeys(b, "strongroom.bench/log")
	dir := filepath.Join(b.TempDir(), "log")
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s})
	if err != nil {
		b.Fatal(err)
	}
	const n = 100_000
	var fs []Future
	for i := range n {
		fs = append(fs, l.Submit(context.Background(), event1K(i)))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			b.Fatal(err)
		}
	}
	l.Close(context.Background())
	f := client.FileFetcher{Root: dir}
	size := uint64(n)
	ev := event1K(12345)
	leaf, _ := ev.Marshal()
	p, err := InclusionProof(context.Background(), f, 12345, size)
	if err != nil {
		b.Fatal(err)
	}
	root, err := rootFromProof(leaf, 12345, size, p)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("build", func(b *testing.B) {
		i := uint64(0)
		for b.Loop() {
			if _, err := InclusionProof(context.Background(), f, i%size, size); err != nil {
				b.Fatal(err)
			}
			i += 7919
		}
	})
	b.Run("verify-baseline", func(b *testing.B) {
		for b.Loop() {
			if err := VerifyInclusion(leaf, 12345, size, p, root); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func rootFromProof(entry []byte, index, size uint64, p [][]byte) ([]byte, error) {
	return proof.RootFromInclusionProof(rfc6962.DefaultHasher, index, size, rfc6962.DefaultHasher.HashLeaf(entry), p)
}
