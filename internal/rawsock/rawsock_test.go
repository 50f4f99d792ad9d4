package rawsock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pair is a connected TCP pair on loopback: a (wrapped when raw) and its std peer b.
func pair(t testing.TB, raw bool) (a net.Conn, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	a = c
	if raw {
		a = Wrap(c)
		if _, ok := a.(*Conn); !ok {
			t.Fatalf("Wrap of a dialed TCP connection gave %T", a)
		}
	}
	return a, s.(*net.TCPConn)
}

// both runs f on a std connection and on a wrapped one.
func both(t *testing.T, f func(t *testing.T, a net.Conn, b *net.TCPConn)) {
	for _, raw := range []bool{false, true} {
		name := "std"
		if raw {
			name = "raw"
		}
		t.Run(name, func(t *testing.T) {
			a, b := pair(t, raw)
			f(t, a, b)
		})
	}
}

func TestWrapOnlyTCP(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if Wrap(p1) != p1 {
		t.Fatal("a pipe was wrapped")
	}
}

// Bytes cross whole and in order, in writes and reads of every size, past the socket's
// buffers (writes wait for room, reads for data).
func TestStreamIntact(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		rng := rand.New(rand.NewPCG(1, 2))
		want := make([]byte, raceSmaller(24<<20))
		for i := range want {
			want[i] = byte(rng.Uint32())
		}
		got := make(chan []byte, 1)
		go func() { // b echoes what it reads back to a
			io.Copy(b, b)
			b.CloseWrite()
		}()
		go func() {
			var out bytes.Buffer
			buf := make([]byte, 1<<20)
			for {
				n, err := a.Read(buf[:1+rng.IntN(len(buf))])
				out.Write(buf[:n])
				if n == 0 && err == nil {
					t.Error("read 0 bytes and no error") // never, from a stream
					break
				}
				if err != nil {
					if err != io.EOF {
						t.Errorf("read: %v", err)
					}
					break
				}
			}
			got <- out.Bytes()
		}()
		wr := rand.New(rand.NewPCG(3, 4))
		for off := 0; off < len(want); {
			n := min(len(want)-off, 1+wr.IntN(3<<20))
			m, err := a.Write(want[off : off+n])
			if err != nil || m != n {
				t.Fatalf("write %d: %d, %v", n, m, err)
			}
			off += n
		}
		a.(interface{ CloseWrite() error }).CloseWrite()
		if g := <-got; !bytes.Equal(g, want) {
			t.Fatalf("echo: %d bytes back of %d, equal %v", len(g), len(want), bytes.Equal(g, want))
		}
	})
}

// The end of the stream is io.EOF itself, as net.Conn's.
func TestEOF(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		b.Write([]byte("last"))
		b.CloseWrite()
		var got []byte
		var p [8]byte
		for i := 0; ; i++ { // bounded: a reader that never sees the end fails, not hangs
			n, err := a.Read(p[:])
			got = append(got, p[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil || i == 100 {
				t.Fatalf("read %d: %q so far, %d, %v", i, got, n, err)
			}
		}
		if string(got) != "last" {
			t.Fatalf("read %q", got)
		}
		if n, err := a.Read(p[:]); n != 0 || err != io.EOF {
			t.Fatalf("read after end: %d, %v (want 0, io.EOF)", n, err)
		}
	})
}

// A reset is a *net.OpError on "read" carrying ECONNRESET; a write after it fails.
func TestReset(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		b.SetLinger(0)
		b.Close()
		var p [8]byte
		_, err := a.Read(p[:])
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read after reset: %#v", err)
		}
		var werr error
		for i := 0; i < 100 && werr == nil; i++ {
			_, werr = a.Write(make([]byte, 64<<10))
		}
		if !errors.As(werr, &oe) || oe.Op != "write" || !(errors.Is(werr, syscall.EPIPE) || errors.Is(werr, syscall.ECONNRESET)) {
			t.Fatalf("write after reset: %#v", werr)
		}
	})
}

func checkDeadline(t *testing.T, err error, op string) {
	t.Helper()
	var oe *net.OpError
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &oe) || oe.Op != op || !oe.Timeout() {
		t.Fatalf("%s past its deadline: %#v", op, err)
	}
}

// Deadlines hold for reads and writes, and a write cut by one reports what it wrote.
func TestDeadlines(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		a.SetReadDeadline(time.Now().Add(-time.Second))
		var p [8]byte
		_, err := a.Read(p[:])
		checkDeadline(t, err, "read")
		a.SetReadDeadline(time.Now().Add(20 * time.Millisecond)) // nothing is ever sent
		_, err = a.Read(p[:])
		checkDeadline(t, err, "read")
		a.SetReadDeadline(time.Time{})
		b.Write([]byte("x"))
		if n, err := a.Read(p[:]); n != 1 || err != nil {
			t.Fatalf("read after the deadline was lifted: %d, %v", n, err)
		}
		// b never reads: 256 MiB cannot fit the sockets' buffers. (n may be 0 on a machine
		// slow enough to pass the deadline before the write begins.)
		big := make([]byte, 256<<20)
		a.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := a.Write(big)
		checkDeadline(t, err, "write")
		if n < 0 || n >= len(big) {
			t.Fatalf("a write cut by its deadline reported %d bytes", n)
		}
	})
}

// A close — before, or while a read waits — gives net.ErrClosed; a zero-length read is
// (0, nil) while open, the close's error after, as net.Conn's.
func TestClosed(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		var p [8]byte
		if n, err := a.Read(p[:0]); n != 0 || err != nil {
			t.Fatalf("empty read: %d, %v", n, err)
		}
		if n, err := a.Write(nil); n != 0 || err != nil {
			t.Fatalf("empty write: %d, %v", n, err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := a.Read(p[:])
			done <- err
		}()
		a.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed connection: %#v", err)
		}
		if _, err := a.Read(p[:0]); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("empty read after close: %#v", err)
		}
		if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write after close: %#v", err)
		}
	})
}

// Writes from many goroutines never interleave (each is whole, as net.Conn's are), while
// a reader runs at the same time.
func TestConcurrentWritesWhole(t *testing.T) {
	both(t, func(t *testing.T, a net.Conn, b *net.TCPConn) {
		const writers, each, size = 4, 8, 1 << 20
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				msg := make([]byte, size)
				for i := range each {
					binary.BigEndian.PutUint64(msg, uint64(w<<8|i))
					for j := 8; j < size; j++ {
						msg[j] = byte(w*31 + i)
					}
					if n, err := a.Write(msg); n != size || err != nil {
						t.Errorf("write: %d, %v", n, err)
					}
				}
			})
		}
		go func() { // and a read on a at the same time: b sends a little
			b.Write([]byte("duplex"))
		}()
		var p [6]byte
		if _, err := io.ReadFull(a, p[:]); err != nil || string(p[:]) != "duplex" {
			t.Errorf("read beside the writes: %q, %v", p, err)
		}
		seen := map[uint64]bool{}
		msg := make([]byte, size)
		for range writers * each {
			if _, err := io.ReadFull(b, msg); err != nil {
				t.Fatal(err)
			}
			id := binary.BigEndian.Uint64(msg)
			w, i := int(id>>8), int(id&0xff)
			if w >= writers || i >= each || seen[id] {
				t.Fatalf("message id %x", id)
			}
			seen[id] = true
			for j := 8; j < size; j++ {
				if msg[j] != byte(w*31+i) {
					t.Fatalf("message %d/%d interleaved at byte %d", w, i, j)
				}
			}
		}
		wg.Wait()
	})
}

func TestPeekOpen(t *testing.T) {
	a, b := pair(t, true)
	peek := func() bool {
		var open bool
		rc, err := a.(*Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Read(func(fd uintptr) bool { open = PeekOpen(fd); return true }); err != nil {
			t.Fatal(err)
		}
		return open
	}
	if !peek() {
		t.Fatal("an idle open connection peeked as not open")
	}
	b.Write([]byte("x"))
	for peek() { // the byte is on its way over loopback
		runtime.Gosched()
	}
	var p [1]byte
	a.Read(p[:])
	if !peek() {
		t.Fatal("open again once the byte was read")
	}
	b.Close()
	for peek() {
		runtime.Gosched()
	}
}

// FuzzChunks: any sizes of writes and reads carry the bytes whole.
func FuzzChunks(f *testing.F) {
	f.Add([]byte{1, 2, 3, 255, 0, 7}, []byte{9, 1, 200})
	f.Add([]byte{0}, []byte{0})
	f.Fuzz(func(t *testing.T, ws, rs []byte) {
		if len(ws) == 0 || len(rs) == 0 || len(ws) > 64 {
			return
		}
		a, b := pair(t, true)
		var want []byte
		for i, w := range ws {
			want = append(want, bytes.Repeat([]byte{byte(i)}, int(w)*97)...)
		}
		go func() {
			off := 0
			for _, w := range ws {
				n := int(w) * 97
				if _, err := b.Write(want[off : off+n]); err != nil {
					return
				}
				off += n
			}
			b.CloseWrite()
		}()
		var got []byte
		for i := 0; ; i++ {
			buf := make([]byte, 1+int(rs[i%len(rs)])*13)
			n, err := a.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil || n == 0 {
				t.Fatal(n, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("got %d bytes, want %d", len(got), len(want))
		}
	})
}

// raceSmaller is n, or an eighth of it under the race detector: a large transfer there goes
// through package syscall (sys_race.go), not the raw calls it is meant to test, at a
// tenth of the speed; scripts/test runs this package without -race as well, full size.
func raceSmaller(n int) int {
	if raceBuild {
		return n / 8
	}
	return n
}
