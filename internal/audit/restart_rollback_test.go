package audit

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRollbackAcrossRestart: the Checkpoint row put back to an older authentic checkpoint
// while the replica that read the newer one is stopped. The replica keeps the largest
// published size it read on its own disk, so when it comes back it raises the rollback
// ALERT (before, a restarted replica took the row it found as its starting point, and the
// rollback went unsaid). A replica with a new data directory has no such memory: it
// raises none (the limit: its floor comes from the witnesses, see repairwitness.go).
func TestRollbackAcrossRestart(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db := sharedTestLog(t, "strongroom.test/rollback-restart")
	dir := t.TempDir()
	l, _ := a3OpenDir(t, dsn, s, dir)
	a7Record(t, l, 0, 5)
	a := a2WaitVerify(t, l, v, 5, nil).Size
	older := checkpointRow(t, db)
	a7Record(t, l, 10, 5)
	b := a2WaitVerify(t, l, v, a+5, nil).Size
	// The watch reads the row once a second: wait until this replica has kept size b.
	waitFor(t, func() bool {
		got, err := readPublishedSize(dir)
		return err == nil && got >= b
	})
	l.Close(ctx)

	if _, err := db.Exec("UPDATE `Checkpoint` SET `note` = ? WHERE `id` = 0", older); err != nil {
		t.Fatal(err)
	}
	_, logs := a3OpenDir(t, dsn, s, dir)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "ALERT audit log: the published checkpoint went back to an older one") {
		if time.Now().After(deadline) {
			t.Fatalf("no rollback ALERT after a restart over a row put back from %d to %d:\n%s", b, a, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readPublishedSize reads the published size a replica with local directory dir keeps.
func readPublishedSize(dir string) (uint64, error) {
	b, err := os.ReadFile(publishedPath(floorPath(dir)))
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(string(b), 10, 64)
}
