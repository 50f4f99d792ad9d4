package h1

import (
	"bufio"
	"io"
	"strings"
	"testing"
)

// TestChunkedReadsWhatIsAtHand: chunks already buffered come out of one Read (a stream's
// events arriving together are relayed with one write, not one write each: reading one
// chunk per Read made every streamed event its own syscall, 3× the CPU per chunk), the
// last chunk already buffered ends the body with the data, and a Read blocks only when
// it has nothing.
func TestChunkedReadsWhatIsAtHand(t *testing.T) {
	body := "7\r\ndata: 1\r\n7\r\ndata: 2\r\n7\r\ndata: 3\r\n0\r\n\r\n"
	c := NewChunked(bufio.NewReader(strings.NewReader(body)), 1024)
	p := make([]byte, 64)
	n, err := c.Read(p)
	if string(p[:n]) != "data: 1data: 2data: 3" || err != io.EOF {
		t.Fatalf("one read: %q %v", p[:n], err)
	}
	// The next chunk's size line not here yet: the read returns what it has.
	pr, pw := io.Pipe()
	c = NewChunked(bufio.NewReader(pr), 1024)
	go io.WriteString(pw, "3\r\nabc\r\n")
	if n, err := c.Read(p); string(p[:n]) != "abc" || err != nil {
		t.Fatalf("%q %v", p[:n], err)
	}
	go func() { io.WriteString(pw, "2\r\nde\r\n0\r\nX-T: v\r\n\r\n"); pw.Close() }()
	got, err := io.ReadAll(c)
	if string(got) != "de" || err != nil || c.Trailer.Get("X-T") != "v" {
		t.Fatalf("rest %q %v trailer %v", got, err, c.Trailer)
	}
}
