package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// TestExchange: the request goes out whole, Exchange returns once the answer is readable,
// and Read has it; with a peek, a connection the peer closed or sent unasked bytes on
// takes nothing (open false), and one quiet and open takes the request.
func TestExchange(t *testing.T) {
	a, b := pair(t, true)
	c := a.(*Conn)
	go func() {
		req := make([]byte, 5)
		if _, err := io.ReadFull(b, req); err != nil {
			return
		}
		b.Write(append([]byte("answer to "), req...))
	}()
	n, open, err := c.Exchange([]byte("hello"), true, nil)
	if n != 5 || !open || err != nil {
		t.Fatalf("Exchange: %d %v %v", n, open, err)
	}
	got := make([]byte, 64)
	m, err := c.Read(got)
	if err != nil || !bytes.HasPrefix([]byte("answer to hello"), got[:m]) || m == 0 {
		t.Fatalf("the answer read after Exchange: %q %v", got[:m], err)
	}

	// Bytes nobody asked for: not open, nothing written.
	a2, b2 := pair(t, true)
	b2.Write([]byte("stale"))
	waitReadable(t, a2.(*Conn))
	if n, open, err := a2.(*Conn).Exchange([]byte("secret request"), true, nil); open || n != 0 || err != nil {
		t.Fatalf("Exchange on a connection with unasked bytes: %d %v %v", n, open, err)
	}
	b2.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if k, _ := b2.Read(make([]byte, 64)); k != 0 {
		t.Fatalf("the peer read %d bytes of a request on a connection that was not quiet", k)
	}

	// The peer closed: not open.
	a3, b3 := pair(t, true)
	b3.Close()
	waitReadable(t, a3.(*Conn))
	if n, open, _ := a3.(*Conn).Exchange([]byte("x"), true, nil); open || n != 0 {
		t.Fatalf("Exchange on a connection its peer closed: %d %v", n, open)
	}

	// Closed here first: the poller's error, open (no peek was made).
	a4, _ := pair(t, true)
	a4.Close()
	if _, open, err := a4.(*Conn).Exchange([]byte("x"), true, nil); !open || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Exchange on a closed connection: open %v, %v", open, err)
	}

	// A deadline that passes while waiting for the answer.
	a5, b5 := pair(t, true)
	a5.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	n, _, err = a5.(*Conn).Exchange([]byte("x"), false, nil)
	var oe *net.OpError
	if n != 1 || !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("Exchange past its deadline: %d %v (the wait for the answer, a read, failed)", n, err)
	}
	if k, _ := b5.Read(make([]byte, 1)); k != 1 {
		t.Fatal("the request was not sent before the deadline passed")
	}
}

// TestExchangePartial: a request larger than the socket takes returns what was written
// without waiting; Write sends the rest and the peer gets the whole, in order.
func TestExchangePartial(t *testing.T) {
	a, b := pair(t, true)
	c := a.(*Conn)
	big := make([]byte, 32<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	a.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound, should it all be taken and wait
	got, start := make(chan []byte, 1), make(chan struct{})
	go func() {
		<-start // the peer reads nothing until Exchange returned: the socket's buffers fill
		all, _ := io.ReadAll(io.LimitReader(b, int64(len(big))))
		got <- all
	}()
	n, open, err := c.Exchange(big, true, nil)
	close(start)
	if !open || err != nil || n == 0 || n >= len(big) {
		t.Fatalf("Exchange of 32 MiB: %d %v %v (want a part written)", n, open, err)
	}
	if _, err := c.Write(big[n:]); err != nil {
		t.Fatal(err)
	}
	if all := <-got; !bytes.Equal(all, big) {
		t.Fatalf("the peer got %d bytes, not the request", len(all))
	}
}

// waitReadable waits until c's peek finds something (bytes or the end).
func waitReadable(t *testing.T, c *Conn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for {
		var open bool
		if err := rc.Read(func(fd uintptr) bool { open = PeekOpen(fd); return true }); err != nil {
			t.Fatal(err)
		}
		if !open {
			return
		}
		runtime.Gosched()
	}
}
