package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/textproto"
)

// ErrChunkFormat is a chunked body whose framing does not add up.
var ErrChunkFormat = errors.New("malformed chunked body")

// Chunked reads a chunked body (RFC 9112 7.1) from br: hex sizes of at most 15 digits,
// extensions after ';' ignored, a CRLF after each chunk's data, trailers read and dropped
// within maxTrailer bytes. Errors are sticky; io.EOF once the last chunk and the trailers
// were read (nothing after them is read).
type Chunked struct {
	br         *bufio.Reader
	maxTrailer int
	left       int64 // of the current chunk
	excess     int64 // framing bytes beyond what data justifies (net/http's rule)
	err        error
	// Trailer holds the trailer section's fields (canonical names), once read.
	Trailer http.Header
}

// NewChunked reads a chunked body from br.
func NewChunked(br *bufio.Reader, maxTrailer int) *Chunked {
	return &Chunked{br: br, maxTrailer: maxTrailer}
}

// Read reads as much of the body as is at hand: after a chunk's end it goes on to the
// next chunk when that chunk's size line is already buffered (a stream's events arrive
// several to a read, and their reader sees them together), and it blocks only when it
// has nothing yet, as net/http's chunked reader does.
func (c *Chunked) Read(p []byte) (int, error) {
	n := 0
	for c.err == nil {
		if c.left == 0 {
			if n > 0 && !c.sizeBuffered() {
				break
			}
			size, err := c.size()
			if err == nil && size == 0 {
				err = c.trailers()
				if err == nil {
					err = io.EOF
				}
			}
			if err != nil {
				c.err = err
				break
			}
			c.left = size
		}
		if len(p) == 0 || n > 0 && c.br.Buffered() == 0 {
			break
		}
		rd := p
		if int64(len(rd)) > c.left {
			rd = rd[:c.left]
		}
		m, err := c.br.Read(rd)
		n += m
		p = p[m:]
		c.left -= int64(m)
		if err == io.EOF {
			// The data's read may return its last bytes with io.EOF (a bufio.Reader reading
			// straight into p from a TLS connection closed after them): the chunk's CRLF and
			// the last chunk are still owed, so the body was cut (outside round 43: a body
			// cut after a chunk's data read as complete).
			err = io.ErrUnexpectedEOF
		}
		if c.left == 0 && err == nil {
			err = c.crlf()
			if err == nil && c.lastBuffered() {
				// The last chunk is already here: the body ends with this read (a reader
				// that stops at the data's end — a JSON decoder — still sees its end).
				c.br.Discard(len(lastChunk))
				err = io.EOF
			}
		}
		if err != nil {
			c.err = err
		}
	}
	if c.err != nil && (n == 0 || c.err == io.EOF) {
		return n, c.err
	}
	return n, nil
}

// sizeBuffered reports whether a whole chunk-size line is in the buffer.
func (c *Chunked) sizeBuffered() bool {
	b, _ := c.br.Peek(c.br.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

var lastChunk = []byte("0\r\n\r\n")

// lastBuffered reports whether the body's last chunk, with no extensions or trailers,
// is next in the buffer.
func (c *Chunked) lastBuffered() bool {
	if c.br.Buffered() < len(lastChunk) {
		return false
	}
	b, _ := c.br.Peek(len(lastChunk))
	return bytes.Equal(b, lastChunk)
}

// line reads a chunk-size line (at most 4 KiB).
func (c *Chunked) line() ([]byte, error) {
	left := 4 << 10
	line, err := ReadLine(c.br, &left)
	if err != nil {
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		var pe *parseError
		if errors.As(err, &pe) {
			return nil, ErrChunkFormat
		}
		return nil, err
	}
	return line, nil
}

// size reads a chunk's size line.
func (c *Chunked) size() (int64, error) {
	line, err := c.line()
	if err != nil {
		return 0, err
	}
	size := line
	for i, ch := range line {
		if ch == ';' {
			size = line[:i]
			break
		}
	}
	if len(size) == 0 || len(size) > 15 {
		return 0, ErrChunkFormat
	}
	// net/http's bound on framing: each chunk may carry 16 bytes of size line and
	// extensions beyond twice its data; past 16 KiB of excess the body is refused (tiny
	// chunks with long extensions are work, not data).
	c.excess += int64(len(line)) + 2
	var n int64
	for _, ch := range size {
		var d byte
		switch {
		case ch >= '0' && ch <= '9':
			d = ch - '0'
		case ch >= 'a' && ch <= 'f':
			d = ch - 'a' + 10
		case ch >= 'A' && ch <= 'F':
			d = ch - 'A' + 10
		default:
			return 0, ErrChunkFormat
		}
		n = n<<4 | int64(d)
	}
	c.excess = max(c.excess-16-2*n, 0)
	if c.excess > 16<<10 {
		return 0, ErrTooMuchFraming
	}
	return n, nil
}

// ErrTooMuchFraming is a chunked body whose size lines and extensions outweigh its data.
var ErrTooMuchFraming = errors.New("chunked body with too much non-data")

// MaxTrailer bounds a chunked body's trailer section (net/http's: its reader's buffer).
const MaxTrailer = 4 << 10

// crlf reads the CRLF that ends a chunk's data.
func (c *Chunked) crlf() error {
	// Peeked, not read into a local array: that went to the heap through io.ReadFull's
	// io.Reader, one allocation for every chunk of a stream.
	two, err := c.br.Peek(2)
	if len(two) == 2 {
		if two[0] != '\r' || two[1] != '\n' {
			return ErrChunkFormat
		}
		c.br.Discard(2)
		return nil
	}
	if err == io.EOF || err == nil {
		return io.ErrUnexpectedEOF
	}
	return err
}

// trailers reads (and drops) the trailer section after the last chunk.
func (c *Chunked) trailers() error {
	left := c.maxTrailer
	for {
		line, err := ReadLine(c.br, &left)
		if err != nil {
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			var pe *parseError
			if errors.As(err, &pe) {
				return ErrChunkFormat
			}
			return err
		}
		if len(line) == 0 {
			return nil
		}
		name, value, err := HeaderLine(line)
		if err != nil {
			return ErrChunkFormat
		}
		if c.Trailer == nil {
			c.Trailer = http.Header{}
		}
		key := textproto.CanonicalMIMEHeaderKey(string(name))
		c.Trailer[key] = append(c.Trailer[key], string(value))
	}
}
