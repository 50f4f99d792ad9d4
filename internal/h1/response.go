package h1

import (
	"bufio"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// holdBytes is how much of an answer is held before its headers go: an answer the
// handler ends within it is sent with a Content-Length, a longer or flushed one chunked.
const holdBytes = 4 << 10

// streamWriters are the write buffers a chunked answer (flushed by its handler before its
// end, or longer than holdBytes) writes through, from its headers to its end. A
// connection's own buffer is 4 KiB (kept small: every idle keep-alive connection holds
// one); a flush of more went out as one write per 4 KiB, and an SSE relay flushes whatever
// its engine sent in one read (peers --stream, docs/bench/syscalls.sh: 0.067 writes a
// chunk through 4 KiB, 0.038 through this — about one per engine read — and ~8 % less CPU
// a chunk).
var streamWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

// response is the http.ResponseWriter of one request.
type response struct {
	c         *conn
	req       *http.Request
	reqBody   *body   // the request's, as read (nil: none)
	ctx       *reqCtx // the request's context
	deadlines bool    // the handler set a read or write deadline
	header    http.Header
	status    int
	sent      bool // status line and headers are in c.bw
	chunked   bool
	noBody    bool  // HEAD, 1xx, 204, 304: nothing after the headers
	declared  int64 // the handler's Content-Length (-1: none)
	written   int64
	close     bool // the connection closes after this answer
	err       error
	hold      []byte
	small     *bufio.Writer // the connection's own writer while a stream has a bigger one (streamWriters)
	// mu orders the ResponseWriter's methods with finish: a goroutine the handler left
	// behind may call them after it returned, and done (set by finish) makes them fail
	// then, so that nothing reaches the connection after the answer's end — where it would
	// be read as the start of the next answer (behind a proxy: another user's).
	mu   sync.Mutex
	done bool
}

// errAfterReturn is what a ResponseWriter's methods return once its handler has returned.
var errAfterReturn = errors.New("h1: the response was used after its handler returned")

// answer runs the handler on req, whose context is rc.
func (c *conn) answer(req *http.Request, rc *reqCtx) bool {
	b, _ := req.Body.(*body)
	// The body is kept here, not looked up in req when the answer goes out: a handler may
	// replace r.Body (http.MaxBytesReader, io.LimitReader) and leave bytes unread behind it.
	w := &response{c: c, req: req, reqBody: b, ctx: rc, header: make(http.Header, 4), declared: -1, close: req.Close, hold: c.hold[:0]}
	if b != nil {
		b.req = req
	}
	c.resp = w
	c.bodyRead.Store(b == nil)
	c.watchMu.Lock()
	c.req, c.reqCtx = req, rc
	c.watchMu.Unlock()
	if c.s.base.Err() != nil {
		rc.cancel() // the server closed before endRequest could see the request
	}
	c.busySince.Store(time.Now().UnixNano())
	c.s.watchLater()
	c.s.Handler.ServeHTTP(w, req)
	c.unwatch()
	w.finish(c.raw != nil && !c.s.shutting.Load())
	if (w.err != nil || c.peerGone.Load()) && c.s.Log != nil && c.s.Log.Enabled(req.Context(), slog.LevelDebug) {
		// Why an answer ended short of its end: the write's error, or the client seen gone
		// by the watch. The path only: a query may carry what is not ours to log.
		c.s.Log.Debug("h1: answer ended early", "remote", c.remote, "method", req.Method, "path", req.URL.Path,
			"written", w.written, "err", w.err, "peer_gone", c.peerGone.Load())
	}
	c.busySince.Store(0)
	rc.cancel()
	c.resp = nil
	if w.deadlines {
		// A handler's deadlines end with its request (net/http's rule).
		c.setReadDeadline(time.Time{})
		c.rw.SetWriteDeadline(time.Time{})
	}
	if b != nil {
		b.closed = true // a read after the handler returned fails, as net/http's does
		if !b.sawEOF {
			c.linger = true // unread bytes: close so that the client reads the answer first
		}
	}
	keep := !w.close && w.err == nil && !c.peerGone.Load()
	if c.unsent && (!keep || c.linger) {
		// The connection ends after this answer: its last bytes go out now.
		c.unsent = false
		if c.bw.Flush() != nil {
			keep = false
		}
	}
	return keep
}

// settleBody decides, as the answer's headers go out, what becomes of a request body the
// handler did not read to its end (net/http's rule): up to 256 KiB is read and dropped
// so that the connection can carry the next request; a larger body, one that fails, or
// one whose client waits for a 100 Continue it was never sent, closes the connection
// after the answer — and the answer says so.
func (w *response) settleBody() {
	b := w.reqBody
	if b == nil {
		return
	}
	// A 413 is a handler refusing the body as too large (http.MaxBytesReader's answer,
	// whose hook into net/http's server is unexported): the rest is not read and the
	// connection closes, as net/http's does — also when the limit's reader happened to
	// read the body to its end.
	if w.status == http.StatusRequestEntityTooLarge {
		w.close = true
		return
	}
	if !b.drain(256 << 10) {
		w.close = true
	}
}

func (w *response) Header() http.Header { return w.header }

func (w *response) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic("h1: invalid WriteHeader code " + strconv.Itoa(code))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.writeHeader(code)
	}
}

func (w *response) writeHeader(code int) {
	if w.status != 0 || code < 200 {
		return // informational answers are not sent; a second status is ignored, as net/http does
	}
	w.status = code
	if v := w.header.Get("Content-Length"); v != "" {
		if n, ok := ParseLength(v); ok {
			w.declared = n
		} else {
			w.header.Del("Content-Length")
		}
	}
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
}

func (w *response) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return 0, errAfterReturn
	}
	if w.status == 0 {
		w.writeHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			w.written += int64(len(p))
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.declared >= 0 && w.written+int64(len(p)) > w.declared {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.sent {
		if len(w.hold)+len(p) <= holdBytes {
			w.hold = append(w.hold, p...)
			return len(p), nil
		}
		w.sendHeader(false)
	}
	w.body(p)
	return len(p), w.err
}

// body writes p as the answer's bytes (a chunk when chunked) into the connection's buffer.
func (w *response) body(p []byte) {
	if len(p) == 0 || w.err != nil {
		return
	}
	bw := w.c.bw
	if w.chunked {
		writeNumber(bw, uint64(len(p)), 16)
		bw.WriteString("\r\n")
		bw.Write(p)
		_, w.err = bw.WriteString("\r\n")
	} else {
		_, w.err = bw.Write(p)
	}
	w.failed()
}

// writeNumber writes n in base into bw, through bw's own free space: a number formatted
// into a local array went to the heap (bufio.Writer.Write may hand its argument to the
// connection), one allocation for every chunk of a stream.
func writeNumber(bw *bufio.Writer, n uint64, base int) {
	bw.Write(strconv.AppendUint(bw.AvailableBuffer(), n, base))
}

// failed ends the request's context once a write to the client failed: the client is gone.
func (w *response) failed() {
	if w.err != nil {
		w.close = true
		w.c.peerGone.Store(true)
		w.ctx.cancel()
	}
}

// sendHeader puts the status line and headers in the connection's buffer, then what was
// held. last: the handler has returned (the held bytes are the whole answer).
func (w *response) sendHeader(last bool) {
	if w.sent {
		return
	}
	w.sent = true
	c := w.c
	w.settleBody()
	if c.s.shutting.Load() || c.peerGone.Load() {
		w.close = true
	}
	h := w.header
	if !w.noBody {
		if _, typed := h["Content-Type"]; !typed && len(w.hold) > 0 {
			h.Set("Content-Type", http.DetectContentType(w.hold))
		}
		switch {
		case w.declared >= 0:
		case last:
			w.declared = int64(len(w.hold))
		case w.req.ProtoMinor == 0:
			w.close = true // HTTP/1.0 has no chunks: the answer ends with the connection
		default:
			w.chunked = true
		}
	}
	if HasToken(h["Connection"], "close") {
		w.close = true
	}
	if w.chunked && c.bw.Buffered() == 0 {
		// The answer streams (flushed before its end) or is long: it goes out through a
		// bigger buffer from its headers on — the first flush of a stream often carries
		// the most, what the engine sent while the stream's start was recorded. finish
		// gives it back and puts the connection's own back.
		big := streamWriters.Get().(*bufio.Writer)
		big.Reset(c.rw)
		w.small, c.bw = c.bw, big
	}
	bw := c.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(statusLine(w.status))
	bw.WriteString("\r\n")
	for k, vs := range h {
		if serverHeader(k) || !httpguts.ValidHeaderFieldName(k) {
			continue // framing is the server's to write, under any spelling of its names
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			writeValue(bw, v)
			bw.WriteString("\r\n")
		}
	}
	bw.WriteString("Date: ")
	bw.WriteString(httpDate())
	bw.WriteString("\r\n")
	if !w.noBody || w.req.Method == http.MethodHead && w.declared >= 0 {
		if w.chunked {
			bw.WriteString("Transfer-Encoding: chunked\r\n")
		} else if w.declared >= 0 {
			bw.WriteString("Content-Length: ")
			writeNumber(bw, uint64(w.declared), 10)
			bw.WriteString("\r\n")
		}
	}
	switch {
	case w.close:
		bw.WriteString("Connection: close\r\n")
	case w.req.ProtoMinor == 0:
		bw.WriteString("Connection: keep-alive\r\n")
	}
	_, w.err = bw.WriteString("\r\n")
	w.failed()
	held := w.hold
	w.hold = nil
	w.body(held)
}

// serverHeader reports whether k names a header the server writes itself.
func serverHeader(k string) bool {
	switch len(k) {
	case 4:
		return asciiEqualFold(k, "Date")
	case 10:
		return asciiEqualFold(k, "Connection")
	case 14:
		return asciiEqualFold(k, "Content-Length")
	case 17:
		return asciiEqualFold(k, "Transfer-Encoding")
	}
	return false
}

// writeValue writes a header value with CR and LF made spaces (net/http's rule: a value
// cannot add lines).
func writeValue(bw interface {
	WriteString(string) (int, error)
	WriteByte(byte) error
}, v string) {
	if !strings.ContainsAny(v, "\r\n") {
		bw.WriteString(v)
		return
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\r', '\n':
			bw.WriteByte(' ')
		default:
			bw.WriteByte(c)
		}
	}
}

// Flush sends the headers (the answer is then chunked) and what was written so far.
func (w *response) Flush() { w.FlushError() }

// FlushError is Flush with its error (http.ResponseController's Flush).
func (w *response) FlushError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return errAfterReturn
	}
	if w.status == 0 {
		w.writeHeader(http.StatusOK)
	}
	w.sendHeader(false)
	if w.err != nil {
		return w.err
	}
	w.err = w.c.bw.Flush()
	w.failed()
	return w.err
}

// SetReadDeadline and SetWriteDeadline are http.ResponseController's.
// After the handler returned they fail: the connection's deadlines are the next request's.
func (w *response) SetReadDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return errAfterReturn
	}
	w.deadlines = true
	return w.c.rw.SetReadDeadline(t)
}

func (w *response) SetWriteDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return errAfterReturn
	}
	w.deadlines = true
	return w.c.rw.SetWriteDeadline(t)
}

var errShortBody = errors.New("h1: the handler wrote less than its Content-Length")

// finish ends the answer after the handler returned: headers if not yet sent (with the
// held bytes' length), the last chunk, and the buffer to the connection — or, with leave,
// the buffer left for the next request's wait to send (out.go) when nothing else is to be
// written (no error, keep-alive, no stream writer, no deadline of the handler's).
func (w *response) finish(leave bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	if w.status == 0 {
		w.writeHeader(http.StatusOK)
	}
	w.sendHeader(true)
	if w.err == nil && w.chunked {
		_, w.err = w.c.bw.WriteString("0\r\n\r\n")
	}
	if w.err == nil && !w.noBody && w.declared >= 0 && w.written < w.declared {
		w.err = errShortBody // the client would wait for the rest: the connection closes
	}
	// The reader is looked at here, after sendHeader: its drain of a body the handler left
	// may have read the client's next request in (then the wait would wait for nothing:
	// outside round 39).
	if leave && w.err == nil && !w.close && w.small == nil && !w.deadlines && w.c.br.Buffered() == 0 {
		w.c.unsent = true
	} else if err := w.c.bw.Flush(); err != nil && w.err == nil {
		w.err = err
	}
	if w.small != nil {
		big := w.c.bw
		w.c.bw, w.small = w.small, nil
		big.Reset(nil) // holds neither bytes nor the connection
		streamWriters.Put(big)
	}
	if w.err != nil {
		w.close = true
	}
}

// statusLines are "200 OK" and the like, made once.
var statusLines = func() (s [600]string) {
	for code := 100; code < 600; code++ {
		s[code] = makeStatusLine(code)
	}
	return s
}()

func statusLine(code int) string {
	if code < len(statusLines) {
		return statusLines[code]
	}
	return makeStatusLine(code)
}

func makeStatusLine(code int) string {
	if t := http.StatusText(code); t != "" {
		return strconv.Itoa(code) + " " + t
	}
	return strconv.Itoa(code) + " status code " + strconv.Itoa(code)
}

// httpDate is the Date header's value, made once a second.
func httpDate() string {
	now := time.Now().Unix()
	if d := dateCache.Load(); d != nil && d.unix == now {
		return d.s
	}
	d := &cachedDate{unix: now, s: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d.s
}

type cachedDate struct {
	unix int64
	s    string
}

var dateCache atomic.Pointer[cachedDate]

// continue100 tells a client that waits for it to send the request's body.
func (c *conn) continue100() {
	c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
	c.bw.Flush()
}
