package audit

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"

	"github.com/strongroom/strongroom/internal/testenv"
)

// TestSQLLogReplicaProcess is the other replica of TestSQLLogSignerKilled: a separate
// process (this test binary, re-run) that opens the shared log, says whether it signs,
// and appends under load until it is killed.
func TestSQLLogReplicaProcess(t *testing.T) {
	dsn, skey := os.Getenv("SR_TEST_REPLICA_DSN"), os.Getenv("SR_TEST_REPLICA_SKEY")
	if dsn == "" {
		t.Skip("run by TestSQLLogSignerKilled")
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l := openSQLTestLog(t, dsn, s)
	fmt.Printf("signer=%v\n", l.Signer())
	bt := NewBatcher(l, l.Bundles(), BatcherConfig{MaxRecords: 256, MaxDelay: 20 * time.Millisecond})
	for i := 0; ; i++ {
		fs := []Future{l.Submit(context.Background(), event(i))}
		for j := range 64 {
			fs = append(fs, bt.Submit(context.Background(), requestEvent(j)))
		}
		for _, f := range fs {
			if _, err := f(); err != nil {
				t.Fatal(err)
			}
		}
		if i == 0 {
			fmt.Println("appending")
		}
	}
}

// TestSQLLogSignerKilled: the signing replica, a separate process appending under load,
// is killed with SIGKILL; the surviving replica signs a checkpoint covering its own new
// entries within the documented bound, and the tree (with every batch) verifies through
// its /log/.
func TestSQLLogSignerKilled(t *testing.T) {
	t.Parallel() // see sqlTestDB
	dsn := sqlTestDB(t)
	skey, vkey, err := note.GenerateKey(rand.Reader, "strongroom.test/shared")
	if err != nil {
		t.Fatal(err)
	}
	cmd := testenv.HelperCmd(t, "TestSQLLogReplicaProcess", "SR_TEST_REPLICA_DSN="+dsn, "SR_TEST_REPLICA_SKEY="+skey)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	for _, want := range []string{"signer=true", "appending"} {
		if !lines.Scan() || !strings.Contains(lines.Text(), want) {
			t.Fatalf("replica process said %q, want %q", lines.Text(), want)
		}
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	b := openSQLTestLog(t, dsn, s)
	defer b.Close(context.Background())
	if b.Signer() {
		t.Fatal("two signers")
	}
	ctx := context.Background()
	for i := range 50 { // load on this replica too
		if _, err := b.Record(ctx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // the replica process appends under load meanwhile
	t0 := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	idx, err := b.Record(ctx, event(1000))
	if err != nil {
		t.Fatal(err)
	}
	waitCheckpoint(t, b, idx+1, t0, "after the signer process was killed")
	t.Logf("signer process killed: the other replica signed a checkpoint covering its new entry %v later", time.Since(t0).Round(time.Millisecond))
	if !b.Signer() {
		t.Fatal("the survivor does not claim the lock")
	}
	srv := httptest.NewServer(b.Handler())
	defer srv.Close()
	u, _ := url.Parse(srv.URL + "/")
	f, _ := client.NewHTTPFetcher(u, nil)
	size, err := b.IntegratedSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var st State
	for {
		st, err = Verify(ctx, f, VerifyOptions{LogKey: v, Bundles: b.Bundles().Bundle})
		if err == nil && st.Size == size {
			break
		}
		if time.Since(t0) > 10*time.Second {
			t.Fatalf("after kill -9 the tree does not verify to size %d: %v (size %d)", size, err, st.Size)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("verified %d entries after the kill", st.Size)
}
