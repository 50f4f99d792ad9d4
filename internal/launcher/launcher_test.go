package launcher_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/app/apptest"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/launcher"
	"github.com/strongroom/strongroom/internal/store"
)

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// waitFile waits for a non-empty file and returns its content.
func waitFile(t *testing.T, p string) string {
	t.Helper()
	for range 200 {
		if b, err := os.ReadFile(p); err == nil && len(b) > 0 && bytes.HasSuffix(b, []byte("\n")) {
			return string(b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", p)
	return ""
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

type result struct {
	out launcher.Outcome
	err error
}

func start(cfg launcher.Config) chan result {
	ch := make(chan result, 1)
	go func() {
		out, err := launcher.Run(context.Background(), cfg)
		ch <- result{out, err}
	}()
	return ch
}

func TestRunReadsWeightsAndDiesOnRevoke(t *testing.T) {
	e := apptest.New(t, nil)
	weights, cfgJSON := randBytes(3<<20+17), []byte(`{"dim":8}`)
	e.Import(t, "m", "1", "public", map[string][]byte{"model.safetensors": weights, "sub/config.json": cfgJSON})
	id := e.Join(t, "prod")
	work := t.TempDir()
	for _, mode := range []string{"download", "blobdir"} {
		t.Run(mode, func(t *testing.T) {
			out := filepath.Join(work, mode)
			os.MkdirAll(out, 0o755)
			cfg := launcher.Config{Identity: id, Model: "m", Version: "1", VerifyDigest: true, TempDir: t.TempDir(),
				Command: []string{"sh", "-c", `echo $$ > pid; sha256sum {weights} "$STRONGROOM_WEIGHTS_DIR/sub/config.json" > sums.part && mv sums.part sums; exec sleep 60`}}
			if mode == "blobdir" {
				cfg.BlobDir = e.App.Config.Blobs
			}
			t.Chdir(out)
			ch := start(cfg)
			// sums appears whole (renamed into place): sha256sum writes a line a file, and
			// a read between the two lines failed the suite once (twenty-eighth session).
			sums := waitFile(t, filepath.Join(out, "sums"))
			if !strings.Contains(sums, digest(weights)) || !strings.Contains(sums, digest(cfgJSON)) {
				t.Fatalf("engine read other bytes:\n%s", sums)
			}
			if !strings.Contains(sums, "/proc/self/fd/") {
				t.Fatalf("{weights} not a memfd path:\n%s", sums)
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(waitFile(t, filepath.Join(out, "pid"))))
			if ls, _ := e.Svc.Live(context.Background(), store.LeaseQuery{Model: "m"}); len(ls) != 1 {
				t.Fatalf("live leases: %d", len(ls))
			}
			if _, err := e.Svc.Revoke(context.Background(), store.LeaseQuery{Model: "m"}, "test"); err != nil {
				t.Fatal(err)
			}
			r := <-ch
			if r.err != nil || r.out.Code != launcher.ExitRevoked || !strings.Contains(r.out.Reason, "revoked") {
				t.Fatalf("outcome %+v %v", r.out, r.err)
			}
			if alive(pid) {
				t.Fatal("engine alive after revocation")
			}
		})
	}
}

func TestEngineExitStatusAndRefusal(t *testing.T) {
	e := apptest.New(t, nil)
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1000)})
	e.Import(t, "secret", "1", "restricted", map[string][]byte{"w.bin": randBytes(1000)})
	id := e.Join(t, "prod")
	r := <-start(launcher.Config{Identity: id, Model: "m", Version: "1", Command: []string{"sh", "-c", "test -s {weights} && exit 7"}, TempDir: t.TempDir()})
	if r.err != nil || r.out.Code != 7 || r.out.Reason != "engine exited" {
		t.Fatalf("engine exit: %+v %v", r.out, r.err)
	}
	// Restricted weights need attested hardware in prod: dev attestation is refused by the
	// baseline policy before any approval is asked for.
	r = <-start(launcher.Config{Identity: id, Model: "secret", Version: "1", Command: []string{"true"}, TempDir: t.TempDir()})
	if r.err == nil || r.out.Code != launcher.ExitDenied || !strings.Contains(r.err.Error(), "lease denied by policy") {
		t.Fatalf("restricted with dev attestation: %+v %v", r.out, r.err)
	}
	r = <-start(launcher.Config{Identity: id, Model: "m", Version: "1", TempDir: t.TempDir()})
	if r.err == nil {
		t.Fatal("run without a command")
	}
}

// A control plane that vanishes: renewals fail, and the engine is stopped when the grace
// runs out, with its own exit status.
func TestControlPlaneVanishes(t *testing.T) {
	e := apptest.New(t, func(c *config.Config, _ string) { c.Custody.LeaseTTL = config.Duration{Duration: 3 * time.Second} })
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1000)})
	id := e.Join(t, "prod")
	pidsFile := filepath.Join(t.TempDir(), "pids")
	ch := start(launcher.Config{Identity: id, Model: "m", Version: "1", Command: []string{"sh", "-c", treeEngine}, TempDir: t.TempDir(),
		Env: []string{"PIDS=" + pidsFile}, RenewGrace: 500 * time.Millisecond})
	pids := waitPids(t, pidsFile, treeSize)
	e.Server.CloseClientConnections()
	e.Server.Close()
	r := <-ch
	if r.err != nil || r.out.Code != launcher.ExitRenewalLost || !strings.Contains(r.out.Reason, "could not be renewed") {
		t.Fatalf("outcome %+v %v", r.out, r.err)
	}
	if living := waitDead(pids, 0); len(living) > 0 {
		t.Fatalf("alive after the lease could not be renewed: %v", living)
	}
}

// Renewals keep the engine running past the lease's first expiry; the lease's expiry moves.
func TestRenewalsKeepEngine(t *testing.T) {
	e := apptest.New(t, func(c *config.Config, _ string) {
		c.Custody.LeaseTTL = config.Duration{Duration: 1500 * time.Millisecond}
	})
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1000)})
	id := e.Join(t, "prod")
	started := make(chan int, 1)
	ch := start(launcher.Config{Identity: id, Model: "m", Version: "1", Command: []string{"sleep", "60"}, TempDir: t.TempDir(),
		Started: func(pid int) { started <- pid }})
	pid := <-started
	time.Sleep(3 * time.Second) // two lifetimes
	live, _ := e.Svc.Live(context.Background(), store.LeaseQuery{Model: "m"})
	if !alive(pid) || len(live) != 1 {
		t.Fatalf("engine alive %v, live leases %d after two lease lifetimes", alive(pid), len(live))
	}
	e.Svc.Revoke(context.Background(), store.LeaseQuery{Model: "m"}, "done")
	if r := <-ch; r.out.Code != launcher.ExitRevoked {
		t.Fatalf("outcome %+v", r.out)
	}
}
