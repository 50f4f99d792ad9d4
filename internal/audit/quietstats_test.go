package audit

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
)

// countingLifecycle counts the size reads made on its appender's reader.
type countingLifecycle struct {
	appendLifecycle
	reads *atomic.Int64
}

func (c countingLifecycle) Appender(ctx context.Context, o *tessera.AppendOptions) (*tessera.Appender, tessera.LogReader, error) {
	a, r, err := c.appendLifecycle.Appender(ctx, o)
	return a, countingReader{r, c.reads}, err
}

type countingReader struct {
	tessera.LogReader
	reads *atomic.Int64
}

func (c countingReader) IntegratedSize(ctx context.Context) (uint64, error) {
	c.reads.Add(1)
	return c.LogReader.IntegratedSize(ctx)
}

func (c countingReader) NextIndex(ctx context.Context) (uint64, error) {
	c.reads.Add(1)
	return c.LogReader.NextIndex(ctx)
}

// TestTesseraStatsPollsCached: tessera's appender polls the log's size ten times a second
// for its own metrics; through quietStats those polls read the storage at most once every
// statsEvery, while a read of ours (a context without the mark) always reaches it.
func TestTesseraStatsPollsCached(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := posix.New(ctx, posix.Config{Path: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s, _, _ := newKeys(t, "strongroom.test/quietstats")
	var reads atomic.Int64
	opts := tessera.NewAppendOptions().WithCheckpointSigner(s)
	_, shutdown, r, err := tessera.NewAppender(context.WithValue(ctx, tesseraOwn{}, true), quietStats{countingLifecycle{d.(appendLifecycle), &reads}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(ctx)
	// Ten of tessera's 100 ms polls at least, each two reads without the cache.
	deadline := time.Now().Add(1200 * time.Millisecond)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := reads.Load(); n > 2 {
		t.Errorf("tessera's own polls read the storage %d times in 1.2 s, want at most 2 (one cached read of each)", n)
	}
	before := reads.Load()
	if _, err := r.IntegratedSize(ctx); err != nil {
		t.Fatal(err)
	}
	if reads.Load() != before+1 {
		t.Error("a read without tessera's mark did not reach the storage")
	}
}
