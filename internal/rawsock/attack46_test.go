package rawsock

// Outside attack tests, round 46: a rawsock.Conn must be indistinguishable from the
// *net.TCPConn it wraps as a net.Conn. Every comparison test runs the same steps on a
// std connection and a raw one and asserts the observable results (n, error identity,
// Timeout) are the same. The raw form only runs in non-race builds (sys.go): run these
// with and without -race.

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// a46Describe is everything a caller can observe of one Read or Write result.
func a46Describe(n int, err error) string {
	if err == nil {
		return fmt.Sprintf("n=%d err=nil", n)
	}
	var oe *net.OpError
	op, inner := "-", "-"
	if errors.As(err, &oe) {
		op = oe.Op
		inner = fmt.Sprintf("%T", oe.Err)
		if oe.Source == nil || oe.Addr == nil {
			op += "(no addrs)"
		}
	}
	var ne net.Error
	timeout := errors.As(err, &ne) && ne.Timeout()
	return fmt.Sprintf("n=%d eof=%v closed=%v deadline=%v reset=%v pipe=%v timeout=%v op=%s inner=%s",
		n, err == io.EOF, errors.Is(err, net.ErrClosed), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), timeout, op, inner)
}

// a46Same runs steps on a std connection and on a raw one and fails if any step's
// description differs.
func a46Same(t *testing.T, steps func(t *testing.T, a net.Conn, b *net.TCPConn) []string) {
	t.Helper()
	var got [2][]string
	for i, raw := range []bool{false, true} {
		a, b := pair(t, raw)
		got[i] = steps(t, a, b)
	}
	if len(got[0]) != len(got[1]) {
		t.Fatalf("std gave %d results, raw %d", len(got[0]), len(got[1]))
	}
	for i := range got[0] {
		if got[0][i] != got[1][i] {
			t.Errorf("step %d differs:\n std: %s\n raw: %s", i, got[0][i], got[1][i])
		}
	}
}

// a46WaitErr waits (bounded) until the kernel has an error or hang-up queued on c's socket
// (a peer's reset has arrived), without reading it.
func a46WaitErr(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ev int16
		rc.Control(func(fd uintptr) {
			p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(p, 100); err == nil && n > 0 {
				ev = p[0].Revents
			}
		})
		if ev&(unix.POLLERR|unix.POLLHUP) != 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the peer's reset never arrived")
		}
	}
}

// A zero-length Read whose deadline has passed: net.Conn's returns (0, nil) without
// looking at the deadline (internal/poll: "a zero byte read returns immediately").
func TestAttack46ZeroReadPastDeadline(t *testing.T) {
	a46Same(t, func(t *testing.T, a net.Conn, b *net.TCPConn) []string {
		a.SetReadDeadline(time.Now().Add(-time.Second))
		var out []string
		n, err := a.Read(nil)
		out = append(out, a46Describe(n, err))
		var p [1]byte
		n, err = a.Read(p[:0])
		out = append(out, a46Describe(n, err))
		return out
	})
}

// A zero-length Write on a connection whose write side is shut (its own CloseWrite): the
// std Write still makes the write(2), which reports EPIPE.
func TestAttack46ZeroWriteAfterCloseWrite(t *testing.T) {
	a46Same(t, func(t *testing.T, a net.Conn, b *net.TCPConn) []string {
		a.(interface{ CloseWrite() error }).CloseWrite()
		var out []string
		n, err := a.Write(nil)
		out = append(out, a46Describe(n, err))
		n, err = a.Write([]byte("x"))
		out = append(out, a46Describe(n, err))
		return out
	})
}

// A zero-length Write after the peer's reset arrived, then a Read: the std Write's
// write(2) reports (and so consumes) the socket's pending ECONNRESET, and the Read that
// follows sees the end of the stream. The sequence of results must be the same raw.
func TestAttack46ZeroWriteAfterReset(t *testing.T) {
	a46Same(t, func(t *testing.T, a net.Conn, b *net.TCPConn) []string {
		b.SetLinger(0)
		b.Close()
		a46WaitErr(t, a)
		var out []string
		n, err := a.Write(nil)
		out = append(out, a46Describe(n, err))
		var p [4]byte
		n, err = a.Read(p[:])
		out = append(out, a46Describe(n, err))
		return out
	})
}

// Half-closes, both ways, and the results of reads and writes after each, and after Close.
func TestAttack46HalfCloseAndClosedResults(t *testing.T) {
	a46Same(t, func(t *testing.T, a net.Conn, b *net.TCPConn) []string {
		var out []string
		var p [16]byte
		tc := a.(interface {
			CloseRead() error
			CloseWrite() error
		})
		b.Write([]byte("hi"))
		b.CloseWrite()
		n, err := io.ReadFull(a, p[:2])
		out = append(out, a46Describe(n, err))
		n, err = a.Read(p[:]) // the peer's FIN
		out = append(out, a46Describe(n, err))
		n, err = a.Read(p[:])
		out = append(out, a46Describe(n, err))
		n, err = a.Write([]byte("still")) // a's write side is open
		out = append(out, a46Describe(n, err))
		tc.CloseRead()
		n, err = a.Read(p[:])
		out = append(out, a46Describe(n, err))
		tc.CloseWrite()
		n, err = a.Write([]byte("no"))
		out = append(out, a46Describe(n, err))
		a.Close()
		n, err = a.Read(p[:])
		out = append(out, a46Describe(n, err))
		n, err = a.Read(nil)
		out = append(out, a46Describe(n, err))
		n, err = a.Write([]byte("x"))
		out = append(out, a46Describe(n, err))
		n, err = a.Write(nil)
		out = append(out, a46Describe(n, err))
		out = append(out, fmt.Sprint(a.Close() != nil))
		var got bytes.Buffer
		b.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(&got, b)
		out = append(out, got.String())
		return out
	})
}

// A peer that resets with unread data on its side, and one that resets while a's Read
// waits: the waiting Read gets the reset, and later writes fail.
func TestAttack46ResetWhileReadBlocked(t *testing.T) {
	a46Same(t, func(t *testing.T, a net.Conn, b *net.TCPConn) []string {
		var out []string
		a.Write([]byte("unread by b"))
		done := make(chan string, 1)
		go func() {
			var p [8]byte
			n, err := a.Read(p[:])
			done <- a46Describe(n, err)
		}()
		b.SetLinger(0)
		b.Close()
		select {
		case s := <-done:
			out = append(out, s)
		case <-time.After(10 * time.Second):
			t.Fatal("a Read blocked when the peer reset never returned")
		}
		var werr error
		for i := 0; i < 100 && werr == nil; i++ {
			_, werr = a.Write(make([]byte, 1024))
		}
		out = append(out, fmt.Sprint(werr != nil))
		return out
	})
}

// A deadline moved later while a Read waits holds the Read past the first deadline; one
// moved into the past ends it at once; clearing it while one waits keeps it waiting.
func TestAttack46DeadlineMovedWhileBlocked(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		var p [8]byte
		// Later.
		first := time.Now().Add(150 * time.Millisecond)
		a.SetReadDeadline(first)
		type res struct {
			n   int
			err error
			at  time.Time
		}
		done := make(chan res, 1)
		go func() {
			n, err := a.Read(p[:])
			done <- res{n, err, time.Now()}
		}()
		a.SetReadDeadline(time.Now().Add(time.Minute))
		select {
		case r := <-done:
			t.Fatalf("read ended before data came, past a deadline moved later: %d, %v", r.n, r.err)
		case <-time.After(time.Until(first) + 300*time.Millisecond):
		}
		b.Write([]byte("late"))
		r := <-done
		if r.n != 4 || r.err != nil {
			t.Fatalf("read after the deadline was moved later: %d, %v", r.n, r.err)
		}
		// Into the past while it waits.
		a.SetReadDeadline(time.Time{})
		go func() {
			n, err := a.Read(p[:])
			done <- res{n, err, time.Now()}
		}()
		a.SetReadDeadline(time.Now().Add(-time.Second))
		select {
		case r := <-done:
			checkDeadline(t, r.err, "read")
		case <-time.After(10 * time.Second):
			t.Fatal("a deadline moved into the past did not end a waiting read")
		}
		// Writes: a write held by a peer that does not read, then the deadline is moved.
		a.SetReadDeadline(time.Time{})
		wdone := make(chan res, 1)
		big := make([]byte, 64<<20)
		go func() {
			n, err := a.Write(big)
			wdone <- res{n, err, time.Now()}
		}()
		a.SetWriteDeadline(time.Now().Add(-time.Second))
		select {
		case r := <-wdone:
			checkDeadline(t, r.err, "write")
			if r.n >= len(big) {
				t.Fatalf("a cut write reported %d", r.n)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a write deadline moved into the past did not end a waiting write")
		}
	})
}

// Close while a Write waits on a peer that does not read: the Write returns what it wrote
// (less than asked) and net.ErrClosed; the bytes b then reads are a prefix of what was
// written, and exactly n of them (nothing reported as written was lost, nothing extra).
func TestAttack46CloseRacesBlockedWrite(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		big := make([]byte, raceSmaller(64<<20))
		for i := range big {
			big[i] = byte(i * 131 >> 3)
		}
		type res struct {
			n   int
			err error
		}
		done := make(chan res, 1)
		go func() {
			n, err := a.Write(big)
			done <- res{n, err}
		}()
		// Wait until the write has filled the socket buffers (b has bytes pending, a's send
		// queue is non-empty), then close a from here.
		rc, _ := b.SyscallConn()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var pending int
			rc.Control(func(fd uintptr) { pending, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
			if pending > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("nothing reached the peer")
			}
			runtime.Gosched()
		}
		a.Close()
		var r res
		select {
		case r = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not end a waiting Write")
		}
		if !errors.Is(r.err, net.ErrClosed) || r.n <= 0 || r.n >= len(big) {
			t.Fatalf("write cut by close: %s", a46Describe(r.n, r.err))
		}
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(b)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer read: %v", err)
		}
		if !errors.Is(err, syscall.ECONNRESET) && len(got) != r.n {
			t.Fatalf("write reported %d bytes, peer got %d", r.n, len(got))
		}
		if !bytes.Equal(got, big[:len(got)]) {
			t.Fatal("the peer got bytes that were not a prefix of the write")
		}
	})
}

// Concurrent Reads of one stream: every byte read once, none lost or duplicated.
func TestAttack46ConcurrentReads(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		const total = 16 << 20
		src := make([]byte, total)
		for i := range src {
			src[i] = byte(i*2654435761>>13) | 1 // never 0: a duplicated zero would not show
		}
		var sum, count atomic.Uint64
		var wg sync.WaitGroup
		for r := range 4 {
			wg.Go(func() {
				buf := make([]byte, 1+r*7919)
				for {
					n, err := a.Read(buf)
					var s uint64
					for _, c := range buf[:n] {
						s += uint64(c)
					}
					sum.Add(s)
					count.Add(uint64(n))
					if err != nil {
						if err != io.EOF {
							t.Errorf("reader %d: %v", r, err)
						}
						return
					}
				}
			})
		}
		go func() {
			b.Write(src)
			b.CloseWrite()
		}()
		wg.Wait()
		var want uint64
		for _, c := range src {
			want += uint64(c)
		}
		if count.Load() != total || sum.Load() != want {
			t.Fatalf("read %d bytes (sum %d) of %d (sum %d)", count.Load(), sum.Load(), total, want)
		}
	})
}

// One very large Write (192 MiB, so hundreds of maxIO chunks and many waits for room)
// arrives whole and in order.
func TestAttack46HugeWrite(t *testing.T) {
	a, b := pair(t, true)
	size := raceSmaller(192 << 20)
	big := make([]byte, size)
	for i := 0; i < size; i += 4 {
		big[i], big[i+1], big[i+2], big[i+3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
	}
	want := crc32.ChecksumIEEE(big)
	done := make(chan error, 1)
	var n int
	go func() {
		var err error
		n, err = a.Write(big)
		a.(*Conn).CloseWrite()
		done <- err
	}()
	h := crc32.NewIEEE()
	got, err := io.CopyBuffer(h, b, make([]byte, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	if werr := <-done; werr != nil || n != size {
		t.Fatalf("write: %d, %v", n, werr)
	}
	if got != int64(size) || h.Sum32() != want {
		t.Fatalf("peer got %d bytes of %d, checksum equal %v", got, size, h.Sum32() == want)
	}
}

// Many wrapped connections at once, each echoing its own bytes: no connection sees
// another's.
func TestAttack46ManyConns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				w := Wrap(c)
				io.Copy(w, w)
			}()
		}
	}()
	const conns, each = 200, 64 << 10
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			w := Wrap(c)
			msg := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0xA5}, each/3)
			go func() {
				w.Write(msg)
				w.(*Conn).CloseWrite()
			}()
			w.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(w)
			if err != nil || !bytes.Equal(got, msg) {
				t.Errorf("conn %d: %d bytes back of %d, %v", i, len(got), len(msg), err)
			}
		})
	}
	wg.Wait()
}

// A descriptor number freed by Close is soon reused by a new connection; a goroutine still
// writing on the closed connection must never put its bytes on the new one.
func TestAttack46NoWriteOnReusedFD(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c.(*net.TCPConn)
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return Wrap(c)
	}
	poison := bytes.Repeat([]byte("POISON"), 1000)
	for round := range 20 {
		old := dial()
		oldPeer := <-accepted
		stopped := make(chan struct{})
		go func() { // keeps writing until the close makes it fail
			defer close(stopped)
			for {
				if _, err := old.Write(poison); err != nil {
					return
				}
			}
		}()
		go io.Copy(io.Discard, oldPeer) // the old peer reads, so the writes keep going
		old.Close()
		fresh := make([]net.Conn, 4)
		for i := range fresh {
			fresh[i] = dial()
		}
		<-stopped
		for i, c := range fresh {
			peer := <-accepted
			c.Write([]byte("hello"))
			c.(*Conn).CloseWrite()
			peer.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(peer)
			if err != nil || string(got) != "hello" {
				t.Fatalf("round %d conn %d: the peer read %q (%d bytes), %v", round, i, got[:min(len(got), 32)], len(got), err)
			}
			c.Close()
			peer.Close()
		}
		oldPeer.Close()
	}
}

// Signals delivered all through a transfer (each may interrupt a system call) lose and
// duplicate nothing.
func TestAttack46SignalsDuringTransfer(t *testing.T) {
	a, b := pair(t, true)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	defer signal.Stop(sig)
	go func() {
		for range sig {
		}
	}()
	stop := make(chan struct{})
	var kills atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			syscall.Kill(syscall.Getpid(), syscall.SIGUSR1)
			kills.Add(1)
			runtime.Gosched()
		}
	}()
	defer close(stop)
	const size = 32 << 20
	src := make([]byte, size)
	for i := range src {
		src[i] = byte(i ^ i>>11)
	}
	want := crc32.ChecksumIEEE(src)
	go func() {
		for off := 0; off < size; off += 100003 {
			if _, err := a.Write(src[off:min(size, off+100003)]); err != nil {
				t.Error(err)
				return
			}
		}
		a.(*Conn).CloseWrite()
	}()
	h := crc32.NewIEEE()
	buf := make([]byte, 70001)
	var got int
	for {
		n, err := b.Read(buf)
		h.Write(buf[:n])
		got += n
		if err != nil {
			break
		}
	}
	// And the other way: a raw reader under signals.
	go func() {
		b.Write(src)
		b.CloseWrite()
	}()
	h2 := crc32.NewIEEE()
	var got2 int
	for {
		n, err := a.Read(buf)
		h2.Write(buf[:n])
		got2 += n
		if err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
	}
	if got != size || h.Sum32() != want || got2 != size || h2.Sum32() != want {
		t.Fatalf("under %d signals: raw writer's %d bytes (ok %v), raw reader's %d (ok %v)", kills.Load(), got, h.Sum32() == want, got2, h2.Sum32() == want)
	}
}

// The pool's peek on a connection whose read deadline has passed fails (the connection is
// then not reused: fail closed), and on one with a reset pending says not open.
func TestAttack46PeekFailsClosed(t *testing.T) {
	a, b := pair(t, true)
	rc, err := a.(*Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	peek := func() (bool, error) {
		open := false
		err := rc.Read(func(fd uintptr) bool { open = PeekOpen(fd); return true })
		return open, err
	}
	a.SetReadDeadline(time.Now().Add(-time.Second))
	if open, err := peek(); err == nil {
		t.Fatalf("a peek past the read deadline ran (open %v)", open)
	}
	a.SetReadDeadline(time.Time{})
	if open, err := peek(); !open || err != nil {
		t.Fatalf("idle open connection: %v, %v", open, err)
	}
	b.SetLinger(0)
	b.Close()
	a46WaitErr(t, a)
	if open, err := peek(); open || err != nil {
		t.Fatalf("after a reset: open %v, %v", open, err)
	}
	a.Close()
	if open, err := peek(); open || err == nil {
		t.Fatalf("after close: open %v, %v", open, err)
	}
}

// Outside round 46 found: Wrap checked once that the descriptor was non-blocking, and a
// socket put in blocking mode later (TCPConn.File().Fd() clears O_NONBLOCK on the open
// file description it shares) made a raw read block in the kernel while its goroutine
// counted as running — a stop-the-world (runtime.GC) never completed, and the whole process
// stopped until bytes arrived. The calls now carry MSG_DONTWAIT: on such a socket a raw
// Read still waits in the poller, returns at its deadline, and a GC meanwhile completes.
// The raw case runs in a child process that the parent kills if it freezes (60 s).
func TestAttack46BlockingAfterWrap(t *testing.T) {
	if raceBuild {
		t.Skip("under -race the calls are package syscall's, which block as net.Conn's do; scripts/test runs this package without -race too")
	}
	if os.Getenv("ATTACK46_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAttack46BlockingAfterWrap$", "-test.count=1")
		cmd.Env = append(os.Environ(), "ATTACK46_CHILD=raw")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil || !bytes.Contains(out.Bytes(), []byte("PASS")) {
				t.Fatalf("child: %v\n%s", err, out.String())
			}
		case <-time.After(60 * time.Second): // a bound against a frozen child, not a timing
			cmd.Process.Kill()
			<-done
			t.Fatalf("the process froze (a GC could not stop a read on a socket made blocking after Wrap)\n%s", out.String())
		}
		return
	}
	a, b := pair(t, true)
	f, err := a.(*Conn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Fd() // the descriptor (shared flags) is now blocking
	a.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	readDone := make(chan error, 1)
	go func() {
		var p [1]byte
		_, err := a.Read(p[:])
		readDone <- err
	}()
	runtime.GC() // completes: no thread is blocked in a raw call
	checkDeadline(t, <-readDone, "read")
	a.SetReadDeadline(time.Time{})
	b.Write([]byte("x"))
	var p [1]byte
	if n, err := a.Read(p[:]); n != 1 || err != nil {
		t.Fatalf("read on the blocking socket: %d, %v", n, err)
	}
	// And a write the peer does not take waits in the poller too, and ends at its deadline.
	big := make([]byte, 64<<20)
	a.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	go runtime.GC()
	if _, err := a.Write(big); err == nil {
		t.Fatal("a 64 MiB write nobody reads completed")
	} else {
		checkDeadline(t, err, "write")
	}
}
