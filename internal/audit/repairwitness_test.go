package audit

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/witness"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"
)

// TestRepairFloorBehindWitness: a repair's floor is the largest signed tree its replica
// knows. An attacker with write access to the shared log's database puts an older signed
// checkpoint back in the Checkpoint row and overwrites an entry that a later checkpoint —
// cosigned by the log's witness — covers; the operator repairs from a data directory that
// never saw the later checkpoint. Without the witnesses the repair would take the old
// checkpoint as its floor and rewrite published entries. It must be refused (and change
// nothing); a repair whose witnesses cannot be asked is refused too; once the latest
// checkpoint is back, a repair of a poisoned unsigned entry goes through, with the
// witness's answer in its log entry.
func TestRepairFloorBehindWitness(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/repair-witness")
	db := testAdmin(t, dsn)

	wskey, wvkey, _ := note.GenerateKey(rand.Reader, "witness.test/w1")
	cs, err := f_note.NewSignerForCosignatureV1(wskey)
	if err != nil {
		t.Fatal(err)
	}
	cv, _ := f_note.VKeyToCosignatureV1(wvkey)
	ws, err := witness.New(witness.Config{Signer: cs, Logs: map[string]note.Verifier{s.Name(): v}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		ws.ServeHTTP(w, r)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	w, err := tessera.NewWitness(cv, u)
	if err != nil {
		t.Fatal(err)
	}
	group := tessera.NewWitnessGroup(1, w)
	open := func() (*Log, *syncBuffer) {
		logs := &syncBuffer{}
		l, err := Open(ctx, Config{EntryKey: testEntryKey, DB: dsn, Dir: t.TempDir(), Signer: s, Witnesses: &group, WitnessTimeout: 3 * time.Second,
			ShutdownTimeout: time.Second, Logger: newTextLogger(logs)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close(ctx) })
		return l, logs
	}
	record := func(l *Log, n int) {
		for i := range n {
			if _, err := l.Record(ctx, event(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkpointRow := func() []byte {
		var b []byte
		if err := db.QueryRow("SELECT `note` FROM `Checkpoint` WHERE `id` = 0").Scan(&b); err != nil {
			t.Fatal(err)
		}
		return b
	}

	l1, _ := open()
	record(l1, 10)
	a := a2WaitVerify(t, l1, v, 10, nil).Size
	older := checkpointRow()
	record(l1, 10)
	b := a2WaitVerify(t, l1, v, a+10, nil).Size
	latest := checkpointRow()
	orig := a2Entries(t, l1.reader)
	l1.Close(ctx)

	// The attack: the older checkpoint back in the row, a published entry overwritten.
	if _, err := db.Exec("UPDATE `Checkpoint` SET `note` = ? WHERE `id` = 0", older); err != nil {
		t.Fatal(err)
	}
	signedEntry := a + 2
	poisonEntry(t, db, signedEntry, unsealed(t, a5Forged("rewritten after publication")))

	l2, _ := open() // a data directory that never saw checkpoint b
	before := a2Entries(t, l2.reader)
	waitFor(t, func() bool { return l2.leader.check(ctx) == nil })
	rep, err := l2.Repair(ctx, signedEntry, "the signer refuses", nil, nil)
	if !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), fmt.Sprintf("holds a checkpoint of size %d, past this repair's floor %d", b, a)) {
		t.Fatalf("repair below the witnessed tree: %+v, %v", rep, err)
	}
	if after := a2Entries(t, l2.reader); len(after) != len(before) || string(after[signedEntry]) != string(before[signedEntry]) {
		t.Fatalf("a refused repair changed the log: %d entries before, %d after", len(before), len(after))
	}

	// The operator's remedy: the entry and the latest checkpoint back from a backup. The
	// published entry stays out of reach; a poisoned entry past it can be repaired — but
	// not while the witness is away.
	poisonEntry(t, db, signedEntry, orig[signedEntry])
	if _, err := db.Exec("UPDATE `Checkpoint` SET `note` = ? WHERE `id` = 0", latest); err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Repair(ctx, signedEntry, "signed", nil, nil); !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "signed history is never rewritten") {
		t.Fatalf("repair of a witnessed entry once the row is right: %v", err)
	}
	down.Store(true) // and so no checkpoint is published past the entries below
	bad := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker"))).Index
	poisonEntry(t, db, bad, unsealed(t, a5Forged("decoy")))
	if bad < b {
		t.Fatalf("forged entry at %d, below the witnessed tree %d", bad, b)
	}
	if _, err := l2.Repair(ctx, bad, "witness away", nil, nil); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "only 0 of 1 witnesses answered") || !strings.Contains(err.Error(), "status 503") {
		t.Fatalf("repair with its witness away: %v", err)
	}
	down.Store(false)
	rep, err = l2.Repair(ctx, bad, "incident 12", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Witnesses.Configured != 1 || rep.Witnesses.Answered != 1 || len(rep.Dropped) != 1 || rep.Dropped[0].Index != bad {
		t.Fatalf("repair report: %+v", rep)
	}
	ev, err := ParseEvent(a2Entries(t, l2.reader)[rep.At])
	if err != nil || ev.Kind != KindLogRepair || ev.Fields["witnesses"] != "1 of 1 witnesses (quorum 1) hold no checkpoint past the floor" {
		t.Fatalf("repair entry: %+v %v", ev, err)
	}
	a2WaitVerify(t, l2, v, rep.At+1, nil)
}
