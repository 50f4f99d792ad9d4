package audit

// Outside round 40: checkpoint publication of the shared log (MariaDB) with a witness that
// fails intermittently, recovers, or answers slowly (just under its 3 s timeout), and an
// insider who keeps nudging the Checkpoint row's publication time. DESIGN ("Witnesses
// inside the lock"): a failing or hanging witness holds the fleet's appends at most about
// a quarter of the time; a recovered witness is asked again within 10 s (30 s at most); no
// checkpoint is published without the witness policy met; and ("Checkpoints keep coming")
// publication cannot stop silently. Helpers of rounds 10, 36, 37 and 39 are reused.

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/witness"
	f_note "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/tessera"
	"golang.org/x/mod/sumdb/note"
)

// a40Witness is a real witness behind a switch: mode 0 passes every request, 1 hangs every
// other one (until the client gives up), 2 hangs every one, 3 answers each after delay, 4
// holds each until release is closed (or the client gives up), then answers.
type a40Witness struct {
	w       tessera.Witness
	mode    atomic.Int32
	delay   atomic.Int64 // ns, mode 3
	n       atomic.Int64
	hangs   atomic.Int64
	release chan struct{} // mode 4
	holding atomic.Int64  // requests mode 4 holds now
}

func newA40Witness(t *testing.T, s note.Signer, v note.Verifier) *a40Witness {
	t.Helper()
	skey, vkey, _ := note.GenerateKey(rand.Reader, "witness.test/a40")
	cs, err := f_note.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	cv, _ := f_note.VKeyToCosignatureV1(vkey)
	ws, err := witness.New(witness.Config{Signer: cs, Logs: map[string]note.Verifier{s.Name(): v}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a := &a40Witness{release: make(chan struct{})}
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := a.n.Add(1)
		hang := func() {
			a.hangs.Add(1)
			select {
			case <-r.Context().Done():
			case <-stop:
			}
		}
		switch a.mode.Load() {
		case 1:
			if n%2 == 1 {
				hang()
				return
			}
		case 2:
			hang()
			return
		case 3:
			select {
			case <-time.After(time.Duration(a.delay.Load())):
			case <-r.Context().Done():
				return
			}
		case 4:
			a.holding.Add(1)
			defer a.holding.Add(-1)
			select {
			case <-a.release:
			case <-r.Context().Done():
				return
			case <-stop:
				return
			}
		}
		ws.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(stop) }) // runs before srv.Close
	u, _ := url.Parse(srv.URL)
	if a.w, err = tessera.NewWitness(cv, u); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *a40Witness) cosigned(cp []byte) bool {
	_, err := note.Open(cp, note.VerifierList(a.w.Key))
	return err == nil
}

// a40Fleet opens two replicas (b signs) with a 1-of-1 witness policy on w, 3 s timeout.
func a40Fleet(t *testing.T) (a, b *Log, w *a40Witness, la, lb *syncBuffer, dsn string, v note.Verifier) {
	t.Helper()
	return a40FleetStall(t, 0)
}

// a40FleetStall is a40Fleet with both replicas' Config.CheckpointStall (0: the default): a
// test with its own stall needs no package variable, and may run in parallel.
func a40FleetStall(t *testing.T, stall time.Duration) (a, b *Log, w *a40Witness, la, lb *syncBuffer, dsn string, v note.Verifier) {
	t.Helper()
	dsn = sqlTestDB(t)
	s, vv, _ := newKeys(t, "strongroom.test/attack40")
	w = newA40Witness(t, s, vv)
	g := tessera.NewWitnessGroup(1, w.w)
	a, b, la, lb = a39WitnessPairAll(t, dsn, g, nil, func(c *Config) { c.CheckpointStall = stall }, s)
	return a, b, w, la, lb, dsn, vv
}

// a40Watch samples b's published checkpoint every 50 ms until stop, and reports every
// checkpoint seen that lacks the witness's cosignature, and the sizes' changes with times.
type a40CPs struct {
	mu       sync.Mutex
	uncosig  []string
	grownAt  []time.Time
	lastSize uint64
}

func a40WatchCPs(b *Log, w *a40Witness, stop <-chan struct{}) *a40CPs {
	c := &a40CPs{}
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			cp, err := b.Checkpoint(context.Background())
			if err != nil {
				continue
			}
			c.mu.Lock()
			if sz := cpSize(cp); sz != c.lastSize {
				if !w.cosigned(cp) {
					c.uncosig = append(c.uncosig, strings.SplitN(string(cp), "\n", 3)[1])
				}
				c.lastSize = sz
				c.grownAt = append(c.grownAt, time.Now())
			}
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *a40CPs) snapshot() ([]string, []time.Time, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.uncosig...), append([]time.Time(nil), c.grownAt...), c.lastSize
}

// TestAttack40IntermittentWitnessThenRecovery — claims: (1) a witness that hangs on every
// other request holds the fleet's appends (the tree state's row) at most about a quarter
// of the time; (2) no checkpoint is published without its cosignature; (3) once the
// witness is back, checkpoints resume within ~10 s (30 s at most). Two replicas append
// for 12 s with the witness hanging every other request (3 s timeout), then it recovers.
// Failure: more than two hung witness rounds in the 12 s (the rates are logged), an
// uncosigned checkpoint published, or no cosigned checkpoint covering the new entries
// within 30 s of recovery.
// (The tree-row NOWAIT probe is logged only: appends under load hold the row most of the
// time by themselves, 90 % with the witness answering.)
func TestAttack40IntermittentWitnessThenRecovery(t *testing.T) {
	t.Parallel() // see sqlTestDB
	a, b, w, _, lb, dsn, _ := a40Fleet(t)
	admin := testAdmin(t, dsn)
	ctx := context.Background()
	a37Submit(a, "a", 1, 2)
	if !a36WaitFor(10*time.Second, func() bool {
		cp, err := b.Checkpoint(ctx)
		return err == nil && cpSize(cp) >= 2 && w.cosigned(cp)
	}) {
		t.Fatal("premise: no cosigned checkpoint of the first entries")
	}
	o1, _ := a39Load(ctx, 3*time.Second, 10000, a, b)
	rate1 := float64(len(o1)) / 3
	stopCP := make(chan struct{})
	defer close(stopCP)
	cps := a40WatchCPs(b, w, stopCP)
	w.mode.Store(1)
	probeStop := make(chan struct{})
	held := a39TreeHeld(admin, probeStop)
	const window = 12 * time.Second
	outs, _ := a39Load(ctx, window, 30000, a, b)
	close(probeStop)
	frac, samples := held()
	okN := 0
	for _, o := range outs {
		if o.err == nil {
			okN++
		}
	}
	_, grown, _ := cps.snapshot()
	t.Logf("intermittent witness: %d witness requests (%d hung), tree row held in %.0f%% of %d probes, %d/%d records acknowledged, checkpoint grew %d times",
		w.n.Load(), w.hangs.Load(), 100*frac, samples, okN, len(outs), len(grown))
	rate2 := float64(len(outs)) / window.Seconds()
	t.Logf("fleet rate: %.0f records/s with the witness answering, %.0f (%.0f%%) with it hanging every other request", rate1, rate2, 100*rate2/rate1)
	// The rates are logged, not judged: on a shared machine they move with other work
	// (a full suite's run gave 31 % where a quiet one gave 62–69 %). What the signer
	// decides is judged: the witness rounds that hung (3 s each, the tree held) in the
	// window. Each is followed by a wait of 9 s, so 12 s hold at most two.
	if h := w.hangs.Load(); h > 2 {
		t.Errorf("CLAIM BROKEN (a failing witness holds the tree at most a quarter of the time): %d witness rounds hung (3 s each) in %v", h, window)
	}
	// Recovery.
	w.mode.Store(0)
	rec := time.Now()
	more := a37Submit(a, "a", 90001, 90002)
	size, err := b.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = more
	if !a36WaitFor(30*time.Second, func() bool {
		cp, err := b.Checkpoint(ctx)
		return err == nil && cpSize(cp) >= size && w.cosigned(cp)
	}) {
		t.Errorf("CLAIM BROKEN (checkpoints resume within 30 s of the witness's recovery): none covers size %d after %v; signer log:\n%s",
			size, time.Since(rec).Round(time.Millisecond), lb.String())
	} else {
		t.Logf("a cosigned checkpoint covering size %d %v after recovery", size, time.Since(rec).Round(time.Millisecond))
	}
	uncosig, _, _ := cps.snapshot()
	for _, u := range uncosig {
		t.Errorf("CLAIM BROKEN (no checkpoint without the witness policy met): published checkpoint of size %s without the witness's cosignature", u)
	}
}

// a40FirstCosigned records one entry through a and waits for b to see a checkpoint of it
// cosigned by w (the tests' premise).
func a40FirstCosigned(t *testing.T, a, b *Log, w *a40Witness) {
	t.Helper()
	a37Submit(a, "a", 1)
	if !a36WaitFor(10*time.Second, func() bool {
		cp, err := b.Checkpoint(context.Background())
		return err == nil && cpSize(cp) >= 1 && w.cosigned(cp)
	}) {
		t.Fatal("premise: no cosigned checkpoint")
	}
}

// TestAttack40SlowWitnessJustUnderTimeout — claim (DESIGN "Witnesses outside the lock"): a
// slow witness holds no append. A witness that answers each request after 2.6 s (just
// under the 3 s timeout) never fails; before cosign.go every publication held the tree
// state's row (every replica's appends) for those 2.6 s, one checkpoint interval apart
// (the fleet at 24 % of its rate). Judged: the slowest Record of 6 s, which waited
// ≥ 2.6 s whenever a witness round held the tree; the rates and rounds are logged.
func TestAttack40SlowWitnessJustUnderTimeout(t *testing.T) {
	a, b, w, _, _, dsn, _ := a40Fleet(t)
	admin := testAdmin(t, dsn)
	ctx := context.Background()
	a40FirstCosigned(t, a, b, w)
	probeStop := make(chan struct{})
	held := a39TreeHeld(admin, probeStop)
	o1, _ := a39Load(ctx, 3*time.Second, 10000, a, b)
	close(probeStop)
	frac1, _ := held()
	rate1 := float64(len(o1)) / 3
	w.delay.Store(int64(2600 * time.Millisecond))
	w.mode.Store(3)
	n0 := w.n.Load()
	probeStop = make(chan struct{})
	held = a39TreeHeld(admin, probeStop)
	o2, _ := a39Load(ctx, 6*time.Second, 20000, a, b)
	close(probeStop)
	frac2, samples := held()
	rate2 := float64(len(o2)) / 6
	t.Logf("witness answering: %.0f records/s, tree held %.0f%%; witness answering after 2.6 s: %.0f records/s (%.0f%%), tree held %.0f%% of %d probes, %d witness requests",
		rate1, 100*frac1, rate2, 100*rate2/rate1, 100*frac2, samples, w.n.Load()-n0)
	// The rates are logged, not judged (they move with the machine's other work).
	var slowest time.Duration
	for _, o := range o2 {
		slowest = max(slowest, o.took)
	}
	t.Logf("slowest Record with the slow witness: %v", slowest.Round(time.Millisecond))
	if w.n.Load()-n0 < 2 {
		t.Errorf("premise: %d witness rounds in 6 s, want at least 2", w.n.Load()-n0)
	}
	if slowest >= 2*time.Second {
		t.Errorf("CLAIM BROKEN (a slow witness holds no append): a Record took %v while the witness answered in 2.6 s; the fleet recorded %.0f%% of its rate",
			slowest.Round(time.Millisecond), 100*rate2/rate1)
	}
}

// TestAttack40InsiderNudgesPublishedAt — claim: an insider with write access to the log's
// database cannot make the log silently stop publishing. The insider sets
// Checkpoint.published_at to 4.5 s ahead of now every 500 ms: always under the signer's 5 s
// skew reset (so no reset ALERT), always "too soon" for tessera to publish. Entries keep
// arriving. Failure: no checkpoint-stall ALERT on the signer within 4 × CheckpointStall (3 s)
// while publication is stopped; and after the insider stops, no checkpoint within 15 s.
func TestAttack40InsiderNudgesPublishedAt(t *testing.T) {
	t.Parallel() // see sqlTestDB
	a, b, w, la, lb, dsn, _ := a40FleetStall(t, 3*time.Second)
	admin := testAdmin(t, dsn)
	ctx := context.Background()
	a40FirstCosigned(t, a, b, w)
	cp0, _ := b.Checkpoint(ctx)
	stop := make(chan struct{})
	var nudges atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if _, err := admin.Exec("UPDATE `Checkpoint` SET `published_at` = ? WHERE `id` = 0", time.Now().Add(4500*time.Millisecond).UnixMilli()); err == nil {
				nudges.Add(1)
			}
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	t0 := time.Now()
	id := 100
	alerted := a36WaitFor(12*time.Second, func() bool {
		id++
		a37Submit(a, "a", id)
		return strings.Contains(lb.String(), "no signed checkpoint covers them")
	})
	cp1, _ := b.Checkpoint(ctx)
	t.Logf("insider nudges: %d; checkpoint size %d → %d in %v; stall ALERT on signer: %v; replica a ALERT: %v",
		nudges.Load(), cpSize(cp0), cpSize(cp1), time.Since(t0).Round(time.Millisecond), alerted, strings.Contains(la.String(), "no signed checkpoint covers them"))
	if cpSize(cp1) > cpSize(cp0) {
		t.Logf("publication was not suppressed by the nudges (checkpoint grew)")
	} else if !alerted {
		t.Errorf("CLAIM BROKEN (publication cannot stop silently): checkpoint stuck at %d for %v with no stall ALERT on the signer; log:\n%s",
			cpSize(cp1), time.Since(t0).Round(time.Millisecond), lb.String())
	}
	close(stop)
	wg.Wait()
	size, err := b.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rec := time.Now()
	if !a36WaitFor(15*time.Second, func() bool {
		cp, err := b.Checkpoint(ctx)
		return err == nil && cpSize(cp) >= size && w.cosigned(cp)
	}) {
		t.Errorf("CLAIM BROKEN: no cosigned checkpoint covering %d within 15 s of the insider stopping", size)
	} else {
		t.Logf("publication resumed %v after the insider stopped", time.Since(rec).Round(time.Millisecond))
	}
}
