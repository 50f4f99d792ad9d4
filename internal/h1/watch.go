package h1

import (
	"bufio"
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A request's context ends when its client goes away. net/http reads from the
// connection in the background for the whole of every request to notice; here a
// connection is watched only once its handler has run for WatchAfter (a sweep finds
// those), and only after the request's body was read (until then the handler reads the
// connection, and a close shows as its read error). Answers given sooner — most, under
// load — are never watched: whatever a watch would notice, the answer's write does.

// watchLater makes sure a sweep runs while any request is being answered.
func (s *Server) watchLater() {
	if s.sweeping.CompareAndSwap(false, true) {
		go s.sweep()
	}
}

// sweep starts the watch of every connection whose handler has run longer than
// WatchAfter; it ends when no connection is left.
func (s *Server) sweep() {
	every := max(s.watchAfter()/2, time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.base.Done():
			s.sweeping.Store(false)
			return
		}
		now := time.Now().UnixNano()
		after := s.watchAfter().Nanoseconds()
		s.mu.Lock()
		n := len(s.conns)
		for c := range s.conns {
			if since := c.busySince.Load(); since != 0 && now-since >= after {
				c.watch()
			}
		}
		s.mu.Unlock()
		if n == 0 {
			s.sweeping.Store(false)
			// A connection made between the count and the store starts its own sweep.
			s.mu.Lock()
			more := len(s.conns) > 0
			s.mu.Unlock()
			if !more || !s.sweeping.CompareAndSwap(false, true) {
				return
			}
		}
	}
}

// watch starts a goroutine that waits for the client's next byte or close, once the
// request's body was read to its end.
func (c *conn) watch() {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if c.watching || c.watchDone || c.req == nil {
		return
	}
	if !c.bodyRead.Load() {
		return // the handler reads the connection (or never will: then no watch)
	}
	c.watching = true
	c.watchSaw.Store(0)
	c.watchEnd, c.watchStop = make(chan struct{}), make(chan struct{})
	stop := c.watchStop
	rc := c.reqCtx
	// The deadline is cleared here, under watchMu, not in the goroutine: unwatch's
	// deadline (which ends the watch) must come after it, never before.
	c.rw.SetReadDeadline(time.Time{})
	go func() {
		defer close(c.watchEnd)
		// Bytes that come (the next request, pipelined) stay in the reader for the next
		// request, and the watch goes on past them: a client that sent one more byte and
		// closed is gone all the same (outside round 34 held an engine's work open so).
		// A full reader stops the reading: a pipelined request that large waits its turn.
		for n := 1; n <= c.br.Size(); n = c.br.Buffered() + 1 {
			_, err := c.br.Peek(n)
			if err == nil {
				c.watchSaw.Store(int64(n))
				continue
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				break
			}
			c.watchMu.Lock()
			stopping := c.watchDone
			c.watchMu.Unlock()
			var ne net.Error
			if !stopping && !(errors.As(err, &ne) && ne.Timeout()) {
				// Closed, reset, or a TLS alert: the request is over. (A deadline the
				// handler set is its own business, not the client leaving.)
				c.peerGone.Store(true)
				if c.s.Log != nil {
					c.s.Log.Debug("h1: watch saw the client go", "remote", c.remote, "err", err)
				}
				rc.cancel()
			}
			return
		}
		// The reader is full of pipelined bytes and nothing more is read; a client that
		// closed after them is gone all the same (outside round 35: 8 KiB pipelined, then a
		// close, held the engine's work to its end). The kernel says so without a read.
		c.watchHangup(stop, rc)
	}()
}

// hangupEvery is how often a watch whose reader is full asks the kernel whether the
// client hung up.
const hangupEvery = 50 * time.Millisecond

// watchHangup polls the connection's socket for a hang-up (the client closed or half-closed
// its end, or reset it: POLLRDHUP, POLLHUP, POLLERR — each seen past unread bytes) until
// stop is closed; a hang-up cancels the request. A connection with no socket under it (a
// test's pipe) is not watched further.
func (c *conn) watchHangup(stop <-chan struct{}, req *reqCtx) {
	rc := rawConnOf(c.rw)
	if rc == nil {
		return
	}
	t := time.NewTicker(hangupEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if hungUp(rc) {
			c.peerGone.Store(true)
			req.cancel()
			return
		}
	}
}

// rawConnOf is the socket under nc, through TLS and wrappers that give their NetConn.
func rawConnOf(nc net.Conn) syscall.RawConn {
	sc, ok := under(nc, func(c net.Conn) bool { _, ok := c.(syscall.Conn); return ok }).(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// under is the first connection is accepts, from nc down through the wrappers that give
// their NetConn (TLS's among them), at most 8 deep; nil if there is none.
func under(nc net.Conn, is func(net.Conn) bool) net.Conn {
	for range 8 {
		if is(nc) {
			return nc
		}
		w, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		nc = w.NetConn()
	}
	return nil
}

// hungUp asks the kernel, without reading or waiting, whether the peer of rc hung up.
func hungUp(rc syscall.RawConn) bool {
	gone := false
	err := rc.Control(func(fd uintptr) {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		n, err := unix.Poll(p, 0)
		gone = err == nil && n > 0 && p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
	})
	return gone || err != nil // a closed socket: gone
}

// unwatch stops the watch, if one runs, once the handler returned; later sweeps leave
// the connection alone until its next request.
func (c *conn) unwatch() {
	c.busySince.Store(0)
	c.watchMu.Lock()
	c.watchDone = true
	running := c.watching
	c.watchMu.Unlock()
	if running {
		close(c.watchStop)
		c.rw.SetReadDeadline(aLongTimeAgo)
		<-c.watchEnd
		c.setReadDeadline(time.Time{}) // the watch lifted it too
	}
	c.watchMu.Lock()
	c.watching, c.watchDone, c.req, c.reqCtx = false, false, nil, nil
	c.watchMu.Unlock()
}

var aLongTimeAgo = time.Unix(1, 0)
