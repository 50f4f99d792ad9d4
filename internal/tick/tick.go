// Package tick runs a function at an interval until a context ends.
package tick

import (
	"context"
	"time"
)

// Every calls fn every interval (first after one interval) until ctx ends; a call that
// overruns makes the next come sooner, never two at once.
func Every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
