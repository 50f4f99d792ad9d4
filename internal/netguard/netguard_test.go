package netguard

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/rawsock"
	"golang.org/x/sys/unix"
)

func serve(t *testing.T, lim Limits, h http.Handler) (*Guard, string) {
	t.Helper()
	g, err := New(lim, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := g.Server(h, nil)
	go srv.Serve(g.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	return g, ln.Addr().String()
}

// closedByServer waits (up to a generous bound) for the server to close c.
func closedByServer(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

func TestConnectionCaps(t *testing.T) {
	g, addr := serve(t, Limits{MaxConns: 3, MaxConnsPerIP: 2}, http.NotFoundHandler())
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	dialOK := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		// A request answered proves the connection was admitted.
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("admitted connection not served: %v", err)
		}
		resp.Body.Close()
		return c
	}
	held = append(held, dialOK(), dialOK())
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if !closedByServer(t, c) {
		t.Fatal("third connection from one address was not closed")
	}
	if g.Rejected() != 1 {
		t.Fatalf("rejected = %d", g.Rejected())
	}
	// Closing one frees its place.
	held[0].Close()
	held = held[1:]
	for g.open.Load() > 1 { // the server notices the close
		time.Sleep(time.Millisecond)
	}
	held = append(held, dialOK())
}

func TestExemptProxyAndTotalCap(t *testing.T) {
	g, addr := serve(t, Limits{MaxConns: 2, MaxConnsPerIP: 1, Exempt: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, http.NotFoundHandler())
	a, _ := net.Dial("tcp", addr)
	b, _ := net.Dial("tcp", addr)
	defer a.Close()
	defer b.Close()
	for _, c := range []net.Conn{a, b} { // both admitted: loopback is an exempt proxy
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if _, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := net.Dial("tcp", addr)
	if !closedByServer(t, c) {
		t.Fatal("connection over the total cap was not closed")
	}
	if g.Rejected() != 1 {
		t.Fatalf("rejected = %d", g.Rejected())
	}
}

func TestTimeouts(t *testing.T) {
	stream := make(chan struct{})
	_, addr := serve(t, Limits{HeaderTimeout: 200 * time.Millisecond, BodyTimeout: 300 * time.Millisecond, IdleTimeout: 200 * time.Millisecond},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := io.ReadAll(r.Body); err != nil {
				http.Error(w, "slow body", http.StatusRequestTimeout)
				return
			}
			if r.URL.Path == "/stream" { // a long answer after the body: not cut by the body deadline
				w.WriteHeader(200)
				w.(http.Flusher).Flush()
				<-stream
				io.WriteString(w, "done")
				return
			}
			io.WriteString(w, "ok")
		}))
	t.Run("no headers", func(t *testing.T) {
		c, _ := net.Dial("tcp", addr)
		defer c.Close()
		if !closedByServer(t, c) {
			t.Fatal("silent connection not closed")
		}
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c, _ := net.Dial("tcp", addr)
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("idle connection: %v, want EOF", err)
		}
	})
	t.Run("slow body", func(t *testing.T) {
		c, _ := net.Dial("tcp", addr)
		defer c.Close()
		io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("slow body held the connection")
			}
			return // closed without an answer: also refused
		}
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("slow body: %d", resp.StatusCode)
		}
	})
	t.Run("long stream after the body", func(t *testing.T) {
		c, _ := net.Dial("tcp", addr)
		defer c.Close()
		io.WriteString(c, "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Past the body deadline, the stream must still be open.
		time.Sleep(600 * time.Millisecond)
		close(stream)
		b, err := io.ReadAll(resp.Body)
		if err != nil || !strings.Contains(string(b), "done") {
			t.Fatalf("stream cut: %q %v", b, err)
		}
	})
}

func TestDefaultMaxConnsFromRlimit(t *testing.T) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	// Go raises the soft limit to the hard one at start; the cap keeps a reserve under it.
	if rl.Cur != rl.Max {
		t.Fatalf("soft fd limit %d not raised to hard %d", rl.Cur, rl.Max)
	}
	if n := DefaultMaxConns(); 3*n+fdReserve > int(rl.Cur)+3*64 {
		t.Fatalf("default cap %d leaves no reserve under %d", n, rl.Cur)
	}
}

// peerListener is a loopback listener and its guarded form with peer timeout d; the
// listener closes when the test ends.
func peerListener(t *testing.T, d time.Duration) (ln, guarded net.Listener) {
	t.Helper()
	g, err := New(Limits{PeerTimeout: d}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, g.Listener(ln)
}

// TestPeerTimeout: accepted connections carry keepalive probes and TCP_USER_TIMEOUT, so a
// peer that vanishes without closing (a runtime host cut off mid-watch) is dropped.
func TestPeerTimeout(t *testing.T) {
	ln, gl := peerListener(t, 12*time.Second)
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	c, err := gl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*conn).Conn.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var userTimeout, keepalive int
	rc.Control(func(fd uintptr) {
		userTimeout, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		keepalive, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	})
	if userTimeout != 12000 || keepalive != 1 {
		t.Fatalf("TCP_USER_TIMEOUT %d ms, SO_KEEPALIVE %d", userTimeout, keepalive)
	}
}

// TestPeerTimeoutStalledReader: a client that stays connected but stops reading (its
// receive window shut, its kernel still answering the zero-window probes) is dropped
// within PeerTimeout too: the writer's write fails instead of blocking for good — a
// gateway stream to such a client would otherwise hold its engine's work open (outside
// round 34's question; h1 sets no write deadline of its own).
func TestPeerTimeoutStalledReader(t *testing.T) {
	ln, gl := peerListener(t, 2*time.Second)
	// A small receive buffer, set before connecting: the window shuts soon.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<10) })
	}}
	client, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close() // open, never read, until the test ends
	c, err := gl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	failed := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				failed <- err
				return
			}
		}
	}()
	select {
	case err := <-failed:
		t.Logf("the stalled reader's connection ended: %v", err)
	case <-time.After(2 * time.Minute): // a bound against hanging, far past the 2 s timeout
		t.Fatal("a write to a client that stopped reading was still blocked after 2 minutes")
	}
}

// admittedPair is a client connection and its server side as the guard admitted it.
func admittedPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	g, err := New(Limits{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gl := g.Listener(ln)
	t.Cleanup(func() { gl.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := gl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return c, s
}

// An admitted TCP connection reads and writes with raw system calls (package rawsock),
// under the guard's wrapper (which h1's client-gone watch unwraps to peek).
func TestAdmittedConnRaw(t *testing.T) {
	c, s := admittedPair(t)
	under := s.(interface{ NetConn() net.Conn }).NetConn()
	if _, ok := under.(*rawsock.Conn); !ok {
		t.Fatalf("admitted connection is %T under the guard, not raw", under)
	}
	io.WriteString(c, "ping")
	var p [4]byte
	if _, err := io.ReadFull(s, p[:]); err != nil || string(p[:]) != "ping" {
		t.Fatalf("read through the guard: %q %v", p, err)
	}
}

// An admitted connection half-closes: the client reads the end of the stream while it
// can still send (h1's gentle close after a body left unread).
func TestAdmittedConnCloseWrite(t *testing.T) {
	c, s := admittedPair(t)
	cw, ok := s.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("the guard's connection cannot half-close")
	}
	io.WriteString(s, "bye")
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second)) // a bound, not a timing
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye" {
		t.Fatalf("client read %q, %v (want the answer, then the end of the stream)", got, err)
	}
	io.WriteString(c, "still open")
	var p [10]byte
	if _, err := io.ReadFull(s, p[:]); err != nil || string(p[:]) != "still open" {
		t.Fatalf("server read after its half-close: %q, %v", p, err)
	}
}
