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

// BenchmarkRevokeToDeath: from `lease revoke` to the engine process reaped, with the
// revocation written by another store handle (what the CLI does: the control plane's
// poller picks it up and pushes it down the watch stream) and in process; baseline: SIGTERM
// to a plain child and reaping it. Run with -benchtime 100x.
func BenchmarkRevokeToDeath(b *testing.B) {
	e := apptest.New(b, nil)
	e.Import(b, "m", "1", "public", map[string][]byte{"w.bin": randBytes(1 << 20)})
	id := e.Join(b, "prod")
	cli, err := store.Open(context.Background(), e.App.Config.Store)
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	var viaStore, inProc, base []time.Duration
	run := func(revoke func()) time.Duration {
		started := make(chan int, 1)
		ch := start(launcher.Config{Identity: id, Model: "m", Version: "1", Command: []string{"sleep", "60"}, TempDir: b.TempDir(),
			Stderr: io.Discard, Started: func(pid int) { started <- pid }})
		<-started
		time.Sleep(200 * time.Millisecond) // let the watch stream connect: revocation is pushed, not found at connect
		t0 := time.Now()
		revoke()
		r := <-ch
		d := time.Since(t0)
		if r.out.Code != launcher.ExitRevoked {
			b.Fatalf("outcome %+v %v", r.out, r.err)
		}
		return d
	}
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			viaStore = append(viaStore, run(func() { cli.RevokeLeases(context.Background(), store.LeaseQuery{Model: "m"}, time.Now(), "bench") }))
		} else {
			inProc = append(inProc, run(func() { e.Svc.Revoke(context.Background(), store.LeaseQuery{Model: "m"}, "bench") }))
		}
		cmd := exec.Command("sleep", "60")
		cmd.Start()
		t0 := time.Now()
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		base = append(base, time.Since(t0))
	}
	quantiles(b, "cli-revoke", viaStore)
	if len(inProc) > 0 {
		quantiles(b, "inproc-revoke", inProc)
	}
	quantiles(b, "baseline-kill", base)
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
