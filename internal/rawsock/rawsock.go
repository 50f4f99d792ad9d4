// Package rawsock reads and writes a TCP connection's socket without telling Go's
// scheduler that a system call is under way.
//
// Every system call made through package syscall (net.Conn's Read and Write among them)
// enters and leaves the scheduler's "in a system call" state, in case it blocks; on the
// way in it wakes the scheduler's monitor thread (sysmon) if that thread sleeps, and a
// woken sysmon polls every 20 µs until the process has been idle a while. A proxy at a
// moderate load goes idle and busy thousands of times a second, and each time its next
// read wakes sysmon again: on this project's 2-core benchmark that cost 12–14 % of the
// gateway's CPU (docs/PERFORMANCE.md, twenty-eighth session; golang/go#19563 and #18236
// describe the same cost). A read or write with MSG_DONTWAIT never blocks, so the
// scheduler need not know about it: Conn makes them with RawSyscall, inside the
// connection's own poller (syscall.RawConn), which keeps net.Conn's deadlines, its
// serialized reads and writes, and its closing rules.
//
// Under the race detector the same code makes the calls through package syscall, whose
// annotations tell the detector that a write to a socket happens before the read of it.
package rawsock

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// maxIO bounds one read or write call: a raw call holds its thread's P for as long as
// the kernel copies (~30 µs for 256 KiB), where the scheduler would have handed it on.
const maxIO = 256 << 10

// Conn is a TCP connection whose Read and Write are raw system calls (recvfrom and sendto
// with MSG_DONTWAIT). Every other method is the *net.TCPConn's.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu  sync.Mutex // Read's state below; concurrent Reads are serialized anyway
	rfn  func(fd uintptr) bool
	rb   []byte
	rn   int
	rerr error // io.EOF at the end of the stream

	wmu  sync.Mutex
	wfn  func(fd uintptr) bool
	wb   []byte
	wn   int
	werr error

	xfn func(fd uintptr) bool // Exchange's (rmu and wmu held)
	x   exchange
}

// exchange is Exchange's state.
type exchange struct {
	peek   bool // a peek must find the connection open and quiet first
	looked bool // the peek was made
	quiet  bool // and found it so
	sent   bool // all of wb is written: waiting for the socket to be readable
	onSent func()
}

// Wrap returns c as a *Conn when it is a *net.TCPConn, else c itself. The calls are made
// with MSG_DONTWAIT, so they never block even if the socket is put in blocking mode.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	x := &Conn{TCPConn: tc, rc: rc}
	x.rfn, x.wfn, x.xfn = x.read, x.write, x.exchange
	return x
}

// read is the poller's callback: true when done (bytes, end of stream or an error),
// false to wait until the socket is readable.
func (c *Conn) read(fd uintptr) bool {
	for {
		n, e := sysRead(fd, c.rb[:min(len(c.rb), maxIO)])
		switch e {
		case 0:
			if c.rn = n; n == 0 {
				c.rerr = io.EOF
			}
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.rerr = os.NewSyscallError("read", e)
			return true
		}
	}
}

// write is the poller's callback: true once all of wb is written (an empty wb: after
// one call, as net.Conn's Write makes one) or on an error, false to wait until the
// socket takes more.
func (c *Conn) write(fd uintptr) bool {
	for {
		n, e := sysWrite(fd, c.wb[c.wn:min(len(c.wb), c.wn+maxIO)])
		if e == syscall.EINTR {
			continue
		}
		if e == 0 {
			c.wn += n
		}
		switch {
		case e == 0 && c.wn == len(c.wb):
			return true
		case e == syscall.EAGAIN:
			return false
		case e != 0:
			c.werr = os.NewSyscallError("write", e)
			return true
		case n == 0:
			c.werr = io.ErrUnexpectedEOF // as net.Conn's: the kernel took nothing, said nothing
			return true
		}
	}
}

// Read is net.Conn's Read, with its errors: io.EOF at the end of the stream, a
// *net.OpError otherwise (net.ErrClosed, os.ErrDeadlineExceeded, an errno).
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		// net.Conn's answers at once, past a deadline too, unless the connection is closed.
		if err := c.rc.Control(noop); err != nil {
			if oe, ok := err.(*net.OpError); ok {
				return 0, c.opError("read", oe.Err) // Control's names no addresses
			}
			return 0, err
		}
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rb, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.rfn)
	c.rb = nil
	switch {
	case err != nil:
		return 0, renameOp(err, "read")
	case c.rerr == io.EOF:
		return 0, io.EOF
	case c.rerr != nil:
		return 0, c.opError("read", c.rerr)
	}
	return c.rn, nil
}

// Write is net.Conn's Write: all of p, or what was written and a *net.OpError.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wb, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.wfn)
	c.wb = nil
	switch {
	case err != nil:
		return c.wn, renameOp(err, "write")
	case c.werr != nil:
		return c.wn, c.opError("write", c.werr)
	}
	return c.wn, nil
}

// Exchange writes p and waits until the socket is readable — a request sent, its answer's
// first bytes (or the connection's end) come — in one pass through the connection's poller,
// without a read that finds nothing. Read must try a read before it waits (the poller's
// reset drops a readiness that came before it, so waiting first would miss an answer
// already in), and right after a request that try finds nothing: a system call, ~1 µs,
// every round trip (the thirty-ninth session). Here the poller's reset comes before the
// write, so the answer's readiness, which can only come after it, is kept.
//
// With peek, the connection (one taken again from a pool) must first peek open with
// nothing to read (PeekOpen), in the same pass; if not, nothing is written and open is
// false (open is true when no peek was made: the poller failed first, err says why). n < len(p) with a nil error: the socket took only n bytes without waiting — write
// the rest with Write. Either way the answer is then read with Read. err is the poller's
// (the connection closed, a deadline) or the write's.
//
// sent, if not nil, is called once all of p is written, before the wait (in the poller's
// pass: it must not block).
func (c *Conn) Exchange(p []byte, peek bool, sent func()) (n int, open bool, err error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wb, c.wn, c.werr = p, 0, nil
	c.x = exchange{peek: peek, onSent: sent}
	err = c.rc.Read(c.xfn)
	n, open = c.wn, !c.x.looked || c.x.quiet
	c.wb = nil
	switch {
	case err != nil && c.x.sent:
		return n, open, renameOp(err, "read") // the wait for the answer failed (closed, its deadline)
	case err != nil:
		return n, open, renameOp(err, "write")
	case c.werr != nil:
		return n, open, c.opError("write", c.werr)
	}
	return n, open, nil
}

// exchange is Exchange's callback in the poller: true once done (not open, an error, or
// the socket took part of wb and would block: Write does the rest), false to wait for the
// socket to be readable — after all of wb is written — and true when it is.
func (c *Conn) exchange(fd uintptr) bool {
	if c.x.sent {
		return true
	}
	if c.x.peek && !c.x.looked {
		c.x.looked = true
		if c.x.quiet = PeekOpen(fd); !c.x.quiet {
			return true
		}
	}
	if !c.write(fd) || c.werr != nil {
		return true // the socket would block (Write does the rest), or the write failed
	}
	c.x.sent = true
	if c.x.onSent != nil {
		c.x.onSent()
	}
	return false
}

func noop(uintptr) {}

// renameOp names the raw connection's error (an *net.OpError "raw-read" or "raw-write":
// closed, a deadline) as net.Conn's own Read or Write would.
func renameOp(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
	}
	return err
}

// opError is err (an errno's, or io.ErrUnexpectedEOF) as net.Conn's Read or Write wraps it.
func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// PeekOpen reports whether the socket fd is open with nothing to read (a peek that
// would block); call it inside the connection's RawConn.Read.
func PeekOpen(fd uintptr) bool {
	for {
		e := sysPeek(fd)
		if e != syscall.EINTR {
			return e == syscall.EAGAIN
		}
	}
}
