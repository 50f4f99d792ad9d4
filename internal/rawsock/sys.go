//go:build !race

package rawsock

import (
	"syscall"
	"unsafe"
)

// recv and send with MSG_DONTWAIT: never blocking, whatever the descriptor's mode (a
// socket put in blocking mode after Wrap — File().Fd() does that to the descriptor it
// shares flags with — would otherwise block a thread the scheduler counts as running,
// and stop every garbage collection with it: outside round 46).

// raceBuild: the calls go through package syscall (sys_race.go).
const raceBuild = false

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(ptr(p)), uintptr(len(p)), syscall.MSG_DONTWAIT, 0, 0)
	return int(n), e
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(ptr(p)), uintptr(len(p)), syscall.MSG_DONTWAIT, 0, 0)
	return int(n), e
}

func sysPeek(fd uintptr) syscall.Errno {
	var b [1]byte
	_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return e
}

func ptr(p []byte) unsafe.Pointer {
	if len(p) == 0 {
		return nil
	}
	return unsafe.Pointer(&p[0])
}
