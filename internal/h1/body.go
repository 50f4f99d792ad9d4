package h1

import (
	"errors"
	"io"
)

// body is a request's body, read from the connection: Content-Length bytes, or chunks.
type body struct {
	c       *conn
	chunked bool
	left    int64 // bytes left of the body (Content-Length) or of the current chunk
	cont    bool  // the client waits for 100 Continue before sending the body
	sawEOF  bool
	closed  bool
	err     error // a framing error: sticky
}

var (
	errBodyClosed  = errors.New("h1: read of a closed request body")
	errChunkFormat = errors.New("h1: malformed chunked request body")
)

func (b *body) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errBodyClosed
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.sawEOF {
		return 0, io.EOF
	}
	if b.cont {
		b.cont = false
		b.c.continue100()
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
	if b.left == 0 {
		n, err := b.chunkHeader()
		if err != nil {
			b.err = err
			return 0, err
		}
		if n == 0 {
			if err := b.trailers(); err != nil {
				b.err = err
				return 0, err
			}
			b.eof()
			return 0, io.EOF
		}
		b.left = n
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.c.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 && err == nil {
		err = b.crlf()
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		b.err = err
	}
	return n, err
}

// chunkHeader reads a chunk's size line: hex digits (at most 15), optional extensions
// after ';' (ignored), CRLF.
func (b *body) chunkHeader() (int64, error) {
	left := 4 << 10
	line, err := b.c.readLine(&left)
	if err != nil {
		if err == io.EOF {
			return 0, io.ErrUnexpectedEOF
		}
		if errors.As(err, new(*parseError)) {
			return 0, errChunkFormat
		}
		return 0, err
	}
	size := line
	for i, c := range line {
		if c == ';' {
			size = line[:i]
			break
		}
	}
	if len(size) == 0 || len(size) > 15 {
		return 0, errChunkFormat
	}
	var n int64
	for _, c := range size {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, errChunkFormat
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}

// crlf reads the CRLF that ends a chunk's data.
func (b *body) crlf() error {
	var two [2]byte
	if _, err := io.ReadFull(b.c.br, two[:]); err != nil {
		return err
	}
	if two != [2]byte{'\r', '\n'} {
		return errChunkFormat
	}
	return nil
}

// trailers reads (and drops) the trailer section after the last chunk, within the
// header bound.
func (b *body) trailers() error {
	left := b.c.s.maxHeader()
	for {
		line, err := b.c.readLine(&left)
		if err != nil {
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			if errors.As(err, new(*parseError)) {
				return errChunkFormat
			}
			return err
		}
		if len(line) == 0 {
			return nil
		}
		if _, _, err := headerLine(line); err != nil {
			return errChunkFormat
		}
	}
}

// eof marks the body read to its end; from then on the connection's reader is not the
// handler's (a watch may wait on it).
func (b *body) eof() {
	b.sawEOF = true
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
	was := b.closed
	b.closed = false
	n, err := io.Copy(io.Discard, io.LimitReader(b, limit+1))
	b.closed = was
	return err == nil && n <= limit && b.sawEOF
}
