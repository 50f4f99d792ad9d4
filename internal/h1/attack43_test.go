package h1

// Outside round 43: the chunked reader (the engine client's and the server's, Chunked
// with its peeked CRLF) and the chunk sizes written into the writer's free buffer
// (writeNumber). Every test asserts the secure behaviour: it fails while the weakness
// exists.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// a43Body is a chunked body's framing and the data net/http reads from it.
type a43Body struct{ framing, data string }

var a43Long = strings.Repeat("0123456789abcdef", 4) // longer than the smallest bufio buffer

// a43Valid are chunked bodies net/http reads (followed, in the comparison with net/http,
// by "NEXT": the bytes after the body).
var a43Valid = []a43Body{
	{"b\r\nhello world\r\n0\r\n\r\n", "hello world"},
	{"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"},
	{"0005\r\nhello\r\n00006\r\n world\r\n000\r\n\r\n", "hello world"},
	{"B;ext=1;q=\"a;b\"\r\nhello world\r\n0;last\r\n\r\n", "hello world"},
	{"1\r\nh\r\n1\r\ne\r\n1\r\nl\r\n1\r\nl\r\n1\r\no\r\n6\r\n world\r\n0\r\n\r\n", "hello world"},
	{"b\r\nhello world\r\n0\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n", "hello world"},
	{"40\r\n" + a43Long + "\r\n0\r\n\r\n", a43Long},
	{"40\r\n" + a43Long + "\r\n40\r\n" + a43Long + "\r\n0\r\n\r\n", a43Long + a43Long},
	{"40\r\n" + a43Long + "\r\n0\r\nX-T: 1\r\n\r\n", a43Long},
}

// a43Pieces reads pieces one per Read (a piece longer than the Read's buffer goes over
// several), the last one with io.EOF — io.Reader allows data with io.EOF, and tls.Conn
// returns a record's data so when a close_notify follows it.
type a43Pieces struct{ pieces []string }

func (r *a43Pieces) Read(p []byte) (int, error) {
	if len(r.pieces) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.pieces[0])
	if n < len(r.pieces[0]) {
		r.pieces[0] = r.pieces[0][n:]
		return n, nil
	}
	r.pieces = r.pieces[1:]
	if len(r.pieces) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// a43Reader yields src in one of the shapes a connection may give it: whole, a byte at a
// time, with io.EOF along with the last bytes, or a line at a time (each chunk's size
// line, then its data, as an engine writes them) with io.EOF along with the last piece.
func a43Reader(kind, src string) io.Reader {
	switch kind {
	case "one-byte":
		return iotest.OneByteReader(strings.NewReader(src))
	case "data-err":
		return iotest.DataErrReader(strings.NewReader(src))
	case "lines-data-err":
		return &a43Pieces{strings.SplitAfter(src, "\n")}
	}
	return strings.NewReader(src)
}

var a43Kinds = []string{"whole", "one-byte", "data-err", "lines-data-err"}

// a43ReadChunked reads a chunked body from r (bufio buffer of bufSize, reads of pSize).
func a43ReadChunked(r io.Reader, bufSize, pSize int) (string, error, *bufio.Reader) {
	br := bufio.NewReaderSize(r, bufSize)
	c := NewChunked(br, MaxTrailer)
	var out bytes.Buffer
	p := make([]byte, pSize)
	for i := 0; i < 1<<16; i++ {
		n, err := c.Read(p)
		out.Write(p[:n])
		if err != nil {
			return out.String(), err, br
		}
	}
	return out.String(), errors.New("no end"), br
}

// TestAttack43ChunkedPrefixNeverComplete: a chunked body cut anywhere before the end of
// its last chunk (a dead engine, a client gone with a close_notify) is never a complete
// body: every proper prefix of a valid body must read as an error, not io.EOF, however
// the bytes arrive — also when the last bytes and io.EOF come in one Read. A whole body
// reads as its data exactly.
func TestAttack43ChunkedPrefixNeverComplete(t *testing.T) {
	var bad []string
	for _, b := range a43Valid {
		for _, kind := range a43Kinds {
			for _, sizes := range [][2]int{{4096, 512}, {16, 64 << 10}, {16, 7}, {4096, 64 << 10}} {
				got, err, _ := a43ReadChunked(a43Reader(kind, b.framing), sizes[0], sizes[1])
				if err != io.EOF || got != b.data {
					bad = append(bad, fmt.Sprintf("whole body %q (%s, buf %d, reads %d): %q, %v", b.framing, kind, sizes[0], sizes[1], got, err))
				}
				for cut := 1; cut < len(b.framing); cut++ {
					got, err, _ := a43ReadChunked(a43Reader(kind, b.framing[:cut]), sizes[0], sizes[1])
					if err == io.EOF || err == nil {
						bad = append(bad, fmt.Sprintf("body cut to %q (%s, buf %d, reads %d) read as complete: %q, %v", b.framing[:cut], kind, sizes[0], sizes[1], got, err))
					}
				}
			}
		}
	}
	for i, b := range bad {
		if i == 8 {
			t.Errorf("... and %d more", len(bad)-i)
			break
		}
		t.Error(b)
	}
}

// TestAttack43ChunkedAgreesWithNetHTTP: for odd framings an engine (or a client) may
// send, the chunked reader either refuses or reads what net/http reads — the same body,
// and the same bytes left after it (a reader that stops early or late hands the next
// answer's start to the wrong reader).
func TestAttack43ChunkedAgreesWithNetHTTP(t *testing.T) {
	var cases []string
	for _, b := range a43Valid {
		cases = append(cases, b.framing+"NEXT")
	}
	cases = append(cases,
		"+b\r\nhello world\r\n0\r\n\r\nNEXT",
		"-b\r\nhello world\r\n0\r\n\r\nNEXT",
		" b\r\nhello world\r\n0\r\n\r\nNEXT",
		"b \r\nhello world\r\n0\r\n\r\nNEXT",
		"b\t\r\nhello world\r\n0\r\n\r\nNEXT",
		"0xb\r\nhello world\r\n0\r\n\r\nNEXT",
		"000000000000000b\r\nhello world\r\n0\r\n\r\nNEXT",
		"10000000000000000b\r\nhello world\r\n0\r\n\r\nNEXT",
		"ffffffffffffffff\r\nhello world\r\n0\r\n\r\nNEXT",
		"b\nhello world\r\n0\r\n\r\nNEXT",
		"b\r\nhello world\n0\r\n\r\nNEXT",
		"b\r\nhello world0\r\n\r\nNEXT",
		"b\r\nhello world\r\n0\r\n\nNEXT",
		"b\r\nhello world\r\n0\n\r\nNEXT",
		"b\r\nhello world\r\n0\r\nX: 1\nY: 2\r\n\r\nNEXT",
		"b\r\nhello world\r\n0\r\nX: 1\r\n Y: 2\r\n\r\nNEXT",
		"b\r\nhello world\r\n0\r\nbad trailer\r\n\r\nNEXT",
		"b;a\rb\r\nhello world\r\n0\r\n\r\nNEXT",
		"b;\x00\r\nhello world\r\n0\r\n\r\nNEXT",
		"\r\nb\r\nhello world\r\n0\r\n\r\nNEXT",
		"b\r\nhello world\r\n\r\n0\r\n\r\nNEXT",
		"c\r\nhello world\r\n0\r\n\r\nNEXT",
		"a\r\nhello world\r\n0\r\n\r\nNEXT",
		"b\r\nhello world\r\n0\r\n\r\n\r\nNEXT",
		"b\r\nhello world\r\n00\r\n\r\nNEXT",
		"b\r\nhello world\r\n0 \r\n\r\nNEXT",
	)
	for _, in := range cases {
		for _, kind := range a43Kinds {
			got, err, br := a43ReadChunked(a43Reader(kind, in), 4096, 512)
			if err != io.EOF {
				continue // refused: never different
			}
			rest, _ := io.ReadAll(br)
			sbr := bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + in))
			resp, rerr := http.ReadResponse(sbr, nil)
			if rerr != nil {
				t.Errorf("%q (%s): read as %q by h1, net/http refuses the answer: %v", in, kind, got, rerr)
				continue
			}
			std, serr := io.ReadAll(resp.Body)
			if serr != nil || string(std) != got {
				t.Errorf("%q (%s): h1 reads %q, net/http %q (%v)", in, kind, got, std, serr)
			}
			if srest, _ := io.ReadAll(sbr); string(rest) != string(srest) {
				t.Errorf("%q (%s): h1 leaves %q after the body, net/http %q", in, kind, rest, srest)
			}
		}
	}
}

// a43HoldConn holds what is written to it while hold is set, and sends it in one write
// at flush: TLS records the peer then receives in one read.
type a43HoldConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	buf  []byte
}

func (c *a43HoldConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *a43HoldConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold = false
	c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second)) // closeNotify set it to now
	_, err := c.Conn.Write(c.buf)
	return err
}

// TestAttack43TLSCutChunkedBody: over TLS (1.2, which the server accepts), a client sends
// a chunked body's size line, then the chunk's data and a close_notify together, and
// never the chunk's CRLF nor the last chunk. The handler reading the body with a large
// buffer (the gateway reads into a warm pooled one) must see the body end in an error —
// it is cut — not a complete body. (tls.Conn returns the data with io.EOF in one Read
// when the close_notify follows it.)
func TestAttack43TLSCutChunkedBody(t *testing.T) {
	srvTLS, cli := a35TLS(t)
	cli.MaxVersion = tls.VersionTLS12
	cli.DynamicRecordSizingDisabled = true // the chunk's data in one record
	type result struct {
		n   int
		err error
	}
	res := make(chan result, 4)
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		n := 0
		var err error
		for err == nil && n < len(buf) {
			var m int
			m, err = r.Body.Read(buf[n:])
			n += m
		}
		res <- result{n, err}
	}), srvTLS)
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	hc := &a43HoldConn{Conn: raw}
	tc := tls.Client(hc, cli)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tc, "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n")
	hc.mu.Lock()
	hc.hold = true
	hc.mu.Unlock()
	tc.Write(bytes.Repeat([]byte("d"), 0x1000))
	tc.CloseWrite()
	if err := hc.flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if r.err == io.EOF {
			t.Fatalf("a chunked body cut after its data (no CRLF, no last chunk; close_notify) read as complete: %d bytes, io.EOF", r.n)
		}
		t.Logf("cut body: %d bytes, %v", r.n, r.err)
	case <-time.After(8 * time.Second):
		t.Fatal("the handler did not finish reading the body")
	}
}

// TestAttack43ChunkSizesExact: a handler writes pieces of every size from 1 byte to
// 70 KiB, flushing after some, so that chunk sizes are written into every amount of free
// room in the connection's and the stream's buffers (writeNumber through
// AvailableBuffer). Read from a raw socket, every chunk-size line is the data's length in
// lower-case hex without leading zeros, each chunk ends with CRLF, and the data is
// exactly what was written; the next answer on the connection is its own.
func TestAttack43ChunkSizesExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(43, 43))
	var sizes []int
	var flushes []bool
	total := 0
	for total < 3<<20 {
		n := 1 + rng.IntN(70<<10)
		switch rng.IntN(4) {
		case 0:
			n = 1 + rng.IntN(16)
		case 1:
			n = 4<<10 - 8 + rng.IntN(16)
		}
		sizes = append(sizes, n)
		flushes = append(flushes, rng.IntN(3) == 0)
		total += n
	}
	piece := func(i, n int) []byte {
		b := make([]byte, n)
		for j := range b {
			b[j] = byte('a' + (i+j)%26)
		}
		return b
	}
	var want bytes.Buffer
	for i, n := range sizes {
		want.Write(piece(i, n))
	}
	_, addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "small answer")
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		for i, n := range sizes {
			w.Write(piece(i, n))
			if flushes[i] {
				w.(http.Flusher).Flush()
			}
		}
	}), nil)
	c := dial(t, addr)
	br := bufio.NewReader(c)
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: h\r\n\r\nGET /small HTTP/1.1\r\nHost: h\r\n\r\n")
	chunked := false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.EqualFold(strings.TrimSpace(line), "Transfer-Encoding: chunked") {
			chunked = true
		}
		if line == "\r\n" {
			break
		}
	}
	if !chunked {
		t.Fatal("a long, flushed answer was not chunked")
	}
	var got bytes.Buffer
	for i := 0; ; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		hex, ok := strings.CutSuffix(line, "\r\n")
		n, perr := strconv.ParseUint(hex, 16, 64)
		if !ok || perr != nil || strconv.FormatUint(n, 16) != hex {
			t.Fatalf("chunk %d: size line %q (after %d bytes)", i, line, got.Len())
		}
		if n == 0 {
			if end, _ := br.ReadString('\n'); end != "\r\n" {
				t.Fatalf("after the last chunk: %q", end)
			}
			break
		}
		data := make([]byte, n+2)
		if _, err := io.ReadFull(br, data); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(data, []byte("\r\n")) {
			t.Fatalf("chunk %d of %d bytes does not end with CRLF: ...%q", i, n, data[max(0, len(data)-8):])
		}
		got.Write(data[:n])
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		i := 0
		for i < got.Len() && i < want.Len() && got.Bytes()[i] == want.Bytes()[i] {
			i++
		}
		t.Fatalf("body: %d bytes, want %d; first difference at %d", got.Len(), want.Len(), i)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "small answer" {
		t.Fatalf("the next answer on the connection: %q", b)
	}
}
