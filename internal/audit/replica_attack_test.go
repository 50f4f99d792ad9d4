package audit

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// TestReplicaAttackHelper is a child of TestAttackReplicasKilledAndRestarted: a replica
// sharing the data directory (log and journal root) with others; it prints "ack SHA256"
// once each record's future resolved.
func TestReplicaAttackHelper(t *testing.T) {
	dir, skey, id := os.Getenv("AUDIT_REPLICA_DIR"), os.Getenv("AUDIT_REPLICA_SKEY"), os.Getenv("AUDIT_REPLICA_ID")
	if dir == "" {
		t.Skip("child process of TestAttackReplicasKilledAndRestarted")
	}
	DeadJournalEvery = 30 * time.Millisecond // replicas fold each other's journals while others start
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	jdir := filepath.Join(dir, "journal")
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s, Journal: jdir, JournalBatch: 64})
	if err != nil {
		fmt.Println("open-failed", err)
		t.Fatal(err)
	}
	b := NewBatcher(l, DirBundles{Dir: dir}, BatcherConfig{MaxRecords: 64, Journal: jdir, FoldEvery: 20 * time.Millisecond})
	if err := b.Healthy(); err != nil {
		fmt.Println("unhealthy", err)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				ev := Event{V: 1, TS: time.Now().UTC(), Kind: KindRequest, Actor: map[string]string{"principal": fmt.Sprintf("%s-g%d", id, g)},
					Fields: map[string]string{"i": fmt.Sprint(i), "pad": strings.Repeat("x", 200)}}
				raw, _ := ev.Marshal()
				if _, err := b.Submit(context.Background(), ev)(); err != nil {
					mu.Lock()
					fmt.Fprintf(out, "err %v\n", err)
					out.Flush()
					mu.Unlock()
					time.Sleep(5 * time.Millisecond)
					continue
				}
				h := sha256.Sum256(raw)
				mu.Lock()
				fmt.Fprintf(out, "ack %s\n", hex.EncodeToString(h[:]))
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

type replica struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	n    int
	errs []string
	done chan struct{}
}

// TestAttackReplicasKilledAndRestarted: three replicas share one data directory; one after
// another is killed with SIGKILL and a new one started at once (its start folds the dead
// one's journal while the living replicas' periodic dead-journal folds race it). At the
// end every replica is killed and the log opened: every acknowledged record is in the log
// exactly once, and the log verifies.
func TestAttackReplicasKilledAndRestarted(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := filepath.Join(t.TempDir(), "log")
	skey, vkey, _ := note.GenerateKey(nil, "strongroom.test/replicas")
	// Create the log once before the replicas race to open it.
	s, _ := note.NewSigner(skey)
	l0, err := Open(context.Background(), Config{Dir: dir, Signer: s})
	if err != nil {
		t.Fatal(err)
	}
	l0.Close(context.Background())
	var amu sync.Mutex
	acked := map[string]bool{}
	start := func(id int) *replica {
		r := &replica{done: make(chan struct{})}
		r.cmd = exec.Command(os.Args[0], "-test.run=^TestReplicaAttackHelper$", "-test.v=false")
		r.cmd.Env = append(os.Environ(), "AUDIT_REPLICA_DIR="+dir, "AUDIT_REPLICA_SKEY="+skey, fmt.Sprintf("AUDIT_REPLICA_ID=r%d", id))
		stdout, _ := r.cmd.StdoutPipe()
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer close(r.done)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				line := sc.Text()
				if sum, ok := strings.CutPrefix(line, "ack "); ok {
					amu.Lock()
					acked[sum] = true
					amu.Unlock()
					r.mu.Lock()
					r.n++
					r.mu.Unlock()
				} else if line != "" {
					r.mu.Lock()
					if len(r.errs) < 5 {
						r.errs = append(r.errs, line)
					}
					r.mu.Unlock()
				}
			}
		}()
		return r
	}
	kill := func(r *replica) {
		r.cmd.Process.Signal(syscall.SIGKILL)
		r.cmd.Wait()
		<-r.done
	}
	waitAcks := func(r *replica, n int) {
		// 60 s: a bound for a replica that stopped acknowledging, not its pace (on a
		// saturated machine one acknowledged 30 records in 20 s, still going).
		deadline := time.Now().Add(60 * time.Second)
		for {
			r.mu.Lock()
			got, errs := r.n, r.errs
			r.mu.Unlock()
			if got >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("a replica acknowledged %d records in 60 s; its other output: %q", got, errs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	var live []*replica
	next := 0
	for range 3 {
		live = append(live, start(next))
		next++
	}
	for range 6 {
		for _, r := range live {
			waitAcks(r, 100)
		}
		kill(live[0])
		live = append(live[1:], start(next))
		next++
		// A replica killed at a random moment of its start: while it opens the log and
		// folds the dead one's journal (the kill point is the attack, not a wait).
		eph := start(next)
		next++
		time.Sleep(time.Duration(rand.IntN(60)) * time.Millisecond)
		kill(eph)
	}
	for _, r := range live {
		waitAcks(r, 100)
	}
	for _, r := range live {
		kill(r)
	}
	v, _ := note.NewVerifier(vkey)
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s, Journal: filepath.Join(dir, "journal"), JournalBatch: 64})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range loggedRecords(t, dir, v) {
		h := sha256.Sum256(r)
		seen[hex.EncodeToString(h[:])]++
	}
	missing, dup := 0, 0
	for sum := range acked {
		if seen[sum] == 0 {
			missing++
		}
	}
	for _, n := range seen {
		if n > 1 {
			dup++
		}
	}
	if missing > 0 || dup > 0 {
		t.Fatalf("%d acknowledged records (of %d) missing from the log, %d records logged more than once", missing, len(acked), dup)
	}
	t.Logf("%d records acknowledged by %d replicas, each in the log once", len(acked), next)
}
