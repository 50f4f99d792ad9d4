package audit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

// Attack 12: concurrency interleavings, boundaries, faults and kills on the request-record
// path (Batcher, with and without a journal). Each test names the promise it checks.

// a12Event is a request record that names itself: fields.id = id.
func a12Event(id string) Event {
	return Event{V: 1, TS: ts0.Add(time.Millisecond), Kind: KindRequest,
		Actor: map[string]string{"principal": "p"}, Subject: map[string]string{"model": "m"}, Decision: Allow,
		Fields: map[string]string{"id": id, "status": "200"}}
}

func a12Raw(id string) []byte {
	ev := a12Event(id)
	b, err := ev.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

// a12ID is the id a12Event put in a record ("" for another record).
func a12ID(raw []byte) string {
	ev, err := ParseEvent(raw)
	if err != nil {
		return ""
	}
	return ev.Fields["id"]
}

// a12Rec is a request record in the log and the index of its batch entry.
type a12Rec struct {
	entry uint64
	raw   []byte
}

// a12Logged verifies the log (with its bundles) and returns its request records in log
// order, each with its batch entry's index.
func a12Logged(t *testing.T, dir string, vkey note.Verifier) []a12Rec {
	t.Helper()
	ctx := context.Background()
	opts := VerifyOptions{LogKey: vkey, Bundles: DirBundles{Dir: dir}.Bundle}
	st, err := Verify(ctx, client.FileFetcher{Root: dir}, opts)
	if err != nil {
		t.Fatalf("log does not verify: %v", err)
	}
	var out []a12Rec
	err = eachBatchEntry(ctx, dir, st.Size, func(index uint64, ev *Event) error {
		recs, err := BatchRecords(ctx, opts, ev)
		for _, r := range recs {
			out = append(out, a12Rec{entry: index, raw: r})
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// a12Journaled is a batcher with a journal on a fresh test log (cfg.Journal: the journal's
// directory under the log's), and a submitter of named records that keeps those
// acknowledged.
type a12Journaled struct {
	tl    *testLog
	jdir  string
	b     *Batcher
	acked map[string]bool
	n     int
}

func newA12Journaled(t *testing.T, cfg BatcherConfig) *a12Journaled {
	tl := openTestLog(t)
	cfg.Journal = filepath.Join(tl.dir, cfg.Journal)
	return &a12Journaled{tl: tl, jdir: cfg.Journal, b: NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg), acked: map[string]bool{}}
}

// submit submits the next record (s.0, s.1, ...) and waits for its future.
func (a *a12Journaled) submit() error {
	id := fmt.Sprintf("s.%d", a.n)
	a.n++
	_, err := a.b.Submit(context.Background(), a12Event(id))()
	if err == nil {
		a.acked[id] = true
	}
	return err
}

// a12Until polls cond every few milliseconds for at most d; it reports whether cond held.
func a12Until(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// a12Acks collects acknowledged records from many goroutines.
// a12Writers submits records "live<batcher>.<n>" through each of bs, one goroutine each,
// pausing pause after each, adding the acknowledged ones to acks, until the returned stop
// is called (it waits for them).
func a12Writers(ctx context.Context, acks *a12Acks, pause time.Duration, bs ...*Batcher) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g, b := range bs {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				id := fmt.Sprintf("live%d.%d", g, i)
				if _, err := b.Submit(ctx, a12Event(id))(); err == nil {
					acks.add(id)
				}
				if pause > 0 {
					time.Sleep(pause)
				}
			}
		})
	}
	return func() { close(done); wg.Wait() }
}

type a12Acks struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (a *a12Acks) add(id string) {
	a.mu.Lock()
	if a.ids == nil {
		a.ids = map[string]bool{}
	}
	a.ids[id] = true
	a.mu.Unlock()
}

func (a *a12Acks) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.ids)
}

// a12CheckOnceInOrder: every acknowledged id is in the log exactly once; no record is in
// the log twice; and for each stream (the id up to its last '.'), the sequence numbers
// (after the last '.') appear in increasing order.
func a12CheckOnceInOrder(t *testing.T, recs []a12Rec, acked map[string]bool) map[string]uint64 {
	t.Helper()
	seen := map[string]int{}
	entry := map[string]uint64{}
	last := map[string]int{}
	for i, r := range recs {
		id := a12ID(r.raw)
		seen[id]++
		if seen[id] > 1 {
			t.Fatalf("record %q is in the log %d times (log position %d)", id, seen[id], i)
		}
		entry[id] = r.entry
		k := strings.LastIndexByte(id, '.')
		if k < 0 {
			continue
		}
		seq, err := strconv.Atoi(id[k+1:])
		if err != nil {
			continue
		}
		stream := id[:k]
		if p, ok := last[stream]; ok && seq <= p {
			t.Fatalf("ORDER: stream %s: record %d is in the log after record %d (log position %d)", stream, seq, p, i)
		}
		last[stream] = seq
	}
	missing := 0
	var example string
	for id := range acked {
		if seen[id] != 1 {
			missing++
			example = id
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged records are not in the log (e.g. %q)", missing, len(acked), example)
	}
	return entry
}

// a12NextProcessFolds starts a batcher on jdir (as the next process would: it folds what
// the dead one left), closes it and the log, and returns how many records the log holds.
func a12NextProcessFolds(t *testing.T, tl *testLog, jdir string) int {
	t.Helper()
	nb := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 1, Journal: jdir})
	healthy := nb.Healthy()
	nb.Close()
	if healthy != nil {
		t.Fatalf("the next process refused the journal: %v", healthy)
	}
	tl.close(t)
	return len(a12Logged(t, tl.dir, tl.vkey))
}

// TestAttack12RefoldIdenticalRecords. Attack: two requests produce byte-identical records
// (same timestamp, same fields: a retried request, a coarse clock, a client that can
// repeat a request at will); the batcher (here MaxRecords 1, as a quiet gateway's folds
// of one record each) journals both, acknowledges both, and is killed (SIGKILL: its
// segments stay, its directory unlocked) before folding them. Promise 1 and 6: each
// acknowledged record is in the log exactly once after the next process folds the dead
// journal — two acknowledged submissions, two records, as without a crash. The refold's
// "already in the log" test compares bundles by content, so it cannot tell the second
// submission from a refold of the first.
func TestAttack12RefoldIdenticalRecords(t *testing.T) {
	dup := store.AuditEvent{Raw: a12Raw("dup.0")}
	t.Run("two segments", func(t *testing.T) {
		// Without a crash both are logged: the control.
		tl := openTestLog(t)
		b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 1, Journal: filepath.Join(tl.dir, "journal")})
		for range 2 {
			if _, err := b.SubmitEncoded(context.Background(), indexRecord(0, dup.Raw))(); err != nil {
				t.Fatal(err)
			}
		}
		b.Close()
		tl.close(t)
		if n := len(a12Logged(t, tl.dir, tl.vkey)); n != 2 {
			t.Fatalf("control: %d records logged without a crash, want 2", n)
		}

		// The same two acknowledged records, left by a killed process.
		tl = openTestLog(t)
		jdir := filepath.Join(tl.dir, "journal")
		j, err := openJournal(jdir, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := j.append([]store.AuditEvent{indexRecord(0, dup.Raw)}); err != nil {
				t.Fatal(err)
			}
			if _, err := j.rotate(); err != nil { // MaxRecords 1: a segment per record
				t.Fatal(err)
			}
		}
		j.close() // killed: the segments stay, the directory is unlocked
		if n := a12NextProcessFolds(t, tl, jdir); n != 2 {
			t.Fatalf("EXACTLY-ONCE BROKEN: two acknowledged (identical) records in a killed process's journal, %d in the log after the next process folded it", n)
		}
	})
	t.Run("logged earlier", func(t *testing.T) {
		// The same record was logged (folded) by an earlier run; the killed process
		// acknowledged it again and died before folding.
		tl := openTestLog(t)
		jdir := filepath.Join(tl.dir, "journal")
		b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 1, Journal: jdir})
		if _, err := b.SubmitEncoded(context.Background(), indexRecord(0, dup.Raw))(); err != nil {
			t.Fatal(err)
		}
		b.Close()
		j, err := openJournal(jdir, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := j.append([]store.AuditEvent{indexRecord(0, dup.Raw)}); err != nil {
			t.Fatal(err)
		}
		j.close()
		if n := a12NextProcessFolds(t, tl, jdir); n != 2 {
			t.Fatalf("EXACTLY-ONCE BROKEN: a record acknowledged twice (once folded, once left in a killed process's journal) is in the log %d times after the refold", n)
		}
	})
}

// TestAttack12BarrierIndex. Attack: one submitter, small batches (MaxRecords 3), a group
// delay of 1ns and a fold every millisecond (the timer, rotations and folds race every
// Barrier), CommitNow now and then; with a journal also a dead process's journal folded by
// the running batcher meanwhile (replicas sharing the data directory), and one present at
// start. Promise 4: Barrier returns ok only once every record submitted before it is in
// the log, and its index is the batch entry holding the last of them (false when none was
// submitted).
func TestAttack12BarrierIndex(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "journal"}[journal], func(t *testing.T) {
			tl := openTestLog(t)
			cfg := BatcherConfig{MaxRecords: 3, MaxDelay: time.Nanosecond, FoldEvery: time.Millisecond}
			if journal {
				cfg.Journal = filepath.Join(tl.dir, "journal")
			}
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(12, 4))
			type barrier struct {
				last  string
				upto  int
				index uint64
			}
			var bars []barrier
			var futs []Future
			n := 0
			rounds := 40
			if testing.Short() {
				rounds = 15
			}
			for range rounds {
				for range 1 + rng.IntN(7) {
					futs = append(futs, b.Submit(ctx, a12Event(fmt.Sprintf("s.%d", n))))
					n++
				}
				if rng.IntN(3) == 0 {
					b.CommitNow()
				}
				idx, ok, err := b.Barrier(ctx)
				if err != nil || !ok {
					t.Fatalf("barrier after %d records: %d %v %v", n, idx, ok, err)
				}
				if size, _ := tl.log.IntegratedSize(ctx); idx >= size {
					t.Fatalf("barrier returned index %d, the log holds %d entries", idx, size)
				}
				bars = append(bars, barrier{last: fmt.Sprintf("s.%d", n-1), upto: n, index: idx})
			}
			acked := map[string]bool{}
			for i, f := range futs {
				if _, err := f(); err != nil {
					t.Fatal(err)
				}
				acked[fmt.Sprintf("s.%d", i)] = true
			}
			b.Close()
			tl.close(t)
			entry := a12CheckOnceInOrder(t, a12Logged(t, tl.dir, tl.vkey), acked)
			for _, br := range bars {
				if entry[br.last] != br.index {
					t.Fatalf("BARRIER: after %d records Barrier returned entry %d; the last record submitted before it is in entry %d", br.upto, br.index, entry[br.last])
				}
			}
		})
	}

	// A dead process's journal folded by this batcher between two Barriers, with no record
	// submitted between them: the second must return what the first did.
	t.Run("dead journal folded meanwhile", func(t *testing.T) {
		defer func(d time.Duration) { DeadJournalEvery = d }(DeadJournalEvery)
		DeadJournalEvery = 2 * time.Millisecond
		tl := openTestLog(t)
		jdir := filepath.Join(tl.dir, "journal")
		ctx := context.Background()
		b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 10, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir})
		defer b.Close()
		for i := range 5 {
			if _, err := b.Submit(ctx, a12Event(fmt.Sprintf("own.%d", i)))(); err != nil {
				t.Fatal(err)
			}
		}
		first, ok, err := b.Barrier(ctx)
		if err != nil || !ok {
			t.Fatalf("barrier: %v %v", ok, err)
		}
		size0, _ := tl.log.IntegratedSize(ctx)
		j, err := openJournal(jdir, 10, nil)
		if err != nil {
			t.Fatal(err)
		}
		recs := []store.AuditEvent{indexRecord(0, a12Raw("dead.0")), indexRecord(0, a12Raw("dead.1"))}
		if err := j.append(recs); err != nil {
			t.Fatal(err)
		}
		j.close() // a replica on the same data directory died
		waitFor(t, func() bool { n, _ := tl.log.IntegratedSize(ctx); return n > size0 })
		second, ok, err := b.Barrier(ctx)
		if err != nil || !ok {
			t.Fatalf("second barrier: %v %v", ok, err)
		}
		if second != first {
			t.Fatalf("BARRIER: no record submitted since the barrier that returned entry %d, the next returned entry %d (the dead replica's batch, none of this batcher's records)", first, second)
		}
	})

	t.Run("dead journal at start, no record", func(t *testing.T) {
		tl := openTestLog(t)
		jdir := filepath.Join(tl.dir, "journal")
		j, err := openJournal(jdir, 10, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := j.append([]store.AuditEvent{indexRecord(0, a12Raw("dead.0"))}); err != nil {
			t.Fatal(err)
		}
		j.close()
		b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{Journal: jdir})
		defer b.Close()
		idx, ok, err := b.Barrier(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			t.Fatalf("BARRIER: no record was submitted to this batcher, Barrier returned ok with entry %d (the dead process's batch, folded at start)", idx)
		}
	})
}

// TestAttack12CloseRace. Attack: eight submitters (each its own ordered stream, futures
// resolved a few at a time), CommitNow and Barrier from every one of them, MaxRecords 1
// and 2, a group delay of 1ns, folds every millisecond, then Close from two goroutines at
// once while they run. Promises 2, 4, 5: no call hangs or panics; every acknowledged record
// is in the log once, each stream in submission order; a Barrier that returned ok covers
// every record its goroutine had submitted (and had acknowledged) before it; a Submit after
// Close fails.
func TestAttack12CloseRace(t *testing.T) {
	for _, tc := range []struct {
		journal    bool
		maxRecords int
	}{{false, 1}, {false, 2}, {true, 1}, {true, 2}} {
		name := fmt.Sprintf("%s/max%d", map[bool]string{false: "direct", true: "journal"}[tc.journal], tc.maxRecords)
		t.Run(name, func(t *testing.T) {
			tl := openTestLog(t)
			cfg := BatcherConfig{MaxRecords: tc.maxRecords, MaxDelay: time.Nanosecond, FoldEvery: time.Millisecond}
			if tc.journal {
				cfg.Journal = filepath.Join(tl.dir, "journal")
			}
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
			ctx := context.Background()
			var acks a12Acks
			type covered struct {
				ids   []string
				index uint64
			}
			var bmu sync.Mutex
			var bars []covered
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(g), 12))
					type pending struct {
						id string
						f  Future
					}
					var window []pending
					var mine []string // acknowledged, in order
					resolve := func(keep int) {
						for len(window) > keep {
							p := window[0]
							window = window[1:]
							if _, err := p.f(); err == nil {
								acks.add(p.id)
								mine = append(mine, p.id)
							}
						}
					}
					for i := 0; i < 200; i++ {
						id := fmt.Sprintf("g%d.%d", g, i)
						f := b.Submit(ctx, a12Event(id))
						window = append(window, pending{id, f})
						switch rng.IntN(10) {
						case 0:
							b.CommitNow()
						case 1:
							resolve(0) // every record before the barrier resolved: ok or not
							before := append([]string(nil), mine...)
							if idx, ok, err := b.Barrier(ctx); ok && err == nil {
								bmu.Lock()
								bars = append(bars, covered{before, idx})
								bmu.Unlock()
							}
						}
						resolve(4)
					}
					resolve(0)
				})
			}
			waitFor(t, func() bool { return acks.len() >= 80 })
			closed := make(chan struct{})
			var cwg sync.WaitGroup
			for range 2 {
				cwg.Go(b.Close)
			}
			go func() { cwg.Wait(); wg.Wait(); close(closed) }()
			<-closed // a deadlock: the test's timeout reports it, with every goroutine's stack
			if _, err := b.Submit(ctx, a12Event("late.0"))(); err == nil {
				t.Fatal("a Submit after Close was acknowledged")
			}
			done := make(chan struct{})
			go func() { b.Barrier(ctx); b.CommitNow(); close(done) }()
			<-done
			tl.close(t)
			entry := a12CheckOnceInOrder(t, a12Logged(t, tl.dir, tl.vkey), acks.ids)
			for _, br := range bars {
				for _, id := range br.ids {
					if entry[id] > br.index {
						t.Fatalf("BARRIER: Barrier returned entry %d, but record %s, acknowledged before it was called, is in entry %d", br.index, id, entry[id])
					}
				}
			}
			t.Logf("%d acknowledged, %d barriers", len(acks.ids), len(bars))
		})
	}
}

// runtimeStack is every goroutine's stack (for a hang's report).
func runtimeStack(buf []byte) int { return runtime.Stack(buf, true) }

// TestAttack12KillChild is the child of TestAttack12KillUnderLoadOrder: it opens the log
// (folding what the last child left), then four goroutines submit ordered streams through a
// journaled batcher (MaxRecords 2, folds every millisecond) while a fifth calls CommitNow
// and Barrier; it prints "ack ID" once each record's future resolved without error.
func TestAttack12KillChild(t *testing.T) {
	dir, skey, run := os.Getenv("A12_KILL_DIR"), os.Getenv("A12_KILL_SKEY"), os.Getenv("A12_KILL_RUN")
	if dir == "" {
		t.Skip("child process of TestAttack12KillUnderLoadOrder")
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	jdir := filepath.Join(dir, "journal")
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s, Journal: jdir, JournalBatch: 2})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBatcher(l, l.Bundles(), BatcherConfig{MaxRecords: 2, MaxDelay: 50 * time.Microsecond, FoldEvery: time.Millisecond, Journal: jdir})
	if err := b.Healthy(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(s string) {
		mu.Lock()
		out.WriteString(s)
		out.Flush()
		mu.Unlock()
	}
	say("ready\n")
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			type pending struct {
				id string
				f  Future
			}
			var window []pending
			for i := 0; ; i++ {
				id := fmt.Sprintf("r%s.g%d.%d", run, g, i)
				window = append(window, pending{id, b.Submit(ctx, a12Event(id))})
				for len(window) > 1+g*3 {
					p := window[0]
					window = window[1:]
					if _, err := p.f(); err == nil {
						say("ack " + p.id + "\n")
					}
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; ; i++ {
			if i%2 == 0 {
				b.CommitNow()
			} else {
				b.Barrier(ctx)
			}
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
}

// TestAttack12KillUnderLoadOrder. Attack: SIGKILL a process submitting ordered streams
// through a journal (batches of 2, folds every millisecond, Barrier and CommitNow racing),
// at random moments — before its first record, while it folds the last one's journal,
// mid-fold — several times in a row on the same log and journal. Promises 1, 2, 6: after
// the last restart every acknowledged record is in the log exactly once, no record is in it
// twice, each stream in submission order, and each process's records before the next's.
func TestAttack12KillUnderLoadOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := filepath.Join(t.TempDir(), "log")
	skey, vkey, _ := note.GenerateKey(nil, "strongroom.test/attack12-kill")
	acked := map[string]bool{}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 12))
	runs := 7
	for run := range runs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAttack12KillChild$", "-test.v=false", "-test.count=1")
		cmd.Env = append(os.Environ(), "A12_KILL_DIR="+dir, "A12_KILL_SKEY="+skey, fmt.Sprintf("A12_KILL_RUN=%d", run))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		safety := time.AfterFunc(20*time.Second, func() { cmd.Process.Signal(syscall.SIGKILL) })
		// Kill after k acknowledgements (0: a random moment right after it is ready).
		k := []int{0, 1 + rng.IntN(20), 20 + rng.IntN(300)}[rng.IntN(3)]
		sc := bufio.NewScanner(stdout)
		ready, n, killed := false, 0, false
		kill := func() {
			if !killed {
				cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
		}
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				ready = true
				if k == 0 {
					time.AfterFunc(time.Duration(rng.IntN(3000))*time.Microsecond, func() { cmd.Process.Signal(syscall.SIGKILL) })
				}
			}
			if id, ok := strings.CutPrefix(line, "ack "); ok {
				acked[id] = true // read after the kill too: each was printed once its future resolved
				n++
				if k > 0 && n >= k {
					kill()
				}
			}
		}
		cmd.Wait()
		safety.Stop()
		if !ready {
			t.Fatalf("run %d: the child did not start (it refuses the journal the last one left?):\n%s", run, stderr.String())
		}
		t.Logf("run %d: killed after %d acknowledgements (target %d)", run, n, k)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s, Journal: filepath.Join(dir, "journal"), JournalBatch: 2})
	if err != nil {
		t.Fatalf("open after the last kill: %v", err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs := a12Logged(t, dir, v)
	a12CheckOnceInOrder(t, recs, acked)
	// Each process's records before the next process's.
	lastRun := -1
	for i, r := range recs {
		id := a12ID(r.raw)
		run, err := strconv.Atoi(strings.TrimPrefix(id[:strings.IndexByte(id, '.')], "r"))
		if err != nil {
			t.Fatalf("record %q", id)
		}
		if run < lastRun {
			t.Fatalf("ORDER: record %s (run %d) is in the log after a record of run %d (log position %d)", id, run, lastRun, i)
		}
		lastRun = run
	}
	t.Logf("%d acknowledged records over %d killed processes, %d in the log", len(acked), runs, len(recs))
}

// a12FlakyBundles fails PutBundle while fail is set.
type a12FlakyBundles struct {
	DirBundles
	fail  atomic.Bool
	fails atomic.Int64
}

func (f *a12FlakyBundles) PutBundle(ctx context.Context, name string, b []byte) error {
	if f.fail.Load() {
		f.fails.Add(1)
		return errors.New("injected: bundle write failed (EIO)")
	}
	return f.DirBundles.PutBundle(ctx, name, b)
}

// LinkBundle fails as PutBundle does (the fold links a whole segment instead of writing it).
func (f *a12FlakyBundles) LinkBundle(ctx context.Context, name, src string) error {
	if f.fail.Load() {
		f.fails.Add(1)
		return errors.New("injected: bundle link failed (EIO)")
	}
	return f.DirBundles.LinkBundle(ctx, name, src)
}

// TestAttack12BundleWriteFails. Attack: the bundle store fails (EIO) mid-run, under load,
// then recovers. Promise 3: without a journal a record whose batch's bundle failed is
// refused (its future errs), Healthy reports it; with a journal records stay acknowledged
// (durable in the journal) but Barrier does not claim them logged while folds fail, and
// Healthy reports the failure; once the store works the same batcher takes records again,
// and every acknowledged record reaches the log once, in order.
func TestAttack12BundleWriteFails(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "journal"}[journal], func(t *testing.T) {
			tl := openTestLog(t)
			ctx := context.Background()
			fb := &a12FlakyBundles{DirBundles: DirBundles{Dir: tl.dir}}
			cfg := BatcherConfig{MaxRecords: 3, MaxDelay: time.Millisecond, FoldEvery: 5 * time.Millisecond}
			if journal {
				cfg.Journal = filepath.Join(tl.dir, "journal")
			}
			b := NewBatcher(tl.log, fb, cfg)
			acked := map[string]bool{}
			n := 0
			submit := func(k int) (ok, refused int) {
				var ids []string
				var fs []Future
				for range k {
					id := fmt.Sprintf("s.%d", n)
					n++
					ids = append(ids, id)
					fs = append(fs, b.Submit(ctx, a12Event(id)))
				}
				for i, f := range fs {
					if _, err := f(); err == nil {
						acked[ids[i]] = true
						ok++
					} else {
						refused++
					}
				}
				return ok, refused
			}
			if ok, _ := submit(20); ok != 20 {
				t.Fatalf("%d of 20 acknowledged before the fault", ok)
			}
			fb.fail.Store(true)
			refused := 0
			waitFor(t, func() bool {
				_, r := submit(5)
				refused += r
				return b.Healthy() != nil && fb.fails.Load() > 0 && (journal || refused > 0)
			})
			if journal {
				bctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				idx, ok, err := b.Barrier(bctx)
				cancel()
				if ok && err == nil {
					t.Fatalf("BARRIER: returned ok (entry %d) while every fold fails", idx)
				}
			}
			fb.fail.Store(false)
			waitFor(t, func() bool { return b.Healthy() == nil })
			if ok, _ := submit(20); ok != 20 {
				t.Fatalf("RECOVERY: %d of 20 acknowledged after the fault cleared", ok)
			}
			if _, ok, err := b.Barrier(ctx); !ok || err != nil {
				t.Fatalf("barrier after recovery: %v %v", ok, err)
			}
			b.Close()
			tl.close(t)
			a12CheckOnceInOrder(t, a12Logged(t, tl.dir, tl.vkey), acked)
			t.Logf("%d acknowledged, %d refused, %d bundle writes failed", len(acked), refused, fb.fails.Load())
		})
	}
}

// TestAttack12JournalImmutable. Attack: the process's journal directory is made immutable
// mid-run (chattr +i: root ignores permissions, not the immutable flag) — no segment can be
// created or removed — under load with MaxRecords 4 (rotations), then made mutable again.
// Promise 3: a record acknowledged meanwhile is durable where the next process finds it;
// one that cannot be is refused; Healthy reports the failure; once the flag is cleared the
// same batcher recovers, and every acknowledged record reaches the log once, in order.
func TestAttack12JournalImmutable(t *testing.T) {
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skip("no chattr")
	}
	a := newA12Journaled(t, BatcherConfig{MaxRecords: 4, MaxDelay: time.Millisecond, FoldEvery: 5 * time.Millisecond, Journal: "journal"})
	tl, b, acked, submit := a.tl, a.b, a.acked, a.submit
	ctx := context.Background()
	own := b.j.dir
	for range 10 {
		if err := submit(); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chattr", "+i", own).CombinedOutput(); err != nil {
		t.Skipf("chattr +i: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", own).Run() })
	before := len(acked)
	var during []string
	refused := 0
	for range 60 {
		id := fmt.Sprintf("s.%d", a.n)
		if err := submit(); err != nil {
			refused++
			if refused >= 5 {
				break
			}
		} else {
			during = append(during, id)
		}
	}
	if refused == 0 {
		t.Fatalf("an immutable journal directory took %d records and refused none", len(acked)-before)
	}
	if b.Healthy() == nil {
		t.Fatal("HEALTH: records refused, Healthy() nil")
	}
	// SIGKILL now: records acknowledged while the directory was immutable must be on disk
	// (no segment could be removed, so every one of them is in a segment file).
	onDisk := map[string]bool{}
	segs, err := readSegments(own, nil)
	if err != nil {
		t.Fatalf("the next process could not read the journal: %v", err)
	}
	for _, s := range segs {
		for _, r := range s.recs {
			onDisk[a12ID(r.Raw)] = true
		}
	}
	for _, id := range during {
		if !onDisk[id] {
			t.Fatalf("DURABILITY: record %s acknowledged while the journal directory was immutable is in no segment on disk", id)
		}
	}
	if out, err := exec.Command("chattr", "-i", own).CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v %s", err, out)
	}
	waitFor(t, func() bool { return b.Healthy() == nil })
	for range 20 {
		if err := submit(); err != nil {
			t.Fatalf("RECOVERY: record after the directory became writable again: %v", err)
		}
	}
	bctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, ok, err := b.Barrier(bctx); !ok || err != nil {
		t.Fatalf("barrier after recovery: %v %v", ok, err)
	}
	b.Close()
	tl.close(t)
	a12CheckOnceInOrder(t, a12Logged(t, tl.dir, tl.vkey), acked)
	t.Logf("%d acknowledged (%d while immutable), %d refused", len(acked), len(during), refused)
}

// TestAttack12JournalRootRemoved. Attack: the whole journal root is removed mid-run
// (rm -rf DATA/journal, an operator's cleanup), then recreated empty. Promise 3: a record
// acknowledged after the removal is in a segment under the journal root (where a next
// process would find it) or refused; Healthy reports the failure; once the directory is
// back the same batcher recovers, and every acknowledged record reaches the log once, in
// order.
func TestAttack12JournalRootRemoved(t *testing.T) {
	a := newA12Journaled(t, BatcherConfig{MaxRecords: 8, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: "journal"})
	tl, jdir, b, acked, submit := a.tl, a.jdir, a.b, a.acked, a.submit
	for range 5 {
		if err := submit(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(jdir); err != nil {
		t.Fatal(err)
	}
	var after []string
	refused := 0
	for range 30 {
		id := fmt.Sprintf("s.%d", a.n)
		if err := submit(); err != nil {
			refused++
		} else {
			after = append(after, id)
		}
	}
	onDisk := map[string]bool{}
	segs, _ := filepath.Glob(filepath.Join(jdir, "*", "*.wal"))
	for _, p := range segs {
		recs, _, _ := readSegment(p, nil)
		for _, r := range recs {
			onDisk[a12ID(r)] = true
		}
	}
	for _, id := range after {
		if !onDisk[id] {
			t.Fatalf("DURABILITY: record %s acknowledged after the journal root was removed is in no segment under it (%d acknowledged after the removal, %d refused)", id, len(after), refused)
		}
	}
	if refused > 0 && b.Healthy() == nil {
		t.Fatal("HEALTH: records refused, Healthy() nil")
	}
	// Does it come back by itself (it recreates its own directory when that is removed)?
	selfHealed := a12Until(time.Second, func() bool { return b.Healthy() == nil && submit() == nil })
	t.Logf("recovered without the root being recreated: %v", selfHealed)
	if !selfHealed {
		if err := os.MkdirAll(jdir, 0o700); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return b.Healthy() == nil })
	}
	for range 10 {
		if err := submit(); err != nil {
			t.Fatalf("RECOVERY: record after the journal root came back: %v", err)
		}
	}
	b.Close()
	tl.close(t)
	a12CheckOnceInOrder(t, a12Logged(t, tl.dir, tl.vkey), acked)
	t.Logf("%d acknowledged, %d after the removal, %d refused", len(acked), len(after), refused)
}

// TestAttack12SizeBoundaries. Attack: records of exactly MaxEventSize bytes and one byte
// over, batches of exactly MaxBatch records and one over, with and without a journal, and
// the exact-size record left in a killed process's journal. Promises 1, 3: a record of
// MaxEventSize is acknowledged, logged and verifies (and the next process reads it back
// from a dead journal); one byte over is refused by SubmitEncoded (an error, not an
// acknowledgement) and recorded truncated by Submit; MaxBatch records are one batch entry
// whose bundle verifies.
func TestAttack12SizeBoundaries(t *testing.T) {
	exact := func(id string, size int) Event {
		ev := a12Event(id)
		ev.Fields["pad"] = ""
		b, _ := ev.Marshal()
		ev.Fields["pad"] = strings.Repeat("x", size-len(b))
		return ev
	}
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "journal"}[journal], func(t *testing.T) {
			tl := openTestLog(t)
			ctx := context.Background()
			cfg := BatcherConfig{MaxRecords: MaxBatch, MaxDelay: time.Millisecond, FoldEvery: time.Hour}
			gate := &gateBundles{DirBundles: DirBundles{Dir: tl.dir}, release: make(chan struct{})}
			var bundles BundleStore = DirBundles{Dir: tl.dir}
			if journal {
				cfg.Journal = filepath.Join(tl.dir, "journal")
				bundles = gate
			}
			b := NewBatcher(tl.log, bundles, cfg)
			acked := map[string]bool{}
			big := exact("big.0", MaxEventSize)
			raw, err := big.Marshal()
			if err != nil || len(raw) != MaxEventSize {
				t.Fatalf("setup: %d bytes, %v", len(raw), err)
			}
			gate.hold.Store(true) // with a journal: no fold, a kill finds the segment
			if _, err := b.Submit(ctx, big)(); err != nil {
				t.Fatalf("a record of exactly MaxEventSize: %v", err)
			}
			acked["big.0"] = true
			if journal {
				segs, err := readSegments(b.j.dir, nil)
				n := 0 // the record's segment, and perhaps the next one prepared (empty)
				for _, sg := range segs {
					n += len(sg.recs)
				}
				if err != nil || n != 1 {
					t.Fatalf("DURABILITY: a killed process's journal with a MaxEventSize record cannot be read back: %d segments, %d records, %v", len(segs), n, err)
				}
			}
			gate.hold.Store(false)
			close(gate.release)
			over := exact("over.0", MaxEventSize+1)
			overRaw := a12OneOver(over)
			if len(overRaw) != MaxEventSize+1 {
				t.Fatalf("setup: %d bytes", len(overRaw))
			}
			if _, err := b.SubmitEncoded(ctx, store.AuditEvent{TS: over.TS, Kind: string(over.Kind), Principal: "p", Decision: Allow, Raw: overRaw})(); err == nil {
				t.Fatal("SubmitEncoded acknowledged a record of MaxEventSize+1 bytes")
			}
			if _, err := b.Submit(ctx, over)(); err != nil {
				t.Fatalf("Submit of an event one byte over: %v (want it recorded truncated)", err)
			}
			// MaxBatch records then one more, one group each.
			var fs []Future
			var ids []string
			for i := range MaxBatch + 1 {
				id := fmt.Sprintf("m.%d", i)
				ids = append(ids, id)
				fs = append(fs, b.Submit(ctx, a12Event(id)))
			}
			for i, f := range fs {
				if _, err := f(); err != nil {
					t.Fatal(err)
				}
				acked[ids[i]] = true
			}
			b.Close()
			tl.close(t)
			recs := a12Logged(t, tl.dir, tl.vkey)
			a12CheckOnceInOrder(t, recs, acked)
			truncated := 0
			for _, r := range recs {
				if ev, err := ParseEvent(r.raw); err == nil && ev.Fields["truncated"] == "true" {
					truncated++
				}
			}
			if truncated != 1 {
				t.Fatalf("%d truncated records in the log, want the one submitted one byte over", truncated)
			}
		})
	}
}

// a12OneOver is the canonical bytes of ev, an event one byte over MaxEventSize that Marshal
// refuses, written by hand as Marshal would (a caller writing its own bytes: SubmitEncoded).
func a12OneOver(ev Event) []byte {
	fields := map[string]string{}
	for k, v := range ev.Fields {
		fields[k] = v
	}
	fields["pad"] = fields["pad"][:len(fields["pad"])-1]
	ev.Fields = fields
	b, err := ev.Marshal()
	if err != nil {
		panic(err)
	}
	i := strings.Index(string(b), `"pad":"`) + len(`"pad":"`)
	return append(append(append([]byte(nil), b[:i]...), 'x'), b[i:]...)
}

// TestAttack12TwoBatchersDeadJournals. Attack: two batchers on the same log and journal
// root (replicas sharing a data directory) submit under load while dead replicas' journals
// keep appearing — some half folded already (a replica killed between a batch entry and
// its segment's removal) — and both look for dead journals every 2 ms, racing for them.
// Promises 1, 2, 6: every record is in the log exactly once, each source's in its order.
func TestAttack12TwoBatchersDeadJournals(t *testing.T) {
	defer func(d time.Duration) { DeadJournalEvery = d }(DeadJournalEvery)
	DeadJournalEvery = 2 * time.Millisecond
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	ctx := context.Background()
	cfg := BatcherConfig{MaxRecords: 3, MaxDelay: 100 * time.Microsecond, FoldEvery: 2 * time.Millisecond, Journal: jdir}
	a := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
	bb := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
	var acks a12Acks
	stopWriters := a12Writers(ctx, &acks, 0, a, bb)
	dead := 12
	if testing.Short() {
		dead = 5
	}
	folder := &Batcher{log: tl.log, bundles: DirBundles{Dir: tl.dir}, maxRecords: 3}
	for d := range dead {
		j, err := openJournal(jdir, 3, nil)
		if err != nil {
			t.Fatal(err)
		}
		var recs []store.AuditEvent
		for i := range 8 {
			id := fmt.Sprintf("dead%d.%d", d, i)
			recs = append(recs, indexRecord(0, a12Raw(id)))
			acks.add(id)
		}
		if err := j.append(recs[:5]); err != nil {
			t.Fatal(err)
		}
		if err := j.append(recs[5:]); err != nil {
			t.Fatal(err)
		}
		if d%2 == 1 { // killed after folding its first batch (named by its place), before removing the segment
			if _, err := folder.commitRecords(recs[:3], journalSource(j.f.Name(), 0), nil, nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		j.close()
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond) // spread them, not a condition
	}
	waitFor(t, func() bool { // every dead journal folded and removed
		ents, _ := os.ReadDir(jdir)
		live := 0
		for _, e := range ents {
			if e.Name() == filepath.Base(a.j.dir) || e.Name() == filepath.Base(bb.j.dir) {
				live++
			}
		}
		return len(ents) == live
	})
	stopWriters()
	a.Close()
	bb.Close()
	tl.close(t)
	a12CheckOnceInOrder(t, a12Logged(t, tl.dir, tl.vkey), acks.ids)
	t.Logf("%d records", len(acks.ids))
}

// TestAttack12LiveLockRemoved. Attack: the "lock" file of a RUNNING process's journal
// directory is removed (by hand, or an age-based cleaner such as systemd-tmpfiles: the
// lock file is created at start and never touched again, the segments are fresh) while
// its open segment holds acknowledged, not yet folded records. A directory without its
// lock file is taken for a dead process's (the lock is made anew, on a new inode, which the
// live process's flock on the old one does not cover): the running batcher's own dead
// journal scan — or another process's — folds the live segment, while the live batcher
// still holds the same records to fold itself. Promise 1 and 6: every acknowledged record
// is in the log exactly once.
func TestAttack12LiveLockRemoved(t *testing.T) {
	defer func(d time.Duration) { DeadJournalEvery = d }(DeadJournalEvery)
	DeadJournalEvery = 2 * time.Millisecond
	a := newA12Journaled(t, BatcherConfig{MaxRecords: 100, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: "journal"})
	tl, jdir, b, acked, submit := a.tl, a.jdir, a.b, a.acked, a.submit
	ctx := context.Background()
	for range 10 {
		if err := submit(); err != nil {
			t.Fatal(err)
		}
	}
	size0, _ := tl.log.IntegratedSize(ctx)
	if err := os.Remove(filepath.Join(b.j.dir, "lock")); err != nil {
		t.Fatal(err)
	}
	// Its own scan (every DeadJournalEvery) or the next replica's start takes the directory.
	byOwnScan := a12Until(2*time.Second, func() bool { n, _ := tl.log.IntegratedSize(ctx); return n > size0 })
	t.Logf("the live directory was folded as dead by the running batcher's own scan: %v", byOwnScan)
	if !byOwnScan {
		other := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir})
		other.Close()
	}
	refused := 0
	for range 10 {
		if err := submit(); err != nil {
			refused++
		}
	}
	b.Close()
	tl.close(t)
	recs := a12Logged(t, tl.dir, tl.vkey)
	seen := map[string]int{}
	for _, r := range recs {
		seen[a12ID(r.raw)]++
	}
	for id := range acked {
		if seen[id] != 1 {
			t.Fatalf("EXACTLY-ONCE BROKEN: the live journal's lock file removed: acknowledged record %s is in the log %d times (%d records logged for %d acknowledged, %d refused)",
				id, seen[id], len(recs), len(acked), refused)
		}
	}
	a12CheckOnceInOrder(t, recs, acked)
}

// TestAttack12CloseTransientFault. Attack: one bundle write fails (a transient EIO) just as
// Close folds the journal. Promise 1: a record whose future resolved nil is in the log
// after Close — Close has no error to return, so a record it leaves in the journal is in
// no log until some later process starts on the same directory. (Checked also: the next
// batcher folds it, once.)
func TestAttack12CloseTransientFault(t *testing.T) {
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	ctx := context.Background()
	fb := &a12FlakyBundles{DirBundles: DirBundles{Dir: tl.dir}}
	once := &a12FailOnce{a12FlakyBundles: fb}
	b := NewBatcher(tl.log, once, BatcherConfig{MaxRecords: 100, MaxDelay: time.Millisecond, FoldEvery: time.Hour, Journal: jdir})
	acked := map[string]bool{}
	for i := range 10 {
		id := fmt.Sprintf("s.%d", i)
		if _, err := b.Submit(ctx, a12Event(id))(); err != nil {
			t.Fatal(err)
		}
		acked[id] = true
	}
	once.armed.Store(true) // the next bundle write (Close's fold) fails, once
	b.Close()
	size, _ := tl.log.IntegratedSize(ctx)
	left, _ := filepath.Glob(filepath.Join(jdir, "*", "*.wal"))
	inLog := 0
	if size > 0 {
		tl.close(t)
		inLog = len(a12Logged(t, tl.dir, tl.vkey))
		tl.reopen(t)
	}
	// The next batcher on the directory folds them (not lost).
	nb := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, Journal: jdir})
	nb.Close()
	tl.close(t)
	a12CheckOnceInOrder(t, a12Logged(t, tl.dir, tl.vkey), acked)
	if inLog != len(acked) {
		t.Fatalf("CLOSE: one transient bundle-write failure during Close: %d of %d acknowledged records in the log after Close returned (no error), %d segments left for a later process", inLog, len(acked), len(left))
	}
}

// a12FailOnce fails one PutBundle once armed.
type a12FailOnce struct {
	*a12FlakyBundles
	armed atomic.Bool
}

func (f *a12FailOnce) PutBundle(ctx context.Context, name string, b []byte) error {
	if f.armed.CompareAndSwap(true, false) {
		return errors.New("injected: bundle write failed once (EIO)")
	}
	return f.a12FlakyBundles.PutBundle(ctx, name, b)
}
