package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/strongroom/strongroom/internal/engineauth"
	"github.com/strongroom/strongroom/internal/h1"
)

// readAnswer reads an engine's answer — status line, headers, and its body's framing —
// from br, for the engine client (upstream.go). It replaced http.ReadResponse (5 % of a
// request's CPU under load, with its body reader) and is stricter than it, never
// different: an answer it reads, net/http reads the same way (FuzzEngineAnswer), while it
// refuses what engines do not send and parsers may disagree on — lines not ending in
// CRLF, obsolete folding, a repeated or non-numeric Content-Length, Transfer-Encoding
// other than exactly "chunked". With both a coding and a length, the coding wins and the
// connection is not reused (RFC 9112 6.3). The header bound is the engineConn's
// (maxEngineHeader).
func readAnswer(br *bufio.Reader, recent *h1.Recent) (*http.Response, error) {
	left := maxEngineHeader
	line, err := h1.ReadLine(br, &left)
	if err != nil {
		return nil, answerErr(err)
	}
	resp := &http.Response{Header: make(http.Header, 8)}
	proto, rest, _ := bytes.Cut(line, []byte{' '})
	switch string(proto) {
	case "HTTP/1.1":
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	case "HTTP/1.0":
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.0", 1, 0
	default:
		return nil, errors.New("engine answer: malformed status line")
	}
	code, _, _ := bytes.Cut(rest, []byte{' '})
	if len(code) != 3 || code[0] < '1' || code[0] > '9' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9' {
		return nil, errors.New("engine answer: malformed status code")
	}
	resp.StatusCode = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	resp.Status = string(rest)
	vals := make([]string, 0, 8)
	for lines := 0; ; {
		line, err := h1.ReadLine(br, &left)
		if err != nil {
			return nil, answerErr(err)
		}
		if len(line) == 0 {
			break
		}
		name, value, err := h1.HeaderLine(line)
		if err != nil {
			return nil, answerErr(err)
		}
		key := recent.Key(lines, name, answerHeader, textproto.CanonicalMIMEHeaderKey)
		v := recent.Value(lines, value, answerValue)
		lines++
		if vs, seen := resp.Header[key]; seen {
			resp.Header[key] = append(vs, v)
			continue
		}
		vals = append(vals, v)
		resp.Header[key] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if err := answerBody(resp, br); err != nil {
		return nil, err
	}
	return resp, nil
}

// answerBody gives resp its body's reader and length, and says whether the connection
// closes after it.
func answerBody(resp *http.Response, br *bufio.Reader) error {
	h := resp.Header
	resp.Close = resp.ProtoMinor == 0 && !h1.HasToken(h["Connection"], "keep-alive") || h1.HasToken(h["Connection"], "close")
	te, cl := h["Transfer-Encoding"], h["Content-Length"]
	length := int64(-1)
	switch {
	case len(cl) > 1:
		return errors.New("engine answer: more than one Content-Length")
	case len(cl) == 1:
		n, ok := h1.ParseLength(cl[0])
		if !ok {
			return errors.New("engine answer: malformed Content-Length")
		}
		length = n
	}
	noBody := resp.StatusCode/100 == 1 || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	switch {
	case noBody:
		resp.ContentLength = 0
		resp.Body = http.NoBody
	case len(te) > 0:
		if len(cl) > 0 {
			// RFC 9112 6.3: the coding wins, and the connection closes after the answer.
			delete(h, "Content-Length")
			resp.Close = true
		}
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") || resp.ProtoMinor == 0 {
			return fmt.Errorf("engine answer: unsupported Transfer-Encoding %q", strings.Join(te, ", "))
		}
		delete(h, "Transfer-Encoding")
		resp.TransferEncoding = []string{"chunked"}
		resp.ContentLength = -1
		resp.Body = io.NopCloser(h1.NewChunked(br, h1.MaxTrailer))
	case length >= 0:
		resp.ContentLength = length
		if length == 0 {
			resp.Body = http.NoBody
		} else {
			resp.Body = &lengthBody{br: br, left: length}
		}
	default:
		// Until the connection closes (HTTP/1.0, or an HTTP/1.1 engine without framing).
		resp.ContentLength = -1
		resp.Close = true
		resp.Body = io.NopCloser(br)
	}
	return nil
}

// lengthBody is a body of a known length: reading past it is io.EOF, ending short
// io.ErrUnexpectedEOF.
type lengthBody struct {
	br   *bufio.Reader
	left int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }

func answerErr(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return fmt.Errorf("engine answer: %w", err)
}

// answerHeaders and answerValues are names and values engines send with most answers,
// canonical: they cost no allocation.
var answerHeaders, answerValues = func() (map[string]string, map[string]string) {
	names := map[string]string{}
	for _, k := range []string{"Content-Type", "Content-Length", "Transfer-Encoding", "Connection", "Date",
		"Server", "Cache-Control", "X-Request-Id", "Keep-Alive", "Vary", engineauth.WatermarkHeader} {
		k = textproto.CanonicalMIMEHeaderKey(k)
		names[k] = k
		names[strings.ToLower(k)] = k
	}
	values := map[string]string{}
	for _, v := range []string{"application/json", "text/event-stream", "text/event-stream; charset=utf-8",
		"application/json; charset=utf-8", "chunked", "keep-alive", "close", "no-cache", "applied", "uvicorn"} {
		values[v] = v
	}
	return names, values
}()

func answerHeader(name []byte) string { return answerHeaders[string(name)] }
func answerValue(v []byte) string     { return answerValues[string(v)] }
