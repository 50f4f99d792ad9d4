package h1

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// body is a request's body, read from the connection: Content-Length bytes, or chunks.
type body struct {
	c       *conn
	req     *http.Request // the handler's: its Trailer is set at the body's end
	chunked bool
	ch      *Chunked // when chunked
	left    int64    // bytes left of the body (Content-Length)
	cont    bool     // the client waits for 100 Continue before sending the body
	sawEOF  bool
	closed  bool
	dropped bool  // settleBody read (some of) it and dropped it
	err     error // a framing error: sticky
}

var errBodyClosed = errors.New("h1: read of a closed request body")

// errBodyDropped: the handler reads a body the server read and dropped as the answer's
// headers went out (settleBody) — the handler wanted none of it then (net/http: "invalid
// Read on closed Body").
var errBodyDropped = errors.New("h1: read of a request body dropped when the answer started")

func (b *body) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errBodyClosed
	}
	if b.dropped {
		return 0, errBodyDropped
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.sawEOF {
		return 0, io.EOF
	}
	if b.cont {
		b.cont = false
		if w := b.c.resp; w == nil || !w.sent {
			b.c.continue100()
		} else {
			// The answer has started: no 100 in its middle (net/http's rule); the client
			// may still send the body, and the connection closes after the answer.
			w.close = true
		}
	}
	if !b.chunked {
		if int64(len(p)) > b.left {
			p = p[:b.left]
		}
		n, err := b.c.br.Read(p)
		b.left -= int64(n)
		if b.left == 0 {
			b.eof()
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			b.err = err
		}
		return n, err
	}
	n, err := b.ch.Read(p)
	if err == io.EOF {
		b.eof()
	} else if err != nil {
		b.err = err
	}
	return n, err
}

// eof marks the body read to its end; from then on the connection's reader is not the
// handler's (a watch may wait on it).
func (b *body) eof() {
	b.sawEOF = true
	if b.ch != nil && b.ch.Trailer != nil && b.req != nil {
		b.req.Trailer = b.ch.Trailer
	}
	b.c.bodyRead.Store(true)
}

func (b *body) Close() error {
	b.closed = true
	return nil
}

// drain reads what is left of the body so that the next request can be read; it reports
// whether the connection can be reused (the body ended well within limit bytes, and its
// client was not waiting for a 100 Continue it never got).
func (b *body) drain(limit int64) bool {
	if b.err != nil {
		return false
	}
	if b.sawEOF {
		return true
	}
	if b.cont {
		return false // never asked for it: the client may not send it; do not wait
	}
	if !b.chunked && b.left > limit {
		return false
	}
	if b.chunked || int64(b.c.br.Buffered()) < b.left {
		// The server's own read of a body no handler wanted: bounded like headers (a body
		// trickled forever must not hold the connection; BodyTimeout may be none).
		b.c.setReadDeadline(time.Now().Add(b.c.s.headerTimeout()))
	}
	was := b.closed
	b.closed = false
	n, err := io.Copy(io.Discard, io.LimitReader(b, limit+1))
	b.closed = was
	if n > 0 || err != nil {
		b.dropped = true // the handler reads no more of it: an error, not a clean (empty) end
	}
	return err == nil && n <= limit && b.sawEOF
}
