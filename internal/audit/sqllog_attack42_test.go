package audit

// Outside round 42: a witness is a third party, and may be hostile or broken. The shared
// log (MariaDB, several replicas) asks its witnesses outside tessera's transaction
// (cosign.go, DESIGN "Witnesses outside the lock") and serves only the StrongroomWitnessed
// row's checkpoint, checked by every replica (checkWitnessed). Claims attacked, for a
// witness that answers with a cosignature of another checkpoint, replays an old one,
// rotates its key, lies in a 409, sends oddly shaped answers or redirects; for replicas
// with different witness policies; and for a signer that keeps changing during witness
// rounds:
//
//   - every replica serves only a checkpoint the log key signed, that meets *its* witness
//     policy, and never one smaller than it served before (nor, for one policy, smaller
//     than another replica served before: a client behind a load balancer);
//   - appends are never held by a witness;
//   - a witness that misbehaves is said in the log (a WARN or an ALERT);
//   - once the witness is honest again (or the policy names its new key), the fleet
//     serves a cosigned checkpoint of every entry within ~10 s (15 s here).
//
// Helpers of rounds 2, 36, 37, 39 and 41 are reused (a39WitnessPairAll, a37Submit,
// a37Settled, a36WaitFor, a41Tail, a41Alerted, sigLine, signedBy).

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/witness"
	f_log "github.com/transparency-dev/formats/log"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"
)

// a42Key is one key of a witness: its cosignature/v1 signer, the real witness
// (internal/witness) signing with it, and the policy entry naming it.
type a42Key struct {
	cs  note.Signer
	srv *witness.Server
	w   tessera.Witness
}

// a42Act answers a witness request in the witness's place (body: the request's).
type a42Act func(w http.ResponseWriter, r *http.Request, body []byte)

// a42Witness is a real witness whose key the test holds, behind a switch: while an act is
// set it answers every request; otherwise the real witness does. rotate gives it a new key
// (same name, URL and state: the witness rotated its key without telling the log).
type a42Witness struct {
	name  string
	logs  map[string]note.Verifier
	state string
	u     *url.URL
	key   atomic.Pointer[a42Key]
	act   atomic.Pointer[a42Act]
	n     atomic.Int64           // requests
	last  atomic.Pointer[[]byte] // the real witness's last 200 answer
}

func newA42Witness(t *testing.T, name string, s note.Signer, v note.Verifier) *a42Witness {
	t.Helper()
	a := &a42Witness{name: name, logs: map[string]note.Verifier{s.Name(): v}, state: t.TempDir()}
	srv := httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(srv.Close)
	a.u, _ = url.Parse(srv.URL)
	a.rotate(t)
	return a
}

// rotate gives the witness a new key and returns the policy entry naming it.
func (a *a42Witness) rotate(t *testing.T) tessera.Witness {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, a.name)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := f_note.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	cv, err := f_note.VKeyToCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := witness.New(witness.Config{Signer: cs, Logs: a.logs, StateDir: a.state})
	if err != nil {
		t.Fatal(err)
	}
	tw, err := tessera.NewWitness(cv, a.u)
	if err != nil {
		t.Fatal(err)
	}
	a.key.Store(&a42Key{cs: cs, srv: srv, w: tw})
	return tw
}

func (a *a42Witness) entry() tessera.Witness { return a.key.Load().w }

// set puts act in front of the witness (nil: the real witness answers again).
func (a *a42Witness) set(act a42Act) {
	if act == nil {
		a.act.Store(nil)
		return
	}
	a.act.Store(&act)
}

func (a *a42Witness) serve(w http.ResponseWriter, r *http.Request) {
	a.n.Add(1)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "unreadable", http.StatusBadRequest)
		return
	}
	if act := a.act.Load(); act != nil {
		(*act)(w, r, body)
		return
	}
	a.answer(w, r, body)
}

// honest is the real witness's answer to the request.
func (a *a42Witness) honest(r *http.Request, body []byte) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	a.key.Load().srv.ServeHTTP(rec, r2)
	if rec.Code == http.StatusOK {
		b := bytes.Clone(rec.Body.Bytes())
		a.last.Store(&b)
	}
	return rec
}

// answer gives the real witness's answer.
func (a *a42Witness) answer(w http.ResponseWriter, r *http.Request, body []byte) {
	rec := a.honest(r, body)
	for k, vv := range rec.Header() {
		w.Header()[k] = vv
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

// cosign is the witness's cosignature line, with its current key, over text.
func (a *a42Witness) cosign(text []byte) string {
	cs := a.key.Load().cs
	sig, err := cs.Sign(text)
	if err != nil {
		return "\u2014 broken " + err.Error() + "\n"
	}
	return sigLine(cs, sig)
}

// a42Request is the request's old size and checkpoint (the log's signed note).
func a42Request(body []byte) (old uint64, cp []byte) {
	first, _, _ := bytes.Cut(body, []byte("\n"))
	old, _ = strconv.ParseUint(strings.TrimPrefix(string(first), "old "), 10, 64)
	_, cp, _ = bytes.Cut(body, []byte("\n\n"))
	return old, cp
}

// a42Text is a signed note's text (the checkpoint's body).
func a42Text(cp []byte) []byte {
	body, _, _ := bytes.Cut(cp, []byte("\n\n"))
	return append(bytes.Clone(body), '\n')
}

// a42Reply answers status, content type and body.
func a42Reply(status int, ctype, body string) a42Act {
	return func(w http.ResponseWriter, r *http.Request, _ []byte) {
		if ctype != "" {
			w.Header().Set("Content-Type", ctype)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// other answers 200 with the witness's real cosignature of the checkpoint asked for as
// change leaves it (another size, root or origin).
func (a *a42Witness) other(change func(*f_log.Checkpoint)) a42Act {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		_, cp := a42Request(body)
		var c f_log.Checkpoint
		if _, err := c.Unmarshal(a42Text(cp)); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		change(&c)
		w.Header().Set("Content-Type", "text/x.tlog.signature")
		io.WriteString(w, a.cosign(c.Marshal()))
	}
}

// slow gives the real witness's answer after d.
func (a *a42Witness) slow(d time.Duration) a42Act {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		a.answer(w, r, body)
	}
}

// edited gives the real witness's answer, its body passed through edit when it is a 200.
func (a *a42Witness) edited(edit func(sig []byte) string) a42Act {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		rec := a.honest(r, body)
		if rec.Code != http.StatusOK {
			w.Header().Set("Content-Type", rec.Header().Get("Content-Type"))
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return
		}
		w.Header().Set("Content-Type", "text/x.tlog.signature")
		io.WriteString(w, edit(rec.Body.Bytes()))
	}
}

// a42Junk is n signature lines of keys nobody knows.
func a42Junk(n int) string {
	var b strings.Builder
	for i := range n {
		raw := make([]byte, 4+72)
		rand.Read(raw)
		fmt.Fprintf(&b, "\u2014 junk.example/%d %s\n", i, base64.StdEncoding.EncodeToString(raw))
	}
	return b.String()
}

// a42Rep is a replica as the watch reads it: its name, and its own witness policy (nil:
// none).
type a42Rep struct {
	name string
	l    *Log
	g    *tessera.WitnessGroup
}

// a42Watcher reads every replica's served checkpoint (Log.Checkpoint: /log/checkpoint)
// every 20 ms, one after another as a client behind a load balancer would, and collects
// what breaks the claims: a checkpoint the log key did not sign, one that does not meet the
// replica's own policy, one smaller than the replica served before, and (global) one
// smaller than any replica served before.
type a42Watcher struct {
	s      note.Signer
	global bool
	mu     sync.Mutex // held while reading: remove waits for a read in flight
	reps   []a42Rep
	last   map[string]uint64
	top    uint64
	sizes  map[string][]uint64 // the sizes each replica served, as they changed
	errs   map[string]int
	bad    []string
	badSet map[string]bool
	reads  int
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

func a42Watch(t *testing.T, s note.Signer, global bool, reps ...a42Rep) *a42Watcher {
	w := &a42Watcher{s: s, global: global, reps: reps, last: map[string]uint64{}, sizes: map[string][]uint64{}, errs: map[string]int{},
		badSet: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			w.mu.Lock()
			for _, r := range w.reps {
				w.read(r)
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.finish() })
	return w
}

func (w *a42Watcher) read(r a42Rep) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	cp, err := r.l.Checkpoint(ctx)
	cancel()
	w.reads++
	if err != nil {
		w.errs[r.name]++
		return
	}
	n := cpSize(cp)
	var why []string
	if !signedBy(w.s, cp) {
		why = append(why, fmt.Sprintf("replica %s served a checkpoint of size %d the log key did not sign", r.name, n))
	}
	if r.g != nil && !r.g.Satisfied(cp) {
		why = append(why, fmt.Sprintf("replica %s served size %d without its own witness policy met: %q", r.name, n, cp))
	}
	if n < w.last[r.name] {
		why = append(why, fmt.Sprintf("replica %s served size %d after it served %d (rolled back)", r.name, n, w.last[r.name]))
	}
	if w.global && n < w.top {
		why = append(why, fmt.Sprintf("a client read size %d from replica %s after reading %d (from another replica): rolled back across replicas", n, r.name, w.top))
	}
	for _, s := range why {
		if !w.badSet[s] && len(w.bad) < 20 {
			w.badSet[s] = true
			w.bad = append(w.bad, s)
		}
	}
	if s := w.sizes[r.name]; len(s) == 0 || s[len(s)-1] != n {
		w.sizes[r.name] = append(s, n)
	}
	w.last[r.name] = max(w.last[r.name], n)
	w.top = max(w.top, n)
}

func (w *a42Watcher) add(r a42Rep) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.reps = append(w.reps, r)
}

// remove stops reading l (before it is closed).
func (w *a42Watcher) remove(l *Log) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.reps = slices.DeleteFunc(w.reps, func(r a42Rep) bool { return r.l == l })
}

// finish stops the watch and returns what broke the claims.
func (w *a42Watcher) finish() []string {
	w.once.Do(func() { close(w.stop) })
	<-w.done
	return w.bad
}

func (w *a42Watcher) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for name, s := range w.sizes {
		if len(s) > 12 {
			s = append(append([]uint64(nil), s[:5]...), s[len(s)-6:]...)
		}
		out = append(out, fmt.Sprintf("%s: %v (%d errors)", name, s, w.errs[name]))
	}
	slices.Sort(out)
	return fmt.Sprintf("%d reads; served sizes %s", w.reads, strings.Join(out, "; "))
}

// a42Check fails t with what the watch found.
func a42Check(t *testing.T, w *a42Watcher) {
	t.Helper()
	bad := w.finish()
	t.Logf("watch: %s", w.summary())
	for _, s := range bad {
		t.Errorf("CLAIM BROKEN (served: log-signed, own policy met, never rolled back): %s", s)
	}
}

// a42Fleet is two replicas of one log (b signs first), their witnesses and policy, and
// every record's answer.
type a42Fleet struct {
	a, b   *Log
	la, lb *syncBuffer
	w      []*a42Witness
	g      tessera.WitnessGroup
	s      note.Signer
	v      note.Verifier
	dsn    string
	watch  *a42Watcher
	mu     sync.Mutex
	id     int
	outs   []a37Outcome
}

// newA42Fleet opens the fleet with witnesses named names under a quorum-of-them policy
// (1 or 3 witnesses), CheckpointStall 3 s, witness timeout 3 s, and waits for both replicas
// to serve a cosigned checkpoint of 3 entries. The watch runs (global).
func newA42Fleet(t *testing.T, quorum int, names ...string) *a42Fleet {
	t.Helper()
	f := &a42Fleet{dsn: sqlTestDB(t), id: 1}
	f.s, f.v, _ = newKeys(t, "strongroom.test/attack42")
	for _, n := range names {
		f.w = append(f.w, newA42Witness(t, n, f.s, f.v))
	}
	switch len(f.w) {
	case 1:
		f.g = tessera.NewWitnessGroup(quorum, f.w[0].entry())
	case 3:
		f.g = tessera.NewWitnessGroup(quorum, f.w[0].entry(), f.w[1].entry(), f.w[2].entry())
	default:
		t.Fatalf("a42 fleet: %d witnesses", len(f.w))
	}
	f.a, f.b, f.la, f.lb = a39WitnessPairAll(t, f.dsn, f.g, nil, func(c *Config) { c.CheckpointStall = 3 * time.Second }, f.s)
	f.submit(t, f.a, 3)
	if !f.served(t, 10*time.Second, f.size(t), f.rep("a"), f.rep("b")) {
		t.Fatalf("premise: no cosigned checkpoint of 3 entries; signer log tail:\n%s", a41Tail(f.lb, 6))
	}
	f.watch = a42Watch(t, f.s, true, f.rep("a"), f.rep("b"))
	// One policy on both: neither says they differ (witnesspolicy.go).
	requirePolicies(t, "premise", false, f.a, f.b)
	return f
}

func (f *a42Fleet) rep(name string) a42Rep {
	if name == "a" {
		return a42Rep{"a", f.a, &f.g}
	}
	return a42Rep{"b", f.b, &f.g}
}

// submit records n events on l at once and holds the claim that appends are not held by
// a witness: each is acknowledged within 2.5 s (see TestAttack41ConflictForeverThenRecovery).
func (f *a42Fleet) submit(t *testing.T, l *Log, n int) {
	t.Helper()
	f.mu.Lock()
	ids := make([]int, n)
	for i := range ids {
		ids[i] = f.id
		f.id++
	}
	f.mu.Unlock()
	name := "a"
	if l == f.b {
		name = "b"
	}
	outs := a37Submit(l, name, ids...)
	f.mu.Lock()
	f.outs = append(f.outs, outs...)
	f.mu.Unlock()
	for _, o := range outs {
		if o.err != nil || o.took >= 2500*time.Millisecond {
			t.Errorf("CLAIM BROKEN (appends are never held by a witness): record %d on %s: %v after %v", o.id, name, o.err, o.took.Round(time.Millisecond))
		}
	}
}

func (f *a42Fleet) size(t *testing.T) uint64 {
	t.Helper()
	n, err := f.b.IntegratedSize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// served waits (up to d) for every rep to serve a checkpoint of at least least entries
// that meets its policy.
func (f *a42Fleet) served(t *testing.T, d time.Duration, least uint64, reps ...a42Rep) bool {
	t.Helper()
	return a36WaitFor(d, func() bool {
		for _, r := range reps {
			cp, err := r.l.Checkpoint(context.Background())
			if err != nil || cpSize(cp) < least || (r.g != nil && !r.g.Satisfied(cp)) {
				return false
			}
		}
		return true
	})
}

// a42Warned is the first line of log (from its byte off on) that says a witness round
// failed and contains every one of want ("": none).
func a42Warned(buf *syncBuffer, off int, want ...string) string {
	s := buf.String()
	if off > len(s) {
		off = len(s)
	}
	for line := range strings.Lines(s[off:]) {
		if !strings.Contains(line, "witness round failed") {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// hostile runs one phase: act answers for w while entries are recorded on both replicas,
// until the signer WARNs of a failed witness round containing want (10 s at most). Held:
// appends go on (submit), the signer says it, no checkpoint past the ones before the
// phase is served (w is the only witness of a 1-of-1 policy), and once w is honest again
// both replicas serve a cosigned checkpoint of every entry within 15 s.
func (f *a42Fleet) hostile(t *testing.T, what string, w *a42Witness, act a42Act, want ...string) {
	t.Helper()
	ctx := context.Background()
	off := len(f.lb.String())
	n0 := w.n.Load()
	w.set(act)
	pre := f.size(t)
	var line string
	polls := 0
	warned := a36WaitFor(10*time.Second, func() bool {
		if polls++; polls%10 == 1 { // entries every 200 ms
			f.submit(t, f.a, 1)
			f.submit(t, f.b, 1)
		}
		line = a42Warned(f.lb, off, want...)
		return line != ""
	})
	if !warned {
		t.Errorf("CLAIM BROKEN (a misbehaving witness is said): %s: no WARN of a failed witness round containing %q within 10 s (%d witness requests); signer log tail:\n%s",
			what, want, w.n.Load()-n0, a41Tail(f.lb, 6))
	} else {
		t.Logf("%s: the signer says: %.400s", what, line)
	}
	for _, r := range []a42Rep{f.rep("a"), f.rep("b")} {
		if cp, err := r.l.Checkpoint(ctx); err != nil || cpSize(cp) > pre {
			t.Errorf("CLAIM BROKEN (nothing is served past what the policy's only witness cosigned): %s: replica %s serves size %d (%v), the phase began at %d",
				what, r.name, cpSize(cp), err, pre)
		}
	}
	w.set(nil)
	f.recovers(t, what)
}

// recovers records an entry and waits for both replicas to serve a checkpoint of every
// entry meeting the policy (15 s at most).
func (f *a42Fleet) recovers(t *testing.T, what string) {
	t.Helper()
	f.submit(t, f.a, 1)
	size := f.size(t)
	t0 := time.Now()
	if !f.served(t, 15*time.Second, size, f.rep("a"), f.rep("b")) {
		cp, _ := f.a.Checkpoint(context.Background())
		t.Errorf("CLAIM BROKEN (the fleet recovers when the witness is honest again): %s: 15 s after, replica a serves size %d (policy met %v) of %d entries; signer log tail:\n%s",
			what, cpSize(cp), f.g.Satisfied(cp), size, a41Tail(f.lb, 6))
		return
	}
	t.Logf("%s: recovered %v after the witness turned honest", what, time.Since(t0).Round(time.Millisecond))
}

// settle holds that every acknowledged record is in a checkpoint that verifies, as l
// serves it.
func (f *a42Fleet) settle(t *testing.T, l *Log) {
	t.Helper()
	f.mu.Lock()
	outs := slices.Clone(f.outs)
	f.mu.Unlock()
	a37Report(t, a37Settled(t, l, f.v, outs, 15*time.Second))
}

// open opens one more replica of the fleet's log with policy g (nil: none).
func (f *a42Fleet) open(t *testing.T, g *tessera.WitnessGroup, buf *syncBuffer) *Log {
	t.Helper()
	l, err := Open(context.Background(), Config{EntryKey: testEntryKey, DB: f.dsn, Dir: t.TempDir(), Signer: f.s, Witnesses: g, WitnessTimeout: 3 * time.Second,
		ShutdownTimeout: 2 * time.Second, CheckpointStall: 3 * time.Second, Logger: newTextLogger(buf)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a36Close(l) })
	return l
}

// a42TakeOver makes want the signer without closing anyone: it kills the signer lock's
// session on the server (as a network cut or the engine's administrator would), takes the
// lock itself until no replica thinks it signs (a killed idle session keeps its lock until
// its replica's next poll wakes it, and that replica takes the lock again at once), then
// lets it go, until want wins it.
func a42TakeOver(t *testing.T, admin *sql.DB, want *Log, others ...*Log) {
	t.Helper()
	ctx := context.Background()
	conn, err := admin.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	name := want.leader.name
	nobody := func() bool { return !want.Signer() && !slices.ContainsFunc(others, (*Log).Signer) }
	done := func() bool { return want.Signer() && !slices.ContainsFunc(others, (*Log).Signer) }
	for try := 0; try < 20; try++ {
		if done() {
			return
		}
		if !want.Signer() {
			var id sql.NullInt64
			if err := conn.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", name).Scan(&id); err == nil && id.Valid {
				conn.ExecContext(ctx, "KILL "+strconv.FormatInt(id.Int64, 10))
			}
			var got sql.NullInt64
			if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 3)", name).Scan(&got); err == nil && got.Int64 == 1 {
				a36WaitFor(3*time.Second, nobody)
				conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", name)
			}
		}
		a36WaitFor(time.Second, done)
	}
	t.Fatal("premise: the replica did not take the signer lock in 20 tries")
}

// TestAttack42CosignsAnotherCheckpoint — a witness answers 200 with a cosignature made with
// its real key, but over another checkpoint than the one it was asked for: a larger tree
// with the same root, the same size with another root (a fork), another origin. Claims:
// the round fails with a WARN that says the witness's signature is invalid; nothing is
// served past what the policy's only witness really cosigned; appends go on; the fleet
// recovers once the witness is honest.
func TestAttack42CosignsAnotherCheckpoint(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 1, "witness.test/a42other")
	w := f.w[0]
	f.hostile(t, "a larger tree, same root", w, w.other(func(c *f_log.Checkpoint) { c.Size += 1000 }), "invalid signature for key", w.name)
	f.hostile(t, "the same size, another root (a fork)", w, w.other(func(c *f_log.Checkpoint) { c.Hash = bytes.Repeat([]byte{7}, 32) }), "invalid signature for key", w.name)
	f.hostile(t, "another origin", w, w.other(func(c *f_log.Checkpoint) { c.Origin = "evil.example/log" }), "invalid signature for key", w.name)
	a42Check(t, f.watch)
	f.settle(t, f.a)
}

// TestAttack42ReplaysOldCosignature — a witness answers every request with the (valid)
// cosignature it gave for an earlier checkpoint. Claims as above.
func TestAttack42ReplaysOldCosignature(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 1, "witness.test/a42replay")
	w := f.w[0]
	old := w.last.Load()
	if old == nil {
		t.Fatal("premise: the witness never cosigned")
	}
	replay := a42Reply(http.StatusOK, "text/x.tlog.signature", string(*old))
	f.hostile(t, "an old cosignature replayed", w, replay, "invalid signature for key", w.name)
	// Twice in a row, a longer run: the backoff grows, the recovery still comes.
	f.hostile(t, "an old cosignature replayed again", w, replay, "invalid signature for key", w.name)
	a42Check(t, f.watch)
	f.settle(t, f.a)
}

// TestAttack42WitnessKeyRotation — the witness rotates its key without telling the log
// (same name, URL and state). Claims: the rounds fail with a WARN, nothing newer is served,
// the stall ALERT comes on both replicas (CheckpointStall 3 s). Then the operator rotates
// the policy to the new key by a rolling restart (a new non-signer replica, the old one
// closed, then the same for the signer). Claims: the fleet resumes — both new replicas
// serve a checkpoint of every entry cosigned under the new key within 15 s; no replica ever
// serves a checkpoint its own policy does not accept, and no client sees a smaller tree
// across the rotation.
func TestAttack42WitnessKeyRotation(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 1, "witness.test/a42rot")
	ctx := context.Background()
	w := f.w[0]
	offA, offB := len(f.la.String()), len(f.lb.String())
	pre := f.size(t)
	next := w.rotate(t)
	var line string
	polls := 0
	if !a36WaitFor(10*time.Second, func() bool {
		if polls++; polls%10 == 1 {
			f.submit(t, f.a, 1)
		}
		line = a42Warned(f.lb, offB, "no verifiable signatures")
		return line != ""
	}) {
		t.Errorf("CLAIM BROKEN (a misbehaving witness is said): no WARN of the rotated key's answers; signer log tail:\n%s", a41Tail(f.lb, 6))
	} else {
		t.Logf("rotated key: the signer says: %.300s", line)
	}
	for i, buf := range []*syncBuffer{f.la, f.lb} {
		off := []int{offA, offB}[i]
		if !a36WaitFor(8*time.Second, func() bool {
			return strings.Contains(buf.String()[off:], "no signed checkpoint covers them")
		}) {
			t.Errorf("CLAIM BROKEN (the stall ALERT on every replica): replica %c raised none with the witness's key rotated", 'a'+i)
		}
	}
	for _, r := range []a42Rep{f.rep("a"), f.rep("b")} {
		if cp, err := r.l.Checkpoint(ctx); err != nil || cpSize(cp) > pre {
			t.Errorf("CLAIM BROKEN: replica %s serves size %d (%v) with the witness signing under a key the policy does not name; %d before", r.name, cpSize(cp), err, pre)
		}
	}

	// The operator puts the new key in the policy: a rolling restart.
	g2 := tessera.NewWitnessGroup(1, next)
	la2, lb2 := &syncBuffer{}, &syncBuffer{}
	a2 := f.open(t, &g2, la2)
	f.watch.add(a42Rep{"a2", a2, &g2})
	f.watch.remove(f.a)
	a36Close(f.a)
	b2 := f.open(t, &g2, lb2)
	f.watch.add(a42Rep{"b2", b2, &g2})
	f.watch.remove(f.b)
	a36Close(f.b)
	if !a36WaitFor(5*time.Second, func() bool { return a2.Signer() || b2.Signer() }) {
		t.Fatal("premise: no new replica signs")
	}
	f.a, f.b = a2, b2 // submit, size, settle go to the new replicas
	f.submit(t, a2, 2)
	size := f.size(t)
	t0 := time.Now()
	if !f.served(t, 15*time.Second, size, a42Rep{"a2", a2, &g2}, a42Rep{"b2", b2, &g2}) {
		cp, err := a2.Checkpoint(ctx)
		t.Errorf("CLAIM BROKEN (the fleet resumes once the policy names the witness's new key): 15 s after the rolling restart, a2 serves size %d (%v, new policy met %v) of %d; ALERTs:\n%s\nlogs a2/b2:\n%s\n%s",
			cpSize(cp), err, g2.Satisfied(cp), size, a41Alerted(la2, lb2), a41Tail(la2, 5), a41Tail(lb2, 5))
	} else {
		t.Logf("rotation: both new replicas serve size %d cosigned under the new key %v after the restart", size, time.Since(t0).Round(time.Millisecond))
	}
	// Observation for the report: what the new replicas said about the row cosigned
	// under the old key.
	t.Logf("ALERTs of the new replicas:\n%s", a41Alerted(la2, lb2))
	a42Check(t, f.watch)
	f.settle(t, b2)
}

// a42Served says what each of reps serves now.
func a42Served(reps ...a42Rep) string {
	var out []string
	for _, r := range reps {
		cp, err := r.l.Checkpoint(context.Background())
		switch {
		case err != nil:
			out = append(out, fmt.Sprintf("%s: none (%v)", r.name, err))
		default:
			out = append(out, fmt.Sprintf("%s: size %d (own policy met %v)", r.name, cpSize(cp), r.g == nil || r.g.Satisfied(cp)))
		}
	}
	return strings.Join(out, "; ")
}

// TestAttack42DifferentPoliciesAcrossReplicas — two replicas of one log configured with
// different witness policies: p 1-of-1 with witness A, q 1-of-1 with witness B (an
// operator's mistake, or a rolling change half done). The signer changes twice
// (a42TakeOver: its lock's session killed, no replica closed). Claims: each replica serves only checkpoints that meet its own policy
// and never a smaller one than it served before; the replica whose policy is not met says
// so (the stall ALERT, CheckpointStall 3 s); the signer serves a checkpoint of every entry
// under its policy within 15 s of taking over. Logged: what each serves in each phase, the
// witnessed row, and the ALERTs (whom they blame).
func TestAttack42DifferentPoliciesAcrossReplicas(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack42p")
	wA, wB := newA42Witness(t, "witness.test/a42A", s, v), newA42Witness(t, "witness.test/a42B", s, v)
	gA, gB := tessera.NewWitnessGroup(1, wA.entry()), tessera.NewWitnessGroup(1, wB.entry())
	f := &a42Fleet{dsn: dsn, s: s, v: v, id: 1, g: gA}
	// b (p, policy A) signs first; a is q (policy B).
	f.a, f.b, f.la, f.lb = a39WitnessPairAll(t, dsn, gA, func(c *Config) { c.Witnesses = &gB }, func(c *Config) { c.CheckpointStall = 3 * time.Second }, s)
	p, q := a42Rep{"p", f.b, &gA}, a42Rep{"q", f.a, &gB}
	watch := a42Watch(t, s, false, p, q)
	admin := testAdmin(t, dsn)
	phase := func(name string, signer, other a42Rep, lo *syncBuffer) {
		t.Helper()
		off := len(lo.String())
		f.submit(t, f.a, 2)
		f.submit(t, f.b, 1)
		size := f.size(t)
		if !f.served(t, 15*time.Second, size, signer) {
			t.Errorf("CLAIM BROKEN (the signer serves every entry under its own policy): %s: %s", name, a42Served(signer))
		}
		// The replica whose policy the row does not meet says so.
		if !a36WaitFor(8*time.Second, func() bool { return strings.Contains(lo.String()[off:], "no signed checkpoint covers them") }) {
			t.Errorf("CLAIM BROKEN (the replica whose policy is unmet says so): %s: replica %s raised no stall ALERT in 8 s; its log tail:\n%s", name, other.name, a41Tail(lo, 5))
		}
		row, _ := readWitnessedRow(context.Background(), f.b)
		t.Logf("%s: %s; the witnessed row: size %d, cosigned by A %v, by B %v", name, a42Served(p, q), row.size, gA.Satisfied(row.note), gB.Satisfied(row.note))
	}
	phase("p signs (policy A)", p, q, f.la)
	// Both replicas say that they run different policies (the twenty-fifth session).
	requirePolicies(t, "policies A and B", true, f.a, f.b)
	a42TakeOver(t, admin, f.a, f.b)
	phase("q signs (policy B)", q, p, f.lb)
	a42TakeOver(t, admin, f.b, f.a)
	phase("p signs again", p, q, f.la)
	t.Logf("ALERTs (p = b, q = a):\n%s", a41Alerted(f.la, f.lb))
	requirePolicyAlerts(t, "policies A and B, three signers", f.la, f.lb)
	a42Check(t, watch)
	f.settle(t, f.b)
}

// TestAttack42PolicyAndNoPolicyReplicas — one replica with a 1-of-1 witness policy (p),
// one with none (n). The signer changes twice. Claims: p serves only cosigned
// checkpoints, never a smaller one than before; while n signs (it asks no witness) p says
// that no cosigned checkpoint covers the entries (stall ALERT); once p signs again it
// serves every entry cosigned within 15 s. Logged: what n serves (its own policy — none —
// accepts tessera's uncosigned checkpoint).
func TestAttack42PolicyAndNoPolicyReplicas(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	s, v, _ := newKeys(t, "strongroom.test/attack42n")
	w := newA42Witness(t, "witness.test/a42n", s, v)
	g := tessera.NewWitnessGroup(1, w.entry())
	f := &a42Fleet{dsn: dsn, s: s, v: v, id: 1, g: g}
	f.a, f.b, f.la, f.lb = a39WitnessPairAll(t, dsn, g, func(c *Config) { c.Witnesses = nil }, func(c *Config) { c.CheckpointStall = 3 * time.Second }, s)
	p, n := a42Rep{"p", f.b, &g}, a42Rep{"n", f.a, nil}
	watch := a42Watch(t, s, false, p, n)
	admin := testAdmin(t, dsn)
	uncosigned := func() bool {
		cp, err := f.a.Checkpoint(context.Background())
		return err == nil && !g.Satisfied(cp)
	}
	f.submit(t, f.a, 2)
	if !f.served(t, 15*time.Second, f.size(t), p, n) {
		t.Fatalf("premise: p signs and serves nothing cosigned: %s", a42Served(p, n))
	}
	t.Logf("p signs: %s; n serves an uncosigned checkpoint: %v", a42Served(p, n), uncosigned())
	// Both say that the replicas run different policies: n's "none" is one (the twenty-fifth session).
	requirePolicies(t, "a policy and none", true, f.a, f.b)

	a42TakeOver(t, admin, f.a, f.b)
	off := len(f.lb.String())
	f.submit(t, f.b, 2)
	size := f.size(t)
	f.served(t, 5*time.Second, size, n) // n serves tessera's row: logged below
	if !a36WaitFor(8*time.Second, func() bool { return strings.Contains(f.lb.String()[off:], "no signed checkpoint covers them") }) {
		t.Errorf("CLAIM BROKEN (the replica whose policy is unmet says so): p raised no stall ALERT in 8 s while n signs; p's log tail:\n%s", a41Tail(f.lb, 5))
	}
	t.Logf("n signs: %s (%d entries)", a42Served(p, n), size)

	a42TakeOver(t, admin, f.b, f.a)
	f.submit(t, f.a, 1)
	size = f.size(t)
	if !f.served(t, 15*time.Second, size, p) {
		t.Errorf("CLAIM BROKEN (p serves every entry cosigned once it signs again): %s of %d", a42Served(p), size)
	}
	t.Logf("p signs again: %s; ALERTs (n = a, p = b):\n%s", a42Served(p, n), a41Alerted(f.la, f.lb))
	requirePolicyAlerts(t, "a policy and none", f.la, f.lb)
	a42Check(t, watch)
	f.settle(t, f.b)
	// n stops: p, alone, says the replicas agree again.
	watch.remove(f.a)
	a36Close(f.a)
	requirePolicies(t, "n closed", false, f.b)
	if !strings.Contains(f.lb.String(), policyAgain) {
		t.Errorf("p did not say that the replicas agree again; its log tail:\n%s", a41Tail(f.lb, 5))
	}
}

// TestAttack42SignerFlapping — the signer changes again and again while witness rounds are
// in flight (the witness answers after 400 ms): the signer replica is closed and a fresh
// one opened, or its lock moved to the other replica (a42TakeOver), six times, while records go to
// every open replica. Claims: no replica serves a checkpoint without the policy met or
// smaller than it served before, and no client reading the replicas one after another
// sees a smaller tree than it saw; every acknowledged record ends in a cosigned checkpoint
// that verifies.
func TestAttack42SignerFlapping(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 1, "witness.test/a42flap")
	w := f.w[0]
	admin := testAdmin(t, f.dsn)
	w.set(w.slow(400 * time.Millisecond))
	var mu sync.Mutex
	live := []*Log{f.a, f.b}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var errs atomic.Int64
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				mu.Lock()
				l := live[i%len(live)]
				mu.Unlock()
				f.mu.Lock()
				id := f.id
				f.id++
				f.mu.Unlock()
				t0 := time.Now()
				idx, err := l.Record(context.Background(), a36Event(id))
				if err != nil {
					errs.Add(1)
				}
				f.mu.Lock()
				f.outs = append(f.outs, a37Outcome{id: id, replica: "flap", idx: idx, err: err, took: time.Since(t0)})
				f.mu.Unlock()
			}
		}()
	}
	rounds0 := w.n.Load()
	t0 := time.Now()
	for i := range 6 {
		var signer *Log
		if !a36WaitFor(10*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, l := range live {
				if l.Signer() {
					signer = l
					return true
				}
			}
			return false
		}) {
			t.Fatalf("premise: no replica signs (flap %d)", i)
		}
		// Wait for a witness round of the signer to be in flight (entries arrive all the
		// time), then flap.
		n0 := w.n.Load()
		a36WaitFor(3*time.Second, func() bool { return w.n.Load() > n0 })
		if i%2 == 0 {
			nl := f.open(t, &f.g, &syncBuffer{})
			f.watch.add(a42Rep{fmt.Sprintf("r%d", i), nl, &f.g})
			mu.Lock()
			live = append(slices.DeleteFunc(live, func(l *Log) bool { return l == signer }), nl)
			mu.Unlock()
			f.watch.remove(signer)
			a36Close(signer)
		} else {
			mu.Lock()
			other := live[0]
			if other == signer {
				other = live[1]
			}
			mu.Unlock()
			a42TakeOver(t, admin, other, signer)
		}
		time.Sleep(700 * time.Millisecond) // pacing of the flaps (the criteria are the watch's)
	}
	t.Logf("six flaps in %v", time.Since(t0).Round(time.Millisecond))
	close(stop)
	wg.Wait()
	w.set(nil)
	mu.Lock()
	last := live[len(live)-1]
	reps := []a42Rep{{"x", live[0], &f.g}, {"y", live[1], &f.g}}
	mu.Unlock()
	size, err := last.IntegratedSize(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !f.served(t, 15*time.Second, size, reps...) {
		t.Errorf("CLAIM BROKEN (every entry ends in a cosigned checkpoint after the flaps): %s of %d", a42Served(reps...), size)
	}
	t.Logf("flapping: %d witness requests, %d records (%d failed: replicas closing)", w.n.Load()-rounds0, len(f.outs), errs.Load())
	a42Check(t, f.watch)
	f.settle(t, last)
}

// TestAttack42WitnessConflictLies — a witness answers 409 (text/x.tlog.size) with a size
// it does not hold: (1) a tree 1000 entries larger than the log's — which a real witness
// would say only if the log had been forked or rolled back — and (2) a different, smaller
// size every time, so that tessera asks again with another consistency proof. Claims:
// the round fails with a WARN naming the witness's claim; (2) at most 11 requests a round
// (tessera's recursion bound); nothing is served past what was cosigned; appends go on;
// the fleet recovers. Logged: whether the larger-tree claim raises an ALERT.
func TestAttack42WitnessConflictLies(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 1, "witness.test/a42conflict")
	w := f.w[0]
	larger := func(rw http.ResponseWriter, r *http.Request, body []byte) {
		_, cp := a42Request(body)
		rw.Header().Set("Content-Type", "text/x.tlog.size")
		rw.WriteHeader(http.StatusConflict)
		fmt.Fprintf(rw, "%d\n", cpSize(cp)+1000)
	}
	f.hostile(t, "409: a larger tree than the log's", w, larger, "larger than log size")
	t.Logf("ALERTs after a witness claimed a larger tree than the log's (a fork or a rollback, if true): %q", a41Alerted(f.la, f.lb))

	pingpong := func(rw http.ResponseWriter, r *http.Request, body []byte) {
		old, cp := a42Request(body)
		next := old + 1
		if next >= cpSize(cp) {
			next = 1
		}
		rw.Header().Set("Content-Type", "text/x.tlog.size")
		rw.WriteHeader(http.StatusConflict)
		fmt.Fprintf(rw, "%d\n", next)
	}
	r0, n0 := f.b.cosign.rounds.Load(), w.n.Load()
	f.hostile(t, "409: another size every time", w, pingpong, "too many consecutive requests")
	rounds, reqs := f.b.cosign.rounds.Load()-r0, w.n.Load()-n0
	t.Logf("ping-pong: %d witness rounds, %d requests (with the recovery's)", rounds, reqs)
	if rounds > 0 && reqs > 11*rounds {
		t.Errorf("CLAIM BROKEN (a lying witness costs a bounded number of requests): %d requests in %d rounds", reqs, rounds)
	}
	a42Check(t, f.watch)
	f.settle(t, f.a)
}

// TestAttack42WitnessAnswerJunkTolerated — answers the C2SP protocol allows (more than one
// signature line) or that carry the witness's good cosignature with junk around it: its
// cosignature followed by 60 lines of unknown keys, or by a second line of its own key with
// a made-up signature. Claims: the cosignature is taken (the fleet serves the entries
// cosigned) and the served checkpoint carries none of the junk: exactly the log's and the
// witness's lines.
func TestAttack42WitnessAnswerJunkTolerated(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 1, "witness.test/a42junk")
	w := f.w[0]
	ctx := context.Background()
	for _, c := range []struct {
		what string
		edit func(sig []byte) string
	}{
		{"its cosignature and 60 lines of unknown keys", func(sig []byte) string { return string(sig) + a42Junk(60) }},
		{"60 lines of unknown keys, then its cosignature", func(sig []byte) string { return a42Junk(60) + string(sig) }},
		{"its cosignature and a made-up one of its own key", func(sig []byte) string {
			name, b64, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(string(sig)), "\u2014 "), " ")
			raw, _ := base64.StdEncoding.DecodeString(b64)
			forged := bytes.Clone(raw)
			forged[len(forged)-1] ^= 1
			return string(sig) + "\u2014 " + name + " " + base64.StdEncoding.EncodeToString(forged) + "\n"
		}},
	} {
		w.set(w.edited(c.edit))
		f.submit(t, f.a, 2)
		size := f.size(t)
		if !f.served(t, 15*time.Second, size, f.rep("a"), f.rep("b")) {
			t.Errorf("%s: the fleet does not serve size %d cosigned: %s; signer log tail:\n%s", c.what, size, a42Served(f.rep("a"), f.rep("b")), a41Tail(f.lb, 4))
			continue
		}
		cp, _ := f.a.Checkpoint(ctx)
		_, sigs, _ := bytes.Cut(cp, []byte("\n\n"))
		if lines := bytes.Count(sigs, []byte("\n")); lines != 2 || bytes.Contains(sigs, []byte("junk.example")) {
			t.Errorf("CLAIM BROKEN (the served checkpoint carries only verified signatures): %s: served signature block %q", c.what, sigs)
		} else {
			t.Logf("%s: taken; the served checkpoint carries the log's and the witness's lines only", c.what)
		}
	}
	w.set(nil)
	a42Check(t, f.watch)
	f.settle(t, f.a)
}

// TestAttack42WitnessAnswerMalformed — answers that must fail the round: 150 signature
// lines, text that is no signature, its cosignature with CRLF line ends, an empty 200, and
// a cosignature of the whole signed note (the log's signature line included) after a blank
// line, which tessera's check of the one witness (note.Open splits at the last blank line)
// takes as valid. Claims: each round fails with a WARN, nothing new is served, appends go
// on, the fleet recovers.
func TestAttack42WitnessAnswerMalformed(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 1, "witness.test/a42shape")
	w := f.w[0]
	f.hostile(t, "150 signature lines", w, w.edited(func(sig []byte) string { return string(sig) + a42Junk(149) }), "malformed note")
	f.hostile(t, "no signature at all", w, a42Reply(http.StatusOK, "text/x.tlog.signature", "hello, log\n"), "malformed note")
	f.hostile(t, "CRLF line ends", w, w.edited(func(sig []byte) string { return strings.ReplaceAll(string(sig), "\n", "\r\n") }), "malformed note")
	f.hostile(t, "an empty 200", w, a42Reply(http.StatusOK, "text/x.tlog.signature", ""), "no verifiable signatures")
	blank := func(rw http.ResponseWriter, r *http.Request, body []byte) {
		_, cp := a42Request(body)
		rw.Header().Set("Content-Type", "text/x.tlog.signature")
		io.WriteString(rw, "\n"+w.cosign(cp))
	}
	f.hostile(t, "a cosignature of the whole signed note after a blank line", w, blank, "witness policy was not satisfied")
	a42Check(t, f.watch)
	f.settle(t, f.a)
}

// TestAttack42QuorumHidesHostileWitness: policy 2-of-3; witnesses A and B are honest
// (answering in 100 ms), C answers at once, 200, with its real key's cosignature of a fork
// (the same size, another root) — a witness that has turned hostile, or has been fed a
// forked view of this log. The rounds succeed on A and B (held: the served checkpoints
// meet the policy, appends go on), and C must be said: tessera's WitnessGateway returns as
// soon as the policy is met and drops C's error, and before witnessanswers.go the signer
// logged only failed rounds — C went unseen (the policy's margin gone, nobody knowing).
// Now every answer of a round is judged: an ALERT names C.
func TestAttack42QuorumHidesHostileWitness(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 2, "witness.test/a42qA", "witness.test/a42qB", "witness.test/a42qC")
	wA, wB, wC := f.w[0], f.w[1], f.w[2]
	wA.set(wA.slow(100 * time.Millisecond))
	wB.set(wB.slow(100 * time.Millisecond))
	off := len(f.lb.String())
	c0 := wC.n.Load()
	wC.set(wC.other(func(c *f_log.Checkpoint) { c.Hash = bytes.Repeat([]byte{9}, 32) }))
	for range 4 {
		f.submit(t, f.a, 1)
		f.submit(t, f.b, 1)
		if !f.served(t, 10*time.Second, f.size(t), f.rep("a"), f.rep("b")) {
			t.Fatalf("premise: the 2-of-3 policy is not met by A and B: %s; signer log tail:\n%s", a42Served(f.rep("a"), f.rep("b")), a41Tail(f.lb, 5))
		}
	}
	asked := wC.n.Load() - c0
	said := f.lb.String()[off:]
	t.Logf("witness C answered %d requests with a cosignature of a fork; the signer's log since: %q", asked, said)
	if asked == 0 {
		t.Fatal("premise: witness C was never asked")
	}
	if !strings.Contains(said, "ALERT audit log: witness "+wC.name+" answered with a cosignature that does not verify") {
		t.Errorf("CLAIM BROKEN (a misbehaving witness is said): witness C answered %d witness requests with its real key's cosignature of a forked checkpoint; "+
			"the rounds succeeded on A and B and nothing in the signer's log names C (no WARN, no ALERT): the hostile witness is invisible while the quorum holds", asked)
	}
	a42Check(t, f.watch)
	f.settle(t, f.a)
}

// TestAttack42WitnessRedirectSSRF: a witness answers 307 Temporary Redirect to an address
// of its choosing (here a server standing for an internal service: cloud metadata, an admin
// port on the signer's network). 307/308 keep the method and body: a client that follows
// redirects (the cosigner's did, before witnessClient) POSTs the checkpoint request to
// wherever the witness says, from inside the log's network — a server-side request
// forgery by any witness of the policy. Now no witness client follows a redirect (the
// repair's probe neither): the round fails with a WARN naming the witness's status,
// nothing new is served, appends go on, the fleet recovers.
func TestAttack42WitnessRedirectSSRF(t *testing.T) {
	t.Parallel() // see sqlTestDB
	f := newA42Fleet(t, 1, "witness.test/a42redirect")
	w := f.w[0]
	var hits atomic.Int64
	var first atomic.Pointer[string]
	inner := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 200))
		if hits.Add(1) == 1 {
			s := fmt.Sprintf("%s %s body %q", r.Method, r.URL.Path, b)
			first.Store(&s)
		}
		io.WriteString(rw, "ok\n")
	}))
	t.Cleanup(inner.Close)
	redirect := func(rw http.ResponseWriter, r *http.Request, _ []byte) {
		http.Redirect(rw, r, inner.URL+"/internal/admin/reset", http.StatusTemporaryRedirect)
	}
	off := len(f.lb.String())
	f.hostile(t, "307 to an internal address", w, redirect)
	if said := f.lb.String()[off:]; !strings.Contains(said, "audit log: witness "+w.name+" answered HTTP 307") {
		t.Errorf("CLAIM BROKEN (a misbehaving witness is said): no WARN naming witness %s and its 307; signer log tail:\n%s", w.name, a41Tail(f.lb, 6))
	}
	if n := hits.Load(); n > 0 {
		t.Errorf("CLAIM BROKEN (a hostile witness cannot make the signer send requests elsewhere): the internal server got %d requests through the witness's redirect; the first: %s",
			n, *first.Load())
	}
	a42Check(t, f.watch)
	f.settle(t, f.a)
}
