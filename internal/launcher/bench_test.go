package launcher_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strongroom/strongroom/internal/app/apptest"
	"github.com/strongroom/strongroom/internal/launcher"
	"github.com/strongroom/strongroom/internal/store"
)

func quantiles(b *testing.B, name string, ds []time.Duration) {
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.ReportMetric(ms(ds[len(ds)/2]), name+"-p50-ms")
	b.ReportMetric(ms(ds[(len(ds)*99)/100]), name+"-p99-ms")
}

// BenchmarkRevokeToDeath: from the control plane's decision to revoke to every process of
// the engine's tree dead and reaped, for each containment this machine has. The engine is
// treeEngine (a setsid'd child, a double-forked orphan, a child that ignores SIGTERM, a
// plain child). Decisions are made in process (Service.Revoke) and, alternately, written
// to the store by another handle as the CLI does (the control plane's poller picks them up
// and pushes them down the watch stream). Baseline, in the same run: SIGKILL to a bare
// process group of the same tree started without the launcher, until its members are
// dead (the setsid'd child escapes the group; it is cleaned up untimed). Run with
// -benchtime 20x or more.
func BenchmarkRevokeToDeath(b *testing.B) {
	e := apptest.New(b, nil)
	e.Import(b, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1 << 20)})
	id := e.Join(b, "prod")
	cli, err := store.Open(context.Background(), e.App.Config.Store)
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	for _, mode := range benchModes() {
		b.Run(mode, func(b *testing.B) {
			var viaStore, inProc, base []time.Duration
			run := func(revoke func()) time.Duration {
				pidsFile := filepath.Join(b.TempDir(), "pids")
				ch := start(launcher.Config{Identity: id, Model: "m", Version: "1", Containment: mode, TempDir: b.TempDir(), Stderr: io.Discard,
					Env: []string{"PIDS=" + pidsFile}, Command: []string{"sh", "-c", treeEngine}})
				pids := waitPids(b, pidsFile, treeSize)
				waitWatched(b, e, "m")
				t0 := time.Now()
				revoke()
				r := <-ch
				d := time.Since(t0)
				if r.out.Code != launcher.ExitRevoked {
					b.Fatalf("outcome %+v %v", r.out, r.err)
				}
				if living := waitDead(pids, 0); len(living) > 0 {
					b.Fatalf("alive after the run ended: %v", living)
				}
				return d
			}
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					inProc = append(inProc, run(func() { e.Svc.Revoke(context.Background(), store.LeaseQuery{Model: "m"}, "bench") }))
				} else {
					viaStore = append(viaStore, run(func() { cli.RevokeLeases(context.Background(), store.LeaseQuery{Model: "m"}, time.Now(), "bench") }))
				}
				base = append(base, bareGroupKill(b))
			}
			quantiles(b, "inproc-revoke", inProc)
			if len(viaStore) > 0 {
				quantiles(b, "cli-revoke", viaStore)
			}
			quantiles(b, "baseline-pgkill", base)
		})
	}
}

func benchModes() []string {
	ms := []string{launcher.ModeSubreaper}
	if cg, err := launcher.OwnCgroup(); err == nil {
		if d, err := os.MkdirTemp(cg, "strongroom-probe-"); err == nil {
			syscall.Rmdir(d)
			ms = append(ms, launcher.ModeCgroup)
		}
	}
	return ms
}

// waitWatched waits until the live lease on model has its watch stream connected (the
// control plane notes the runtime as heard from then), so that revocation is pushed.
func waitWatched(tb testing.TB, e *apptest.Env, model string) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ls, _ := e.Svc.Live(context.Background(), store.LeaseQuery{Model: model})
		if len(ls) == 1 && ls[0].Lease.SeenAt.After(ls[0].Lease.GrantedAt) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	tb.Fatal("the watch stream never connected")
}

// bareGroupKill starts treeEngine without a launcher in its own process group, and times
// SIGKILL to the group until the group's members are dead.
func bareGroupKill(tb testing.TB) time.Duration {
	pidsFile := filepath.Join(tb.TempDir(), "pids")
	cmd := exec.Command("sh", "-c", treeEngine)
	cmd.Env = append(os.Environ(), "PIDS="+pidsFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	pids := waitPids(tb, pidsFile, treeSize)
	pgid := cmd.Process.Pid
	var group []int
	for _, p := range pids {
		if g, err := syscall.Getpgid(p); err == nil && g == pgid {
			group = append(group, p)
		}
	}
	t0 := time.Now()
	syscall.Kill(-pgid, syscall.SIGKILL)
	cmd.Wait()
	waitDead(group, 10*time.Second)
	d := time.Since(t0)
	for _, p := range pids { // the escapees
		syscall.Kill(p, syscall.SIGKILL)
	}
	waitDead(pids, 10*time.Second)
	return d
}

// BenchmarkStartToExec1GiB: launcher start to engine exec for a 1 GiB model (one file),
// reading sealed blobs from the blob directory and downloading them from the control plane;
// baseline: reading the sealed files from page cache.
func BenchmarkStartToExec1GiB(b *testing.B) {
	e := apptest.New(b, nil)
	v := e.Import(b, "big", "1", "public", map[string][]byte{"model.safetensors": randBytes(1 << 30)})
	id := e.Join(b, "prod")
	readSealed := func() time.Duration {
		t0 := time.Now()
		for _, f := range v.Files {
			fh, err := os.Open(filepath.Join(e.App.Config.Blobs, f.Blob))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, fh)
			fh.Close()
		}
		return time.Since(t0)
	}
	launch := func(blobs string) time.Duration {
		t0 := time.Now()
		var d time.Duration
		r := <-start(launcher.Config{Identity: id, Model: "big", Version: "1", BlobDir: blobs, Command: []string{"true"}, TempDir: b.TempDir(),
			Started: func(int) { d = time.Since(t0) }})
		if r.err != nil || r.out.Code != 0 {
			b.Fatalf("%+v %v", r.out, r.err)
		}
		return d
	}
	// The floor any launcher pays here: a fresh memfd of the model's size, written once.
	fillMemfd := func() time.Duration {
		t0 := time.Now()
		fd, err := unix.MemfdCreate("floor", unix.MFD_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		for off := int64(0); off < 1<<30; off += int64(len(buf)) {
			unix.Pwrite(fd, buf, off)
		}
		d := time.Since(t0)
		unix.Close(fd)
		return d
	}
	readSealed() // warm the page cache
	var base, floor, local, remote []time.Duration
	for b.Loop() {
		base = append(base, readSealed())
		floor = append(floor, fillMemfd())
		local = append(local, launch(e.App.Config.Blobs))
		remote = append(remote, launch(""))
	}
	med := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	b.ReportMetric(float64(med(base))/1e6, "read-sealed-ms")
	b.ReportMetric(float64(med(floor))/1e6, "fill-memfd-ms")
	b.ReportMetric(float64(med(local))/1e6, "start-exec-blobdir-ms")
	b.ReportMetric(float64(med(remote))/1e6, "start-exec-download-ms")
	b.ReportMetric(float64(med(local))/float64(med(base)), "blobdir/read")
	b.ReportMetric(float64(med(remote))/float64(med(base)), "download/read")
}
