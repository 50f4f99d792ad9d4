package h1

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// A stream's events come one chunk each: reading a chunked body and writing chunk sizes
// must not allocate for every chunk (each was a 2- or 24-byte allocation, ~2.5 % of a
// stream's CPU in a profile of ../shared/bench/peers --stream).
func TestChunkAllocations(t *testing.T) {
	const events = 200
	var body strings.Builder
	event := "data: " + strings.Repeat("x", 160) + "\n\n"
	for range events {
		body.WriteString("a8\r\n" + event + "\r\n")
	}
	body.WriteString("0\r\n\r\n")
	src := strings.NewReader(body.String())
	br := bufio.NewReaderSize(src, 4096)
	buf := make([]byte, 512)
	var got int
	allocs := testing.AllocsPerRun(20, func() {
		src.Reset(body.String())
		br.Reset(src)
		c := Chunked{br: br, maxTrailer: MaxTrailer}
		got = 0
		for {
			n, err := c.Read(buf)
			got += n
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	})
	if got != events*len(event) {
		t.Fatalf("read %d bytes, want %d", got, events*len(event))
	}
	if allocs > 1 { // the trailer section's header, at most
		t.Errorf("reading a %d-chunk body: %.0f allocations, want at most 1", events, allocs)
	}

	var out bytes.Buffer
	bw := bufio.NewWriterSize(&out, 64<<10)
	allocs = testing.AllocsPerRun(20, func() {
		out.Reset()
		bw.Reset(&out)
		for range events {
			writeNumber(bw, uint64(len(event)), 16)
		}
		bw.Flush()
	})
	if want := strings.Repeat("a8", events); out.String() != want {
		t.Fatalf("wrote %q…, want %q…", out.String()[:min(out.Len(), 8)], want[:8])
	}
	if allocs > 0 {
		t.Errorf("writing %d chunk sizes: %.0f allocations, want 0", events, allocs)
	}
}
