//go:build race

package rawsock

import "syscall"

// Through package syscall under the race detector: its Read and Write tell the detector
// that a write to a descriptor happens before a read of it (a test's goroutines often
// hand each other work so), which raw calls would not.

// raceBuild: these calls, like net.Conn's own, block on a descriptor put in blocking
// mode; the raw ones (sys.go) never do.
const raceBuild = true

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return max(n, 0), errno(err)
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return max(n, 0), errno(err)
}

func sysPeek(fd uintptr) syscall.Errno {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return errno(err)
}

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}
