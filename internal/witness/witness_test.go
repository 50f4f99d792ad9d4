package witness

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

type logFixture struct {
	dir    string
	signer note.Signer
	vkey   note.Verifier
	log    *audit.Log
}

func newLogKeys(t *testing.T) (note.Signer, note.Verifier) {
	skey, vkey, _ := note.GenerateKey(rand.Reader, "strongroom.test/log")
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	return s, v
}

func openLog(t *testing.T, s note.Signer, wg *tessera.WitnessGroup) *audit.Log {
	t.Helper()
	l, err := audit.Open(context.Background(), audit.Config{Dir: filepath.Join(t.TempDir(), "log"), Signer: s, Witnesses: wg,
		CheckpointInterval: 100 * time.Millisecond, ShutdownTimeout: 2 * time.Second, WitnessTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func record(t *testing.T, l *audit.Log, n int, kind string) {
	t.Helper()
	var fs []audit.Future
	for i := range n {
		fs = append(fs, l.Submit(context.Background(), audit.Event{V: 1, TS: time.Unix(int64(i), 0), Kind: audit.Kind(kind)}))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
}

// waitCheckpoint waits until the published checkpoint has size n.
func waitCheckpoint(t *testing.T, l *audit.Log, n uint64) []byte {
	t.Helper()
	for range 100 {
		cp, err := l.Checkpoint(context.Background())
		if err == nil && strings.Contains(string(cp), fmt.Sprintf("\n%d\n", n)) {
			return cp
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no checkpoint of size %d", n)
	return nil
}

func newWitness(t *testing.T, name string, logs map[string]note.Verifier, dir string) (*Server, string) {
	t.Helper()
	skey, vkey, _ := note.GenerateKey(rand.Reader, name)
	s, err := f_note.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	cv, _ := f_note.VKeyToCosignatureV1(vkey)
	w, err := New(Config{Signer: s, Logs: logs, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return w, cv
}

func request(old uint64, proof [][]byte, cp []byte) []byte {
	b := fmt.Sprintf("old %d\n", old)
	for _, p := range proof {
		b += base64.StdEncoding.EncodeToString(p) + "\n"
	}
	return append([]byte(b+"\n"), cp...)
}

func status(err error) int {
	var he *httpError
	if errors.As(err, &he) {
		return he.status
	}
	return 0
}

func TestAddCheckpoint(t *testing.T) {
	s, v := newLogKeys(t)
	l := openLog(t, s, nil)
	defer l.Close(context.Background())
	dir := t.TempDir()
	w, _ := newWitness(t, "w1", map[string]note.Verifier{v.Name(): v}, dir)

	record(t, l, 10, "test.event")
	cp10 := waitCheckpoint(t, l, 10)
	sig, _, err := w.AddCheckpoint(request(0, nil, cp10))
	if err != nil || !strings.HasPrefix(string(sig), "— w1 ") {
		t.Fatalf("first cosign: %q, %v", sig, err)
	}
	// Stale old size: 409 with the witness's size.
	if _, size, err := w.AddCheckpoint(request(0, nil, cp10)); status(err) != 409 || size != 10 {
		t.Fatalf("stale old size: %v, %d", err, size)
	}
	// Same checkpoint again at old 10: idempotent.
	if _, _, err := w.AddCheckpoint(request(10, nil, cp10)); err != nil {
		t.Fatalf("re-cosign: %v", err)
	}
	record(t, l, 10, "test.event")
	cp20 := waitCheckpoint(t, l, 20)
	pb, _ := client.NewProofBuilder(context.Background(), 20, l.Reader().ReadTile)
	p, _ := pb.ConsistencyProof(context.Background(), 10, 20)
	if _, _, err := w.AddCheckpoint(request(10, p, cp20)); err != nil {
		t.Fatalf("extend: %v", err)
	}
	// A bad proof is refused.
	bad := append([][]byte{}, p...)
	bad[0] = make([]byte, 32)
	w2, _ := newWitness(t, "w2", map[string]note.Verifier{v.Name(): v}, t.TempDir())
	w2.AddCheckpoint(request(0, nil, cp10))
	if _, _, err := w2.AddCheckpoint(request(10, bad, cp20)); status(err) != 422 {
		t.Fatalf("bad proof: %v", err)
	}

	// A fork: another log under the same key with a different history of the same size.
	fork := openLog(t, s, nil)
	defer fork.Close(context.Background())
	record(t, fork, 20, "forked.event")
	fcp20 := waitCheckpoint(t, fork, 20)
	if _, _, err := w.AddCheckpoint(request(20, nil, fcp20)); status(err) != 422 {
		t.Fatalf("fork at the same size: %v", err)
	}
	// Rollback: a smaller checkpoint.
	if _, _, err := w.AddCheckpoint(request(20, nil, cp10)); status(err) != 400 {
		t.Fatalf("rollback: %v", err)
	}
	// Not signed by the log: 403; unknown origin: 404; garbage: 400.
	other, _ := newLogKeys(t)
	forged, _ := note.Sign(&note.Note{Text: strings.SplitN(string(cp20), "\n\n", 2)[0] + "\n"}, other)
	if _, _, err := w.AddCheckpoint(request(20, nil, forged)); status(err) != 403 {
		t.Fatalf("forged: %v", err)
	}
	if _, _, err := w.AddCheckpoint(request(0, nil, []byte("other.origin\n1\nAAAA\n\n— x y\n"))); status(err) != 404 {
		t.Fatalf("unknown origin: %v", err)
	}
	for _, body := range []string{"", "old x\n\ncp", "old 1\nnot base64!\n\ncp", "old 01\n\ncp", "old 1\n"} {
		if _, _, err := w.AddCheckpoint([]byte(body)); status(err) != 400 {
			t.Fatalf("body %q: %v", body, err)
		}
	}
	// The state survives a restart: a new server on the same directory still refuses the fork.
	w3, _ := newWitness(t, "w1b", map[string]note.Verifier{v.Name(): v}, dir)
	if _, _, err := w3.AddCheckpoint(request(20, nil, fcp20)); status(err) != 422 {
		t.Fatalf("fork after restart: %v", err)
	}
}

// TestWitnessedLog: three witnesses over loopback, a 2-of-3 policy. The log publishes only
// cosigned checkpoints, verification demands the quorum, and with two witnesses down
// nothing new is published.
func TestWitnessedLog(t *testing.T) {
	s, v := newLogKeys(t)
	logs := map[string]note.Verifier{v.Name(): v}
	var servers []*httptest.Server
	var children []tessera.Witness
	var verifiers []note.Verifier
	for i := range 3 {
		w, cv := newWitness(t, fmt.Sprintf("witness%d.test", i), logs, t.TempDir())
		srv := httptest.NewServer(w)
		defer srv.Close()
		servers = append(servers, srv)
		u, _ := url.Parse(srv.URL)
		tw, err := tessera.NewWitness(cv, u)
		if err != nil {
			t.Fatal(err)
		}
		children = append(children, tw)
		cvv, _ := f_note.NewVerifierForCosignatureV1(cv)
		verifiers = append(verifiers, cvv)
	}
	wg := tessera.NewWitnessGroup(2, children[0], children[1], children[2])
	dir := filepath.Join(t.TempDir(), "log")
	l, err := audit.Open(context.Background(), audit.Config{Dir: dir, Signer: s, Witnesses: &wg,
		CheckpointInterval: 100 * time.Millisecond, ShutdownTimeout: 2 * time.Second, WitnessTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	record(t, l, 5, "test.event")
	cp := waitCheckpoint(t, l, 5)
	f := client.FileFetcher{Root: dir}
	if _, err := audit.Verify(context.Background(), f, audit.VerifyOptions{LogKey: v, Witnesses: verifiers, Quorum: 2}); err != nil {
		t.Fatalf("verify with quorum 2: %v\n%s", err, cp)
	}
	// Three cosignatures demanded but the log's policy needs only two: verify may fail, and
	// must say why if it does.
	if _, err := audit.Verify(context.Background(), f, audit.VerifyOptions{LogKey: v, Witnesses: verifiers[:1], Quorum: 2}); !errors.Is(err, audit.ErrSecurity) {
		t.Fatalf("quorum of 2 from one witness key: %v", err)
	}
	servers[0].Close()
	record(t, l, 5, "test.event")
	waitCheckpoint(t, l, 10) // two witnesses still answer
	servers[1].Close()
	record(t, l, 5, "test.event")
	time.Sleep(700 * time.Millisecond)
	if cp, _ := l.Checkpoint(context.Background()); !strings.Contains(string(cp), "\n10\n") {
		t.Fatalf("checkpoint published without the witness quorum:\n%s", cp)
	}
	if err := l.Close(context.Background()); err == nil {
		t.Fatal("Close reported every event covered by a checkpoint without a witness quorum")
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("old 0\n\norigin\n1\nAAAA\n\n— k sig\n"))
	f.Add([]byte("old 5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\ncp"))
	f.Fuzz(func(t *testing.T, b []byte) {
		old, hashes, cp, err := parseRequest(b)
		if err != nil {
			return
		}
		if len(cp) == 0 || len(hashes) > maxProofHashes {
			t.Fatalf("accepted request without checkpoint or with %d hashes", len(hashes))
		}
		again := request(old, hashes, cp)
		if string(again) != string(b) {
			t.Fatalf("parse does not round-trip:\n%q\n%q", b, again)
		}
	})
}
