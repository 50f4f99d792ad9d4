package audit

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
	"golang.org/x/sys/unix"
)

// threadCPU is the calling OS thread's user + system CPU time.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(unix.RUSAGE_THREAD, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkGroupSync: what one journal group commit costs the process in CPU — a write of
// 40 KiB (a group of ~64 request records) and an fdatasync — on this machine's disk. The
// baseline ("grow") is what the journal does today: each group grows the segment, so the
// fdatasync also commits the inode's new size. "prewritten" writes into a segment whose
// blocks were written (zeros) and synced beforehand: the fdatasync flushes data only.
// "prewritten-dsync" and "prewritten-direct" put the flush into the write itself
// (O_DSYNC; O_DSYNC|O_DIRECT, 4 KiB-aligned). Reported: cpu-µs/group (the thread's
// getrusage), wall-µs/group.
//
//	go test ./internal/audit -run '^$' -bench GroupSync -benchtime 1000x -count 3
func BenchmarkGroupSync(b *testing.B) {
	const group = 40 << 10
	for _, c := range []struct {
		name     string
		flags    int
		prewrite bool
		sync     bool
		falloc   bool
	}{
		{"grow", 0, false, true, false},
		{"fallocated", 0, false, true, true},
		{"prewritten", 0, true, true, false},
		{"prewritten-dsync", unix.O_DSYNC, true, false, false},
		{"prewritten-direct", unix.O_DSYNC | unix.O_DIRECT, true, false, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			path := filepath.Join(b.TempDir(), "seg")
			if c.prewrite {
				if err := os.WriteFile(path, make([]byte, b.N*group), 0o600); err != nil {
					b.Fatal(err)
				}
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					b.Fatal(err)
				}
				f.Sync()
				f.Close()
			}
			f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|c.flags, 0o600)
			if err != nil {
				b.Skipf("open with flags %#x: %v", c.flags, err)
			}
			defer f.Close()
			if c.falloc {
				if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(b.N*group)); err != nil {
					b.Skipf("fallocate: %v", err)
				}
				f.Sync()
			}
			buf := alignedBytes(group)
			for i := range buf {
				buf[i] = byte(i)
			}
			b.ResetTimer()
			c0, t0 := threadCPU(), time.Now()
			for i := range b.N {
				if _, err := f.WriteAt(buf, int64(i*group)); err != nil {
					b.Fatal(err)
				}
				if c.sync {
					if err := unix.Fdatasync(int(f.Fd())); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64((threadCPU()-c0).Microseconds())/float64(b.N), "cpu-µs/group")
			b.ReportMetric(float64(time.Since(t0).Microseconds())/float64(b.N), "wall-µs/group")
		})
	}
}

// BenchmarkJournalAppend: the journal's own group commit (v4: a frame from a page boundary,
// its MAC, CRCs and the running SHA-256), a growing segment against a prewritten one, 40
// request records a group, a segment rotated every 4,096 records as the batcher does. CPU
// is the process's (a prewritten segment is prepared on another thread).
func BenchmarkJournalAppend(b *testing.B) {
	recs := rawRecs(0, 40)
	for _, c := range []struct {
		name string
		grow bool
	}{{"grow", true}, {"prewritten", false}} {
		b.Run(c.name, func(b *testing.B) {
			j, err := openJournalGrowing(b.TempDir(), MaxBatch, bytes.Repeat([]byte{1}, 32), c.grow)
			if err != nil {
				b.Fatal(err)
			}
			defer j.close()
			b.ResetTimer()
			c0, t0 := processCPU(), time.Now()
			for range b.N {
				if len(j.recs)+len(recs) > MaxBatch {
					if _, err := j.rotate(); err != nil {
						b.Fatal(err)
					}
				}
				if err := j.append(recs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((processCPU()-c0).Microseconds())/float64(b.N), "cpu-µs/group")
			b.ReportMetric(float64(time.Since(t0).Microseconds())/float64(b.N), "wall-µs/group")
		})
	}
}

// processCPU is the process's CPU time so far (user and system).
func processCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRequestRecord: one request record (~700 bytes) from 32 goroutines through a
// journaled batcher, its Future awaited as the gateway does: "written" (copied into the
// open segment's shadow, synced every 50 ms: journal_mapped.go), "written-pwrite" (no
// tmpfs: a pwrite each) and "synced" (the group commit: a write and an fdatasync a group).
// cpu-µs/record is the whole process's CPU (the folds and the search index included).
func BenchmarkRequestRecord(b *testing.B) {
	ev := requestEvent(1)
	ev.Fields["pad"] = strings.Repeat("x", 400)
	raw, _ := ev.Marshal()
	rec := store.AuditEvent{TS: ev.TS, Kind: string(ev.Kind), Principal: "p1", Raw: raw}
	for _, mode := range []string{"written", "written-pwrite", "synced"} {
		b.Run(mode, func(b *testing.B) {
			if mode == "written-pwrite" {
				defer func(s string) { ShadowBase = s }(ShadowBase)
				ShadowBase = ""
			}
			tl := openTestLog(b)
			bt := NewBatcher(tl.log, DirBundles{Dir: tl.dir}, BatcherConfig{Journal: filepath.Join(tl.dir, "journal"), JournalKey: a17Key,
				Written: mode != "synced"})
			ctx := context.Background()
			b.SetParallelism(16)
			c0, t0 := processCPU(), time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := bt.SubmitEncoded(ctx, rec)(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			bt.Close()
			b.ReportMetric(float64((processCPU()-c0).Microseconds())/float64(b.N), "cpu-µs/record")
			b.ReportMetric(float64(time.Since(t0).Microseconds())/float64(b.N), "wall-µs/record")
			tl.close(b)
		})
	}
}
