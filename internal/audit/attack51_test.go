package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/sys/unix"
)

// Outside round 51: the request-record journal's recovery path in the default written
// mode, against what else lives on the host's /dev/shm — another data directory's refold
// (a copy of this one), another process of the same journal root starting or stopping,
// shadow roots of other users, a full tmpfs, the wall clock — and the start's retry.
// Promise (as rounds 49–50): every record a process acknowledged ends up in the log
// exactly once, in order per writer — or the operator is told (a refusal naming the
// directory, an ALERT) and nothing is silently lost.
//
// Findings (each test says what it expects and saw):
//   - A dead journal's refold reads *and removes* every shadow root's directory of the dead
//     directory's name (deadShadowDirs: "a process directory's name is random: the same
//     name is the same directory"). A copy of the data directory (a backup, a restore
//     drill, a staging clone, `cp -a` before a migration) has the same names: any refold of
//     the copy — a start on it, or any CLI command opening its log — takes the original's
//     shadows. The original's next start then folds what its disk synced only and loses
//     the rest silently (…CopyRefoldedFirst), and a live original's open shadow is
//     unlinked under it, so a kill before its next sync loses what it had acknowledged
//     (…CopyRefoldedWhileLive).
//   - removeEmptyShadowRoot (a clean Close's removeShadows, a refold's removeDeadShadows)
//     reads the shadow root, sees no shadow directory, and removes the root whole: a
//     process of the same journal root that made its first shadow in between has it
//     unlinked under it; a kill before its next sync loses what it acknowledged
//     (…ShadowRootRemovedUnderStart: a race, one start in a few dozen here, found within
//     ~40 rounds of one stop and three starts). Unkilled, the next sync finds the shadow
//     unlinked: an ALERT, and records refused until the probe — at a routine start.
//   - sweepShadows removes a moved journal's shadows after ShadowOrphanGrace with nothing
//     said; a forward step of the wall clock makes the grace nothing (…SweepAfterClockStep).
//
// Fixed the same (thirty-third) session: a refold removes only the shadows in the dead
// directory's own shadow root or in a root whose journal is gone (shadowDir.mine) — a
// copy's original's are read, never removed; removeEmptyShadowRoot removes the markers and
// then the root only if empty (never recursively), and a start whose root went between
// MkdirAll's steps tries again; a sweep says what it marks (a warning) and what it removes
// after the grace (an ALERT). A clock step still shortens the grace: said, not prevented.
//
// Held: another user's shadow root (sorted first) holding the dead directory's name with
// crafted shadows (…ForeignPlantSameName); a full tmpfs at /dev/shm when a written process
// starts and while it rotates (…ShadowTmpfsFull); a start retried across a bundle store
// failing intermittently, with records submitted during the refusal, another batcher
// starting meanwhile, and Close during a retry (…StartRetry); a shadow kept after a
// failed close, its segment folded from memory, then the process killed
// (…KeptShadowFoldedThenKilled: not logged twice).

// a51Copy copies the process directory dir into a fresh test log's journal root (another
// data directory on the same host) and returns that log and its journal root.
func a51Copy(t *testing.T, dir string) (*testLog, string) {
	t.Helper()
	tl2 := openTestLog(t)
	tl2.record(t, 1)
	jdir2 := filepath.Join(tl2.dir, "journal")
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir2)) })
	copyDir(t, dir, filepath.Join(jdir2, filepath.Base(dir)))
	return tl2, jdir2
}

// TestAttack51CopyRefoldedFirst: a written process is killed (S0, S1 closed; S2 open, 20
// records synced, 30 only in its shadow). Before it is restarted, the operator copies its
// data directory elsewhere on the host (a backup; a copy to inspect) and a start or any
// CLI command (Log.Open: every command folds the journal) runs on the copy. The copy's
// refold reads the original's shadows (same directory name) and removes them. Expected:
// the original's next start logs all 250 once, in order, or refuses naming the directory —
// not 220 silently. Control "original first": the original is started before the copy.
func TestAttack51CopyRefoldedFirst(t *testing.T) {
	t.Parallel()
	for _, by := range []string{"batcher", "open", "original first"} {
		t.Run(by, func(t *testing.T) {
			t.Parallel()
			tl, jdir, dir, _, shadow := a50Dead(t, 250, 100, 20)
			tl2, jdir2 := a51Copy(t, dir)
			if by == "original first" {
				healthy := a50Start(tl, jdir)
				if err := a50Refold(t, tl2, jdir2, false); err != nil {
					t.Logf("the copy's refold: %v", err)
				}
				a50Judge(t, tl, healthy, dir, 250)
				return
			}
			h2 := a50Refold(t, tl2, jdir2, by == "open")
			t.Logf("the copy's refold (another data directory): %v; the original's shadow (30 records) still on /dev/shm: %v", h2, fileExists(shadow))
			healthy := a50Start(tl, jdir)
			a50Judge(t, tl, healthy, dir, 250)
		})
	}
}

// TestAttack51CopyRefoldedWhileLive: a written process runs (250 records acknowledged, the
// last 30 since its last sync); its data directory is copied (cp -a: a backup, a staging
// clone) and a written batcher starts on the copy — its refold takes the live process's
// open shadow and removes it. The live process is then killed before its next sync.
// Expected: all 250 once in its log after its next start, or a refusal — not 220 silently.
func TestAttack51CopyRefoldedWhileLive(t *testing.T) {
	t.Parallel()
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl, jdir, j := openWrittenJournal(t)
	tl.record(t, 1)
	a51WriteSyncedAt220(t, j)
	dir := j.dir
	tl2, jdir2 := a51Copy(t, dir)
	h2 := a50Start(tl2, jdir2)
	var st unix.Stat_t
	if err := unix.Fstat(int(j.shadow.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("the copy's start: %v; the live process's open shadow has %d links after it", h2, st.Nlink)
	writtenKill(j)
	healthy := a50Start(tl, jdir)
	a50Judge(t, tl, healthy, dir, 250)
}

// TestAttack51ShadowRootRemovedUnderStart: processes on one journal root (replicas on one
// host, or a restart overlapping the old process's exit): one closes cleanly — the last
// shadow directory in the root, so removeShadows → removeEmptyShadowRoot removes the
// root — while three others start and make their first shadows there (openJournalWith:
// what a written batcher's start runs after its refold). Repeated until a starting
// process's shadow is found unlinked right after its start (or 1.5 s pass: then the test
// passes, saying the race was not hit; before the fix it was hit within 36 rounds, ~0.15
// s). Then that process acknowledges 30 records (no sync yet: SyncEvery is 50 ms) and is
// killed. Expected: the next start logs
// the 30, or refuses — not 0 silently. (Unkilled, the next sync sees the shadow unlinked:
// an ALERT and records refused until the probe — at a plain start.)
//
// Serial although it sets no package variable: a race hit in a few percent of rounds wants
// its rounds, which the package's parallel tests slow several times over.
func TestAttack51ShadowRootRemovedUnderStart(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl := openTestLog(t)
	tl.record(t, 1)
	jdir := filepath.Join(tmpfsDir(t, "64m"), "journal") // fsyncs cost nothing: more rounds
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) })
	open := func() *journal {
		// Small segments: a round is quicker (the race is at the shadow's creation, before
		// its room is allocated).
		j, err := openJournalWith(&journal{root: jdir, batch: 100, key: a17Key, packed: true, mapped: mapped{segBytes: 64 << 10}}, 0)
		if err != nil {
			t.Error(err)
		}
		return j
	}
	deadline := time.Now().Add(1500 * time.Millisecond)
	rounds, pwrite := 0, 0
	for time.Now().Before(deadline) && !t.Failed() {
		rounds++
		closing := open()
		var starting [3]*journal // three processes start as one stops
		var wg sync.WaitGroup
		for k := range starting {
			wg.Go(func() { starting[k] = open() })
		}
		closing.close()
		wg.Wait()
		var hit *journal
		for _, j := range starting {
			var st unix.Stat_t
			switch {
			case j == nil:
			case j.shadow == nil:
				pwrite++ // its root removed before its shadow was made: pwrite (safe, slower)
			case hit == nil && unix.Fstat(int(j.shadow.Fd()), &st) == nil && st.Nlink == 0:
				hit = j
				continue
			}
			if j != nil {
				j.close()
			}
		}
		if hit != nil {
			t.Logf("round %d: a starting process's shadow was unlinked under it by the other's clean close", rounds)
			for i := range 30 {
				if _, err := hit.writeMapped(store.AuditEvent{Raw: mustMarshal(t, requestEvent(i))}, 100); err != nil {
					t.Fatal(err)
				}
			}
			dir := hit.dir
			writtenKill(hit)
			healthy := a50Start(tl, jdir)
			a50Judge(t, tl, healthy, dir, 30)
			return
		}
	}
	t.Logf("the race was not hit in %d rounds (%d starts fell back to pwrite: their root removed first)", rounds, pwrite)
}

// TestAttack51SweepAfterClockStep: a written process is killed (30 records only in its
// shadow) and its data directory moved (another disk, another mount point). Another
// written process on the host starts (its sweep marks the old shadow root "gone": its
// journal is not there, it holds shadows); then the wall clock steps forward a day (a VM
// resumed from a day-old snapshot, an NTP step after a bad RTC — or simply a day passes)
// and another start sweeps again: the root is removed. Expected: the moved journal's next
// start logs all 250 once, or refuses naming the directory, or at least the removal of
// acknowledged records is said (an ALERT) — not 220 silently with nothing said anywhere.
// Control "no step": the moved journal's start before the grace ends: 250.
func TestAttack51SweepAfterClockStep(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"clock step", "no step"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			tl, jdir, dir, _, shadow := a50Dead(t, 250, 100, 20)
			oldRoot := shadowRootFor(jdir)
			moved := filepath.Join(tl.dir, "journal-moved")
			t.Cleanup(func() { os.RemoveAll(shadowRootFor(moved)); os.RemoveAll(oldRoot) })
			if err := os.Rename(jdir, moved); err != nil {
				t.Fatal(err)
			}
			dir = filepath.Join(moved, filepath.Base(dir))
			// Another instance on the host (its own data directory) starts: it sweeps.
			other := openTestLog(t)
			otherJ := filepath.Join(other.dir, "journal")
			t.Cleanup(func() { os.RemoveAll(shadowRootFor(otherJ)) })
			otherLogs := a50Logs(t, other)
			if h := a50Start(other, otherJ); h != nil {
				t.Fatal(h)
			}
			mark := filepath.Join(oldRoot, shadowGoneMarker)
			if !fileExists(mark) {
				t.Fatalf("the first sweep did not mark the moved journal's shadow root (shadow there: %v)", fileExists(shadow))
			}
			if mode == "clock step" {
				past := time.Now().Add(-ShadowOrphanGrace - time.Hour)
				if err := os.Chtimes(mark, past, past); err != nil {
					t.Fatal(err)
				}
				if h := a50Start(other, otherJ); h != nil {
					t.Fatal(h)
				}
			}
			other.close(t)
			t.Logf("the moved journal's shadow (30 records) still on /dev/shm: %v; the sweeping instance's log says ALERT: %v",
				fileExists(shadow), strings.Contains(otherLogs.String(), "ALERT"))
			logs := a50Logs(t, tl)
			healthy := a50Start(tl, moved)
			if healthy == nil && !fileExists(shadow) {
				said := strings.Contains(otherLogs.String()+logs.String(), "ALERT")
				tl.close(t)
				got := loggedRecords(t, tl.dir, tl.vkey)
				switch {
				case len(got) == 250:
				case !said:
					t.Fatalf("the moved journal's shadow was swept with nothing said: %d of 250 acknowledged records in the log, no refusal, no ALERT", len(got))
				case len(got) != 220:
					t.Fatalf("the shadow swept with an ALERT: want the 220 synced records, each once, got %d", len(got))
				default:
					wantInOrder(t, got, 220) // the loss is said: what was synced, once, in order
				}
				return
			}
			a50Judge(t, tl, healthy, dir, 250)
		})
	}
}

// TestAttack51ForeignPlantSameName: another local user (uid 65534) makes a shadow root of
// their own under /dev/shm — named to sort before every other, mode 0755 — and in it a
// directory named as a dead written process's directory (the name is public: every batch
// entry's "journal" field carries it), holding crafted shadows: for the open segment S2 a
// well-formed header and zeros (no records), for S1 garbage, for S0 a FIFO, and for a
// segment the process never had (S9) a packed header with a frame of garbage. The refold
// reads every root's directory of that name. Expected: the real shadow's records — all
// 250 once, in order — and the plant left where it is (not removed: not this user's); or a
// refusal naming the directory.
func TestAttack51ForeignPlantSameName(t *testing.T) {
	t.Parallel()
	tl, jdir, dir, segs, shadow := a50Dead(t, 250, 100, 20)
	root := filepath.Join(ShadowBase, "strongroom-journal-0000000000000000-a51-"+filepath.Base(tl.dir))
	plant := filepath.Join(root, filepath.Base(dir))
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.MkdirAll(plant, 0o755); err != nil {
		t.Fatal(err)
	}
	hdr, err := os.ReadFile(segs[2])
	if err != nil {
		t.Fatal(err)
	}
	// The plant's S2: the segment's header as an outsider can make it (all but the link's
	// MAC: zeros), then zeros — it scans whole, with no record.
	fake := make([]byte, pageSize*4)
	copy(fake, hdr[:journalHeader-32])
	if err := os.WriteFile(filepath.Join(plant, filepath.Base(segs[2])), fake, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(plant, filepath.Base(segs[1])), []byte(strings.Repeat("garbage ", 999)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(plant, filepath.Base(segs[0])), 0o644); err != nil {
		t.Fatal(err)
	}
	s9 := make([]byte, pageSize+200)
	copy(s9, hdr[:journalHeader])
	copy(s9[pageSize:], "\x40\x00\x00\x00garbage-after-a-header")
	if err := os.WriteFile(filepath.Join(plant, segmentName(9)), s9, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 65534, 65534)
	}); err != nil {
		t.Fatal(err)
	}
	healthy := a50Start(tl, jdir)
	t.Logf("the real shadow removed: %v; the plant left: %v", !fileExists(shadow), fileExists(filepath.Join(plant, filepath.Base(segs[2]))))
	if healthy == nil && !fileExists(filepath.Join(plant, segmentName(9))) {
		t.Error("another user's shadow directory was removed by the refold")
	}
	a50Judge(t, tl, healthy, dir, 250)
}

// TestAttack51ShadowTmpfsFull (serial: ShadowBase is a small tmpfs of its own): /dev/shm
// full.
//   - "at start": a written process starts on a full tmpfs (no shadow: its records go to
//     the segment by pwrite), acknowledges 120 records across two segments, none synced,
//     and is killed; the next start: 120 once, in order.
//   - "while rotating": a written process whose first shadow was made sees the tmpfs
//     filled to its last byte meanwhile; it rotates through three segments (the shadow
//     kept and renamed for each: nothing allocated), the last 37 records only in the
//     shadow, and is killed; a written batcher then starts on the still-full tmpfs (its refold reads
//     the shadow; its own shadow cannot be made: pwrite), takes 40 more records, closes:
//     all once, in order.
func TestAttack51ShadowTmpfsFull(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	defer func(b string) { ShadowBase = b }(ShadowBase)
	for _, mode := range []string{"at start", "while rotating"} {
		t.Run(mode, func(t *testing.T) {
			ShadowBase = tmpfsDir(t, "2m")
			tl := openTestLog(t)
			tl.record(t, 1)
			jdir := filepath.Join(tl.dir, "journal")
			if mode == "at start" {
				fillDisk(t, ShadowBase)
			}
			j, err := openJournalWith(&journal{root: jdir, batch: 100, key: a17Key, packed: true, mapped: mapped{segBytes: 64 << 10}}, 0)
			if err != nil {
				t.Fatal(err)
			}
			n := 120
			if mode == "while rotating" {
				if j.mm == nil {
					t.Fatal("no shadow on an empty tmpfs")
				}
				fillDisk(t, ShadowBase)
				n = 237 // segments of 100, 100 and 37 records
			} else if j.mm != nil {
				t.Fatal("a shadow made on a full tmpfs")
			}
			for i := range n {
				if _, err := j.writeMapped(store.AuditEvent{Raw: mustMarshal(t, requestEvent(i))}, 100); err != nil {
					t.Fatal(err)
				}
			}
			dir, shadowed := j.dir, j.mm != nil
			writtenKill(j)
			t.Logf("%d segments, the open one shadowed: %v", len(a33Segments(t, dir)), shadowed)
			if mode == "at start" {
				a50Judge(t, tl, a50Start(tl, jdir), dir, n)
				return
			}
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
			if h := b.Healthy(); h != nil {
				b.Close()
				a50Judge(t, tl, h, dir, n)
				return
			}
			for i := n; i < n+40; i++ {
				if _, err := b.Submit(context.Background(), requestEvent(i))(); err != nil {
					t.Fatal(err)
				}
			}
			b.Close()
			a50Judge(t, tl, nil, dir, n+40)
		})
	}
}

// a51Store is a bundle store (DirBundles under it, linking) each of whose bundles fails
// its first `fails` writes (a link or a put of that name), until stopped; each write after
// delay. (A store failing by a global count of writes runs in lock-step with the Log's own
// empty-bundle probe — retryAfterFailure — which then takes every write that would work.)
type a51Store struct {
	d       DirBundles
	fails   int
	mu      sync.Mutex
	tries   map[string]int
	n       atomic.Int32
	failed  atomic.Int32
	stopped atomic.Bool
	delay   atomic.Int64
}

func (s *a51Store) write(name string) error {
	time.Sleep(time.Duration(s.delay.Load()))
	s.n.Add(1)
	s.mu.Lock()
	if s.tries == nil {
		s.tries = map[string]int{}
	}
	s.tries[name]++
	k := s.tries[name]
	s.mu.Unlock()
	if !s.stopped.Load() && k <= s.fails {
		s.failed.Add(1)
		return fmt.Errorf("a51: bundle store failing (%s…, try %d)", name[:8], k)
	}
	return nil
}

func (s *a51Store) PutBundle(ctx context.Context, name string, b []byte) error {
	if err := s.write(name); err != nil {
		return err
	}
	return s.d.PutBundle(ctx, name, b)
}

func (s *a51Store) Bundle(ctx context.Context, name string) ([]byte, error) {
	return s.d.Bundle(ctx, name)
}

func (s *a51Store) LinkBundle(ctx context.Context, name, src string) error {
	if err := s.write(name); err != nil {
		return err
	}
	return s.d.LinkBundle(ctx, name, src)
}

// TestAttack51StartRetry: a written batcher's start meets a killed written process's
// journal (250 records, 30 only in S2's shadow) and a bundle store that fails each bundle's
// first two writes (a segment's link and the bundle written instead fail together, then
// again at the next try: each segment costs two tries), so its start is refused and
// retried several times (FoldEvery 5 ms, doubling). A writer submits records throughout:
// each must be refused (wrapping ErrUnavailable) or end up in the log.
//   - "alone": the batcher recovers by itself once its tries have folded the directory.
//   - "second starts": another written batcher (a working store) starts on the root
//     between two tries, takes the dead directory and its own writer writes too.
//   - "close during a try": each store write takes 40 ms; the refusing batcher is closed
//     while a try is folding. Close must return, later Submits be refused, and the next
//     start fold what is left.
//
// Every acknowledged record once, each writer in order; the dead directory's 250 once, in
// order.
func TestAttack51StartRetry(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"alone", "second starts", "close during a try"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			tl, jdir, dir, _, _ := a50Dead(t, 250, 100, 20)
			s := &a51Store{d: DirBundles{Dir: tl.dir}, fails: 2}
			if mode == "close during a try" {
				s.delay.Store(int64(40 * time.Millisecond))
			}
			logs, err := a50Reopen(t, tl, s, "")
			if err != nil {
				t.Fatal(err)
			}
			cfg := BatcherConfig{MaxRecords: 100, FoldEvery: 5 * time.Millisecond, Journal: jdir, JournalKey: a17Key, Written: true}
			b1 := NewBatcher(tl.log, s, cfg)
			t.Cleanup(b1.Close)
			first := b1.Healthy()
			if first == nil {
				t.Fatal("the start met a failing bundle store, yet it is healthy")
			}
			var acks a12Acks
			var stop atomic.Bool
			var mu sync.Mutex
			var bad []string
			var wg sync.WaitGroup
			writer := func(name string, b *Batcher) {
				for i := 0; !stop.Load(); i++ {
					id := fmt.Sprintf("%s.%d", name, i)
					if _, err := b.Submit(context.Background(), a12Event(id))(); err == nil {
						acks.add(id)
					} else if !errors.Is(err, ErrUnavailable) {
						mu.Lock()
						bad = append(bad, err.Error())
						mu.Unlock()
					}
					time.Sleep(300 * time.Microsecond)
				}
			}
			wg.Go(func() { writer("b1", b1) })
			var b2 *Batcher
			switch mode {
			case "second starts":
				if !a12Until(5*time.Second, func() bool { return s.failed.Load() >= 4 }) {
					t.Fatal("the retries never met the store again")
				}
				b2 = NewBatcher(tl.log, DirBundles{Dir: tl.dir}, cfg)
				t.Cleanup(b2.Close)
				// (Its Healthy is also the shared Log's last error — the other's failing
				// store's — until a commit succeeds: two batchers on one Log are a test's.)
				if !a12Until(5*time.Second, func() bool { return b2.Healthy() == nil }) {
					t.Errorf("a batcher with a working store started during another's retries is not healthy 5 s later: %v", b2.Healthy())
				}
				wg.Go(func() { writer("b2", b2) })
			case "close during a try":
				if !a12Until(5*time.Second, func() bool { return s.n.Load() >= 4 }) {
					t.Fatal("no retry began")
				}
				closed := make(chan struct{})
				go func() { b1.Close(); close(closed) }()
				select {
				case <-closed:
				case <-time.After(10 * time.Second):
					t.Fatal("Close did not return while a retried start ran")
				}
				stop.Store(true)
				wg.Wait()
				if _, err := b1.Submit(context.Background(), a12Event("after-close.0"))(); err == nil {
					acks.add("after-close.0")
					t.Error("a record was acknowledged by a closed batcher")
				}
				s.stopped.Store(true)
				s.delay.Store(0)
				t.Logf("store writes %d (%d failed) before Close; left for the next start: %v", s.n.Load(), s.failed.Load(), fileExists(dir))
				healthy := a50Start(tl, jdir)
				if healthy != nil {
					t.Fatalf("the next start after a Close during a retry refuses: %v", healthy)
				}
				tl.close(t)
				a50Check(t, tl, 250, acks.ids)
				return
			}
			back := a12Until(10*time.Second, func() bool { return b1.Healthy() == nil })
			s.stopped.Store(true)
			if !back {
				t.Errorf("the batcher still refuses 10 s into its retries: %v", b1.Healthy())
			}
			// A while of records taken after the recovery.
			n := acks.len()
			a12Until(2*time.Second, func() bool { return acks.len() >= n+50 })
			stop.Store(true)
			wg.Wait()
			b1.Close()
			if b2 != nil {
				b2.Close()
			}
			tl.close(t)
			t.Logf("store failures %d; records acknowledged %d; retries said: %d", s.failed.Load(), acks.len(), strings.Count(logs.String(), "still unusable"))
			if len(bad) > 0 {
				t.Errorf("refusals not wrapping ErrUnavailable: %q", bad[0])
			}
			if fileExists(dir) {
				t.Error("the dead directory is still there")
			}
			a50Check(t, tl, 250, acks.ids)
		})
	}
}

// TestAttack51KeptShadowFoldedThenKilled: a written process's close of its open segment S0
// fails (the journal's file system full: the close's write of the records since the last
// sync fails), so S0's shadow is kept on tmpfs; the process folds S0 from memory (its
// batch logged, S0's file removed — the kept shadow is not: nothing removes it until the
// process closes cleanly), gets room again, starts S1 (linking S0), acknowledges 20 more
// records and is killed. The refold then finds S0 only as a shadow (40 records) whose
// batch the log has. Expected: 60 once, in order (S0's not logged again), or a refusal.
func TestAttack51KeptShadowFoldedThenKilled(t *testing.T) {
	t.Parallel()
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl := openTestLog(t)
	tl.record(t, 1)
	jdir := filepath.Join(tmpfsDir(t, "1m"), "journal")
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) })
	j, err := openJournalWith(&journal{root: jdir, batch: 100, key: a17Key, packed: true}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if _, err := j.writeMapped(indexRecord(0, mustMarshal(t, requestEvent(i))), 100); err != nil {
			t.Fatal(err)
		}
		if i == 9 {
			if err := j.syncMapped(); err != nil {
				t.Fatal(err)
			}
		}
	}
	shadow := j.shadowPath
	fill := fillDisk(t, filepath.Dir(jdir))
	j.wmu.Lock()
	seg, cerr := j.closeMapped(true)
	j.wmu.Unlock()
	if cerr == nil || seg == nil || !fileExists(shadow) {
		t.Fatalf("the close on a full file system: err %v, segment %v, shadow kept %v", cerr, seg != nil, fileExists(shadow))
	}
	folder := &Batcher{log: tl.log, bundles: DirBundles{Dir: tl.dir}, maxRecords: 100}
	if err := folder.fold(seg, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	j.wmu.Lock()
	err = j.start()
	j.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for i := 40; i < 60; i++ {
		if _, err := j.writeMapped(indexRecord(0, mustMarshal(t, requestEvent(i))), 100); err != nil {
			t.Fatal(err)
		}
	}
	dir := j.dir
	writtenKill(j)
	t.Logf("S0's kept shadow still there at the kill: %v", fileExists(shadow))
	healthy := a50Start(tl, jdir)
	a50Judge(t, tl, healthy, dir, 60)
}

// a51WriteSyncedAt220 writes 250 request records into the written journal j (segments of
// 100), synced after the 220th: the last 30 are in the open segment's shadow alone.
func a51WriteSyncedAt220(t *testing.T, j *journal) {
	t.Helper()
	for i := range 250 {
		if _, err := j.writeMapped(store.AuditEvent{Raw: mustMarshal(t, requestEvent(i))}, 100); err != nil {
			t.Fatal(err)
		}
		if i == 219 {
			if err := j.syncMapped(); err != nil {
				t.Fatal(err)
			}
		}
	}
}
