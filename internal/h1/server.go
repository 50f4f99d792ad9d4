// Package h1 is the gateway's HTTP/1.1 server: an http.Handler served over keep-alive
// connections with less work per request than net/http's server (one buffer for the
// answer and its framing, headers interned, no read in the background while the handler
// runs unless it runs long). It serves HTTP/1.1 and 1.0 only — a TLS listener offers no
// h2 — and is stricter than net/http about what it reads: a request net/http would read
// differently, or that a proxy in front might, is refused with 400 and the connection
// closed (see parse.go).
//
// What a handler sees is net/http's: *http.Request with the same URL, Header, Host,
// ContentLength, Body, TLS and RemoteAddr; a ResponseWriter that is an http.Flusher and
// takes http.ResponseController's Flush, SetReadDeadline and SetWriteDeadline; the
// request's context ends when the handler returns, when the server closes, and when the
// client goes away (watched from WatchAfter on: a request answered sooner is not
// watched — its answer is written before a watch would notice anything).
package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strongroom/strongroom/internal/rawsock"
)

// Server serves Handler on the connections of a listener.
type Server struct {
	Handler           http.Handler
	ReadHeaderTimeout time.Duration // from a request's first byte to its headers' end; 0: 10 s
	IdleTimeout       time.Duration // between requests on a connection; 0: ReadHeaderTimeout
	MaxHeaderBytes    int           // request line and headers; 0: 64 KiB
	// BodyTimeout bounds reading a request's body (from its headers' end); it is lifted
	// once the body was read, so that a long answer is not cut. 0: none.
	BodyTimeout time.Duration
	// WatchAfter is how long a handler runs before the client's connection is watched
	// for a close (which cancels the request's context); 0: 50 ms.
	WatchAfter time.Duration
	Log        *slog.Logger

	sweeping   atomic.Bool // watch.go
	running    sync.WaitGroup
	mu         sync.Mutex
	lns        map[*net.Listener]struct{}
	conns      map[*conn]struct{}
	onShutdown []func()
	shutting   atomic.Bool
	base       context.Context
	stop       context.CancelFunc
}

// ErrServerClosed is what Serve returns after Shutdown or Close (net/http's, so callers
// that check for it need not know which server they run).
var ErrServerClosed = http.ErrServerClosed

func (s *Server) init() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
		s.lns = map[*net.Listener]struct{}{}
		s.base, s.stop = context.WithCancel(context.Background())
	}
}

// RegisterOnShutdown adds a function Shutdown calls as it starts (long streams end then).
func (s *Server) RegisterOnShutdown(f func()) {
	s.mu.Lock()
	s.onShutdown = append(s.onShutdown, f)
	s.mu.Unlock()
}

// Serve accepts connections on ln until it fails or the server is shut down; each is
// served on its own goroutine. A *tls.Conn is served over TLS (its handshake bounded by
// ReadHeaderTimeout), its state in each request's TLS.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	if s.shutting.Load() {
		return ErrServerClosed
	}
	s.mu.Lock()
	s.lns[&ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, &ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		rw, err := ln.Accept()
		if err != nil {
			if s.shutting.Load() {
				return ErrServerClosed
			}
			if temporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		c := s.newConn(rw)
		if c == nil {
			rw.Close()
			return ErrServerClosed
		}
		go c.serve()
	}
}

// temporary reports whether an accept loop should wait err out (EMFILE, ENFILE,
// ECONNABORTED, timeouts: net/http's rule).
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

func (s *Server) newConn(rw net.Conn) *conn {
	c := &conn{s: s, rw: rw, remote: rw.RemoteAddr().String()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting.Load() {
		return nil
	}
	c.stopEnd = context.AfterFunc(s.base, c.endRequest)
	s.conns[c] = struct{}{}
	s.running.Add(1)
	return c
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.running.Done()
}

// Wait returns once every connection has ended and its handler returned (after Close,
// or Shutdown).
func (s *Server) Wait() { s.running.Wait() }

// Shutdown stops accepting, closes idle connections, and waits for busy ones to finish
// their request (or ctx to end: then it returns ctx's error and leaves them to Close).
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.shutting.Store(true)
	s.mu.Lock()
	for ln := range s.lns {
		(*ln).Close()
	}
	fs := s.onShutdown
	s.mu.Unlock()
	for _, f := range fs {
		go f()
	}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if s.closeIdle() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// closeIdle closes the connections waiting for a request; it reports whether none is left.
// The closes are hard (hardClose) and made outside the server's lock: a TLS connection's
// own Close writes a close_notify first, which waits (up to 5 s, crypto/tls) on a peer that
// stopped reading — under the lock, one such peer after another held up accepts and every
// connection's end. An idle HTTP/1.1 client takes the TCP close as the server's.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	var idle []*conn
	for c := range s.conns {
		if c.state.Load() == stateIdle {
			idle = append(idle, c)
		}
	}
	left := len(s.conns)
	s.mu.Unlock()
	for _, c := range idle {
		hardClose(c.rw)
	}
	return left == 0
}

// Close closes the listeners and every connection at once; requests' contexts end. A TLS
// connection's socket is closed without its close_notify (hardClose): Close does not wait
// on peers.
func (s *Server) Close() error {
	s.init()
	s.shutting.Store(true)
	s.mu.Lock()
	for ln := range s.lns {
		(*ln).Close()
	}
	all := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		all = append(all, c)
	}
	s.mu.Unlock()
	for _, c := range all {
		hardClose(c.rw)
	}
	s.stop()
	return nil
}

// hardClose closes nc's connection at once: under TLS, the connection under it, so no
// close_notify is written (the connection's own end closes the TLS one later).
func hardClose(nc net.Conn) error {
	if tc, ok := nc.(*tls.Conn); ok {
		return tc.NetConn().Close()
	}
	return nc.Close()
}

const (
	stateIdle int32 = iota // waiting for a request's first byte
	stateBusy              // reading or answering a request
)

// conn is one client connection.
type conn struct {
	s      *Server
	rw     net.Conn
	remote string
	tls    *tls.ConnectionState
	br     *bufio.Reader
	bw     *bufio.Writer
	state  atomic.Int32
	// stopEnd stops the server's end (Close) from calling endRequest once the connection
	// has ended.
	stopEnd func() bool
	hold    []byte    // a response's held bytes (response.go)
	resp    *response // the answer being given (a body's 100 Continue looks at it)
	linger  bool      // a request's body was left unread: close gently (lingerClose)
	// The request being answered, and the watch for its client's close (watch.go).
	busySince atomic.Int64 // unix ns its handler started; 0: none runs
	watchMu   sync.Mutex
	req       *http.Request // watchMu
	reqCtx    *reqCtx       // watchMu
	watching  bool          // watchMu
	watchDone bool          // watchMu: the handler returned
	watchEnd  chan struct{}
	watchStop chan struct{} // closed by unwatch: ends a watch that polls for a hang-up
	peerGone  atomic.Bool
	watchSaw  atomic.Int64 // bytes the running watch has seen buffered (the next request's)
	bodyRead  atomic.Bool  // the request's body was read to its end: the reader is free
	// The strings of the last request's target and header lines (its reading goroutine's).
	recent  Recent
	headers int // header lines of the last request read (headerHint)
	// An answer's last bytes left for the next request's wait to send (out.go): raw is the
	// socket under the connection (nil under TLS), unsent that c.bw holds such bytes,
	// exchange that c.bw's flush is that wait's, idle the state's store once they are out.
	raw              *rawsock.Conn
	unsent, exchange bool
	idle             func()
	unsentSends      atomic.Int32 // answers sent so (tests)
	// readBy is the read deadline readWithin set last (the connection's goroutine's); the
	// goroutine's other settings go through setReadDeadline, which forgets it.
	readBy Deadline
}

func (s *Server) headerTimeout() time.Duration {
	if s.ReadHeaderTimeout > 0 {
		return s.ReadHeaderTimeout
	}
	return 10 * time.Second
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return s.headerTimeout()
}

func (s *Server) maxHeader() int {
	if s.MaxHeaderBytes > 0 {
		return s.MaxHeaderBytes
	}
	return 64 << 10
}

func (s *Server) watchAfter() time.Duration {
	if s.WatchAfter > 0 {
		return s.WatchAfter
	}
	return 50 * time.Millisecond
}

func (c *conn) serve() {
	defer func() {
		if p := recover(); p != nil && p != http.ErrAbortHandler {
			if c.s.Log != nil {
				c.s.Log.Error("h1: panic serving a request", "remote", c.remote, "panic", p)
			}
		}
		if w := c.resp; w != nil { // a handler panicked: what it left behind writes nowhere
			w.mu.Lock()
			w.done = true
			w.mu.Unlock()
		}
		c.stopEnd()
		if c.unsent {
			// An answer's last bytes left for a wait that will not come (Shutdown began
			// after the answer was given: outside round 39) go out before the close.
			c.unsent = false
			c.bw.Flush()
		}
		if c.linger {
			c.lingerClose()
		}
		c.rw.Close()
		c.s.forget(c)
	}()
	if tc, ok := c.rw.(*tls.Conn); ok {
		c.rw.SetDeadline(time.Now().Add(c.s.headerTimeout()))
		if err := tc.HandshakeContext(c.s.base); err != nil {
			return
		}
		c.rw.SetDeadline(time.Time{})
		st := tc.ConnectionState()
		c.tls = &st
	}
	c.hold = make([]byte, 0, holdBytes)
	c.br = bufio.NewReaderSize(c.rw, 4<<10)
	c.bw = bufio.NewWriterSize((*connOut)(c), 4<<10)
	if c.tls == nil {
		c.raw = rawOf(c.rw)
		c.idle = func() { c.state.Store(stateIdle) }
	}
	for first := true; ; first = false {
		if !c.next(first) {
			return
		}
		if c.s.shutting.Load() {
			return
		}
	}
}

// next waits for a request, reads it, and answers it; it reports whether the connection
// stays open for another.
func (c *conn) next(first bool) bool {
	if c.unsent && !c.sendUnsent() {
		return false
	}
	c.state.Store(stateIdle)
	if c.s.shutting.Load() {
		return false
	}
	if c.br.Buffered() == 0 {
		wait := c.s.idleTimeout()
		if first {
			wait = c.s.headerTimeout()
		}
		c.readWithin(wait)
		if _, err := c.br.Peek(1); err != nil {
			return false
		}
	}
	c.state.Store(stateBusy)
	if c.s.shutting.Load() {
		return false
	}
	if !headersBuffered(c.br) {
		// Headers still to come are bounded; headers already here need no deadline (it
		// costs a timer update per request).
		c.readWithin(c.s.headerTimeout())
	}
	// The request's context is made before the request (readRequest makes the request
	// with it: WithContext afterwards would copy the request).
	rc := newReqCtx()
	req, err := c.readRequest(rc)
	if err != nil {
		rc.cancel()
		c.refuse(err)
		return false
	}
	return c.answer(req, rc)
}

// headersBuffered reports whether a request's whole header block is in br's buffer.
func headersBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, crlfcrlf)
}

var crlfcrlf = []byte("\r\n\r\n")

// refuse answers a request that could not be read with a one-line error, and the
// connection closes.
func (c *conn) refuse(err error) {
	var pe *parseError
	if !errors.As(err, &pe) {
		return // the connection failed or timed out: nothing to answer
	}
	c.rw.SetWriteDeadline(time.Now().Add(c.s.headerTimeout()))
	c.bw.WriteString("HTTP/1.1 ")
	c.bw.WriteString(statusLine(pe.status))
	c.bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: ")
	msg := pe.msg + "\n"
	writeNumber(c.bw, uint64(len(msg)), 10)
	c.bw.WriteString("\r\n\r\n")
	c.bw.WriteString(msg)
	c.bw.Flush()
	c.linger = true
}

// lingerClose ends a connection whose client may still be sending (a body left unread, a
// refused request): closing with unread bytes makes the kernel send a reset, which can
// destroy the answer before the client reads it. So the write side closes first, and what
// the client still sends is read and dropped for up to 500 ms (1 MiB of it; past that
// the rest of the time passes without reading), as net/http and other servers do.
func (c *conn) lingerClose() {
	if cw, ok := c.rw.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else if tc, ok := c.rw.(*tls.Conn); ok {
		tc.CloseWrite()
	}
	end := time.Now().Add(500 * time.Millisecond)
	c.rw.SetReadDeadline(end)
	if n, _ := io.CopyN(io.Discard, c.rw, 1<<20); n == 1<<20 {
		// Still sending: stop reading (its writes stall) and give it the rest of the
		// time to read the answer before the reset.
		time.Sleep(time.Until(end))
	}
}
