package detect

import (
	"bufio"
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"

	"github.com/strongroom/strongroom/internal/obs"
)

// Tee hands every observation to each detector in turn.
type Tee []obs.Observer

// Observe implements obs.Observer.
func (t Tee) Observe(o obs.Observation) {
	for _, d := range t {
		d.Observe(o)
	}
}

// TraceWriter records the gateway's requests as a trace (the format in this package's
// doc), for `strongroom detect replay`. Prompts are replaced by Redact's digest unless
// Redact is nil (the operator opted in to plaintext prompts). Writing happens on its own
// goroutine; when the queue is full a line is dropped and counted, never the request.
type TraceWriter struct {
	ch      chan Request
	done    chan error
	dropped atomic.Int64
	once    sync.Once
}

// NewTraceWriter starts writing to w. redact, if not nil, maps a prompt to its digest.
func NewTraceWriter(w io.Writer, redact func(string) string) *TraceWriter {
	t := &TraceWriter{ch: make(chan Request, 4096), done: make(chan error, 1)}
	go func() {
		bw := bufio.NewWriterSize(w, 64<<10)
		enc := json.NewEncoder(bw)
		var err error
		for r := range t.ch {
			if redact != nil && r.Prompt != "" {
				r.Prompt = redact(r.Prompt)
			}
			if e := enc.Encode(&r); e != nil && err == nil {
				err = e
			}
			if len(t.ch) == 0 {
				if e := bw.Flush(); e != nil && err == nil {
					err = e
				}
			}
		}
		if e := bw.Flush(); e != nil && err == nil {
			err = e
		}
		t.done <- err
	}()
	return t
}

// Observe implements obs.Observer.
func (t *TraceWriter) Observe(o obs.Observation) {
	r := FromObservation(o)
	select {
	case t.ch <- r:
	default:
		t.dropped.Add(1)
	}
}

// Dropped is how many requests were not recorded because the writer fell behind.
func (t *TraceWriter) Dropped() int64 { return t.dropped.Load() }

// Close flushes and stops; further Observe calls must not happen.
func (t *TraceWriter) Close() error {
	var err error
	t.once.Do(func() {
		close(t.ch)
		err = <-t.done
	})
	return err
}
