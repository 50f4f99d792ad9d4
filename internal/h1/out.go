package h1

import (
	"crypto/tls"
	"net"

	"github.com/strongroom/strongroom/internal/rawsock"
)

// An answer's last bytes and the wait for the next request go through the connection's
// poller in one pass (rawsock.Exchange): the next request cannot come before the answer
// went out, and a read tried right after it (as a read must try before it waits: Go's
// poller drops a readiness that came before the wait) finds nothing — a system call,
// ~1 µs, every request (the thirty-ninth session). So answer leaves the last bytes in the
// connection's writer (finish's leave: keep-alive, no TLS, nothing pipelined, no deadline
// of the handler's), and next sends them with Exchange, under the idle deadline, and
// waits there; the connection counts as idle (Shutdown closes it) once they are written,
// not before. An answer after which the connection ends is sent at once (answer).

// connOut is the connection's writer under c.bw: c.rw's Write, or Exchange while next
// sends an answer left unsent.
type connOut conn

func (o *connOut) Write(p []byte) (int, error) {
	c := (*conn)(o)
	if !c.exchange {
		return c.rw.Write(p)
	}
	n, _, err := c.raw.Exchange(p, false, c.idle)
	if err != nil || n == len(p) {
		return n, err
	}
	m, err := c.rw.Write(p[n:]) // the socket took part: the rest waits for room
	return n + m, err
}

// sendUnsent sends the answer left unsent and waits for the next request (or the client's close),
// bounded by the idle deadline; false: the connection ends.
func (c *conn) sendUnsent() bool {
	c.unsent = false
	c.readWithin(c.s.idleTimeout())
	c.unsentSends.Add(1)
	c.exchange = c.br.Buffered() == 0 // a request already read in: nothing to wait for
	err := c.bw.Flush()
	c.exchange = false
	return err == nil
}

// rawOf is the raw socket under nc (through wrappers that give their NetConn, never
// through TLS), made raw if it is a plain TCP connection; nil if there is none.
func rawOf(nc net.Conn) *rawsock.Conn {
	switch v := under(nc, func(c net.Conn) bool {
		switch c.(type) {
		case *rawsock.Conn, *net.TCPConn, *tls.Conn:
			return true
		}
		return false
	}).(type) {
	case *rawsock.Conn:
		return v
	case *net.TCPConn:
		r, _ := rawsock.Wrap(v).(*rawsock.Conn)
		return r
	}
	return nil // none, or TLS: its bytes are not the socket's
}
