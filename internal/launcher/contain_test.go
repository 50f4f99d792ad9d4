package launcher_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/app/apptest"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/launcher"
	"github.com/strongroom/strongroom/internal/store"
)

// treeEngine is an engine whose descendants try to outlive it: a setsid'd child, a
// double-forked grandchild (orphaned at once), one that ignores SIGTERM, and a plain
// background child. Each inherits the weight memfds. It appends one pid per line to
// $PIDS and then waits.
const treeEngine = `
echo $$ >> "$PIDS"
setsid sh -c 'echo $$ >> "$PIDS"; exec sleep 600' &
sh -c 'sh -c "echo \$\$ >> \"\$PIDS\"; exec sleep 600" & exit 0' &
sh -c 'trap "" TERM; echo $$ >> "$PIDS"; exec sleep 600' &
sleep 600 &
echo $! >> "$PIDS"
wait
`

const treeSize = 5 // lines treeEngine writes

// canaryWeights returns weights with a random canary inside, and the canary.
func canaryWeights() ([]byte, []byte) {
	w := randBytes(1<<20 + 333)
	c := []byte("canary:" + hex.EncodeToString(randBytes(16)))
	copy(w[700_000:], c)
	return w, c
}

// holders lists every process that holds the canary in an open memfd, or maps a memfd
// named name.
func holders(t *testing.T, canary []byte, name string) []string {
	t.Helper()
	procs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		dir := "/proc/" + p.Name()
		fds, _ := os.ReadDir(dir + "/fd")
		for _, fd := range fds {
			target, err := os.Readlink(dir + "/fd/" + fd.Name())
			if err != nil || !strings.HasPrefix(target, "/memfd:") {
				continue
			}
			if b, err := os.ReadFile(dir + "/fd/" + fd.Name()); err == nil && bytes.Contains(b, canary) {
				out = append(out, fmt.Sprintf("pid %s fd %s (%s)", p.Name(), fd.Name(), target))
			}
		}
		if maps, err := os.ReadFile(dir + "/maps"); err == nil && bytes.Contains(maps, []byte("memfd:"+name)) {
			out = append(out, fmt.Sprintf("pid %s maps memfd:%s", p.Name(), name))
		}
	}
	return out
}

// waitLines waits until file p has n lines and returns them as pids.
func waitPids(t testing.TB, p string, n int) []int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(p)
		if lines := strings.Fields(string(b)); len(lines) >= n {
			pids := make([]int, len(lines))
			for i, l := range lines {
				pids[i], _ = strconv.Atoi(l)
			}
			return pids
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: the engine tree did not come up", p)
	return nil
}

// waitDead waits (up to limit) until none of pids is alive and returns the living.
func waitDead(pids []int, limit time.Duration) []int {
	deadline := time.Now().Add(limit)
	for {
		var living []int
		for _, p := range pids {
			if alive(p) && !zombie(p) {
				living = append(living, p)
			}
		}
		if len(living) == 0 || time.Now().After(deadline) {
			return living
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// modes are the containments this machine can test: always the subreaper fallback, and
// cgroups where they are writable.
func modes(t *testing.T) []string {
	ms := []string{launcher.ModeSubreaper}
	if cg, err := launcher.OwnCgroup(); err == nil {
		if d, err := os.MkdirTemp(cg, "strongroom-probe-"); err == nil {
			syscall.Rmdir(d)
			ms = append(ms, launcher.ModeCgroup)
		} else {
			t.Logf("cgroup v2 not writable here (%v): only the subreaper path is tested", err)
		}
	}
	return ms
}

func TestRevokeKillsEveryDescendant(t *testing.T) {
	e := apptest.New(t, nil)
	for _, mode := range modes(t) {
		t.Run(mode, func(t *testing.T) {
			weights, canary := canaryWeights()
			name := "canary-" + hex.EncodeToString(randBytes(4)) + ".safetensors"
			model := "m-" + mode
			e.Import(t, model, "1", "public", map[string][]byte{name: weights})
			id := e.Join(t, "prod")
			pidsFile := filepath.Join(t.TempDir(), "pids")
			tmp := t.TempDir()
			var stderr bytes.Buffer
			ch := start(launcher.Config{Identity: id, Model: model, Version: "1", Containment: mode, TempDir: tmp, KillGrace: 300 * time.Millisecond,
				Env: []string{"PIDS=" + pidsFile}, Command: []string{"sh", "-c", treeEngine}, Stderr: &stderr})
			pids := waitPids(t, pidsFile, treeSize)
			if h := holders(t, canary, name); len(h) < treeSize {
				t.Fatalf("the canary scan sees %d holders, want at least %d (is the scan blind?):\n%s", len(h), treeSize, strings.Join(h, "\n"))
			}
			if _, err := e.Svc.Revoke(context.Background(), store.LeaseQuery{Model: model}, "test"); err != nil {
				t.Fatal(err)
			}
			r := <-ch
			if r.err != nil || r.out.Code != launcher.ExitRevoked {
				t.Fatalf("outcome %+v %v\n%s", r.out, r.err, stderr.String())
			}
			// Run returns only once the reaper reported the tree gone: no waiting here.
			if living := waitDead(pids, 0); len(living) > 0 {
				t.Fatalf("alive after revocation: %v", living)
			}
			if h := holders(t, canary, name); len(h) > 0 {
				t.Fatalf("plaintext still held:\n%s", strings.Join(h, "\n"))
			}
			if !strings.Contains(stderr.String(), "contained by") {
				t.Fatalf("containment not said:\n%s", stderr.String())
			}
			if leftovers, _ := filepath.Glob(filepath.Join(tmp, "strongroom-weights-*")); len(leftovers) > 0 {
				t.Fatalf("link directories left: %v", leftovers)
			}
			if mode == launcher.ModeCgroup {
				cg, _ := launcher.OwnCgroup()
				if left, _ := filepath.Glob(filepath.Join(cg, "strongroom-run-"+strconv.Itoa(os.Getpid())+"-*")); len(left) > 0 {
					t.Fatalf("run cgroups left: %v", left)
				}
			}
		})
	}
}

// An engine that exits on its own takes what it left behind with it.
func TestEngineExitKillsLeftovers(t *testing.T) {
	e := apptest.New(t, nil)
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1000)})
	id := e.Join(t, "prod")
	for _, mode := range modes(t) {
		t.Run(mode, func(t *testing.T) {
			pidsFile := filepath.Join(t.TempDir(), "pids")
			r := <-start(launcher.Config{Identity: id, Model: "m", Version: "1", Containment: mode, TempDir: t.TempDir(), Stderr: io.Discard,
				Env:     []string{"PIDS=" + pidsFile},
				Command: []string{"sh", "-c", `setsid sh -c 'echo $$ >> "$PIDS"; exec sleep 600' & sh -c 'sleep 600 & echo $! >> "$PIDS"' ; while [ $(wc -l < "$PIDS") -lt 2 ]; do :; done; exit 3`}})
			if r.err != nil || r.out.Code != 3 {
				t.Fatalf("outcome %+v %v", r.out, r.err)
			}
			if living := waitDead(waitPids(t, pidsFile, 2), 0); len(living) > 0 {
				t.Fatalf("left behind by the engine and alive: %v", living)
			}
		})
	}
}

// helperConfig is what TestHelperLauncher runs, in a process of its own.
type helperConfig struct {
	Identity, Model, Containment, TempDir, Pids string
}

// TestHelperLauncher is not a test: it is the launcher process the kill -9 test kills.
func TestHelperLauncher(t *testing.T) {
	raw := os.Getenv("LAUNCHER_HELPER")
	if raw == "" {
		t.Skip("helper process only")
	}
	var hc helperConfig
	if err := json.Unmarshal([]byte(raw), &hc); err != nil {
		t.Fatal(err)
	}
	id, err := custody.LoadIdentity(hc.Identity)
	if err != nil {
		t.Fatal(err)
	}
	out, err := launcher.Run(context.Background(), launcher.Config{Identity: id, Model: hc.Model, Version: "1", Containment: hc.Containment,
		TempDir: hc.TempDir, Env: []string{"PIDS=" + hc.Pids}, Command: []string{"sh", "-c", treeEngine}})
	t.Fatalf("the launcher returned: %+v %v", out, err)
}

// kill -9 of the launcher: the reaper kills the whole tree, removes the links and the
// cgroup, and the control plane ends the lease.
func TestLauncherKilled(t *testing.T) {
	e := apptest.New(t, func(c *config.Config, _ string) {})
	for _, mode := range modes(t) {
		t.Run(mode, func(t *testing.T) {
			weights, canary := canaryWeights()
			name := "canary-" + hex.EncodeToString(randBytes(4)) + ".safetensors"
			model := "k-" + mode
			e.Import(t, model, "1", "public", map[string][]byte{name: weights})
			id := e.Join(t, "prod")
			hc := helperConfig{Identity: id.Dir, Model: model, Containment: mode, TempDir: t.TempDir(), Pids: filepath.Join(t.TempDir(), "pids")}
			raw, _ := json.Marshal(hc)
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLauncher$", "-test.v")
			cmd.Env = append(os.Environ(), "LAUNCHER_HELPER="+string(raw))
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			pids := waitPids(t, hc.Pids, treeSize)
			if h := holders(t, canary, name); len(h) < treeSize {
				t.Fatalf("the canary scan sees %d holders, want at least %d:\n%s", len(h), treeSize, strings.Join(h, "\n"))
			}
			killedAt := time.Now()
			cmd.Process.Signal(syscall.SIGKILL)
			<-exited
			if living := waitDead(pids, 10*time.Second); len(living) > 0 {
				t.Fatalf("alive 10 s after the launcher was killed: %v\n%s", living, out.String())
			}
			t.Logf("launcher killed → every descendant dead: %v", time.Since(killedAt).Round(time.Millisecond))
			if h := holders(t, canary, name); len(h) > 0 {
				t.Fatalf("plaintext still held after the launcher was killed:\n%s", strings.Join(h, "\n"))
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				left, _ := filepath.Glob(filepath.Join(hc.TempDir, "strongroom-weights-*"))
				if mode == launcher.ModeCgroup {
					cg, _ := launcher.OwnCgroup()
					more, _ := filepath.Glob(filepath.Join(cg, "strongroom-run-"+strconv.Itoa(cmd.Process.Pid)+"-*"))
					left = append(left, more...)
				}
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("left behind: %v", left)
				}
				time.Sleep(10 * time.Millisecond)
			}
			// The control plane saw the watch stream drop and ends the lease, on the record.
			for {
				if ls, _ := e.Svc.Live(context.Background(), store.LeaseQuery{Model: model}); len(ls) == 0 {
					break
				}
				if time.Since(killedAt) > 20*time.Second {
					t.Fatal("the lease is still live 20 s after its launcher was killed")
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("launcher killed → lease ended: %v", time.Since(killedAt).Round(time.Millisecond))
		})
	}
}

// A start after a launcher was killed (and its reaper with it) removes its link directory.
func TestSweepLeftovers(t *testing.T) {
	e := apptest.New(t, nil)
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1000)})
	id := e.Join(t, "prod")
	tmp := t.TempDir()
	dead := exec.Command("true")
	dead.Run()
	stale := filepath.Join(tmp, "strongroom-weights-"+strconv.Itoa(dead.Process.Pid)+"-123")
	live := filepath.Join(tmp, "strongroom-weights-"+strconv.Itoa(os.Getpid())+"-456")
	for _, d := range []string{stale, live} {
		os.Mkdir(d, 0o700)
		os.Symlink("/proc/self/fd/3", filepath.Join(d, "w.bin"))
	}
	r := <-start(launcher.Config{Identity: id, Model: "m", Version: "1", TempDir: tmp, Stderr: io.Discard, Command: []string{"true"}})
	if r.err != nil || r.out.Code != 0 {
		t.Fatalf("outcome %+v %v", r.out, r.err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Fatal("the dead launcher's link directory is still there")
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatal("a live launcher's link directory was removed")
	}
}

// Without containment (asked for), the engine still runs and says so; the control plane
// refuses restricted models to such runs (custody.TestContainmentRequired).
func TestNoContainment(t *testing.T) {
	e := apptest.New(t, nil)
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1000)})
	id := e.Join(t, "prod")
	var stderr bytes.Buffer
	r := <-start(launcher.Config{Identity: id, Model: "m", Version: "1", Containment: launcher.ModeNone, TempDir: t.TempDir(), Stderr: &stderr,
		Command: []string{"sh", "-c", `test "$STRONGROOM_CONTAINMENT" = none && exit 4`}})
	if r.err != nil || r.out.Code != 4 {
		t.Fatalf("outcome %+v %v\n%s", r.out, r.err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "NOT contained") {
		t.Fatalf("stderr:\n%s", stderr.String())
	}
	if r := <-start(launcher.Config{Identity: id, Model: "m", Version: "1", Containment: "bogus", TempDir: t.TempDir(), Command: []string{"true"}}); r.err == nil {
		t.Fatal("unknown containment accepted")
	}
}

// A descendant privileged enough to leave the run's cgroup is still the reaper's
// descendant, and dies too.
func TestCgroupEscapeeDies(t *testing.T) {
	if !slices.Contains(modes(t), launcher.ModeCgroup) {
		t.Skip("cgroup v2 not writable here")
	}
	cg, _ := launcher.OwnCgroup()
	e := apptest.New(t, nil)
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1000)})
	id := e.Join(t, "prod")
	pidsFile := filepath.Join(t.TempDir(), "pids")
	ch := start(launcher.Config{Identity: id, Model: "m", Version: "1", Containment: launcher.ModeCgroup, TempDir: t.TempDir(), Stderr: io.Discard,
		Env:     []string{"PIDS=" + pidsFile, "OUT=" + filepath.Join(cg, "cgroup.procs")},
		Command: []string{"sh", "-c", `echo $$ >> "$PIDS"; setsid sh -c 'echo $$ > "$OUT" && echo $$ >> "$PIDS"; exec sleep 600' & wait`}})
	pids := waitPids(t, pidsFile, 2)
	if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pids[1]) + "/cgroup"); strings.Contains(string(b), "strongroom-run-") {
		t.Fatalf("the escapee did not leave the run's cgroup: %s", b)
	}
	if _, err := e.Svc.Revoke(context.Background(), store.LeaseQuery{Model: "m"}, "test"); err != nil {
		t.Fatal(err)
	}
	if r := <-ch; r.out.Code != launcher.ExitRevoked {
		t.Fatalf("outcome %+v %v", r.out, r.err)
	}
	if living := waitDead(pids, 0); len(living) > 0 {
		t.Fatalf("alive after revocation: %v", living)
	}
}

// An engine that cannot be started fails the run, and leaves nothing behind.
func TestEngineNotFound(t *testing.T) {
	e := apptest.New(t, nil)
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1000)})
	id := e.Join(t, "prod")
	tmp := t.TempDir()
	r := <-start(launcher.Config{Identity: id, Model: "m", Version: "1", TempDir: tmp, Stderr: io.Discard, Command: []string{"/nonexistent/engine"}})
	if r.err == nil || r.out.Code != 1 || !strings.Contains(r.err.Error(), "start engine") {
		t.Fatalf("outcome %+v %v", r.out, r.err)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "strongroom-weights-*")); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
