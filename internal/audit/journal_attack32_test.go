package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/sys/unix"
)

// a32DeadJournal leaves a killed written journal of n records (synced: all on the disk)
// and returns the test log, the journal root and the open segment's shadow path.
func a32DeadJournal(t *testing.T, n int) (*testLog, string, string) {
	t.Helper()
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl, jdir, j := openWrittenJournal(t)
	for i := range n {
		if _, err := j.writeMapped(store.AuditEvent{Raw: mustMarshal(t, requestEvent(i))}, 100); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.syncMapped(); err != nil {
		t.Fatal(err)
	}
	shadow := j.shadowPath
	if shadow == "" {
		t.Skip("no shadow")
	}
	writtenKill(j)
	return tl, jdir, shadow
}

// TestAttack32LiveShadowAlteredBundle (promise 3): an outsider with write access to
// /dev/shm (no key) flips one byte of a live process's shadow, in a frame not yet synced.
// The segment is closed "whole" with the SHA-256 of what the process wrote in memory, and
// the file on the disk — now holding the flipped byte copied out of the shadow — is linked
// as the batch's bundle under that name without a check. The log must still hold the
// records as written and every bundle must hash to its name.
func TestAttack32LiveShadowAlteredBundle(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) })
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir,
		JournalKey: a17Key, Written: true, SyncEvery: time.Hour})
	ctx := context.Background()
	const n = 10
	for i := range n {
		if _, err := b.Submit(ctx, requestEvent(i))(); err != nil {
			t.Fatal(err)
		}
	}
	b.j.wmu.Lock()
	shadow := b.j.shadowPath
	b.j.wmu.Unlock()
	if shadow == "" {
		t.Skip("no shadow")
	}
	flipInPlace(t, shadow, pageSize+frameHeader+30) // inside the first record's payload
	b.Close()
	tl.close(t)
	// Every bundle in the store must be what its name says.
	filepath.WalkDir(filepath.Join(tl.dir, "batches"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		raw, _ := os.ReadFile(p)
		if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != d.Name() {
			t.Errorf("bundle %s holds bytes whose SHA-256 is %x (a segment linked unchecked)", d.Name(), sum)
		}
		return nil
	})
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), n)
}

// TestAttack32ShadowFIFO (promises 3/4): a FIFO planted at a dead process's open segment's
// shadow must not hang the next batcher's start (os.ReadFile opens it and waits for a
// writer forever).
func TestAttack32ShadowFIFO(t *testing.T) {
	tl, jdir, shadow := a32DeadJournal(t, 5)
	os.Remove(shadow)
	if err := unix.Mkfifo(shadow, 0o600); err != nil {
		t.Fatal(err)
	}
	b, hung := untilFIFOHang(shadow, 5*time.Second, func() *Batcher {
		return NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
	})
	b.Close()
	tl.close(t)
	if hung {
		t.Fatal("NewBatcher hung for 5 s on a FIFO planted as a dead segment's shadow (os.ReadFile blocks in open)")
	}
}

// TestAttack32HugeShadowHelper is the child of TestAttack32HugeShadow.
func TestAttack32HugeShadowHelper(t *testing.T) {
	dir := os.Getenv("A32_PROC_DIR")
	if dir == "" {
		t.Skip("child only")
	}
	_, err := readSegments(dir, a17Key)
	fmt.Println("readSegments returned:", err)
}

// TestAttack32HugeShadow (promises 3/4: never crash): a sparse shadow of 1 TiB (costs
// nothing on tmpfs) at a dead process's open segment's name: reading the dead journal must
// not crash the process (os.ReadFile sizes its buffer from the file: out of memory, a fatal
// error no recover catches). Run in a child process.
func TestAttack32HugeShadow(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	tl, _, shadow := a32DeadJournal(t, 5)
	defer tl.close(t)
	if err := os.Truncate(shadow, 1<<40); err != nil {
		t.Skipf("cannot make a sparse shadow: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAttack32HugeShadowHelper$", "-test.v=false")
	// The process directory on the disk: the shadow's directory's name under the journal.
	cmd.Env = append(os.Environ(), "A32_PROC_DIR="+filepath.Join(tl.dir, "journal", filepath.Base(filepath.Dir(shadow))))
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := string(out)
		if i := strings.Index(s, "fatal error"); i >= 0 {
			s = s[i:min(len(s), i+200)]
		} else {
			s = s[:min(len(s), 400)]
		}
		t.Fatalf("reading a dead journal whose shadow is a 1 TiB sparse file crashed the process: %v\n%s", err, s)
	}
}

// TestAttack32CloseRacesWriters (promise 5): writers submit while Close runs (segments
// filling and rotating often, folds running); every record whose Future resolved without
// error is in the log exactly once, each writer's in its order.
func TestAttack32CloseRacesWriters(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			tl := openTestLog(t)
			jdir := filepath.Join(tl.dir, "journal")
			t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) })
			b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 7, FoldEvery: 2 * time.Millisecond, Journal: jdir,
				JournalKey: a17Key, Written: true, SyncEvery: time.Millisecond})
			ctx := context.Background()
			var next atomic.Int64
			const writers = 4
			acked := make([][]int, writers)
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1) - 1)
						if _, err := b.Submit(ctx, requestEvent(i))(); err != nil {
							return
						}
						acked[w] = append(acked[w], i)
					}
				}()
			}
			time.Sleep(time.Duration(20+round*15) * time.Millisecond)
			b.Close()
			wg.Wait()
			tl.close(t)
			recs := loggedRecords(t, tl.dir, tl.vkey)
			pos := map[string]int{}
			for k, r := range recs {
				if _, dup := pos[string(r)]; dup {
					t.Fatalf("record at %d of the log is there twice", k)
				}
				pos[string(r)] = k
			}
			total := 0
			for w := range writers {
				last := -1
				for _, i := range acked[w] {
					ev := requestEvent(i)
					raw, _ := ev.Marshal()
					k, ok := pos[string(raw)]
					if !ok {
						t.Fatalf("record %d acknowledged (writer %d) but not in the log (%d records logged)", i, w, len(recs))
					}
					if k <= last {
						t.Fatalf("writer %d's record %d is before its earlier one in the log", w, i)
					}
					last = k
					total++
				}
			}
			if total == 0 {
				t.Fatal("nothing acknowledged")
			}
		})
	}
}

// TestAttack32StaleShadow (promises 1/3): a stale copy of a dead process's shadow (an
// earlier state: fewer records than its segment synced) planted by an outsider. Dropping
// records is conceded, but none may be lost silently or logged twice: either the 20
// records synced are folded, in order, or none is, the segment is left on the disk (its
// records wait) and the batcher says why.
func TestAttack32StaleShadow(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl, jdir, j := openWrittenJournal(t)
	var stale []byte
	for i := range 20 {
		if _, err := j.writeMapped(store.AuditEvent{Raw: mustMarshal(t, requestEvent(i))}, 100); err != nil {
			t.Fatal(err)
		}
		if i == 4 {
			stale = append([]byte(nil), j.mm...) // the shadow with five records
		}
	}
	if err := j.syncMapped(); err != nil {
		t.Fatal(err)
	}
	shadow, seg := j.shadowPath, j.f.Name()
	writtenKill(j)
	if err := os.WriteFile(shadow, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: 100, FoldEvery: time.Hour, Journal: jdir, JournalKey: a17Key, Written: true})
	herr := b.Healthy()
	size, _ := tl.log.IntegratedSize(context.Background())
	b.Close()
	tl.close(t)
	if size == 0 {
		if _, err := os.Stat(seg); err != nil || herr == nil {
			t.Fatalf("nothing folded, segment %v, healthy %v: the synced records are lost silently", err, herr)
		}
		return
	}
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), 20)
}

// TestAttack32ShadowReplacedLive (promise 4): a live process's shadow removed and a copy
// put in its place (same bytes, another inode): records keep being acknowledged into the
// unlinked mapping until a sync notices; every acknowledged record must reach the log, in
// order, exactly once, and the journal recover.
func TestAttack32ShadowReplacedLive(t *testing.T) {
	if ShadowBase == "" {
		t.Skip("no tmpfs at /dev/shm")
	}
	tl := openTestLog(t)
	jdir := filepath.Join(tl.dir, "journal")
	t.Cleanup(func() { os.RemoveAll(shadowRootFor(jdir)) })
	b := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{MaxRecords: MaxBatch, FoldEvery: time.Hour, Journal: jdir,
		JournalKey: a17Key, Written: true, SyncEvery: 5 * time.Millisecond})
	ctx := context.Background()
	n := 0
	submit := func() error {
		_, err := b.Submit(ctx, requestEvent(n))()
		if err == nil {
			n++
		}
		return err
	}
	for range 10 {
		if err := submit(); err != nil {
			t.Fatal(err)
		}
	}
	b.j.wmu.Lock()
	shadow := b.j.shadowPath
	b.j.wmu.Unlock()
	raw, err := os.ReadFile(shadow)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(shadow)
	if err := os.WriteFile(shadow, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for submit() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	waitFor(t, func() bool { return b.Healthy() == nil })
	for range 10 {
		if err := submit(); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	tl.close(t)
	wantInOrder(t, loggedRecords(t, tl.dir, tl.vkey), n)
}
