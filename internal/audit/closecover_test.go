package audit

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestCloseCoversAPredecessorsEntries: a process killed after its entries were integrated
// but before a checkpoint covered them (the checkpoint is published every interval) leaves
// them durable and uncovered. The next process must not close, having added nothing of its
// own, before a checkpoint covers them: an outside verifier reads the log up to the
// checkpoint, and would not find what the killed process acknowledged (round 12's kill
// test, TestAttack12KillUnderLoadOrder, lost ~1 run in 12 under load so: a run killed
// right after folding its predecessor's journal, then a short-lived open and close).
func TestCloseCoversAPredecessorsEntries(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log")
	s, _, _ := newKeys(t, "strongroom.test/close-cover")
	ctx := context.Background()
	// The "killed" process: its checkpoints come five minutes apart, so its entries stay
	// uncovered; it is left open (as a killed process leaves its files), closed at the end.
	first, err := Open(ctx, Config{Dir: dir, Signer: s, CheckpointInterval: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		first.Close(cctx)
	})
	var last uint64
	for i := range 5 {
		if last, err = first.Record(ctx, Event{V: 1, TS: time.Now(), Kind: "test.acknowledged", Fields: map[string]string{"n": string(rune('a' + i))}}); err != nil {
			t.Fatal(err)
		}
	}
	cp, err := first.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := checkpointSize(cp); n > last {
		t.Fatalf("setup: the checkpoint (%d) already covers entry %d", n, last)
	}
	// The next process opens and closes at once.
	next, err := Open(ctx, Config{Dir: dir, Signer: s, CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Close(ctx); err != nil {
		t.Fatal(err)
	}
	cp, err = first.Checkpoint(ctx) // the same files: what a verifier reads
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := checkpointSize(cp); n <= last {
		t.Fatalf("closed with the published checkpoint at size %d: acknowledged entry %d is in no checkpoint", n, last)
	}
}
