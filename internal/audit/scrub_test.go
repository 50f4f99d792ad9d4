package audit

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestScrubFindsAlteredHistory: after checkpoints covered them, someone with write access
// to the database replaces an entry's bytes in TiledLeaves (tiles and tree untouched: the
// signer, which checked the entry once, signs on) and alters a record in a request batch's
// bundle. Every replica's history walk names both, against the tree it trusts, without
// any verifier running.
func TestScrubFindsAlteredHistory(t *testing.T) {
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/scrub")
	db := testAdmin(t, dsn)
	l, logs := a6Replica(t, dsn, s, 10*time.Millisecond)
	a5Fill(t, l, 3)
	a2Batch(t, l, 0, 5) // entry 3: a batch of five records
	for i := 4; i < 6; i++ {
		if _, err := l.Record(context.Background(), event(i)); err != nil {
			t.Fatal(err)
		}
	}
	a2WaitVerify(t, l, v, 6, nil)
	// Whole walks (each step covers the six entries), the batch's bundle checked at least
	// once (every tenth step), with nothing altered: no alert.
	waitFor(t, func() bool { return l.scrub.steps.Load() >= 2*scrubBundleEvery })
	if strings.Contains(logs.String(), "ALERT") || testutil.ToFloat64(l.scrub.failures) != 0 {
		t.Fatalf("the walk alerted on an unaltered log (%v failures, %q):\n%s", testutil.ToFloat64(l.scrub.failures), l.scrub.alerted, logs.String())
	}

	leaves := a3ReadLeaves(t, db)
	forged := a3ForgedBatch(t, db, "attacker-history")
	swapped := append([][]byte{}, leaves...)
	swapped[1] = forged
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(swapped)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "the shared log's history was altered after it was signed") &&
			strings.Contains(logs.String(), "entry 1 no longer matches the signed tree")
	})
	if _, err := db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = 0", a3Bundle(leaves)); err != nil {
		t.Fatal(err)
	}

	// A record in the batch's bundle altered (same length, same count).
	var name string
	var data []byte
	if err := db.QueryRow("SELECT `name`, `data` FROM `StrongroomBatch` WHERE LENGTH(`data`) > 100 LIMIT 1").Scan(&name, &data); err != nil {
		t.Fatal(err)
	}
	altered := bytes.Replace(data, []byte(`"decision":"allow"`), []byte(`"decision":"deny!"`), 1)
	if bytes.Equal(altered, data) {
		t.Fatalf("bundle %s holds no allowed record", name)
	}
	if _, err := db.Exec("UPDATE `StrongroomBatch` SET `data` = ? WHERE `name` = ?", altered, name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "entry 3: security error: batch bundle "+name)
	})
	if n := testutil.ToFloat64(l.scrub.failures); n < 2 {
		t.Errorf("strongroom_audit_scrub_failures_total is %v after two alterations", n)
	}
}

// TestScrubDeletedAndStalled: a signed entry bundle's row deleted is an alteration (named,
// not retried in silence), and a walk whose reads keep failing (the tiles' table renamed)
// raises its own ALERT after scrubStallSteps steps.
func TestScrubDeletedAndStalled(t *testing.T) {
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/scrub2")
	db := testAdmin(t, dsn)
	l, logs := a6Replica(t, dsn, s, 5*time.Millisecond)
	a5Fill(t, l, 3)
	a2WaitVerify(t, l, v, 3, nil)
	var data []byte
	var size int
	if err := db.QueryRow("SELECT `size`, `data` FROM `TiledLeaves` WHERE `tile_index` = 0").Scan(&size, &data); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("DELETE FROM `TiledLeaves` WHERE `tile_index` = 0"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "history was altered after it was signed") && strings.Contains(logs.String(), "deleted from the log's storage")
	})
	if _, err := db.Exec("INSERT INTO `TiledLeaves` (`tile_index`, `size`, `data`) VALUES (0, ?, ?)", size, data); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("RENAME TABLE `Subtree` TO `Subtree_gone`"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "the walk over the shared log's history has not advanced")
	})
	if _, err := db.Exec("RENAME TABLE `Subtree_gone` TO `Subtree`"); err != nil {
		t.Fatal(err)
	}
}
