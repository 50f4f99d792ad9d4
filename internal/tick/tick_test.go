package tick

import (
	"context"
	"testing"
	"time"
)

// TestEvery: fn runs again and again, and Every returns once ctx ends.
func TestEvery(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan struct{}, 10)
	ended := make(chan struct{})
	go func() {
		Every(ctx, time.Millisecond, func() {
			select {
			case calls <- struct{}{}:
			default:
			}
		})
		close(ended)
	}()
	for range 3 {
		<-calls
	}
	cancel()
	<-ended
}
