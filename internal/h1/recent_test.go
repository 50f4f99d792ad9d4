package h1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// readAll reads every request of data on one connection (each body read to its end), as
// the server does for a keep-alive client.
func readAll(data []byte) ([]readResult, error) {
	c := &conn{s: &Server{}, rw: deadlineless{}, br: bufio.NewReaderSize(bytes.NewReader(data), 4<<10), bw: bufio.NewWriter(io.Discard), remote: "192.0.2.1:1"}
	var out []readResult
	for {
		if _, err := c.br.Peek(1); err == io.EOF {
			return out, nil
		}
		r, err := c.readRequest(context.Background())
		if err != nil {
			return out, err
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return out, err
		}
		out = append(out, readResult{r, b})
	}
}

type readResult struct {
	r    *http.Request
	body []byte
}

// recentVariants are requests that repeat, change, move, drop and add header lines of one
// another at the same positions: what a connection's remembered strings (Recent) must
// never answer with a stale one.
var recentVariants = []string{
	"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-one\r\nX-Custom-Name: alpha\r\nX-Stainless-Lang: js\r\nContent-Length: 2\r\n\r\n{}",
	"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-one\r\nX-Custom-Name: alpha\r\nX-Stainless-Lang: js\r\nContent-Length: 2\r\n\r\n{}",
	// The same names, values one byte apart (the last byte, the first, the length).
	"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-onf\r\nX-Custom-Name: blpha\r\nX-Stainless-Lang: jss\r\nContent-Length: 3\r\n\r\n{} ",
	// Names changed in case only, and to other names, at the same positions.
	"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nauthorization: Bearer sk-one\r\nx-custom-name: alpha\r\nX-Other-Name: alpha\r\nContent-Length: 2\r\n\r\n{}",
	// A value emptied; a line dropped; another target.
	"POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nAuthorization:\r\nX-Custom-Name: alpha\r\nContent-Length: 2\r\n\r\n{}",
	// Repeated names: the values join in order.
	"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Custom-Name: alpha\r\nX-Custom-Name: alpha\r\nX-Custom-Name: beta\r\nContent-Length: 2\r\n\r\n{}",
	"GET /v1/models HTTP/1.1\r\nHost: gw2\r\nUser-Agent: OpenAI/Go 1.12.0\r\n\r\n",
	"GET /v1/models HTTP/1.1\r\nHost: gw2\r\nUser-Agent: OpenAI/Go 1.12.1\r\n\r\n",
	// A name one byte apart, the same length, at the same position.
	"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-one\r\nX-Custom-Nbme: alpha\r\nX-Stainless-Lang: js\r\nContent-Length: 2\r\n\r\n{}",
}

// TestRecentNeverStale: requests on one connection that repeat one another's header lines
// in part are each read as net/http reads that request alone.
func TestRecentNeverStale(t *testing.T) {
	orders := [][]int{{0, 1, 2, 3, 4, 5, 6, 7, 8}, {8, 7, 6, 5, 4, 3, 2, 1, 0}, {0, 2, 0, 3, 0, 4, 5, 0, 6, 7, 6, 8, 0}}
	orders = append(orders, nil)
	for i := range 60 { // pairs of every kind
		orders[len(orders)-1] = append(orders[len(orders)-1], i%len(recentVariants), (i*3+1)%len(recentVariants))
	}
	for _, order := range orders {
		var stream strings.Builder
		for _, i := range order {
			stream.WriteString(recentVariants[i])
		}
		got, err := readAll([]byte(stream.String()))
		if err != nil {
			t.Fatalf("order %v: %v", order, err)
		}
		if len(got) != len(order) {
			t.Fatalf("order %v: read %d requests, want %d", order, len(got), len(order))
		}
		for k, i := range order {
			want, wb, err := stdParse([]byte(recentVariants[i]))
			if err != nil {
				t.Fatal(err)
			}
			if d := same(got[k].r, want, got[k].body, wb); d != "" {
				t.Errorf("order %v, request %d (variant %d) read differently from net/http's reading of it alone: %s", order, k, i, d)
			}
		}
	}
}

// TestRecentSharesRepeats: a request repeating the last one's header lines makes no new
// strings for them (the point of Recent), and Recent answers a changed line anew.
func TestRecentSharesRepeats(t *testing.T) {
	var r Recent
	custom := func(b []byte) string { return "" }
	tok := []byte("Bearer sk-one") // made once, as a reader's buffer is
	a := r.Value(0, tok, custom)
	if allocs := testing.AllocsPerRun(50, func() { r.Value(0, tok, custom) }); allocs != 0 {
		t.Errorf("a repeated value: %.0f allocations, want 0", allocs)
	}
	if b := r.Value(0, []byte("Bearer sk-one"), custom); b != a {
		t.Fatalf("repeat read as %q", b)
	}
	if b := r.Value(0, []byte("Bearer sk-onf"), custom); b != "Bearer sk-onf" {
		t.Errorf("a changed value read as %q", b)
	}
	if b := r.Value(1, []byte("Bearer sk-one"), custom); b != "Bearer sk-one" {
		t.Errorf("a value at another line read as %q", b)
	}
	if b := r.Value(RecentLines+3, []byte("past"), custom); b != "past" {
		t.Errorf("a value past the remembered lines read as %q", b)
	}
	canon := func(s string) string { return strings.ToUpper(s) }
	none := func([]byte) string { return "" }
	name := []byte("x-a")
	if k := r.Key(2, name, none, canon); k != "X-A" {
		t.Fatalf("key %q", k)
	}
	if allocs := testing.AllocsPerRun(50, func() { r.Key(2, name, none, canon) }); allocs != 0 {
		t.Errorf("a repeated name: %.0f allocations, want 0", allocs)
	}
	if k := r.Key(2, []byte("x-b"), none, canon); k != "X-B" {
		t.Errorf("a changed name's key %q", k)
	}

	// Through the reader: the second of two like requests allocates less than the first by
	// at least its uncommon lines (two names, four values).
	req := []byte(recentVariants[0])
	c := &conn{s: &Server{}, rw: deadlineless{}, bw: bufio.NewWriter(io.Discard), remote: "192.0.2.1:1"}
	read := func() {
		c.br = bufio.NewReaderSize(bytes.NewReader(req), 4<<10)
		rq, err := c.readRequest(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, rq.Body)
	}
	c.recent = Recent{}
	first := testing.AllocsPerRun(1, func() { c.recent = Recent{}; read() })
	read()
	again := testing.AllocsPerRun(20, read)
	if first-again < 5 {
		t.Errorf("a request repeating the last one's lines: %.0f allocations, the first %.0f: want at least 5 fewer", again, first)
	}
}

// FuzzRecent: any request b read after the requests of a on one connection is read as on a
// connection of its own (the strings remembered from a's lines change nothing).
func FuzzRecent(f *testing.F) {
	for i := range recentVariants {
		f.Add([]byte(recentVariants[i]), []byte(recentVariants[(i+1)%len(recentVariants)]))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		ga, err := readAll(a)
		if err != nil || len(ga) == 0 || ga[len(ga)-1].r.Close {
			return
		}
		alone, body, err := parseBytes(b)
		if err != nil {
			return
		}
		got, _ := readAll(append(append([]byte{}, a...), b...))
		if len(got) <= len(ga) {
			t.Fatalf("a's %d requests read, then not b's", len(ga))
		}
		if d := same(got[len(ga)].r, alone, got[len(ga)].body, body); d != "" {
			t.Errorf("b read after a differently from b alone: %s", d)
		}
	})
}

// TestRecentKeepsShortLines: an idle connection holds at most RecentLines short strings
// of each kind: a long value (or name) is not kept, and is still read right.
func TestRecentKeepsShortLines(t *testing.T) {
	var r Recent
	none := func([]byte) string { return "" }
	long := bytes.Repeat([]byte("v"), RecentMax+1)
	if v := r.Value(0, long, none); v != string(long) {
		t.Fatal("a long value read wrong")
	}
	if r.vals[0] != "" {
		t.Errorf("a %d-byte value kept", len(long))
	}
	if k := r.Key(0, long, none, strings.ToUpper); k != strings.ToUpper(string(long)) || r.names[0] != "" || r.keys[0] != "" {
		t.Errorf("a %d-byte name kept (key read %d bytes)", len(long), len(k))
	}
	short := long[:RecentMax]
	r.Value(1, short, none)
	if r.vals[1] != string(short) {
		t.Errorf("a %d-byte value not kept", len(short))
	}
}
