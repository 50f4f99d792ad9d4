package audit

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"
)

// recordingLog keeps what the judge says.
type recordingLog struct{ errs, warns []string }

func (r *recordingLog) Error(msg string, _ ...any) { r.errs = append(r.errs, msg) }
func (r *recordingLog) Warn(msg string, _ ...any)  { r.warns = append(r.warns, msg) }

// judgeFixture: a witness (cosignature/v1 key) in a 1-of-1 group, a checkpoint of size 5
// sent to it, and its honest answer.
func judgeFixture(t testing.TB) (*witnessJudge, string, []byte, string) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "witness.test/judge")
	if err != nil {
		t.Fatal(err)
	}
	s, err := f_note.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := f_note.NewVerifierForCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	w := tessera.Witness{Key: v, URL: "http://witness.test/add-checkpoint"}
	logKey, _, _ := note.GenerateKey(rand.Reader, "log.test/judge")
	ls, _ := note.NewSigner(logKey)
	cp, err := note.Sign(&note.Note{Text: "log.test/judge\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"}, ls)
	if err != nil {
		t.Fatal(err)
	}
	cosigned, err := note.Sign(&note.Note{Text: "log.test/judge\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"}, s)
	if err != nil {
		t.Fatal(err)
	}
	sig := string(cosigned[strings.Index(string(cosigned), "\n\n")+2:])
	return newWitnessJudge(tessera.NewWitnessGroup(1, w), nil), w.URL, cp, sig
}

func TestWitnessJudge(t *testing.T) {
	j, u, cp, sig := judgeFixture(t)
	forged := strings.Replace(sig, sig[len(sig)-6:len(sig)-1], "AAAAA", 1)
	for _, c := range []struct {
		what   string
		status int
		body   string
		alert  bool
		warn   bool
	}{
		{"honest", http.StatusOK, sig, false, false},
		{"a cosignature that does not verify", http.StatusOK, forged, true, false},
		{"a 409 with a larger tree", http.StatusConflict, "9\n", true, false},
		{"the usual 409", http.StatusConflict, "3\n", false, false},
		{"a redirect", http.StatusTemporaryRedirect, "", false, true},
		{"honest again", http.StatusOK, sig, false, false},
		{"the same forgery twice: said once", http.StatusOK, forged, true, false},
		{"the same forgery again: not said again", http.StatusOK, forged, false, false},
	} {
		var lg recordingLog
		j.log = &lg
		j.judge(witnessAnswer{url: u, sent: cp, status: c.status, body: []byte(c.body)})
		if got := len(lg.errs) > 0; got != c.alert {
			t.Errorf("%s: ALERT %v, want %v (%q)", c.what, got, c.alert, lg.errs)
		}
		if got := len(lg.warns) > 0; got != c.warn {
			t.Errorf("%s: WARN %v, want %v (%q)", c.what, got, c.warn, lg.warns)
		}
		for _, m := range append(lg.errs, lg.warns...) {
			if !strings.Contains(m, "witness.test/judge") {
				t.Errorf("%s: %q does not name the witness", c.what, m)
			}
		}
	}
}

// FuzzWitnessJudge: whatever a witness answers, judging it does not panic, and its honest
// cosignature is never said to be wrong.
func FuzzWitnessJudge(f *testing.F) {
	j, u, cp, sig := judgeFixture(f)
	f.Add(200, sig)
	f.Add(409, "18446744073709551615\n")
	f.Add(409, "-1")
	f.Add(200, "— witness.test/judge AAAA\n")
	f.Add(500, strings.Repeat("\n", 100))
	f.Fuzz(func(t *testing.T, status int, body string) {
		j.log = &recordingLog{}
		j.judge(witnessAnswer{url: u, sent: cp, status: status, body: []byte(body)})
		lg := &recordingLog{}
		j.log = lg
		j.said = map[string]string{}
		j.judge(witnessAnswer{url: u, sent: cp, status: http.StatusOK, body: []byte(sig)})
		if len(lg.errs)+len(lg.warns) > 0 {
			t.Fatalf("an honest cosignature was said wrong: %q %q", lg.errs, lg.warns)
		}
	})
}

// A log on local disk: tessera asks its witnesses itself, through the client Open gives
// it. A witness answering 307 to an internal address must not make the log POST there (by
// default tessera's posix storage used net/http's client, which follows redirects), and
// must be said.
func TestLocalLogWitnessRedirect(t *testing.T) {
	var hits atomic.Int64
	inner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer inner.Close()
	s, v, _ := newKeys(t, "strongroom.test/local-redirect")
	w := newA10Witness(t, "witness.test/local-redirect", s, v) // honest at first: the log's first checkpoint needs it
	group := tessera.NewWitnessGroup(1, w.w)
	var logged syncBuffer
	l, err := Open(context.Background(), Config{Dir: t.TempDir(), Signer: s, CheckpointInterval: 100 * time.Millisecond, EntryKey: testEntryKey,
		Witnesses: &group, WitnessTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(context.Background())
	w.set(func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, inner.URL+"/internal/admin", http.StatusTemporaryRedirect)
	})
	go l.Record(context.Background(), event(1)) // durable whatever the witness does; its checkpoint waits
	said := "audit log: witness witness.test/local-redirect answered HTTP 307"
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logged.String(), said) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logged.String(), said) {
		t.Errorf("no %q within 20 s (%d witness requests answered by the redirect); log:\n%s", said, w.faked.Load(), logged.String())
	}
	if n := hits.Load(); n > 0 {
		t.Errorf("the internal address got %d requests through the witness's redirect", n)
	}
	w.set(nil) // honest again: the waiting checkpoint goes out, and Close need not wait on it
}
