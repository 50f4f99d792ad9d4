package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

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
// nothing). A repair whose witnesses do not cosign the floor's tree is refused too — an
// unreachable one, and a network attacker's 409 ("I hold nothing") or forged 200; once the
// latest checkpoint is back, a repair of a poisoned unsigned entry goes through, the witness
// that was behind is brought to the floor with a consistency proof, and the witnesses'
// answer is in the repair's log entry.
func TestRepairFloorBehindWitness(t *testing.T) {
	t.Parallel() // see sqlTestDB
	ctx := context.Background()
	dsn, s, v, db := sharedTestLog(t, "strongroom.test/repair-witness")
	w1, w2 := newA10Witness(t, "witness.test/w1", s, v), newA10Witness(t, "witness.test/w2", s, v)
	group := tessera.NewWitnessGroup(1, w1.w, w2.w)
	// A cosignature line of another key: what a network attacker in w2's place can make.
	fakeKey, _, _ := note.GenerateKey(rand.Reader, "witness.test/w2")
	fake, _ := f_note.NewSignerForCosignatureV1(fakeKey)
	fakeNote, _ := note.Sign(&note.Note{Text: s.Name() + "\n1\nAAAA\n"}, fake)

	l1 := a10Open(t, dsn, s, group)
	a7Record(t, l1, 0, 10)
	a := a2WaitVerify(t, l1, v, 10, nil).Size
	older := checkpointRow(t, db)
	w2.set(a10Down) // it misses the checkpoints from here on: it stays behind
	a7Record(t, l1, 10, 10)
	b := a2WaitVerify(t, l1, v, a+10, nil).Size
	latest := checkpointRow(t, db)
	orig := a2Entries(t, l1.reader)
	l1.Close(ctx)
	w2.set(nil)

	// The attack: the older checkpoint back in the row, a published entry overwritten.
	if _, err := db.Exec("UPDATE `Checkpoint` SET `note` = ? WHERE `id` = 0", older); err != nil {
		t.Fatal(err)
	}
	signedEntry := a + 2
	poisonEntry(t, db, signedEntry, unsealed(t, a5Forged("rewritten after publication")))

	l2 := a10Open(t, dsn, s, group) // a data directory that never saw checkpoint b
	before := a2Entries(t, l2.reader)
	rep, err := l2.Repair(ctx, signedEntry, "the signer refuses", nil, nil)
	if !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), fmt.Sprintf("holds a checkpoint of size %d, past this repair's floor %d", b, a)) {
		t.Fatalf("repair below the witnessed tree: %+v, %v", rep, err)
	}
	if after := a2Entries(t, l2.reader); len(after) != len(before) || string(after[signedEntry]) != string(before[signedEntry]) {
		t.Fatalf("a refused repair changed the log: %d entries before, %d after", len(before), len(after))
	}

	// The operator's remedy: the entry and the latest checkpoint back from a backup. The
	// published entry stays out of reach; a poisoned entry past it can be repaired — once
	// the witnesses cosign the floor's tree.
	poisonEntry(t, db, signedEntry, orig[signedEntry])
	if _, err := db.Exec("UPDATE `Checkpoint` SET `note` = ? WHERE `id` = 0", latest); err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Repair(ctx, signedEntry, "signed", nil, nil); !errors.Is(err, ErrSecurity) || !strings.Contains(err.Error(), "signed history is never rewritten") {
		t.Fatalf("repair of a witnessed entry once the row is right: %v", err)
	}
	bad := a2AppendForged(t, dsn, s.Name(), unsealed(t, a5Forged("attacker"))).Index
	poisonEntry(t, db, bad, unsealed(t, a5Forged("decoy")))
	if bad < b {
		t.Fatalf("forged entry at %d, below the witnessed tree %d", bad, b)
	}
	for _, c := range []struct {
		h1, h2 http.HandlerFunc
		want   []string
	}{
		{a10Down, a10Down, []string{"0 of 2 witnesses cosigned the floor's tree", "status 503"}},
		{a10Reply(http.StatusConflict, "0\n"), a10Reply(http.StatusOK, a10Sigs(t, fakeNote)), []string{"0 of 2 witnesses cosigned the floor's tree", "status 409", "200 without a valid cosignature"}},
	} {
		w1.set(c.h1)
		w2.set(c.h2)
		_, err := l2.Repair(ctx, bad, "witnesses away", nil, nil)
		for _, w := range c.want {
			if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), w) {
				t.Fatalf("repair with witnesses away or impersonated: %v (want %q)", err, w)
			}
		}
	}
	w1.set(nil)
	w2.set(nil)
	rep, err = l2.Repair(ctx, bad, "incident 12", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Witnesses.Configured != 2 || rep.Witnesses.Answered != 2 || len(rep.Dropped) != 1 || rep.Dropped[0].Index != bad {
		t.Fatalf("repair report: %+v", rep)
	}
	ev, err := ParseEvent(a2Entries(t, l2.reader)[rep.At])
	if err != nil || ev.Kind != KindLogRepair || ev.Fields["witnesses"] != "2 of 2 witnesses cosigned the floor's tree and hold none past it (they meet the policy; the others cannot alone)" {
		t.Fatalf("repair entry: %+v %v", ev, err)
	}
	a2WaitVerify(t, l2, v, rep.At+1, nil)
}

// answerWith is an http.RoundTripper that answers every request with one status and body.
type answerWith struct {
	status int
	body   []byte
}

func (a answerWith) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: a.status, Body: io.NopCloser(bytes.NewReader(a.body)), Header: http.Header{}, Request: r}, nil
}

// FuzzWitnessAnswer: whatever a witness (or someone in front of it) answers, a repair's
// probe does not panic, and only a cosignature by the witness's own key counts as an answer.
func FuzzWitnessAnswer(f *testing.F) {
	s, _, _ := newKeys(f, "strongroom.test/fuzz-witness")
	skey, vkey, _ := note.GenerateKey(rand.Reader, "witness.test/fuzz")
	cs, _ := f_note.NewSignerForCosignatureV1(skey)
	cv, _ := f_note.VKeyToCosignatureV1(vkey)
	key, err := f_note.NewVerifierForCosignatureV1(cv)
	if err != nil {
		f.Fatal(err)
	}
	cp, _ := note.Sign(&note.Note{Text: s.Name() + "\n5\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"}, s)
	other, _ := note.Sign(&note.Note{Text: s.Name() + "\n5\nAAAA\n"}, cs)
	_, otherSig, _ := bytes.Cut(other, []byte("\n\n"))
	for _, seed := range []struct {
		status int
		body   string
	}{{200, string(otherSig)}, {409, "3\n"}, {409, "99\n"}, {409, "x"}, {422, ""}, {200, "— witness.test/fuzz AAAA\n"}, {500, "boom"}} {
		f.Add(seed.status, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 999 {
			return
		}
		w := witnessProbe{client: &http.Client{Transport: answerWith{status, body}}, cp: cp, floor: 5, url: "http://witness.invalid/add-checkpoint", key: key}
		why, err := w.ask(context.Background(), func(uint64) ([][]byte, error) { return nil, nil })
		if err == nil && why == "" {
			t.Fatalf("status %d body %q counted as the witness's cosignature", status, body)
		}
	})
}

// sharedTestLog is a new database for a shared log, its key, and an admin connection.
func sharedTestLog(t *testing.T, name string) (dsn string, s note.Signer, v note.Verifier, db *sql.DB) {
	t.Helper()
	dsn = sqlTestDB(t)
	s, v, _ = newKeys(t, name)
	return dsn, s, v, testAdmin(t, dsn)
}

// checkpointRow is the shared log's published checkpoint, read over plain SQL: with
// witnesses the witnessed row (cosign.go: tessera's Checkpoint row then holds the signer's
// checkpoint without cosignatures), else tessera's row.
func checkpointRow(t *testing.T, db *sql.DB) []byte {
	t.Helper()
	var b []byte
	err := db.QueryRow("SELECT `note` FROM `" + witnessedTable + "` WHERE `id` = 0").Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		err = db.QueryRow("SELECT `note` FROM `Checkpoint` WHERE `id` = 0").Scan(&b)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWitnessCheckNames: a 2-of-3 policy, one witness away behind a URL with a password.
// Two cosign: the repair may go on (the one away cannot have published alone); the check
// names the one away without its password, and says so in one line.
func TestWitnessCheckNames(t *testing.T) {
	s, v, _ := newKeys(t, "strongroom.test/witness-names")
	w1, w2, w3 := newA10Witness(t, "witness.test/n1", s, v), newA10Witness(t, "witness.test/n2", s, v), newA10Witness(t, "witness.test/n3", s, v)
	w3.set(a10Down)
	u, _ := url.Parse(w3.w.URL)
	u.User = url.UserPassword("ops", "hunter2-secret")
	w3.w.URL = u.String()
	g := tessera.NewWitnessGroup(2, w1.w, w2.w, w3.w)
	l := &Log{origin: s.Name(), signer: &leaderSigner{Signer: s}, witnesses: &g, witnessTimeout: time.Second}
	wc, err := l.checkFloorWitnessed(context.Background(), 0, nil, func(uint64) ([][]byte, error) { return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
	if wc.Configured != 3 || wc.Answered != 2 || len(wc.Unanswered) != 1 || !strings.Contains(wc.Unanswered[0], "ops:xxxxx@") ||
		strings.Contains(wc.Unanswered[0], "hunter2") || !strings.Contains(wc.Unanswered[0], "status 503") {
		t.Fatalf("check: %+v", wc)
	}
	if got := wc.String(); got != "2 of 3 witnesses cosigned the floor's tree and hold none past it (they meet the policy; the others cannot alone)" {
		t.Fatalf("check says %q", got)
	}
	// And with the one away reached only through a dead address: its error names no password.
	w3.w.URL = "http://ops:hunter2-secret@127.0.0.1:1/add-checkpoint"
	g = tessera.NewWitnessGroup(2, w1.w, w2.w, w3.w)
	wc, err = l.checkFloorWitnessed(context.Background(), 0, nil, func(uint64) ([][]byte, error) { return nil, nil })
	if err != nil || len(wc.Unanswered) != 1 || strings.Contains(wc.Unanswered[0], "hunter2") || !strings.Contains(wc.Unanswered[0], "unreachable") {
		t.Fatalf("check with a dead address: %+v %v", wc, err)
	}
}
