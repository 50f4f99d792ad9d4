//go:build linux

package fsutil

// Outside round 47: blocking.go's WriteAt, ReadAt and SyncData (file I/O through a
// linknamed runtime.entersyscallblock/exitsyscall around RawSyscall6) held to their
// claims — results and errors like os.File's, partial transfers continued, EINTR retried,
// the P given up while blocked, and a concurrent Close never leading a call to a reused
// descriptor.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ---------------------------------------------------------------------------------------
// helpers

// a47Outcome is what is compared of an error: nil or not, its sentinel, its errno, its
// type. op is logged, not compared (a cosmetic difference).
type a47Outcome struct {
	isNil, closed, invalid, eof, unexpectedEOF, pathErr bool
	errno                                               syscall.Errno
	op                                                  string
}

func a47Classify(err error) a47Outcome {
	var o a47Outcome
	o.isNil = err == nil
	o.closed = errors.Is(err, os.ErrClosed)
	o.invalid = errors.Is(err, os.ErrInvalid)
	o.eof = err == io.EOF
	o.unexpectedEOF = err == io.ErrUnexpectedEOF
	var pe *os.PathError
	if errors.As(err, &pe) {
		o.pathErr = true
		o.op = pe.Op
	}
	errors.As(err, &o.errno)
	return o
}

// a47Same fails the test when ours and std differ in anything but the PathError's Op.
func a47Same(t *testing.T, what string, ours, std error) {
	t.Helper()
	a, b := a47Classify(ours), a47Classify(std)
	opA, opB := a.op, b.op
	a.op, b.op = "", ""
	if a != b {
		t.Errorf("%s: fsutil gives %v (%#v), os.File gives %v (%#v)", what, ours, ours, std, std)
		return
	}
	if opA != opB {
		t.Logf("%s: same error, different PathError.Op: fsutil %q, os.File %q (cosmetic)", what, opA, opB)
	}
}

// a47StdReadFull is os.File.ReadAt with io.ReadFull's contract (what ReadAt claims).
func a47StdReadFull(f *os.File, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if err == io.EOF {
		switch {
		case n == len(b):
			return nil
		case n > 0:
			return io.ErrUnexpectedEOF
		}
	}
	return err
}

func a47StdWrite(f *os.File, b []byte, off int64) error {
	_, err := f.WriteAt(b, off)
	return err
}

// a47Fd is f's descriptor number, read without Fd (which would set a pollable file
// blocking).
func a47Fd(t *testing.T, f *os.File) int {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if err := rc.Control(func(d uintptr) { fd = int(d) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// a47ShmDir is a fresh directory on tmpfs (/dev/shm) when there is one (fdatasync there is
// cheap), else t.TempDir.
func a47ShmDir(t *testing.T) string {
	t.Helper()
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC {
		d, err := os.MkdirTemp("/dev/shm", "a47-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

// a47Tmpfs mounts a tmpfs of size (e.g. "256k") on a fresh directory (skipped where
// mounting is not allowed) and unmounts it at the test's end.
func a47Tmpfs(t *testing.T, size string) string {
	t.Helper()
	d := t.TempDir()
	if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	return d
}

func a47Create(t *testing.T, path string, content []byte) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if len(content) > 0 {
		if _, err := f.WriteAt(content, 0); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func a47Random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// a47Within runs fn on a goroutine and fails the test if it has not returned within d.
func a47Within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

// ---------------------------------------------------------------------------------------
// userfaultfd: memory whose first touch blocks the touching thread — in the kernel too, so
// a pread or pwrite into or out of it blocks in the system call until the test resolves
// the fault. It makes "a call blocked in the kernel" deterministic for a regular file.

const (
	a47UFFDIO_API      = 0xc018aa3f
	a47UFFDIO_REGISTER = 0xc020aa00
	a47UFFDIO_COPY     = 0xc028aa03
	a47UFFD_API        = 0xaa
	a47EventPagefault  = 0x12
	a47MsgSize         = 32
)

type a47UFFD struct {
	f   *os.File // the userfaultfd, non-blocking: reads park on the poller
	fd  uintptr
	mem []byte // registered (missing mode): every page faults at its first touch
	src []byte // one page: what a resolved page is filled with
	ps  int
}

func a47NewUFFD(t *testing.T, pages int) *a47UFFD {
	t.Helper()
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0)
	if e != 0 {
		t.Skipf("userfaultfd: %v", e)
	}
	api := [3]uint64{a47UFFD_API, 0, 0}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, a47UFFDIO_API, uintptr(unsafe.Pointer(&api))); e != 0 {
		unix.Close(int(fd))
		t.Skipf("UFFDIO_API: %v", e)
	}
	ps := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, pages*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		unix.Close(int(fd))
		t.Fatal(err)
	}
	src, err := unix.Mmap(-1, 0, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	reg := [4]uint64{uint64(uintptr(unsafe.Pointer(&mem[0]))), uint64(len(mem)), 1 /* MISSING */, 0}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, a47UFFDIO_REGISTER, uintptr(unsafe.Pointer(&reg))); e != 0 {
		unix.Close(int(fd))
		t.Skipf("UFFDIO_REGISTER: %v (kernel faults need CAP_SYS_PTRACE or vm.unprivileged_userfaultfd)", e)
	}
	u := &a47UFFD{f: os.NewFile(fd, "userfaultfd"), fd: fd, mem: mem, src: src, ps: ps}
	t.Cleanup(func() {
		u.f.Close() // wakes any thread still waiting on a fault (then served a zero page)
		unix.Munmap(mem)
		unix.Munmap(src)
	})
	return u
}

// page is page i of the registered memory.
func (u *a47UFFD) page(i int) []byte { return u.mem[i*u.ps : (i+1)*u.ps : (i+1)*u.ps] }

func (u *a47UFFD) pageAddr(i int) uint64 { return uint64(uintptr(unsafe.Pointer(&u.mem[i*u.ps]))) }

// waitFaults reads fault messages until want distinct pages have faulted (each a thread
// blocked on it), within d.
func (u *a47UFFD) waitFaults(t *testing.T, want int, d time.Duration) map[uint64]bool {
	t.Helper()
	u.f.SetReadDeadline(time.Now().Add(d))
	defer u.f.SetReadDeadline(time.Time{})
	seen := map[uint64]bool{}
	buf := make([]byte, 64*a47MsgSize)
	for len(seen) < want {
		n, err := u.f.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %d blocked calls, %d blocked: %v", want, len(seen), err)
		}
		for m := buf[:n]; len(m) >= a47MsgSize; m = m[a47MsgSize:] {
			if m[0] == a47EventPagefault {
				seen[binary.LittleEndian.Uint64(m[16:])&^uint64(u.ps-1)] = true
			}
		}
	}
	return seen
}

// resolve maps page i in, filled with fill, and wakes whoever waits on it.
func (u *a47UFFD) resolve(t *testing.T, i int, fill byte) {
	t.Helper()
	for k := range u.src {
		u.src[k] = fill
	}
	cp := struct {
		dst, src, len, mode uint64
		copied              int64
	}{u.pageAddr(i), uint64(uintptr(unsafe.Pointer(&u.src[0]))), uint64(u.ps), 0, 0}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, u.fd, a47UFFDIO_COPY, uintptr(unsafe.Pointer(&cp))); e != 0 && e != unix.EEXIST {
		t.Fatalf("UFFDIO_COPY page %d: %v", i, e)
	}
}

// ---------------------------------------------------------------------------------------
// tests

// TestAttack47ErrorsLikeOS: the same calls through fsutil and through os.File, on the same
// kinds of files, give the same outcome (nil or not, the same sentinel or errno, the same
// error type) and leave the same file: a read-only file, a write-only one, a directory, a
// FIFO, /dev/full, /dev/null, offsets at and near the maximum int64 and across the file
// system's maximum file size (a partial write, then EFBIG), negative offsets, zero-length
// buffers, reads across and past the end, a closed file.
func TestAttack47ErrorsLikeOS(t *testing.T) {
	dir := t.TempDir()
	content := a47Random(10000)
	pathR := filepath.Join(dir, "r")
	if err := os.WriteFile(pathR, content, 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(path string, flag int) *os.File {
		t.Helper()
		f, err := os.OpenFile(path, flag, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	one := []byte{'x'}

	t.Run("read-only file", func(t *testing.T) {
		f := open(pathR, os.O_RDONLY)
		a47Same(t, "write", WriteAt(f, one, 0), a47StdWrite(f, one, 0))
		a47Same(t, "sync", SyncData(f), f.Sync())
		b1, b2 := make([]byte, 100), make([]byte, 100)
		a47Same(t, "read", ReadAt(f, b1, 50), a47StdReadFull(f, b2, 50))
		if !bytes.Equal(b1, b2) {
			t.Error("read: different bytes")
		}
	})
	t.Run("write-only file", func(t *testing.T) {
		f := open(pathR, os.O_WRONLY)
		a47Same(t, "read", ReadAt(f, make([]byte, 10), 0), a47StdReadFull(f, make([]byte, 10), 0))
	})
	t.Run("directory", func(t *testing.T) {
		f := open(dir, os.O_RDONLY)
		a47Same(t, "read", ReadAt(f, make([]byte, 10), 0), a47StdReadFull(f, make([]byte, 10), 0))
		a47Same(t, "write", WriteAt(f, one, 0), a47StdWrite(f, one, 0))
		a47Same(t, "sync", SyncData(f), f.Sync())
	})
	t.Run("FIFO", func(t *testing.T) {
		p := filepath.Join(dir, "fifo")
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Skip(err)
		}
		f := open(p, os.O_RDWR) // Linux: does not wait for a peer
		a47Same(t, "write", WriteAt(f, one, 0), a47StdWrite(f, one, 0))
		a47Same(t, "read", ReadAt(f, make([]byte, 10), 0), a47StdReadFull(f, make([]byte, 10), 0))
		a47Same(t, "sync", SyncData(f), f.Sync())
		a47Same(t, "empty write", WriteAt(f, nil, 0), a47StdWrite(f, nil, 0))
	})
	for _, dev := range []string{"/dev/full", "/dev/null", "/dev/zero"} {
		t.Run(dev, func(t *testing.T) {
			f, err := os.OpenFile(dev, os.O_RDWR, 0)
			if err != nil {
				t.Skip(err)
			}
			defer f.Close()
			a47Same(t, "write", WriteAt(f, content, 7), a47StdWrite(f, content, 7))
			b1, b2 := bytes.Repeat([]byte{1}, 5000), bytes.Repeat([]byte{1}, 5000)
			a47Same(t, "read", ReadAt(f, b1, 3), a47StdReadFull(f, b2, 3))
			if !bytes.Equal(b1, b2) {
				t.Error("read: different bytes")
			}
			a47Same(t, "sync", SyncData(f), f.Sync())
		})
	}

	// Offsets: each write case on two fresh files, the results and the files compared.
	maxSize := a47MaxFileSize(t, dir)
	t.Logf("this file system's largest file: %d bytes", maxSize)
	type wcase struct {
		name string
		off  int64
		n    int
	}
	wcases := []wcase{
		{"offset MaxInt64", math.MaxInt64, 1},
		{"offset MaxInt64-10, 100 bytes", math.MaxInt64 - 10, 100},
		{"offset 1<<62", 1 << 62, 10},
		{"offset 1<<63-4096", math.MaxInt64 - 4095, 4096},
		{"across the largest file size", maxSize - 10, 100},
		{"at the largest file size", maxSize, 1},
		{"just below the largest file size", maxSize - 100, 100},
		{"negative offset", -1, 10},
		{"offset MinInt64", math.MinInt64, 10},
		{"zero-length, past the end", 1 << 40, 0},
		{"zero-length, negative", -5, 0},
		{"zero-length, MaxInt64", math.MaxInt64, 0},
	}
	for _, c := range wcases {
		t.Run("write "+c.name, func(t *testing.T) {
			d := t.TempDir()
			fa := a47Create(t, filepath.Join(d, "a"), content[:100])
			fb := a47Create(t, filepath.Join(d, "b"), content[:100])
			b := a47Random(c.n)
			a47Same(t, fmt.Sprintf("write %d bytes at %d", c.n, c.off), WriteAt(fa, b, c.off), a47StdWrite(fb, b, c.off))
			sa, _ := fa.Stat()
			sb, _ := fb.Stat()
			if sa.Size() != sb.Size() {
				t.Fatalf("file sizes differ: fsutil %d, os.File %d", sa.Size(), sb.Size())
			}
			if sa.Size() > 100 { // compare the written tail (sparse before it)
				from := max(int64(100), sa.Size()-int64(max(c.n, 1))-16)
				ta, tb := make([]byte, sa.Size()-from), make([]byte, sa.Size()-from)
				fa.ReadAt(ta, from)
				fb.ReadAt(tb, from)
				if !bytes.Equal(ta, tb) {
					t.Fatalf("files differ in their last %d bytes", len(ta))
				}
			}
		})
	}
	rcases := []wcase{
		{"inside", 100, 1000},
		{"to the end exactly", int64(len(content)) - 1000, 1000},
		{"across the end", int64(len(content)) - 10, 100},
		{"at the end", int64(len(content)), 10},
		{"far past the end", 1 << 40, 10},
		{"offset 1<<62", 1 << 62, 10},
		{"offset MaxInt64", math.MaxInt64, 1},
		{"offset MaxInt64-10, 100 bytes", math.MaxInt64 - 10, 100},
		{"negative offset", -1, 10},
		{"zero-length", 5, 0},
		{"zero-length past the end", 1 << 40, 0},
		{"zero-length MaxInt64", math.MaxInt64, 0},
		{"zero-length negative", -1, 0},
	}
	f := open(pathR, os.O_RDONLY)
	for _, c := range rcases {
		t.Run("read "+c.name, func(t *testing.T) {
			b1, b2 := make([]byte, c.n), make([]byte, c.n)
			e1, e2 := ReadAt(f, b1, c.off), a47StdReadFull(f, b2, c.off)
			a47Same(t, fmt.Sprintf("read %d bytes at %d", c.n, c.off), e1, e2)
			if !bytes.Equal(b1, b2) {
				t.Error("different bytes read")
			}
		})
	}

	// A buffer whose second page is not readable or writable: the call moves the first
	// page (a partial count), then the next fails with EFAULT.
	t.Run("buffer running into an inaccessible page", func(t *testing.T) {
		ps := os.Getpagesize()
		mm, err := unix.Mmap(-1, 0, 3*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(mm)
		if err := unix.Mprotect(mm[2*ps:], unix.PROT_NONE); err != nil {
			t.Fatal(err)
		}
		buf := mm[ps/2 : 3*ps]
		d := t.TempDir()
		fa := a47Create(t, filepath.Join(d, "a"), content)
		fb := a47Create(t, filepath.Join(d, "b"), content)
		a47Same(t, "write", WriteAt(fa, buf, 3), a47StdWrite(fb, buf, 3))
		ga, _ := os.ReadFile(fa.Name())
		gb, _ := os.ReadFile(fb.Name())
		if !bytes.Equal(ga, gb) {
			t.Error("write: files differ")
		}
		clear(mm[:2*ps])
		e1 := ReadAt(fa, buf, 5)
		r1 := append([]byte(nil), mm[:2*ps]...)
		clear(mm[:2*ps])
		e2 := a47StdReadFull(fb, buf, 5)
		a47Same(t, "read", e1, e2)
		if !bytes.Equal(r1, mm[:2*ps]) {
			t.Error("read: different bytes")
		}
	})

	t.Run("closed file", func(t *testing.T) {
		fc := open(pathR, os.O_RDWR)
		fc.Close()
		a47Same(t, "write", WriteAt(fc, one, 0), a47StdWrite(fc, one, 0))
		a47Same(t, "read", ReadAt(fc, make([]byte, 3), 0), a47StdReadFull(fc, make([]byte, 3), 0))
		a47Same(t, "sync", SyncData(fc), fc.Sync())
		a47Same(t, "write, negative offset", WriteAt(fc, one, -1), a47StdWrite(fc, one, -1))
	})
}

// a47MaxFileSize finds the largest offset at which dir's file system takes a one-byte
// write (s_maxbytes), by bisection on a sparse scratch file.
func a47MaxFileSize(t *testing.T, dir string) int64 {
	f, err := os.CreateTemp(dir, "max")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	lo, hi := int64(0), int64(math.MaxInt64-1) // a write at lo works; at hi not
	if _, err := f.WriteAt([]byte{1}, hi); err == nil {
		return hi + 1
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if _, err := f.WriteAt([]byte{1}, mid); err == nil {
			lo = mid
		} else {
			hi = mid
		}
		f.Truncate(0)
	}
	return hi // a byte at lo is the last: files end at lo+1 = hi
}

// TestAttack47ClosedZeroLength: a zero-length write or read on a closed file. os.File's
// WriteAt and ReadAt check only for a nil *File and then loop while bytes remain: they
// return (0, nil). WriteAt and ReadAt here take the descriptor first and return
// os.ErrClosed. A difference from os.File's outcome (what the package claims to match).
func TestAttack47ClosedZeroLength(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	a47Same(t, "zero-length write on a closed file", WriteAt(f, nil, 0), a47StdWrite(f, nil, 0))
	a47Same(t, "zero-length read on a closed file", ReadAt(f, nil, 0), a47StdReadFull(f, nil, 0))
}

// TestAttack47NilFile: os.File's methods on a nil *File return os.ErrInvalid. WriteAt,
// ReadAt and SyncData must return an error too, not panic.
func TestAttack47NilFile(t *testing.T) {
	var f *os.File
	call := func(name string, fn func() error, std error) {
		t.Helper()
		var err error
		panicked := func() (p any) {
			defer func() { p = recover() }()
			err = fn()
			return nil
		}()
		if panicked != nil {
			t.Errorf("%s on a nil *os.File panics (%v); os.File gives %v", name, panicked, std)
			return
		}
		a47Same(t, name+" on a nil *os.File", err, std)
	}
	call("WriteAt", func() error { return WriteAt(f, []byte("x"), 0) }, a47StdWrite(f, []byte("x"), 0))
	call("WriteAt (negative offset)", func() error { return WriteAt(f, []byte("x"), -1) }, a47StdWrite(f, []byte("x"), -1))
	call("ReadAt", func() error { return ReadAt(f, make([]byte, 1), 0) }, a47StdReadFull(f, make([]byte, 1), 0))
	call("SyncData", func() error { return SyncData(f) }, f.Sync())
}

// TestAttack47AppendMode: WriteAt's documented precondition is a file not opened with
// O_APPEND (os.File.WriteAt refuses such a file). Documented, so not a failure: the test
// records what happens — on Linux pwrite on an O_APPEND file appends at the end whatever
// the offset, silently. ReadAt on such a file reads at the offset, like os.File.
func TestAttack47AppendMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a")
	if err := os.WriteFile(p, []byte("0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ours := WriteAt(f, []byte("XY"), 2)
	_, std := f.WriteAt([]byte("XY"), 2)
	got, _ := os.ReadFile(p)
	t.Logf("DOCUMENTED PRECONDITION (not a failure): O_APPEND file: fsutil.WriteAt at 2 -> %v, file now %q; os.File.WriteAt -> %v", ours, got, std)
	b1, b2 := make([]byte, 4), make([]byte, 4)
	a47Same(t, "read", ReadAt(f, b1, 3), a47StdReadFull(f, b2, 3))
	if !bytes.Equal(b1, b2) {
		t.Error("read: different bytes")
	}
}

// TestAttack47FullFilesystem: writes into a 256 KiB tmpfs — one larger than the room left
// (pwrite writes part, then ENOSPC), one sparse far past the file system's size, one into
// an already full file system — give os.File's error and leave the same file (the
// partial write continued to where the file system stopped it, as os.File does).
func TestAttack47FullFilesystem(t *testing.T) {
	fs := a47Tmpfs(t, "256k")
	type wr struct {
		off int64
		n   int
	}
	cases := map[string][]wr{
		"larger than the file system":   {{0, 512 << 10}},
		"sparse, past the size":         {{4 << 20, 300 << 10}},
		"into a full file system":       {{0, 256 << 10}, {300 << 10, 4096}},
		"odd sizes up to the end":       {{0, 100000}, {100001, 100003}, {200007, 70001}},
		"overwriting inside a full one": {{0, 256 << 10}, {4096, 8192}},
	}
	for name, ws := range cases {
		t.Run(name, func(t *testing.T) {
			type result struct {
				errs []error
				size int64
				data []byte
			}
			bufs := make([][]byte, len(ws))
			for i, w := range ws {
				bufs[i] = a47Random(w.n)
			}
			run := func(write func(f *os.File, b []byte, off int64) error, sync func(f *os.File) error) result {
				p := filepath.Join(fs, "f")
				f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
				if err != nil {
					t.Fatal(err)
				}
				defer os.Remove(p)
				defer f.Close()
				var r result
				for i, w := range ws {
					r.errs = append(r.errs, write(f, bufs[i], w.off))
				}
				r.errs = append(r.errs, sync(f))
				st, _ := f.Stat()
				r.size = st.Size()
				r.data, _ = os.ReadFile(p)
				return r
			}
			ours := run(WriteAt, SyncData)
			std := run(a47StdWrite, (*os.File).Sync)
			for i := range ours.errs {
				a47Same(t, fmt.Sprintf("call %d", i), ours.errs[i], std.errs[i])
			}
			if ours.size != std.size || !bytes.Equal(ours.data, std.data) {
				t.Errorf("files differ: fsutil %d bytes, os.File %d bytes (equal content: %v)", ours.size, std.size, bytes.Equal(ours.data, std.data))
			}
			t.Logf("errors %v; file %d bytes", ours.errs, ours.size)
		})
	}
}

// TestAttack47SignalStorm: signals sent to the process as fast as it can (SIGURG, the
// runtime's preemption signal, and SIGUSR1, both notified) while large transfers run:
// reads of /dev/urandom and /dev/zero (which return early, a partial count, when a signal
// is pending), and writes of 8 MiB to a file read back. Every call must complete whole
// (partial transfers continued, EINTR retried) and move the right bytes.
func TestAttack47SignalStorm(t *testing.T) {
	sigs := make(chan os.Signal, 1024)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGURG)
	defer signal.Stop(sigs)
	var stop atomic.Bool
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for range sigs {
		}
	})
	for range 1 {
		wg.Go(func() {
			pid := os.Getpid()
			for !stop.Load() {
				syscall.Kill(pid, syscall.SIGURG)
				syscall.Kill(pid, syscall.SIGUSR1)
				sent.Add(2)
			}
		})
	}
	defer func() {
		stop.Store(true)
		signal.Stop(sigs)
		close(sigs)
		wg.Wait()
	}()
	const size = 8 << 20
	// Evidence the storm makes transfers partial: a raw pread of /dev/urandom.
	short := 0
	if u, err := os.Open("/dev/urandom"); err == nil {
		b := make([]byte, size)
		for range 4 {
			n, err := syscall.Pread(a47Fd(t, u), b, 0)
			if err == nil && n < len(b) {
				short++
			}
		}
		u.Close()
	}
	t.Logf("raw preads of /dev/urandom cut short by a signal: %d of 4", short)

	for _, dev := range []string{"/dev/urandom", "/dev/zero"} {
		f, err := os.Open(dev)
		if err != nil {
			t.Skip(err)
		}
		for round := range 3 {
			b := bytes.Repeat([]byte{0xff}, size)
			if err := ReadAt(f, b, 0); err != nil {
				t.Fatalf("%s round %d: %v", dev, round, err)
			}
			for p := 0; p < len(b); p += 4096 {
				pg := b[p : p+4096]
				if dev == "/dev/zero" && !bytes.Equal(pg, make([]byte, 4096)) || bytes.Equal(pg, bytes.Repeat([]byte{0xff}, 4096)) {
					t.Fatalf("%s round %d: page at %d not read (a partial read not continued?)", dev, round, p)
				}
			}
		}
		f.Close()
	}
	dir := a47ShmDir(t)
	f := a47Create(t, filepath.Join(dir, "big"), nil)
	data := a47Random(size)
	for round := range 3 {
		off := int64(round*4096 + round)
		if err := WriteAt(f, data, off); err != nil {
			t.Fatalf("write round %d: %v", round, err)
		}
		if err := SyncData(f); err != nil {
			t.Fatalf("sync round %d: %v", round, err)
		}
		got := make([]byte, size)
		if err := ReadAt(f, got, off); err != nil {
			t.Fatalf("read round %d: %v", round, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("round %d: bytes read back differ from those written", round)
		}
	}
	t.Logf("signals sent: %d", sent.Load())
}

// TestAttack47BlockedCallsOneP: with GOMAXPROCS=1, 12 WriteAt calls (each to its own file)
// and 12 ReadAt calls (one file) are made to block in the kernel — their buffers fault on a
// userfaultfd the test serves. While all 24 are blocked: two garbage collections, other
// goroutines running, and a Close of one writer's file followed by the opening of new
// files (none may get its descriptor number: the blocked call still uses it). Then the
// faults are served: every call completes with the right bytes, the closed file (not the
// new ones) holds its write, and calls made after the Close fail with os.ErrClosed.
func TestAttack47BlockedCallsOneP(t *testing.T) {
	const nw, nr = 12, 12
	u := a47NewUFFD(t, nw+nr)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	dir := t.TempDir()
	ps := u.ps
	files := make([]*os.File, nw)
	for i := range files {
		files[i] = a47Create(t, filepath.Join(dir, fmt.Sprintf("w%d", i)), nil)
	}
	content := a47Random(nr * ps)
	rf := a47Create(t, filepath.Join(dir, "r"), content)
	fd0 := a47Fd(t, files[0])

	errs := make(chan string, nw+nr)
	var done atomic.Int32
	for i := range nw {
		go func() {
			defer done.Add(1)
			if err := WriteAt(files[i], u.page(i), int64(i)); err != nil {
				errs <- fmt.Sprintf("writer %d: %v", i, err)
			}
		}()
	}
	for i := range nr {
		go func() {
			defer done.Add(1)
			if err := ReadAt(rf, u.page(nw+i), int64(i*ps)); err != nil {
				errs <- fmt.Sprintf("reader %d: %v", i, err)
			}
		}()
	}
	u.waitFaults(t, nw+nr, 10*time.Second)
	if n := done.Load(); n != 0 {
		t.Fatalf("%d calls returned before their faults were served", n)
	}
	// Everything else runs meanwhile: two GCs, and a goroutine that counts.
	var ticks atomic.Int64
	var stop atomic.Bool
	go func() {
		for !stop.Load() {
			ticks.Add(1)
			runtime.Gosched()
		}
	}()
	a47Within(t, 10*time.Second, "runtime.GC with 24 calls blocked and one P", func() {
		runtime.GC()
		debug.FreeOSMemory()
	})
	end := time.Now().Add(5 * time.Second)
	for ticks.Load() < 1000 && time.Now().Before(end) {
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	if ticks.Load() < 1000 {
		t.Fatalf("another goroutine ran %d times in 5 s with the calls blocked", ticks.Load())
	}
	// Close a file a blocked call is writing, and open new ones.
	a47Within(t, 5*time.Second, "Close of a file a blocked WriteAt uses", func() { files[0].Close() })
	if err := WriteAt(files[0], []byte("late"), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteAt after Close: %v, want os.ErrClosed", err)
	}
	if err := SyncData(files[0]); !errors.Is(err, os.ErrClosed) {
		t.Errorf("SyncData after Close: %v, want os.ErrClosed", err)
	}
	var fresh []*os.File
	for k := range 8 {
		nf := a47Create(t, filepath.Join(dir, fmt.Sprintf("new%d", k)), nil)
		if a47Fd(t, nf) == fd0 {
			t.Errorf("a new file got descriptor %d while a blocked WriteAt still used it for the closed file", fd0)
		}
		fresh = append(fresh, nf)
	}
	for i := range nw + nr {
		u.resolve(t, i, byte(0x40+i))
	}
	end = time.Now().Add(10 * time.Second)
	for done.Load() != nw+nr {
		if time.Now().After(end) {
			t.Fatalf("%d of %d calls returned 10 s after their faults were served", done.Load(), nw+nr)
		}
		time.Sleep(time.Millisecond)
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	for i := range nw {
		got, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("w%d", i)))
		want := append(make([]byte, i), bytes.Repeat([]byte{byte(0x40 + i)}, ps)...)
		if !bytes.Equal(got, want) {
			t.Errorf("writer %d's file: %d bytes, not what it wrote", i, len(got))
		}
	}
	for i := range nr {
		if !bytes.Equal(u.page(nw+i), content[i*ps:(i+1)*ps]) {
			t.Errorf("reader %d: bytes read differ from the file's", i)
		}
	}
	for k, nf := range fresh {
		if st, _ := nf.Stat(); st.Size() != 0 {
			t.Errorf("new file %d (opened after the Close) has %d bytes: a write meant for the closed file", k, st.Size())
		}
	}
}

// TestAttack47CloseRaceReuse: rounds of 9 goroutines writing (each its own region, its own
// pattern), reading (regions only the prefill wrote) and syncing one file as fast as they
// can, the file closed under them at a random point, and new files — prefilled with other
// bytes — opened at once, as long as the calls go on (taking the closed file's descriptor
// number once it is free). No new file may receive a byte of the closed one's writes, no
// read may return a new file's bytes, every call after the Close must fail with
// os.ErrClosed wrapped in *os.PathError, and every write that returned nil must be in the
// closed file.
func TestAttack47CloseRaceReuse(t *testing.T) {
	dir := a47ShmDir(t)
	const size = 16 * 4096
	prefillA := bytes.Repeat([]byte{'A'}, size)
	prefillB := bytes.Repeat([]byte{'B'}, size)
	reused, rounds := 0, 150
	deadline := time.Now().Add(6 * time.Second)
	for round := 0; round < rounds && time.Now().Before(deadline); round++ {
		pa := filepath.Join(dir, fmt.Sprintf("a%d", round))
		a, err := os.OpenFile(pa, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		a.WriteAt(prefillA, 0)
		fdA := a47Fd(t, a)
		var ops atomic.Int64
		var closed atomic.Bool
		var wg sync.WaitGroup
		var mu sync.Mutex
		var problems []string
		wrote := make([]atomic.Int64, 9)
		bad := func(s string) {
			mu.Lock()
			problems = append(problems, s)
			mu.Unlock()
		}
		checkErr := func(g int, what string, err error) bool {
			if err == nil {
				return true
			}
			var pe *os.PathError
			if !errors.Is(err, os.ErrClosed) || !errors.As(err, &pe) {
				bad(fmt.Sprintf("goroutine %d %s: %v (want *os.PathError wrapping os.ErrClosed)", g, what, err))
			} else if !closed.Load() {
				bad(fmt.Sprintf("goroutine %d %s: %v before the Close", g, what, err))
			}
			return false
		}
		for g := range 9 {
			wg.Go(func() {
				region := int64(g) * 4096
				pat := bytes.Repeat([]byte{byte('a' + g)}, 1000+g)
				buf := make([]byte, 4096)
				for after := 0; after < 3; {
					var ok bool
					switch g % 3 {
					case 0: // writer
						ok = checkErr(g, "WriteAt", WriteAt(a, pat, region+int64(g)))
						if ok {
							wrote[g].Add(1)
						}
					case 1: // reader of a region only the prefill wrote
						clear(buf)
						ok = checkErr(g, "ReadAt", ReadAt(a, buf, region))
						if ok && !bytes.Equal(buf, prefillA[:4096]) {
							bad(fmt.Sprintf("goroutine %d ReadAt returned bytes not the closed file's: %q...", g, buf[:16]))
						}
					case 2:
						ok = checkErr(g, "SyncData", SyncData(a))
					}
					ops.Add(1)
					if !ok {
						after++
					}
				}
			})
		}
		// Close after a random number of operations, then open new files while the calls go on.
		var r [1]byte
		rand.Read(r[:])
		want := int64(r[0]) % 64
		end := time.Now().Add(2 * time.Second)
		for ops.Load() < want && time.Now().Before(end) {
			runtime.Gosched()
		}
		closed.Store(true)
		a.Close()
		var news []*os.File
		callsDone := make(chan struct{})
		go func() { wg.Wait(); close(callsDone) }()
	opening:
		for k := 0; ; k++ {
			select {
			case <-callsDone:
				break opening
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: calls on a closed file still running after 5 s", round)
			default:
			}
			if k < 64 {
				nf, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("b%d-%d", round, k)), os.O_RDWR|os.O_CREATE, 0o600)
				if err != nil {
					t.Fatal(err)
				}
				nf.WriteAt(prefillB, 0)
				if a47Fd(t, nf) == fdA {
					reused++
				}
				news = append(news, nf)
			} else {
				runtime.Gosched()
			}
		}
		for _, p := range problems {
			t.Errorf("round %d: %s", round, p)
		}
		for k, nf := range news {
			got := make([]byte, size+1)
			n, _ := nf.ReadAt(got, 0)
			if n != size || !bytes.Equal(got[:n], prefillB) {
				t.Errorf("round %d: new file %d (opened after the Close) was written to (%d bytes): bytes meant for the closed file", round, k, n)
			}
			nf.Close()
			os.Remove(nf.Name())
		}
		got, _ := os.ReadFile(pa)
		for g := 0; g < 9; g += 3 {
			if wrote[g].Load() > 0 {
				region := g*4096 + g
				if !bytes.Equal(got[region:region+1000+g], bytes.Repeat([]byte{byte('a' + g)}, 1000+g)) {
					t.Errorf("round %d: writer %d's acknowledged write is not in the closed file", round, g)
				}
			}
		}
		os.Remove(pa)
		if t.Failed() {
			return
		}
	}
	t.Logf("new files that got the closed file's descriptor number while calls raced: %d", reused)
}
