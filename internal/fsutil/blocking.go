package fsutil

import (
	"errors"
	"io"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// Blocking file calls, told to the scheduler as blocking.
//
// A system call made through package syscall (os.File's included) enters the scheduler's
// "in a system call" state, keeping its P, and wakes the runtime's monitor thread (sysmon)
// if it sleeps; sysmon then polls every 20 µs and, once the call has run past a poll,
// takes the P away (retake, handoffp) — and keeps polling at 20 µs while such calls go on.
// An fdatasync blocks for milliseconds (on a virtual disk, a notification to the host and
// a flush), and the request journal makes one every 50 ms under load: the monitor polled
// through each of them, a cost every request shared (docs/PERFORMANCE.md, "The journal's
// sync, told to the scheduler").
//
// The runtime has the call for this: entersyscallblock, "entersyscall with a hint that the
// syscall is blocking" — the P is handed off at once (to run other goroutines or go idle),
// sysmon is neither woken nor needed. It is what the runtime uses for its own blocking
// waits, and is kept callable from outside on purpose (runtime/proc.go: "Do not remove or
// change the type signature", go.dev/issue/67401). blockingSyscall is syscall.Syscall6 with
// it instead of entersyscall; garbage collection and preemption see the goroutine exactly
// as in any system call (no P, its stack parked), so a slow disk holds nothing but the
// calling goroutine.

//go:linkname entersyscallblock runtime.entersyscallblock
func entersyscallblock()

//go:linkname exitsyscall runtime.exitsyscall
func exitsyscall()

// blockingSyscall is syscall.Syscall6 for a call expected to block (see above). Between
// the two runtime calls the goroutine must not grow its stack: nosplit, calling only
// RawSyscall6 (nosplit, assembly below it).
//
//go:nosplit
//go:norace
func blockingSyscall(trap, a1, a2, a3, a4, a5, a6 uintptr) (r1, r2 uintptr, err syscall.Errno) {
	entersyscallblock()
	r1, r2, err = syscall.RawSyscall6(trap, a1, a2, a3, a4, a5, a6)
	exitsyscall()
	return
}

// control runs fn with f's descriptor held open (a concurrent Close waits for it), as
// os.File's own calls do; the error is os.ErrClosed (Control fails only when the file is
// closed or closing, with internal/poll's error, which os.File's calls translate so) or
// fn's.
func control(f *os.File, fn func(fd uintptr) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(fd) }); err != nil {
		return os.ErrClosed
	}
	return ferr
}

// SyncData is f's fdatasync (its data and the metadata needed to read it back), made as a
// blocking call (above). Errors are os.File.Sync's: *os.PathError with the errno.
func SyncData(f *os.File) error {
	if f == nil {
		return os.ErrInvalid
	}
	err := control(f, func(fd uintptr) error {
		for {
			_, _, e := blockingSyscall(syscall.SYS_FDATASYNC, fd, 0, 0, 0, 0, 0)
			if e != syscall.EINTR {
				return errnoErr(e)
			}
		}
	})
	if err != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	return nil
}

// WriteAt is f.WriteAt(b, off) made as blocking calls (above): every byte written or an
// error (a short write goes on from where it stopped; one that writes nothing is
// io.ErrShortWrite). Errors are os.File.WriteAt's: *os.PathError with the errno. f must
// not be open with O_APPEND (pwrite would append; os.File.WriteAt refuses such a file).
func WriteAt(f *os.File, b []byte, off int64) error {
	if _, err := positioned(f, "write", syscall.SYS_PWRITE64, b, off); err != errNoProgress {
		return err
	}
	return io.ErrShortWrite
}

// ReadAt fills b from f at off (io.ReadFull's contract) with blocking calls (above): nil,
// io.EOF when no byte was there, io.ErrUnexpectedEOF when some were, or os.File.ReadAt's
// errors (*os.PathError with the errno).
func ReadAt(f *os.File, b []byte, off int64) error {
	n, err := positioned(f, "read", syscall.SYS_PREAD64, b, off)
	switch {
	case err != errNoProgress:
		return err
	case n == 0:
		return io.EOF
	}
	return io.ErrUnexpectedEOF
}

// errNoProgress: a call moved no byte (positioned; not wrapped).
var errNoProgress = errors.New("no progress")

// positioned makes pread or pwrite (trap) calls until b is done, going on after a short
// one; it returns how many bytes were moved, and errNoProgress when a call moved none.
func positioned(f *os.File, op string, trap uintptr, b []byte, off int64) (done int, err error) {
	switch {
	case f == nil:
		return 0, os.ErrInvalid // as os.File's methods on a nil file
	case off < 0:
		return 0, &os.PathError{Op: op, Path: f.Name(), Err: errors.New("negative offset")}
	case len(b) == 0:
		return 0, nil // as os.File: the descriptor is not touched (closed or not)
	}
	err = control(f, func(fd uintptr) error {
		for len(b) > 0 {
			chunk := b[:min(len(b), maxRW)]
			n, _, e := blockingSyscall(trap, fd, uintptr(unsafe.Pointer(&chunk[0])), uintptr(len(chunk)), uintptr(off), 0, 0)
			runtime.KeepAlive(chunk) // blockingSyscall is a Go function: the pointer is kept here
			switch {
			case e == syscall.EINTR:
				continue
			case e != 0:
				return e
			case n == 0:
				return errNoProgress
			}
			b = b[n:]
			off += int64(n)
			done += int(n)
		}
		return nil
	})
	if err != nil && err != errNoProgress {
		err = &os.PathError{Op: op, Path: f.Name(), Err: err}
	}
	return done, err
}

// maxRW is the most one call writes (os.File's internal/poll limit: 1 GiB).
const maxRW = 1 << 30

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
