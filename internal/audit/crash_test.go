package audit

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

// TestCrashHelper is the child process of TestKillUnderLoad: it records events from many
// goroutines and prints "ack INDEX SHA256" once each Record has returned.
func TestCrashHelper(t *testing.T) {
	dir, skey := os.Getenv("AUDIT_CRASH_DIR"), os.Getenv("AUDIT_CRASH_SKEY")
	if dir == "" {
		t.Skip("child process of TestKillUnderLoad")
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				ev := Event{V: 1, TS: time.Now().UTC(), Kind: "load.test", Actor: map[string]string{"principal": fmt.Sprintf("g%d", g)},
					Fields: map[string]string{"i": strconv.Itoa(i), "pad": strings.Repeat("x", 900)}}
				b, _ := ev.Marshal()
				idx, err := l.Record(context.Background(), ev)
				if err != nil {
					return
				}
				h := sha256.Sum256(b)
				mu.Lock()
				fmt.Fprintf(out, "ack %d %s\n", idx, hex.EncodeToString(h[:]))
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// ackedUntilKilled runs the test helper in a child process with env, reads its "ack ..."
// lines for at least 1.5 s and until it has acknowledged min, kills it with SIGKILL, and
// returns what follows "ack " on each line.
func ackedUntilKilled(t *testing.T, helper string, min int, env ...string) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+helper+"$", "-test.v=false")
	cmd.Env = append(os.Environ(), env...)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	sc := bufio.NewScanner(stdout)
	deadline := time.Now().Add(1500 * time.Millisecond)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
			acked = append(acked, rest)
		}
		if time.Now().After(deadline) && len(acked) > min {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if len(acked) == 0 {
		t.Fatal("the child acknowledged nothing")
	}
	return acked
}

// TestKillUnderLoad: kill -9 a process that is recording under load; after restart every
// acknowledged event is in the log, at its index, and the tree verifies.
func TestKillUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a process")
	}
	dir := filepath.Join(t.TempDir(), "log")
	skey, vkey, _ := note.GenerateKey(nil, "strongroom.test/crash")
	acked := map[uint64]string{}
	for _, line := range ackedUntilKilled(t, "TestCrashHelper", 500, "AUDIT_CRASH_DIR="+dir, "AUDIT_CRASH_SKEY="+skey) {
		var idx uint64
		var sum string
		if _, err := fmt.Sscanf(line, "%d %s", &idx, &sum); err == nil {
			acked[idx] = sum
		}
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, err := Open(context.Background(), Config{Dir: dir, Signer: s, Index: st})
	if err != nil {
		t.Fatal(err)
	}
	// One more event after the restart forces a checkpoint covering everything.
	if _, err := l.Record(context.Background(), Event{V: 1, TS: time.Now(), Kind: "restart.test"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	state, err := Verify(context.Background(), client.FileFetcher{Root: dir}, VerifyOptions{LogKey: v})
	if err != nil {
		t.Fatalf("log after kill -9 does not verify: %v", err)
	}
	found := 0
	err = ReadEntries(context.Background(), client.FileFetcher{Root: dir}.ReadEntryBundle, 0, state.Size, func(evs []store.AuditEvent) error {
		for _, e := range evs {
			if want, ok := acked[e.Index]; ok {
				h := sha256.Sum256(e.Raw)
				if hex.EncodeToString(h[:]) != want {
					return fmt.Errorf("entry %d is not the event acknowledged at that index", e.Index)
				}
				found++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found != len(acked) {
		t.Fatalf("%d of %d acknowledged events survived kill -9", found, len(acked))
	}
	t.Logf("%d acknowledged events, log size %d after restart, all present", len(acked), state.Size)
}
