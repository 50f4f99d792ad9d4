package h1

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// parseBytes reads one request (and its whole body) from data with h1's reader.
func parseBytes(data []byte) (*http.Request, []byte, error) {
	c := &conn{s: &Server{}, rw: deadlineless{}, br: bufio.NewReaderSize(bytes.NewReader(data), 4<<10), bw: bufio.NewWriter(io.Discard), remote: "192.0.2.1:1"}
	r, err := c.readRequest(context.Background())
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(r.Body)
	return r, b, err
}

// deadlineless is the connection of parseBytes: only its deadlines are used.
type deadlineless struct{ net.Conn }

func (deadlineless) SetReadDeadline(time.Time) error  { return nil }
func (deadlineless) SetWriteDeadline(time.Time) error { return nil }

// stdParse is net/http's reading of the same bytes (the server's reader: http.ReadRequest
// and its body), with what net/http's server adds on top (a Host required in HTTP/1.1).
func stdParse(data []byte) (*http.Request, []byte, error) {
	r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(r.Body)
	delete(r.Header, "Host") // the server's reading moves it to r.Host only
	return r, b, err
}

// same reports how the two readings of a request differ ("" when they do not).
func same(a, b *http.Request, ab, bb []byte) string {
	switch {
	case a.Method != b.Method:
		return "method " + a.Method + " / " + b.Method
	case a.URL.String() != b.URL.String() || a.URL.Path != b.URL.Path || a.URL.RawQuery != b.URL.RawQuery:
		return "url " + a.URL.String() + " / " + b.URL.String()
	case a.RequestURI != b.RequestURI:
		return "request uri"
	case a.Host != b.Host:
		return "host " + a.Host + " / " + b.Host
	case a.ProtoMajor != b.ProtoMajor || a.ProtoMinor != b.ProtoMinor:
		return "proto"
	case a.ContentLength != b.ContentLength:
		return "content length"
	case !slices.Equal(a.TransferEncoding, b.TransferEncoding):
		return "transfer encoding"
	case a.Close != b.Close:
		return "close"
	case !bytes.Equal(ab, bb):
		return "body"
	case fmt.Sprint(a.Trailer) != fmt.Sprint(b.Trailer):
		return "trailer " + fmt.Sprint(a.Trailer) + " / " + fmt.Sprint(b.Trailer)
	}
	for k, v := range a.Header {
		if !slices.Equal(v, b.Header[k]) {
			return "header " + k + ": " + strings.Join(v, "|") + " / " + strings.Join(b.Header[k], "|")
		}
	}
	for k := range b.Header {
		if _, ok := a.Header[k]; !ok {
			return "header " + k + " missing"
		}
	}
	return ""
}

var goodRequests = []string{
	"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"model\":\"m\"}",
	"GET /v1/models?limit=5&x=%20y HTTP/1.1\r\nHost: gw:8080\r\nAccept: */*\r\nUser-Agent: curl/7.88.1\r\n\r\n",
	"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
	"POST /a%2Fb/c HTTP/1.1\r\nHost: gw\r\nx-lower-case: v1\r\nX-Lower-Case: v2\r\nconnection: close\r\nContent-Length: 0\r\n\r\n",
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: h\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n",
	"GET /empty-and-padded HTTP/1.1\r\nHost: gw\r\nX-Empty:\r\nX-Spaces:   padded \t \r\n\r\n",
	"POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
	"POST /v1/completions HTTP/1.1\r\nHost: [::1]:443\r\nContent-Length: 3\r\nX-Stainless-Lang: js\r\nx-stainless-os: Linux\r\nTraceparent: 00-a-b-01\r\n\r\nabc",
	"DELETE /x HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, Upgrade\r\n\r\n",
	"PATCH /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\nz",
}

// TestReadsLikeNetHTTP: every request h1 reads, it reads as net/http does — the same
// method, target, host, headers (names canonical, values trimmed), body and framing.
func TestReadsLikeNetHTTP(t *testing.T) {
	for _, in := range goodRequests {
		a, ab, err := parseBytes([]byte(in))
		if err != nil {
			t.Errorf("%q: h1 refused: %v", in, err)
			continue
		}
		b, bb, err := stdParse([]byte(in))
		if err != nil {
			t.Errorf("%q: net/http refused: %v", in, err)
			continue
		}
		if d := same(a, b, ab, bb); d != "" {
			t.Errorf("%q: h1 and net/http differ: %s", in, d)
		}
	}
}

// TestRefusesAmbiguous: requests that parsers on one path read differently — the ways of
// smuggling one request inside another — are refused, with the status a client can act
// on, before any handler sees them.
func TestRefusesAmbiguous(t *testing.T) {
	for in, status := range map[string]int{
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": 400,
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd":               400,
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd":                                 400,
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd":                                   400,
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\nabcd":                                  400,
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd":                                   400,
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n":            501,
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n":                     501,
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n": 501,
		"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n":                                 501,
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n":                                                400,
		"GET / HTTP/1.1\nHost: a\n\n":                                                                    400,
		"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n":                                                        400,
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n":                                                   400,
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n":                                                 400,
		"GET / HTTP/1.1\r\nHost: a\r\nX Y: b\r\n\r\n":                                                    400,
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n":                                                   400,
		"GET / HTTP/1.1\r\n\r\n":                                                                         400,
		"GET / HTTP/1.1\r\nHost: a b\r\n\r\n":                                                            400,
		"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n":                                                   400,
		"GET  / HTTP/1.1\r\nHost: a\r\n\r\n":                                                             400,
		"GET / HTTP/2.0\r\nHost: a\r\n\r\n":                                                              505,
		"GET / HTTP/1.1 \r\nHost: a\r\n\r\n":                                                             505,
		"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx":                     417,
	} {
		_, _, err := parseBytes([]byte(in))
		pe, ok := err.(*parseError)
		if !ok || pe.status != status {
			t.Errorf("%q: got %v, want a %d refusal", in, err, status)
		}
	}
	// Chunked framing that does not add up fails the body's read: the handler sees an
	// error, and the connection is not reused.
	for _, in := range []string{
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000\r\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nshort",
	} {
		if _, _, err := parseBytes([]byte(in)); err == nil {
			t.Errorf("%q: read without error", in)
		}
	}
}

// TestHeaderBound: a request line and headers over MaxHeaderBytes are refused with 431,
// also when one line is longer than the reader's buffer.
func TestHeaderBound(t *testing.T) {
	for _, in := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("v", 70<<10) + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-A: b\r\n", 12<<10) + "\r\n",
		"GET /" + strings.Repeat("p", 70<<10) + " HTTP/1.1\r\nHost: a\r\n\r\n",
	} {
		_, _, err := parseBytes([]byte(in))
		if pe, ok := err.(*parseError); !ok || pe.status != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%d bytes: got %v, want 431", len(in), err)
		}
	}
	long := "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("v", 10<<10) + "\r\n\r\n" // longer than the buffer, within the bound
	r, _, err := parseBytes([]byte(long))
	if err != nil || len(r.Header.Get("X")) != 10<<10 {
		t.Fatalf("a 10 KiB header: %v", err)
	}
}

// FuzzReadsLikeNetHTTP: whatever bytes arrive, a request h1 reads is one net/http reads
// too, the same way (h1 may refuse more, never read differently).
func FuzzReadsLikeNetHTTP(f *testing.F) {
	for _, in := range goodRequests {
		f.Add([]byte(in))
	}
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Add([]byte("GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, ab, err := parseBytes(data)
		if err != nil {
			return
		}
		b, bb, err := stdParse(data)
		if err != nil {
			t.Fatalf("%q: h1 read it, net/http refused: %v", data, err)
		}
		if d := same(a, b, ab, bb); d != "" {
			t.Fatalf("%q: h1 and net/http differ: %s", data, d)
		}
	})
}
