package fsutil

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"testing"
	"unsafe"
)

// TestWriteAtLikeOS: the same writes (random sizes and offsets, some past the end, one
// over 1 MiB) through WriteAt and os.File.WriteAt leave the same file, synced by SyncData
// and by Sync.
func TestWriteAtLikeOS(t *testing.T) {
	dir := t.TempDir()
	ours, err := os.Create(filepath.Join(dir, "ours"))
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	std, err := os.Create(filepath.Join(dir, "std"))
	if err != nil {
		t.Fatal(err)
	}
	defer std.Close()
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		n := r.IntN(9000) + 1
		if i == 100 {
			n = 3 << 20
		}
		b := make([]byte, n)
		for k := range b {
			b[k] = byte(r.Uint32())
		}
		off := r.Int64N(4 << 20)
		if err := WriteAt(ours, b, off); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := std.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := SyncData(ours); err != nil {
		t.Fatal(err)
	}
	if err := std.Sync(); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(ours.Name())
	b, _ := os.ReadFile(std.Name())
	if len(a) < 3<<20 || !bytes.Equal(a, b) {
		t.Fatalf("files differ: %d and %d bytes", len(a), len(b))
	}
	if err := WriteAt(ours, nil, 5); err != nil {
		t.Fatalf("empty write: %v", err)
	}
	// Reads: inside, across the end (part: io.ErrUnexpectedEOF), past it (io.EOF).
	for i := range 300 {
		n := r.IntN(5000) + 1
		off := r.Int64N(int64(len(a)) + 2000)
		if i == 0 {
			n, off = 1<<20, 0
		}
		got := make([]byte, n)
		err := ReadAt(ours, got, off)
		m := max(0, min(int64(n), int64(len(a))-off))
		switch {
		case m == int64(n) && err != nil, m == 0 && err != io.EOF, m > 0 && m < int64(n) && err != io.ErrUnexpectedEOF:
			t.Fatalf("read %d at %d of %d bytes: %v", n, off, len(a), err)
		case m > 0 && !bytes.Equal(got[:m], a[off:off+m]):
			t.Fatalf("read %d at %d: bytes differ", n, off)
		}
	}
}

// TestBlockingErrors: a closed file, a file open for reading, a negative offset and a
// descriptor fdatasync refuses give the errors os.File gives (the same errno, wrapped in
// *os.PathError; os.ErrClosed once closed).
func TestBlockingErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	_, stdErr := ro.WriteAt([]byte("y"), 0)
	err = WriteAt(ro, []byte("y"), 0)
	var pe *os.PathError
	if !errors.As(err, &pe) || !errors.Is(err, syscall.EBADF) || !errors.Is(stdErr, syscall.EBADF) {
		t.Fatalf("read-only file: %v (os: %v)", err, stdErr)
	}
	if err := WriteAt(ro, []byte("y"), -1); err == nil {
		t.Fatal("negative offset accepted")
	}
	// A pipe: fdatasync refuses it (EINVAL), as it refuses os.File.Sync's fsync.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	if err, stdErr := SyncData(pw), pw.Sync(); !errors.Is(err, syscall.EINVAL) || !errors.Is(stdErr, syscall.EINVAL) {
		t.Fatalf("pipe: %v (os: %v)", err, stdErr)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := SyncData(f); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("closed file, sync: %v", err)
	}
	if err := WriteAt(f, []byte("y"), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("closed file, write: %v", err)
	}
	if err := ReadAt(f, make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("closed file, read: %v", err)
	}
}

// TestBlockingCallGivesUpItsP: with one P, a goroutine blocked in blockingSyscall (a read
// of an empty pipe, a blocking descriptor) leaves the P to the rest of the program, and
// garbage collection — which stops every P — runs meanwhile. A call that kept its P
// (RawSyscall alone) would hang this test: nothing else could run to write to the pipe.
func TestBlockingCallGivesUpItsP(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil { // blocking: no O_NONBLOCK
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	started := make(chan struct{}, 1)
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 8)
		started <- struct{}{}
		n, _, e := blockingSyscall(syscall.SYS_READ, uintptr(p[0]), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0, 0)
		runtime.KeepAlive(buf)
		if e != 0 {
			got <- e.Error()
			return
		}
		got <- string(buf[:n])
	}()
	<-started
	// With one P, this goroutine runs again only once the reader has given the P up
	// (blocked in its read) or was preempted before it.
	runtime.GC()
	runtime.GC()
	if _, err := syscall.Write(p[1], []byte("wake")); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "wake" {
		t.Fatalf("read %q", s)
	}
}
