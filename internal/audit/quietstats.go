package audit

import (
	"context"
	"sync"
	"time"

	"github.com/transparency-dev/tessera"
)

// tessera's appender polls the log's size ten times a second for metrics of its own
// (OpenTelemetry gauges, integrationStats.updateStats in v1.0.4: IntegratedSize and
// NextIndex each time), whether anything reads them or not — Strongroom exports none of
// them. On local disk that is twenty opens, locks and JSON parses of the tree state a
// second (3 % of the gateway's CPU at 5,000 requests a second, 5 ms a second however
// few); on a shared engine, twenty queries a second from every replica. Those polls come
// with the context the appender was made with, which carries tesseraOwn; the reader they
// are made on answers them from a value read at most every statsEvery. Every other caller
// — all of Strongroom's — reads the log as before.

// tesseraOwn marks the context given to tessera.NewAppender.
type tesseraOwn struct{}

// quietTesseraStats: false only in BenchmarkSQLLogIdleQueries's baseline.
var quietTesseraStats = true

// statsEvery: how old the sizes tessera's own metrics see may be.
const statsEvery = 5 * time.Second

// appendLifecycle is what tessera.NewAppender asks of a driver.
type appendLifecycle interface {
	Appender(context.Context, *tessera.AppendOptions) (*tessera.Appender, tessera.LogReader, error)
}

// quietStats is a driver whose appender's reader answers tessera's own polls from a cache.
type quietStats struct{ appendLifecycle }

func (q quietStats) Appender(ctx context.Context, o *tessera.AppendOptions) (*tessera.Appender, tessera.LogReader, error) {
	a, r, err := q.appendLifecycle.Appender(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	return a, &statsReader{LogReader: r}, nil
}

type statsReader struct {
	tessera.LogReader
	mu         sync.Mutex
	at         time.Time
	size, next uint64
}

func (s *statsReader) cached(ctx context.Context) (size, next uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.at) >= statsEvery {
		if s.size, err = s.LogReader.IntegratedSize(ctx); err != nil {
			return 0, 0, err
		}
		if s.next, err = s.LogReader.NextIndex(ctx); err != nil {
			return 0, 0, err
		}
		s.at = time.Now()
	}
	return s.size, s.next, nil
}

func (s *statsReader) IntegratedSize(ctx context.Context) (uint64, error) {
	if ctx.Value(tesseraOwn{}) == nil {
		return s.LogReader.IntegratedSize(ctx)
	}
	size, _, err := s.cached(ctx)
	return size, err
}

func (s *statsReader) NextIndex(ctx context.Context) (uint64, error) {
	if ctx.Value(tesseraOwn{}) == nil {
		return s.LogReader.NextIndex(ctx)
	}
	_, next, err := s.cached(ctx)
	return next, err
}
